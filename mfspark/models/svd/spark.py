"""The truncated SVD's operator on Spark: the per-block functions of
:mod:`mfspark.models.svd.train` run over a :class:`~mfspark.blocks.spark.BlockStore`.

Each pass broadcasts the biases and one dense (entities × l) matrix, runs the block function on
every block of one side and collects only that side's (rows × l) result; the ratings stay in
their blocks.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from mfspark.blocks.rows import tile_width
from mfspark.blocks.spark import BlockStore


class SparkOperator:
    def __init__(
        self,
        spark: SparkSession,
        train: DataFrame,
        test: DataFrame | None,
        n_users: int,
        n_items: int,
        width: int,
        num_user_blocks: int = 0,
        num_item_blocks: int = 0,
    ):
        # The operator's products are width-wide CSR × dense ones: cache-sized column tiles,
        # whichever Gram strategy ALS would pick at this width.
        self.store = BlockStore(
            spark,
            train,
            test,
            n_users,
            n_items,
            tile_width(width, "sparse"),
            num_user_blocks,
            num_item_blocks,
        )
        self.n_users, self.n_items = n_users, n_items
        self.global_mean = self.store.global_mean
        self.n_train, self.n_test = self.store.n_train, self.store.n_test
        self.setup_seconds = self.store.setup_seconds

    def run(self, side: str, payload, block_fn) -> list[dict]:
        return self.store.run(side, payload, block_fn)

    def close(self) -> None:
        self.store.close()
