"""Blocked ALS on Spark: ratings partitioned once, the fixed side broadcast each half-step.

Set-up (once): the train ratings are hash-partitioned by user index into
``num_user_blocks`` partitions and by item index into ``num_item_blocks`` partitions, and each
partition is packed into one block of column-tiled CSR arrays
(:class:`mfspark.als.kernels.RatingRows`). The item blocks also carry the test ratings of
their items, so the masked test error is computed where the new item factors are born.

Where the blocks live: the task that packs a block saves its arrays as ``.npy`` files in the
executor's local Spark directory and returns a small *token* (block id, directory); the
tokens are cached, so Spark schedules every later task of that block on the executor that
holds its files (the cached token is there). A half-step's task memory-maps the arrays
(from the page cache: no copy, no deserialisation), where reading a cached 80 MB block back
from the JVM cost about 0.5 s per half-step at MovieLens-20M scale. Should a task run where
the files are not (an executor was lost, or the scheduler gave up on locality), that block
is solved from its packed form instead, rebuilt by Spark from the shuffle output: slower,
never wrong.

Each half-step: broadcast the fixed side's factors and biases (float32), solve every entity
of each block at once (:func:`mfspark.als.kernels.half_step`), collect only the solved
factors, destroy the broadcast. The ratings are never shuffled again.

Because a row's result depends only on its own ratings and the broadcast, the factors are
identical for any number of blocks or partitions.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
import uuid

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.als.kernels import RatingRows, half_step, squared_error, tile_width
from mfspark.als.train import ITEM, USER, ALSParams, SideOutcome
from mfspark.errors import MfsparkError

log = logging.getLogger(__name__)

# Arrow binary values use 32-bit offsets: a block's largest array must stay below 2 GiB.
MAX_BLOCK_ARRAY_BYTES = 2**31 - 1

BLOCK_ARRAYS = (
    ("rows", np.int32),
    ("train_indptr", np.int64),
    ("train_cols", np.int32),
    ("train_values", np.float32),
    ("test_indptr", np.int64),
    ("test_cols", np.int32),
    ("test_values", np.float32),
)
BLOCK_SCHEMA = T.StructType(
    [T.StructField("block", T.IntegerType(), False)]
    + [T.StructField(name, T.BinaryType(), False) for name, _ in BLOCK_ARRAYS]
    + [
        T.StructField("train_tile_width", T.LongType(), False),
        T.StructField("test_tile_width", T.LongType(), False),
    ]
)


def _binary(arr: np.ndarray) -> pa.Array:
    """A one-value Arrow binary array viewing ``arr``'s bytes (no copy)."""
    data = pa.py_buffer(np.ascontiguousarray(arr))
    if data.size > MAX_BLOCK_ARRAY_BYTES:
        raise MfsparkError(
            f"an ALS block holds {data.size / 2**30:.1f} GiB in one array (limit 2 GiB); "
            "raise als.num_user_blocks / als.num_item_blocks"
        )
    offsets = pa.py_buffer(np.array([0, data.size], dtype=np.int32))
    return pa.Array.from_buffers(pa.binary(), 1, [None, offsets, data])


def pack_block(block_id: int, train: RatingRows, test: RatingRows) -> pa.RecordBatch:
    arrays = [pa.array([block_id], pa.int32())]
    for arr in (train.rows, train.indptr, train.cols, train.values, test.indptr, test.cols, test.values):
        arrays.append(_binary(arr))
    arrays += [pa.array([train.tile_width], pa.int64()), pa.array([test.tile_width], pa.int64())]
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(_arrow_fields(BLOCK_SCHEMA)))


def _arrow_fields(schema: T.StructType) -> list[pa.Field]:
    kinds = {"int": pa.int32(), "bigint": pa.int64(), "binary": pa.binary(), "double": pa.float64()}
    return [pa.field(f.name, kinds[f.dataType.simpleString()], f.nullable) for f in schema.fields]


def _build_blocks_fn(row_col: str, col_col: str, width: int):
    def build(batches):
        from pyspark import TaskContext

        from mfspark.session import worker_single_thread

        worker_single_thread()
        parts = list(batches)
        if not parts or sum(b.num_rows for b in parts) == 0:
            return
        table = pa.Table.from_batches(parts)
        rows = table.column(row_col).to_numpy()
        cols = table.column(col_col).to_numpy()
        values = table.column(C.RATING).to_numpy()
        is_test = table.column("is_test").to_numpy(zero_copy_only=False)
        entities = np.unique(rows)
        train = RatingRows.from_coo(rows[~is_test], cols[~is_test], values[~is_test], entities, width)
        test = RatingRows.from_coo(rows[is_test], cols[is_test], values[is_test], entities)
        yield pack_block(TaskContext.get().partitionId(), train, test)

    return build


def build_blocks(
    train: DataFrame, test: DataFrame | None, row_col: str, col_col: str, num_blocks: int, width: int
):
    """Partition ratings by ``row_col`` into ``num_blocks`` blocks, one per partition.

    Returns an RDD of ``(block id, train RatingRows, test RatingRows)`` (not cached: see
    :func:`store_blocks`). The shuffle and packing run in Spark SQL + Arrow.
    """
    parts = [
        train.select(row_col, col_col, F.col(C.RATING).cast("float"), F.lit(False).alias("is_test"))
    ]
    if test is not None:
        parts.append(
            test.select(row_col, col_col, F.col(C.RATING).cast("float"), F.lit(True).alias("is_test"))
        )
    ratings = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    packed = ratings.repartition(num_blocks, row_col).mapInArrow(
        _build_blocks_fn(row_col, col_col, width), BLOCK_SCHEMA
    )
    return packed.rdd.map(_decode_row)


def _local_root() -> str:
    """The executor's first local Spark directory (what PySpark itself spills to)."""
    return os.environ.get("SPARK_LOCAL_DIRS", tempfile.gettempdir()).split(",")[0]


def _block_files(train: RatingRows, test: RatingRows) -> dict[str, np.ndarray]:
    return {
        "rows": train.rows,
        "train_indptr": train.indptr,
        "train_cols": train.cols,
        "train_values": train.values,
        "train_tile_width": np.array([train.tile_width]),
        "test_indptr": test.indptr,
        "test_cols": test.cols,
        "test_values": test.values,
        "test_tile_width": np.array([test.tile_width]),
    }


def _store_fn(run_id: str, side: str):
    def store(blocks):
        for block_id, train, test in blocks:
            directory = os.path.join(_local_root(), f"mfspark-als-{run_id}", f"{side}-{block_id}")
            staging = f"{directory}.tmp-{uuid.uuid4().hex[:8]}"
            os.makedirs(staging)
            for name, arr in _block_files(train, test).items():
                np.save(os.path.join(staging, f"{name}.npy"), np.ascontiguousarray(arr))
            shutil.rmtree(directory, ignore_errors=True)  # a recomputed block replaces its files
            os.replace(staging, directory)
            yield {"block": block_id, "dir": directory, "host": socket.gethostname()}

    return store


def open_block(directory: str) -> tuple[RatingRows, RatingRows] | None:
    """Memory-map a stored block; None when its files are not on this machine."""
    if not os.path.isdir(directory):
        return None
    a = {
        name: np.load(os.path.join(directory, f"{name}.npy"), mmap_mode="r")
        for name in (
            "rows",
            "train_indptr",
            "train_cols",
            "train_values",
            "test_indptr",
            "test_cols",
            "test_values",
        )
    }
    width = {
        side: int(np.load(os.path.join(directory, f"{side}_tile_width.npy"))[0])
        for side in ("train", "test")
    }
    train = RatingRows(a["rows"], a["train_indptr"], a["train_cols"], a["train_values"], width["train"])
    test = RatingRows(a["rows"], a["test_indptr"], a["test_cols"], a["test_values"], width["test"])
    return train, test


def _block_stats_fn():
    def stats(token: dict):
        block = open_block(token["dir"])
        if block is None:
            return None
        train, test = block
        return (
            np.array(train.rows),
            train.counts(),
            float(np.sum(train.values, dtype=np.float64)),
            test.nnz,
        )

    return stats


def _remove_fn():
    def remove(token: dict) -> None:
        shutil.rmtree(os.path.dirname(token["dir"]), ignore_errors=True)

    return remove


def _decode_row(row) -> tuple[int, RatingRows, RatingRows]:
    a = {name: np.frombuffer(row[name], dtype=dtype) for name, dtype in BLOCK_ARRAYS}
    n = len(a["rows"]) + 1
    train = RatingRows(
        a["rows"],
        a["train_indptr"].reshape(-1, n),
        a["train_cols"],
        a["train_values"],
        row["train_tile_width"],
    )
    test = RatingRows(
        a["rows"],
        a["test_indptr"].reshape(-1, n),
        a["test_cols"],
        a["test_values"],
        row["test_tile_width"],
    )
    return row["block"], train, test


def _solve_block(side: str, train: RatingRows, test: RatingRows, broadcast, global_mean, params) -> dict:
    from mfspark.session import worker_single_thread

    worker_single_thread()
    started = time.perf_counter()
    fixed_factors, fixed_bias = broadcast.value
    res = half_step(train, fixed_factors, fixed_bias, global_mean, params.reg, params.dtype)
    out = {
        "rows": res.rows,
        "factors": res.factors,
        "bias": res.bias,
        "counts": res.counts,
        "sse": res.sse,
        "penalty": res.penalty,
        "test_sse": 0.0,
        "test_abs": 0.0,
        "test_n": 0,
    }
    if side == ITEM and test.nnz:
        out["test_sse"], out["test_abs"], out["test_n"] = squared_error(
            global_mean, res.factors, res.bias, fixed_factors, fixed_bias, test, params.clip
        )
    out["seconds"] = time.perf_counter() - started
    return out


def _solve_stored_fn(side: str, broadcast, global_mean: float, params: ALSParams):
    def solve(token: dict) -> dict:
        block = open_block(token["dir"])
        if block is None:
            return {"missing": token["block"]}
        return _solve_block(side, *block, broadcast, global_mean, params)

    return solve


def _solve_packed_fn(side: str, broadcast, global_mean: float, params: ALSParams):
    def solve(blocks):
        for _, train, test in blocks:
            yield _solve_block(side, train, test, broadcast, global_mean, params)

    return solve


class SparkBlockSolver:
    """The :class:`~mfspark.als.train.SideSolver` over cached Spark blocks.

    ``train``/``test`` hold ``user_idx``, ``item_idx``, ``rating``; ``n_users``/``n_items``
    are the index sizes (entities without train ratings keep factor 0 and bias 0).
    """

    def __init__(
        self,
        spark: SparkSession,
        train: DataFrame,
        test: DataFrame | None,
        n_users: int,
        n_items: int,
        params: ALSParams,
        num_user_blocks: int = 0,
        num_item_blocks: int = 0,
    ):
        started = time.perf_counter()
        self.spark, self.params = spark, params
        self.n_users, self.n_items = n_users, n_items
        parallelism = spark.sparkContext.defaultParallelism
        self.num_blocks = {USER: num_user_blocks or parallelism, ITEM: num_item_blocks or parallelism}
        width = tile_width(params.rank)
        self.run_id = uuid.uuid4().hex[:12]
        self.blocks = {
            USER: build_blocks(train, None, C.USER_IDX, C.ITEM_IDX, self.num_blocks[USER], width),
            ITEM: build_blocks(train, test, C.ITEM_IDX, C.USER_IDX, self.num_blocks[ITEM], width),
        }
        # Pack every block once, store it on its executor and cache the token that points there.
        self.tokens = {
            side: blocks.mapPartitions(_store_fn(self.run_id, side)).persist(StorageLevel.MEMORY_ONLY)
            for side, blocks in self.blocks.items()
        }
        self.tokens[USER].count()
        # The item blocks also give μ, the item counts and n_test.
        per_block = self.tokens[ITEM].map(_block_stats_fn()).collect()
        if any(b is None for b in per_block):  # pragma: no cover - needs a lost executor
            per_block = self._stats_from_packed()
        self.item_counts = np.zeros(n_items, dtype=np.int64)
        for rows, counts, _, _ in per_block:
            self.item_counts[rows] = counts
        self.n_train = int(self.item_counts.sum())
        if not self.n_train:
            raise MfsparkError("the training set is empty; nothing to fit")
        self.global_mean = sum(b[2] for b in per_block) / self.n_train
        self.n_test = int(sum(b[3] for b in per_block))
        self.setup_seconds = time.perf_counter() - started
        log.info(
            "ALS blocks cached: %d user blocks, %d item blocks, %s train and %s test ratings, "
            "global mean %.4f (%.1f s)",
            self.num_blocks[USER],
            self.num_blocks[ITEM],
            f"{self.n_train:,}",
            f"{self.n_test:,}",
            self.global_mean,
            self.setup_seconds,
        )

    def solve(self, side: str, fixed_factors: np.ndarray, fixed_bias: np.ndarray) -> SideOutcome:
        started = time.perf_counter()
        sc = self.spark.sparkContext
        broadcast = sc.broadcast(
            (
                np.ascontiguousarray(fixed_factors, np.float32),
                np.ascontiguousarray(fixed_bias, np.float32),
            )
        )
        try:
            parts = (
                self.tokens[side]
                .map(_solve_stored_fn(side, broadcast, self.global_mean, self.params))
                .collect()
            )
            missing = [p["missing"] for p in parts if "missing" in p]
            if missing:
                log.warning(
                    "%s blocks %s ran away from their stored files; solving them from the packed "
                    "ratings instead (slower)",
                    side,
                    missing,
                )
                solve_packed = _solve_packed_fn(side, broadcast, self.global_mean, self.params)
                parts = [p for p in parts if "missing" not in p] + sc.runJob(
                    self.blocks[side], solve_packed, missing
                )
        finally:
            broadcast.destroy()
        log.debug(
            "%s half-step: %.2f s in Spark, blocks solved in %s s",
            side,
            time.perf_counter() - started,
            ", ".join(f"{p['seconds']:.2f}" for p in parts),
        )
        k = fixed_factors.shape[1]
        cat = lambda key, dtype: (  # noqa: E731
            np.concatenate([p[key] for p in parts]) if parts else np.empty(0, dtype)
        )
        return SideOutcome(
            rows=cat("rows", np.int32),
            factors=cat("factors", np.float32).reshape(-1, k),
            bias=cat("bias", np.float32),
            counts=cat("counts", np.int64),
            sse=float(sum(p["sse"] for p in parts)),
            penalty=float(sum(p["penalty"] for p in parts)),
            test_sse=float(sum(p["test_sse"] for p in parts)),
            test_abs=float(sum(p["test_abs"] for p in parts)),
            test_n=int(sum(p["test_n"] for p in parts)),
        )

    def _stats_from_packed(self) -> list:  # pragma: no cover - needs a lost executor
        def stats(blocks):
            for _, train, test in blocks:
                yield (
                    np.array(train.rows),
                    train.counts(),
                    float(np.sum(train.values, np.float64)),
                    test.nnz,
                )

        return self.blocks[ITEM].mapPartitions(stats).collect()

    def close(self) -> None:
        """Delete the stored blocks and drop the cached tokens."""
        for tokens in self.tokens.values():
            try:
                tokens.foreach(_remove_fn())
            finally:
                tokens.unpersist()


def check_broadcast_size(n_users: int, n_items: int, rank: int, limit_mb: float) -> None:
    """Fail before training when a side's factors are too large to broadcast."""
    for side, n in ((USER, n_users), (ITEM, n_items)):
        mb = n * (rank + 1) * 4 / 2**20
        if mb > limit_mb:
            raise MfsparkError(
                f"the {side} side's factors are {n:,} x {rank} floats + biases = {mb:,.0f} MB, "
                f"over als.max_broadcast_mb={limit_mb:g}: every executor holds a copy each "
                "half-step. Lower als.rank, or give executors more memory and raise "
                "als.max_broadcast_mb"
            )
