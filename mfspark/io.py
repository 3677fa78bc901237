"""Output I/O: atomic dataset commits and the run manifest.

Paths may be local or any Hadoop file system URI (hdfs://, s3a://, ...): directory
operations go through the JVM's Hadoop FileSystem so the same code works on a cluster.

A stage writes each of its datasets into ``<output>/_staging/<run id>/...`` and only when all
of them are complete moves them into place (:class:`StagedWriter`). A failed stage deletes its
staging directory, and removes ``<output>`` too when the run created it and left it empty, so
a failure never leaves a half-written dataset where a good one is expected.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import uuid
from contextlib import contextmanager
from typing import Any

from mfspark.columns import MANIFEST

log = logging.getLogger(__name__)

STAGING_DIR = "_staging"


class HadoopFS:
    """Minimal directory operations on local or Hadoop-compatible paths."""

    def __init__(self, spark):
        self._spark = spark
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, path: str):
        p = self._jvm.org.apache.hadoop.fs.Path(path)
        return p, p.getFileSystem(self._conf)

    def exists(self, path: str) -> bool:
        p, fs = self._path(path)
        return bool(fs.exists(p))

    def is_empty_dir(self, path: str) -> bool:
        p, fs = self._path(path)
        return bool(fs.exists(p)) and len(fs.listStatus(p)) == 0

    def mkdirs(self, path: str) -> None:
        p, fs = self._path(path)
        fs.mkdirs(p)

    def delete(self, path: str) -> None:
        p, fs = self._path(path)
        if fs.exists(p):
            fs.delete(p, True)

    def rename(self, src: str, dst: str) -> None:
        ps, fs = self._path(src)
        pd, _ = self._path(dst)
        fs.mkdirs(pd.getParent())
        if not fs.rename(ps, pd):
            raise OSError(f"could not move {src} to {dst}")

    def write_text(self, path: str, text: str) -> None:
        """Write a small text file atomically (write a sibling, then rename over)."""
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        p, fs = self._path(tmp)
        out = fs.create(p, True)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()
        self.delete(path)
        self.rename(tmp, path)

    def read_text(self, path: str) -> str | None:
        p, fs = self._path(path)
        if not fs.exists(p):
            return None
        stream = fs.open(p)
        try:
            reader = self._jvm.java.io.BufferedReader(
                self._jvm.java.io.InputStreamReader(stream, "UTF-8")
            )
            return "\n".join(iter(reader.readLine, None))
        finally:
            stream.close()

    def glob(self, path: str) -> list[str]:
        """The paths a glob pattern (``ratings/part-*.csv``) matches, sorted; [] for none."""
        p, fs = self._path(path)
        found = fs.globStatus(p)
        return sorted(st.getPath().toString() for st in found) if found is not None else []

    def file_status(self, path: str) -> list[tuple[str, int, int]]:
        """(path, size, modification time ms) of every file under ``path``, sorted."""
        p, fs = self._path(path)
        out = []
        it = fs.listFiles(p, True)
        while it.hasNext():
            st = it.next()
            name = st.getPath().getName()
            if not name.startswith((".", "_")):
                out.append((st.getPath().toString(), int(st.getLen()), int(st.getModificationTime())))
        if not out and fs.getFileStatus(p).isFile():  # pragma: no cover - listFiles covers files
            st = fs.getFileStatus(p)
            out.append((st.getPath().toString(), int(st.getLen()), int(st.getModificationTime())))
        return sorted(out)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


class StagedWriter:
    """Write a stage's datasets into staging, then move them all into place at once."""

    def __init__(self, spark, output: str):
        self.spark = spark
        self.output = output.rstrip("/")
        self.fs = HadoopFS(spark)
        self.run_id = _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.staging = join(self.output, STAGING_DIR, self.run_id)
        self.names: list[str] = []
        self._created_output = not self.fs.exists(self.output)

    def path(self, name: str) -> str:
        """Staging location of dataset ``name`` (e.g. ``prepared/train``)."""
        if name not in self.names:
            self.names.append(name)
        return join(self.staging, name)

    def write(self, df, name: str, mode: str = "overwrite") -> str:
        target = self.path(name)
        df.write.mode(mode).parquet(target)
        return target

    def commit(self) -> None:
        """Replace each final dataset by its staged copy."""
        for name in self.names:
            final = join(self.output, name)
            trash = join(self.staging, "_replaced", name)
            if self.fs.exists(final):
                self.fs.rename(final, trash)
            self.fs.rename(join(self.staging, name), final)
        self.fs.delete(self.staging)
        self._remove_staging_root()

    def abort(self) -> None:
        self.fs.delete(self.staging)
        self._remove_staging_root()
        if self._created_output and self.fs.is_empty_dir(self.output):
            self.fs.delete(self.output)

    def _remove_staging_root(self) -> None:
        root = join(self.output, STAGING_DIR)
        if self.fs.is_empty_dir(root):
            self.fs.delete(root)


@contextmanager
def staged_outputs(spark, output: str):
    """``with staged_outputs(spark, out) as w: w.write(df, "prepared/train")``.

    Commits on success; on any exception removes everything the block staged.
    """
    writer = StagedWriter(spark, output)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.commit()


def versions() -> dict[str, str]:
    import numpy
    import pandas
    import pyarrow
    import pyspark

    from mfspark import __version__

    return {
        "mfspark": __version__,
        "python": platform.python_version(),
        "pyspark": pyspark.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "pyarrow": pyarrow.__version__,
    }


def read_manifest(spark, output: str) -> dict[str, Any]:
    text = HadoopFS(spark).read_text(join(output, MANIFEST))
    return json.loads(text) if text else {}


def update_manifest(spark, output: str, stage: str, section: dict[str, Any], cfg=None) -> dict:
    """Record one stage's facts in ``manifest.json`` (other stages' entries are kept)."""
    manifest = read_manifest(spark, output)
    manifest.setdefault("stages", {})
    entry = {
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **section,
    }
    if cfg is not None:
        entry["config"] = cfg.to_dict()
    manifest["stages"][stage] = entry
    manifest["versions"] = versions()
    HadoopFS(spark).write_text(join(output, MANIFEST), json.dumps(manifest, indent=2, default=str))
    return manifest
