"""AutoRec on Spark: synchronous data-parallel full-batch training over cached row blocks.

Set-up (once): the ``ae_inputs/by_item`` (or ``by_user``) rows are range-partitioned by row
idx into ``num_partitions`` partitions; inside each, a vectorised Arrow function cuts the
rows into :class:`~mfspark.models.autorec.network.RowBlock` s (CSR matrices of a few hundred
thousand to a million cells, the validation share of the train cells split off by a keyed
hash) and the RDD of blocks is cached in executor memory. Parquet is read once, and no
rating ever goes to the driver.

Each evaluation of J and ∇J (one per optimiser iteration; an L-BFGS line search may add a
few): θ is broadcast; every partition runs the numpy kernel
(:func:`~mfspark.models.autorec.network.block_totals`) over its blocks and sums their losses,
error sums and gradients; the per-partition gradients are then added *on the executors*, as a
reduce-scatter: each partition cuts its gradient into ``chunks`` slices of at most
``CHUNK_BYTES``, one shuffle brings slice c of every partition to reducer c, which adds them in
partition order (so the sum does not depend on the order the shuffle delivers them), and the
driver receives each summed slice once: exactly one gradient's bytes, whatever the number of
partitions (a ``treeReduce`` would send it about √partitions whole gradients, over
``spark.driver.maxResultSize`` at the MovieLens-20M shape already with two). The broadcast is
destroyed; the optimiser step (L-BFGS or Rprop) runs on the driver.

Memory: with |θ| = 2·N·h + h + N (N the row width, e.g. 138,493 users for the items of
MovieLens-20M, h = 500: 138.6 M values, 554 MB in float32), a task holds the broadcast θ,
one gradient accumulator and its blocks (≈ 3·|θ| + the blocks); a reducer holds one slice
per partition; the driver holds the optimiser's state (see
:mod:`mfspark.models.autorec.optim`) and the one incoming gradient. Results depend only on the
seed and on the partitioning through the order in which floating-point sums are added.
"""

from __future__ import annotations

import logging
import pickle
import time

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.models.autorec.network import BlockTotals, Shape, block_totals, predict_cells
from mfspark.models.autorec.train import AutoRecParams, blocks_from_table

log = logging.getLogger(__name__)

BLOCK_SCHEMA = T.StructType([T.StructField("block", T.BinaryType(), False)])
INPUT_COLUMNS = (C.TRAIN_INDICES, C.TRAIN_VALUES, C.TEST_INDICES, C.TEST_VALUES)


def _encode_blocks_fn(orientation: str, width: int, params: AutoRecParams):
    """mapInArrow function: Arrow batches of rows → one pickled RowBlock per output row."""
    out_schema = pa.schema([pa.field("block", pa.binary(), False)])

    def encode(batches):
        from mfspark.session import worker_single_thread

        worker_single_thread()
        for batch in batches:
            if batch.num_rows == 0:
                continue
            for block in blocks_from_table(pa.Table.from_batches([batch]), orientation, width, params):
                blob = pickle.dumps(block, protocol=pickle.HIGHEST_PROTOCOL)
                yield pa.RecordBatch.from_arrays([pa.array([blob], pa.binary())], schema=out_schema)

    return encode


def _partition_totals_fn(bc, shape: Shape, params: AutoRecParams, iteration: int, with_gradient: bool):
    def run(blocks):
        from mfspark.session import worker_single_thread

        worker_single_thread()
        theta = bc.value
        grad = np.zeros(shape.size, dtype=theta.dtype) if with_gradient else None
        total = BlockTotals()
        for block in blocks:
            t = block_totals(
                theta,
                shape,
                block,
                params.activation,
                gradient_out=grad,
                dropout=params.input_dropout,
                seed=params.seed,
                iteration=iteration,
                clip=params.clip,
            )
            t.gradient = None
            total.add(t)
        total.gradient = grad
        yield total

    return run


#: Largest slice of a gradient one reducer adds up (see the module docstring).
CHUNK_BYTES = 64 << 20


def gradient_chunks(size: int, itemsize: int) -> np.ndarray:
    """Bounds of the slices a gradient of ``size`` values is cut into for the reduce."""
    chunks = max(1, -(-size * itemsize // CHUNK_BYTES))
    return np.linspace(0, size, chunks + 1).round().astype(np.int64)


def _scatter_fn(bounds: np.ndarray):
    """Partition p's totals → (-1, (p, stats)) and (c, (p, slice c of its gradient))."""

    def scatter(p: int, totals):
        for t in totals:
            grad, t.gradient = t.gradient, None
            yield -1, (p, t)
            for c in range(len(bounds) - 1):
                yield c, (p, grad[bounds[c] : bounds[c + 1]])

    return scatter


def _sum_in_partition_order(records):
    """Reducer: add each key's values in the order of the partition they came from."""
    by_key: dict[int, list] = {}
    for key, value in records:
        by_key.setdefault(key, []).append(value)
    for key, values in by_key.items():
        values.sort(key=lambda pv: pv[0])
        if key < 0:
            total = BlockTotals()
            for _, t in values:
                total.add(t)
        else:
            total = np.array(values[0][1])
            for _, part in values[1:]:
                total += part
        yield key, total


def _add(a: BlockTotals, b: BlockTotals) -> BlockTotals:
    return a.add(b)


class SparkEvaluator:
    """Blocks of ``ae_inputs`` rows cached on the executors; J and ∇J by broadcast + treeReduce."""

    def __init__(
        self,
        spark: SparkSession,
        rows: DataFrame,
        orientation: str,
        width: int,
        params: AutoRecParams,
        num_partitions: int,
        depth: int = 2,
    ):
        started = time.time()
        self.spark, self.shape, self.params, self.depth = (
            spark,
            Shape(width, params.hidden),
            params,
            depth,
        )
        row_idx = C.AE_ROW_KEYS[orientation][1]
        self.num_partitions = max(1, num_partitions)
        encoded = (
            rows.select(row_idx, *INPUT_COLUMNS)
            .repartitionByRange(self.num_partitions, row_idx)
            .sortWithinPartitions(row_idx)
            .mapInArrow(_encode_blocks_fn(orientation, width, params), BLOCK_SCHEMA)
        )
        self.blocks = encoded.rdd.map(lambda row: pickle.loads(row[0])).persist(
            StorageLevel.MEMORY_AND_DISK
        )
        counts = self.blocks.map(
            lambda b: np.array([1, b.n_rows, b.inputs.nnz, b.validation.nnz, b.test.nnz], np.int64)
        ).fold(np.zeros(5, np.int64), lambda x, y: x + y)
        self.n_blocks, self.n_rows, self.n_train, self.n_validation, self.n_test = (
            int(v) for v in counts
        )
        self.setup_seconds = time.time() - started
        log.info(
            "AutoRec blocks: %d rows in %d blocks over %d partitions; %s training, %s validation, "
            "%s test cells; %.1f s",
            self.n_rows,
            self.n_blocks,
            self.blocks.getNumPartitions(),
            f"{self.n_train:,}",
            f"{self.n_validation:,}",
            f"{self.n_test:,}",
            self.setup_seconds,
        )

    def totals(self, theta: np.ndarray, iteration: int, with_gradient: bool) -> BlockTotals:
        sc = self.spark.sparkContext
        bc = sc.broadcast(theta)
        try:
            fn = _partition_totals_fn(bc, self.shape, self.params, iteration, with_gradient)
            partials = self.blocks.mapPartitions(fn)
            if not with_gradient:  # a few numbers per partition
                return partials.treeReduce(_add, self.depth)
            bounds = gradient_chunks(self.shape.size, np.dtype(theta.dtype).itemsize)
            reducers = len(bounds)  # one per slice, plus the stats (key -1) on the last
            summed = dict(
                partials.mapPartitionsWithIndex(_scatter_fn(bounds))
                .partitionBy(reducers, lambda key: key % reducers)
                .mapPartitions(_sum_in_partition_order)
                .collect()
            )
            total = summed.pop(-1)
            total.gradient = np.concatenate([summed[c] for c in range(reducers - 1)])
            return total
        finally:
            bc.destroy()

    def close(self) -> None:
        self.blocks.unpersist()


def predict_test_cells(
    rows: DataFrame, orientation: str, theta: np.ndarray, shape: Shape, params: AutoRecParams
):
    """Long predictions (``user_idx``, ``item_idx``, ``prediction``) at the test cells of
    ``rows`` (``ae_inputs``), computed where the rows are, from the same input cells the network
    was trained on. Rows without test cells produce nothing. Returns (DataFrame, broadcast of
    θ): destroy the broadcast once the DataFrame has been written."""
    row_idx = C.AE_ROW_KEYS[orientation][1]
    col_idx = C.AE_COLUMN_IDX[orientation]
    bc = rows.sparkSession.sparkContext.broadcast(theta)
    schema = T.StructType(
        [
            T.StructField(row_idx, T.IntegerType(), False),
            T.StructField(col_idx, T.IntegerType(), False),
            T.StructField(C.PREDICTION, T.DoubleType(), False),
        ]
    )
    width = shape.width

    def predict(batches):
        from mfspark.session import worker_single_thread

        worker_single_thread()
        weights = bc.value
        for batch in batches:
            for block in blocks_from_table(pa.Table.from_batches([batch]), orientation, width, params):
                test = block.test
                if test.nnz == 0:
                    continue
                pred = predict_cells(weights, shape, block.inputs, test, params.activation, params.clip)
                rows_of = np.repeat(block.row_idx, np.diff(test.indptr)).astype(np.int32)
                yield pa.RecordBatch.from_arrays(
                    [pa.array(rows_of), pa.array(test.indices.astype(np.int32)), pa.array(pred)],
                    names=[row_idx, col_idx, C.PREDICTION],
                )

    cells = rows.where(F.col(C.N_TEST) > 0).select(row_idx, *INPUT_COLUMNS).mapInArrow(predict, schema)
    return cells, bc
