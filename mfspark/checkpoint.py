"""Checkpoints of an iterative model's state, for resuming a killed training run.

Any iterative model (ALS, Bayesian MF) hands :class:`Checkpointer` its state as named numpy
arrays plus a JSON-able dict (iteration, history, scalars). A checkpoint is a directory
``<root>/iter-<NNNNNN>/`` holding one Parquet dataset per array (columns ``i``: the first
index, ``v``: the value, a list for the rows of a 2-D array) and ``metadata`` (one row:
``json``). It is written under ``<root>/_tmp-<uuid>/`` and renamed into place when complete,
then the older checkpoints are deleted: a kill at any moment leaves the last complete
checkpoint readable (a half-written one is never named ``iter-*``).

Each checkpoint records a *fingerprint*: the settings and data facts the state depends on.
Resuming with a fingerprint that differs is refused, naming the first difference.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from mfspark.errors import ConfigError
from mfspark.io import HadoopFS, join

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
_NAME = re.compile(r"iter-(\d{6,})$")
_METADATA = "metadata"


@dataclass
class Checkpoint:
    iteration: int
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]  # what the model stored besides arrays (history, scalars)
    fingerprint: dict[str, Any]
    path: str


def checkpoint_root(output: str, model: str) -> str:
    """Where ``model``'s checkpoints live under a run's ``output.path``."""
    return join(output, CHECKPOINTS_DIR, model)


def first_difference(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first key (sorted) whose value differs, as ``key: stored -> current``; None if equal."""
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if _canonical(a) != _canonical(b):
            return f"{key}: checkpoint {a!r}, now {b!r}"
    return None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class Checkpointer:
    """Save and load one model's checkpoints under ``root`` (any Hadoop-compatible path)."""

    def __init__(self, spark: SparkSession, root: str, fingerprint: dict[str, Any]):
        self.spark, self.root = spark, root
        # JSON round trip: what is compared on resume is exactly what was stored.
        self.fingerprint = json.loads(_canonical(fingerprint))
        self.fs = HadoopFS(spark)

    def _complete(self) -> list[tuple[int, str]]:
        found = []
        for path in self.fs.glob(join(self.root, "iter-*")):
            match = _NAME.search(path.rstrip("/"))
            if match and self.fs.exists(join(path, _METADATA, "_SUCCESS")):
                found.append((int(match.group(1)), path))
        return sorted(found)

    def save(self, iteration: int, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> str:
        """Write a checkpoint atomically; delete the older ones once it is in place."""
        tmp = join(self.root, f"_tmp-{uuid.uuid4().hex[:12]}")
        for name, arr in arrays.items():
            self.spark.createDataFrame(_to_table(np.asarray(arr))).coalesce(1).write.parquet(
                join(tmp, name)
            )
        meta = {
            "iteration": iteration,
            "arrays": {
                name: [str(np.asarray(a).dtype), list(np.shape(a))] for name, a in arrays.items()
            },
            "state": state,
            "fingerprint": self.fingerprint,
        }
        self.spark.createDataFrame(pa.table({"json": [json.dumps(meta, default=str)]})).coalesce(
            1
        ).write.parquet(join(tmp, _METADATA))
        final = join(self.root, f"iter-{iteration:06d}")
        self.fs.delete(final)  # a stale checkpoint of the same iteration (from an older run)
        self.fs.rename(tmp, final)
        for older, path in self._complete():
            if older != iteration:
                self.fs.delete(path)
        log.info("checkpoint saved: iteration %d at %s", iteration, final)
        return final

    def load(self) -> Checkpoint | None:
        """The latest complete checkpoint, or None when there is none."""
        complete = self._complete()
        if not complete:
            return None
        iteration, path = complete[-1]
        meta = json.loads(self.spark.read.parquet(join(path, _METADATA)).first()["json"])
        arrays = {}
        for name, (dtype, shape) in meta["arrays"].items():
            table = self.spark.read.parquet(join(path, name)).toArrow()
            arrays[name] = _from_table(table, np.dtype(dtype), tuple(shape))
        return Checkpoint(iteration, arrays, meta["state"], meta["fingerprint"], path)

    def check_compatible(self, checkpoint: Checkpoint) -> None:
        """Refuse (one line) a checkpoint made with other settings or other data."""
        diff = first_difference(checkpoint.fingerprint, self.fingerprint)
        if diff is not None:
            raise ConfigError(
                f"cannot resume from {checkpoint.path}: it was made with different settings or "
                f"data ({diff}); rerun without resume=true to start afresh"
            )

    def clear(self) -> None:
        """Delete every checkpoint of this model (complete or not)."""
        self.fs.delete(self.root)


def _to_table(arr: np.ndarray) -> pa.Table:
    """One array as (i, v): v is the row (list) of a 2-D array, the value of a 1-D one."""
    n = arr.shape[0] if arr.ndim else 1
    flat = arr if arr.ndim == 1 else np.ascontiguousarray(arr).reshape(n, int(np.prod(arr.shape[1:])))
    if arr.ndim == 1:
        values = pa.array(flat)
    else:
        k = flat.shape[1]
        values = pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), pa.array(flat.ravel())
        )
    return pa.table({"i": pa.array(np.arange(n, dtype=np.int64)), "v": values})


def _from_table(table: pa.Table, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    order = np.argsort(table.column("i").to_numpy())
    column = table.column("v").combine_chunks()
    if len(shape) == 1:
        values = column.to_numpy(zero_copy_only=False)
    else:
        width = int(np.prod(shape[1:]))
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, width)
    return np.asarray(values[order], dtype=dtype).reshape(shape)
