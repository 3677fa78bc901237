"""Output I/O: atomic stage commits, their recovery, the run manifest, and input checks.

Paths may be local or any Hadoop file system URI (hdfs://, s3a://, ...): directory
operations go through the JVM's Hadoop FileSystem so the same code works on a cluster.

**How a stage commits.** A stage writes each of its datasets into
``<output>/_staging/<run id>/<name>`` (:class:`StagedWriter`). When all are written:

1. every staged dataset must hold ``_SUCCESS`` (the marker Spark writes when a write job
   committed) and gets ``_MFSPARK_COMMIT`` (the run id and stage);
2. the next ``manifest.json`` (this run's datasets recorded under ``datasets``, and the stage's
   entry when the stage gave it) is written into the staging directory;
3. the commit journal ``_staging/<run id>/_COMMIT.json`` is written: the commit point. Before
   it, an interrupted run is rolled back (its staging directory removed); after it, rolled
   forward;
4. each final dataset is moved to ``_staging/<run id>/_replaced/`` and the staged one moved
   into place;
5. the staged manifest replaces ``manifest.json`` (the last step readers look at);
6. the staging directory is removed.

:func:`recover` finishes (journal present) or removes (no journal) what a killed run left;
every job calls it before its stage runs, and :func:`staged_outputs` calls it too. Readers call
:func:`require_committed`: a dataset is readable only when it has ``_SUCCESS`` and the manifest
records the run whose ``_MFSPARK_COMMIT`` it holds — anything else is refused in one line.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import re
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from typing import Any

from mfspark.columns import MANIFEST
from mfspark.errors import ConfigError, InputError, MfsparkError

log = logging.getLogger(__name__)

STAGING_DIR = "_staging"
SUCCESS = "_SUCCESS"
COMMIT_MARKER = "_MFSPARK_COMMIT"
JOURNAL = "_COMMIT.json"
OWNER = "_OWNER.json"
REPLACED = "_replaced"
MANIFEST_NEXT = MANIFEST + ".next"
# Test hook: pause a commit at this step (0: all staged, before the journal; k: after k
# renames) so that a test can kill the process there. Never set it in production.
PAUSE_ENV = "MFSPARK_TEST_PAUSE_COMMIT"

# Run ids of the writers open in this process (recovery leaves them alone).
_ACTIVE_RUNS: set[str] = set()


class HadoopFS:
    """Minimal directory operations on local or Hadoop-compatible paths."""

    def __init__(self, spark):
        self._spark = spark
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, path: str):
        p = self._jvm.org.apache.hadoop.fs.Path(path)
        return p, p.getFileSystem(self._conf)

    def _text_path(self, path: str):
        """Like :meth:`_path`, but without Hadoop's ``.crc`` side files on a checksummed file
        system (the local one): small text files (the manifest, journals, markers) are also
        read and written by people and other tools, and a stale ``.crc`` would make Hadoop
        refuse a file edited outside it."""
        p, fs = self._path(path)
        checksummed = self._jvm.java.lang.Class.forName("org.apache.hadoop.fs.ChecksumFileSystem")
        return p, (fs.getRawFileSystem() if checksummed.isInstance(fs) else fs)

    def exists(self, path: str) -> bool:
        p, fs = self._path(path)
        return bool(fs.exists(p))

    def is_file(self, path: str) -> bool:
        p, fs = self._path(path)
        return bool(fs.exists(p)) and bool(fs.getFileStatus(p).isFile())

    def is_empty_dir(self, path: str) -> bool:
        p, fs = self._path(path)
        return bool(fs.exists(p)) and len(fs.listStatus(p)) == 0

    def list_names(self, path: str, dirs_only: bool = False) -> list[str]:
        """Names of the entries of directory ``path`` (sorted; [] when it does not exist)."""
        p, fs = self._path(path)
        if not fs.exists(p):
            return []
        return sorted(
            st.getPath().getName() for st in fs.listStatus(p) if not dirs_only or st.isDirectory()
        )

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

    def create_text(self, path: str, text: str) -> None:
        """Write a file in one go (overwriting): for a new name or a staging file."""
        p, fs = self._text_path(path)
        out = fs.create(p, True)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()

    def write_text(self, path: str, text: str) -> None:
        """Replace a small text file so that a reader sees the old or the new text, whole.

        The new text goes to ``<path>.next`` first; only then is the old file deleted and the
        new one renamed over. :meth:`read_text` falls back to ``<path>.next`` when ``path``
        is missing (a kill between the delete and the rename).
        """
        nxt = f"{path}.next"
        self.create_text(nxt, text)
        self.delete(path)
        self.rename(nxt, path)

    def read_text(self, path: str, fallback: bool = True) -> str | None:
        p, fs = self._text_path(path)
        if not fs.exists(p):
            nxt = f"{path}.next"
            return self.read_text(nxt, fallback=False) if fallback and self.exists(nxt) else None
        stream = fs.open(p)
        try:
            reader = self._jvm.java.io.BufferedReader(
                self._jvm.java.io.InputStreamReader(stream, "UTF-8")
            )
            return "\n".join(iter(reader.readLine, None))
        finally:
            stream.close()

    def read_bytes(self, path: str, offset: int, n: int) -> bytes:
        """``n`` bytes of a file from ``offset`` (fewer at its end)."""
        p, fs = self._path(path)
        stream = fs.open(p)
        try:
            stream.seek(offset)
            return bytes(stream.readNBytes(n))  # a Java byte[] arrives as a bytearray
        finally:
            stream.close()

    def glob(self, path: str) -> list[str]:
        """The paths a glob pattern (``ratings/part-*.csv``) matches, sorted; [] for none."""
        p, fs = self._path(path)
        found = fs.globStatus(p)
        return sorted(st.getPath().toString() for st in found) if found is not None else []

    def file_status(self, path: str) -> list[tuple[str, int, int]]:
        """(path, size, modification time ms) of every data file under ``path``, sorted.

        Hidden entries (names starting with ``.`` or ``_``: ``_SUCCESS``, ``.crc`` files,
        ``_temporary/``) are skipped at any depth, as Spark skips them when reading.
        """
        p, fs = self._path(path)
        root = p.makeQualified(fs.getUri(), fs.getWorkingDirectory()).toString().rstrip("/")
        out = []
        it = fs.listFiles(p, True)
        while it.hasNext():
            st = it.next()
            full = st.getPath().toString()
            rel = full[len(root) :] if full.startswith(root) else st.getPath().getName()
            if not any(part.startswith((".", "_")) for part in rel.split("/") if part):
                out.append((full, int(st.getLen()), int(st.getModificationTime())))
        return sorted(out)

    def scheme_supported(self, path: str) -> str | None:
        """None when Hadoop can open ``path``'s file system, else the reason it cannot."""
        try:
            self._path(path)
        except Exception as exc:  # py4j wraps the JVM's exception
            text = str(getattr(exc, "java_exception", exc))
            return text.splitlines()[0] if text else type(exc).__name__
        return None


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read_json(fs: HadoopFS, path: str) -> dict | None:
    text = fs.read_text(path)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:  # a file cut short by a kill while it was written
        return None
    return value if isinstance(value, dict) else None


# -- who writes what -----------------------------------------------------------------------
def producer(name: str) -> str:
    """The stage that writes dataset ``name`` (for messages and the manifest)."""
    first = name.strip("/").split("/")
    if first[0] in ("prepared", "synthetic_truth"):
        return "prepare"
    if first[0] == "ae_inputs":
        return "build_autoencoder_inputs"
    if first[0] == "benchmark":
        return "benchmark"
    if name.strip("/") == "metrics/summary":
        return "evaluate"
    if first[0] == "models" and len(first) > 1:
        return f"train_{first[1]}"
    if first[0] == "predictions" and len(first) > 1 and first[1].startswith("model="):
        return f"train_{first[1][len('model=') :]}"
    return "train_als"


def job_of(stage: str) -> str:
    return f"jobs/{stage}.py"


# -- the commit ----------------------------------------------------------------------------
class StagedWriter:
    """Write a stage's datasets into staging, then move them all into place at once."""

    def __init__(self, spark, output: str, stage: str | None = None):
        self.spark = spark
        self.output = output.rstrip("/")
        self.fs = HadoopFS(spark)
        recover(spark, self.output)
        self.run_id = _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.staging = join(self.output, STAGING_DIR, self.run_id)
        self.stage = stage
        self.names: list[str] = []
        self._entry: dict[str, Any] | None = None
        self._created_output = not self.fs.exists(self.output)
        _ACTIVE_RUNS.add(self.run_id)

    def path(self, name: str) -> str:
        """Staging location of dataset ``name`` (e.g. ``prepared/train``)."""
        if not self.names:
            owner = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": _now()}
            self.fs.create_text(join(self.staging, OWNER), json.dumps(owner))
        if name not in self.names:
            self.names.append(name)
        return join(self.staging, name)

    def write(self, df, name: str, mode: str = "overwrite", options: dict | None = None) -> str:
        """Write ``df`` as Parquet under the staged ``name``; ``options`` go to the writer."""
        target = self.path(name)
        df.write.mode(mode).options(**(options or {})).parquet(target)
        # The write job committed; keep the marker even where the cluster turned Spark's off.
        if not self.fs.exists(join(target, SUCCESS)):
            self.fs.create_text(join(target, SUCCESS), "")
        return target

    def manifest_entry(self, stage: str, entry: dict[str, Any], cfg=None) -> None:
        """Record the stage's manifest entry as part of the commit (written with the datasets)."""
        self.stage = stage
        self._entry = _stage_entry(entry, cfg)

    def commit(self) -> None:
        """Make every staged dataset visible at once (see the module docstring)."""
        try:
            if not self.names:
                if self._entry is not None:
                    _write_manifest(self.fs, self.output, self._next_manifest())
                return
            stage = self.stage or producer(self.names[0])
            journal = {"run_id": self.run_id, "stage": stage, "datasets": self.names, "at": _now()}
            try:
                self._prepare_commit(stage)
                _pause_for_test(0)
                tmp = join(self.staging, f"{JOURNAL}.tmp")
                self.fs.create_text(tmp, json.dumps(journal))
                self.fs.rename(tmp, join(self.staging, JOURNAL))  # the commit point
            except BaseException:
                self.abort()  # before the commit point nothing final was touched
                raise
            # From here on a failure leaves the journal: the next job finishes the commit.
            _finish_commit(self.fs, self.output, journal, pause=True)
        finally:
            _ACTIVE_RUNS.discard(self.run_id)

    def _prepare_commit(self, stage: str) -> None:
        """Steps 1-2: every dataset complete and marked; the next manifest staged."""
        marker = json.dumps({"run_id": self.run_id, "stage": stage})
        for name in self.names:
            staged = join(self.staging, name)
            if not self.fs.exists(join(staged, SUCCESS)):
                raise MfsparkError(
                    f"{name} was not completely written (no {SUCCESS} in {staged}); nothing "
                    "was committed, run the stage again"
                )
            self.fs.create_text(join(staged, COMMIT_MARKER), marker)
        manifest = json.dumps(self._next_manifest(), indent=2, default=str)
        self.fs.create_text(join(self.staging, MANIFEST), manifest)

    def _next_manifest(self) -> dict[str, Any]:
        manifest = _read_json(self.fs, join(self.output, MANIFEST)) or {}
        stage = self.stage or (producer(self.names[0]) if self.names else "unknown")
        records = manifest.setdefault("datasets", {})
        for name in self.names:
            records[name] = {"stage": stage, "run_id": self.run_id, "committed_at": _now()}
        if self._entry is not None:
            manifest.setdefault("stages", {})[stage] = {"run_id": self.run_id, **self._entry}
        manifest["versions"] = versions()
        return manifest

    def abort(self) -> None:
        _ACTIVE_RUNS.discard(self.run_id)
        self.fs.delete(self.staging)
        _remove_staging_root(self.fs, self.output)
        if self._created_output and self.fs.is_empty_dir(self.output):
            self.fs.delete(self.output)


def _pause_for_test(step: int) -> None:
    wanted = os.environ.get(PAUSE_ENV)
    if wanted is not None and wanted.strip() == str(step):
        log.warning("commit paused at step %d (%s is set)", step, PAUSE_ENV)
        for handler in logging.getLogger().handlers:
            handler.flush()
        time.sleep(3600)


def _finish_commit(fs: HadoopFS, output: str, journal: dict, pause: bool = False) -> None:
    """Steps 4-6 of a commit; idempotent, so recovery resumes wherever a kill stopped it."""
    run_dir = join(output, STAGING_DIR, journal["run_id"])
    step = 0
    for name in journal["datasets"]:
        staged, final = join(run_dir, name), join(output, name)
        if not fs.exists(staged):
            continue  # already in place
        if fs.exists(final):
            replaced = join(run_dir, REPLACED, name)
            fs.delete(replaced)
            fs.rename(final, replaced)
            step += 1
            if pause:
                _pause_for_test(step)
        fs.rename(staged, final)
        step += 1
        if pause:
            _pause_for_test(step)
    manifest = fs.read_text(join(run_dir, MANIFEST), fallback=False)
    if manifest is not None:
        fs.write_text(join(output, MANIFEST), manifest)
    fs.delete(run_dir)
    _remove_staging_root(fs, output)


def _remove_staging_root(fs: HadoopFS, output: str) -> None:
    root = join(output, STAGING_DIR)
    if fs.is_empty_dir(root):
        fs.delete(root)


def _owner_alive(fs: HadoopFS, run_dir: str) -> bool:
    """Whether the process that staged ``run_dir`` still runs (known on this host only)."""
    owner = _read_json(fs, join(run_dir, OWNER))
    if not owner or owner.get("host") != socket.gethostname():
        return False
    pid = int(owner.get("pid", -1))
    if pid == os.getpid():
        return os.path.basename(run_dir) in _ACTIVE_RUNS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def recover(spark, output: str) -> list[str]:
    """Finish or undo the commits killed runs left under ``output``; returns what was done.

    A staging directory with a journal is committed (its datasets were complete before the
    journal was written); one without is removed. Runs of a live process on this host are
    left alone. Only one job may write to an output directory at a time.
    """
    fs = HadoopFS(spark)
    output = output.rstrip("/")
    done = []
    for run in fs.list_names(join(output, STAGING_DIR), dirs_only=True):
        run_dir = join(output, STAGING_DIR, run)
        if _owner_alive(fs, run_dir):
            log.warning("leaving %s alone: the run that writes it is still running", run_dir)
            continue
        journal = _read_json(fs, join(run_dir, JOURNAL))
        if journal is None:
            log.warning("removing %s: run %s stopped before it committed", run_dir, run)
            fs.delete(run_dir)
            done.append(f"rolled back {run}")
        else:
            log.warning(
                "finishing the interrupted commit of stage %s (run %s): %s",
                journal.get("stage"),
                run,
                ", ".join(journal["datasets"]),
            )
            _finish_commit(fs, output, journal)
            done.append(f"committed {run}")
    _remove_staging_root(fs, output)
    manifest, nxt = join(output, MANIFEST), join(output, MANIFEST_NEXT)
    if not fs.exists(manifest) and _read_json(fs, nxt) is not None:
        fs.rename(nxt, manifest)  # killed between the delete and the rename of write_text
        done.append("restored manifest.json")
    return done


@contextmanager
def staged_outputs(spark, output: str, stage: str | None = None):
    """``with staged_outputs(spark, out) as w: w.write(df, "prepared/train")``.

    Commits on success; on any exception removes everything the block staged. ``stage``
    names the stage in the manifest (default: the producer of the first dataset written).
    """
    writer = StagedWriter(spark, output, stage)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.commit()


# -- readers -------------------------------------------------------------------------------
def _pending_commits(fs: HadoopFS, output: str) -> list[dict]:
    found = []
    for run in fs.list_names(join(output, STAGING_DIR), dirs_only=True):
        journal = _read_json(fs, join(output, STAGING_DIR, run, JOURNAL))
        if journal is not None:
            found.append(journal)
    return found


def relative_name(output: str, path: str) -> str | None:
    """``path`` relative to ``output`` when it lies inside it, else None."""
    strip = lambda p: re.sub(r"^file:(//)?", "", p).rstrip("/")  # noqa: E731
    base, full = strip(output), strip(path)
    return full[len(base) + 1 :] if full.startswith(base + "/") else None


def require_committed(spark, output: str, names: list[str]) -> None:
    """Refuse, in one line, to read a dataset under ``output`` its producer did not commit.

    Committed: the directory exists, holds ``_SUCCESS``, and ``manifest.json`` records the run
    whose ``_MFSPARK_COMMIT`` it holds. A directory of committed datasets (``predictions``
    with one ``model=<name>`` dataset per model) is committed when each of them is.
    """
    fs = HadoopFS(spark)
    output = output.rstrip("/")
    manifest = _read_json(fs, join(output, MANIFEST)) or {}
    records = manifest.get("datasets", {})
    pending = _pending_commits(fs, output)
    for name in names:
        _check_committed(fs, output, name.strip("/"), records, pending)


def _check_committed(fs: HadoopFS, output: str, name: str, records: dict, pending: list) -> None:
    path = join(output, name)
    stage = records.get(name, {}).get("stage") or producer(name)
    for journal in pending:
        if any(d == name or d.startswith(name + "/") for d in journal["datasets"]):
            raise InputError(
                f"{path} is part of an interrupted commit of stage {journal['stage']} "
                f"(run {journal['run_id']}); run any mfspark job on this output.path (it finishes "
                f"the commit first) or re-run {job_of(journal['stage'])}"
            )
    if not fs.exists(path):
        raise InputError(f"no {name} at {path}; run {job_of(stage)} with the same output.path first")
    record = records.get(name)
    if record is None:
        children = [n for n in fs.list_names(path, dirs_only=True) if not n.startswith((".", "_"))]
        if children and any(r.startswith(name + "/") for r in records):
            for child in children:
                _check_committed(fs, output, f"{name}/{child}", records, pending)
            return
        raise InputError(
            f"{path} was not committed by stage {stage} (manifest.json has no record of it); "
            f"re-run {job_of(stage)} with the same output.path"
        )
    if not fs.exists(join(path, SUCCESS)):
        raise InputError(
            f"{path} is incomplete (no {SUCCESS} marker); re-run {job_of(stage)} with the same "
            "output.path"
        )
    marker = _read_json(fs, join(path, COMMIT_MARKER)) or {}
    if marker.get("run_id") != record.get("run_id"):
        raise InputError(
            f"{path} is not the dataset manifest.json records (run {marker.get('run_id')} found, "
            f"{record.get('run_id')} committed): its commit did not finish; re-run {job_of(stage)} "
            "with the same output.path"
        )


# -- output path checks --------------------------------------------------------------------
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")
# File systems a plain PySpark install can open without extra jars or settings.
BUILTIN_SCHEMES = frozenset({"file", "hdfs", "viewfs", "har", "webhdfs", "swebhdfs", "ftp", "sftp"})
# Cloud stores: their connector jar comes with the cluster (or spark.jars.packages).
CONNECTOR_SCHEMES = frozenset(
    {
        "s3a",
        "s3",
        "s3n",
        "gs",
        "abfs",
        "abfss",
        "wasb",
        "wasbs",
        "adl",
        "oss",
        "cosn",
        "obs",
        "o3fs",
        "ofs",
        "jfs",
        "alluxio",
        "dbfs",
        "lakefs",
    }
)


def scheme_of(path: str) -> str | None:
    m = _SCHEME.match(path)
    return m.group(1).lower() if m else None


def local_path(path: str) -> str | None:
    """The local file name of ``path`` (plain or ``file:``), or None for another scheme."""
    scheme = scheme_of(path)
    if scheme is None:
        return path
    if scheme != "file":
        return None
    rest = path[len("file:") :]
    return "/" + rest.lstrip("/") if rest.startswith("//") else rest


def check_scheme(path: str, key: str, spark_conf: dict, error=InputError) -> None:
    """Before Spark: refuse a URI scheme no file system is known or configured for."""
    scheme = scheme_of(path)
    if scheme is None or scheme in BUILTIN_SCHEMES or scheme in CONNECTOR_SCHEMES:
        return
    if f"spark.hadoop.fs.{scheme}.impl" in spark_conf:
        return
    raise error(
        f"no file system for the scheme {scheme!r} of {key}={path}; use a local path, file://, "
        f'hdfs:// or s3a://, or set spark.conf."spark.hadoop.fs.{scheme}.impl" to its FileSystem '
        "class"
    )


def check_output_local(path: str, key: str = "output.path") -> None:
    """Refuse, before Spark starts, a local ``output.path`` that cannot be a writable directory."""
    if not path:
        raise ConfigError(f"{key} is empty; set it to a directory for the outputs")
    local = local_path(path)
    if local is None:
        return
    local = os.path.abspath(local)
    if os.path.exists(local) and not os.path.isdir(local):
        raise ConfigError(f"{key}={path} is a file, not a directory; choose another {key}")
    existing = local
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{key}={path} cannot be created: {existing} is a file; choose another {key}")
    try:  # os.access is not enough (root, ACLs, read-only mounts): try a file
        fd, probe = tempfile.mkstemp(prefix=".mfspark-write-check-", dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        what = "is not writable" if existing == local else f"cannot be created in {existing}"
        raise ConfigError(
            f"{key}={path} {what} ({exc.strerror}); choose a directory you can write to"
        ) from None


def check_output_spark(spark, path: str, key: str = "output.path") -> None:
    """With Spark: the output's file system exists here and the path is not a file."""
    fs = HadoopFS(spark)
    problem = fs.scheme_supported(path)
    if problem is not None:
        raise ConfigError(f"cannot open {key}={path}: {problem}; fix the URI or add its connector")
    if fs.is_file(path):
        raise ConfigError(f"{key}={path} is a file, not a directory; choose another {key}")


# -- manifest ------------------------------------------------------------------------------
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
    return _read_json(HadoopFS(spark), join(output, MANIFEST)) or {}


def _stage_entry(section: dict[str, Any], cfg=None) -> dict[str, Any]:
    entry = {"finished_at": _now(), **section}
    if cfg is not None:
        entry["config"] = cfg.to_dict()
    return entry


def _write_manifest(fs: HadoopFS, output: str, manifest: dict) -> None:
    fs.write_text(join(output, MANIFEST), json.dumps(manifest, indent=2, default=str))


def update_manifest(spark, output: str, stage: str, section: dict[str, Any], cfg=None) -> dict:
    """Record one stage's facts in ``manifest.json`` (other stages' entries are kept).

    A stage that can should pass its entry to :meth:`StagedWriter.manifest_entry` instead, so
    that it is written in the same step as the commit of its datasets.
    """
    fs = HadoopFS(spark)
    manifest = _read_json(fs, join(output, MANIFEST)) or {}
    manifest.setdefault("stages", {})[stage] = _stage_entry(section, cfg)
    manifest["versions"] = versions()
    _write_manifest(fs, output, manifest)
    return manifest
