"""Blocked ALS on Spark: the :class:`~mfspark.models.als.train.SideSolver` over a
:class:`~mfspark.blocks.spark.BlockStore`.

Each half-step broadcasts the fixed side's factors and biases (float32), solves every entity
of each block at once (:func:`mfspark.models.als.kernels.half_step`) and collects only the
solved factors. Item blocks also hold the test ratings of their items, so the masked test
error is computed where the new item factors are born.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from mfspark.blocks.rows import ITEM, USER, RatingRows
from mfspark.blocks.spark import BlockStore
from mfspark.errors import MfsparkError
from mfspark.models.als.kernels import half_step
from mfspark.models.als.train import ALSParams, SideOutcome
from mfspark.models.factors import squared_error
from mfspark.session import RESULT_OVERHEAD, RESULT_OVERHEAD_BYTES, parse_size

log = logging.getLogger(__name__)


def _solve_fn(global_mean: float, params: ALSParams):
    def solve(side: str, train: RatingRows, test: RatingRows, fixed) -> dict:
        fixed_factors, fixed_bias = fixed
        res = half_step(
            train,
            train.local(fixed_factors),
            train.local(fixed_bias),
            global_mean,
            params.reg,
            params.dtype,
            **params.kernel,
        )
        # Rows and counts are known to the driver since set-up: only what changes comes back.
        out = {
            "factors": res.factors,
            "bias": res.bias,
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
        return out

    return solve


class SparkBlockSolver:
    """ALS half-steps on cached Spark blocks (see the module docstring)."""

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
        self.params = params
        check_result_size(
            n_users, n_items, params.rank, spark.conf.get("spark.driver.maxResultSize", "1g")
        )
        self.store = BlockStore(
            spark,
            train,
            test,
            n_users,
            n_items,
            params.tile_width,
            num_user_blocks,
            num_item_blocks,
        )
        s = self.store
        self.n_users, self.n_items = n_users, n_items
        self.num_blocks = s.num_blocks
        self.n_train, self.n_test, self.global_mean = s.n_train, s.n_test, s.global_mean
        self.item_counts = s.item_counts
        self.setup_seconds = s.setup_seconds

    def solve(self, side: str, fixed_factors: np.ndarray, fixed_bias: np.ndarray) -> SideOutcome:
        started = time.perf_counter()
        fixed = (
            np.ascontiguousarray(fixed_factors, np.float32),
            np.ascontiguousarray(fixed_bias, np.float32),
        )
        parts = self.store.run(side, fixed, _solve_fn(self.global_mean, self.params))
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
        rows = self.store.rows_of(side, parts)
        return SideOutcome(
            rows=rows,
            factors=cat("factors", np.float32).reshape(-1, k),
            bias=cat("bias", np.float32),
            counts=self.store.counts[side][rows],
            sse=float(sum(p["sse"] for p in parts)),
            penalty=float(sum(p["penalty"] for p in parts)),
            test_sse=float(sum(p["test_sse"] for p in parts)),
            test_abs=float(sum(p["test_abs"] for p in parts)),
            test_n=int(sum(p["test_n"] for p in parts)),
        )

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SparkBlockSolver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def check_result_size(n_users: int, n_items: int, rank: int, max_result_size: str) -> None:
    """Fail before training when one half-step's results exceed ``spark.driver.maxResultSize``.

    A half-step collects the solved side's factors and biases: n x (rank + 1) float32 values,
    plus a little framing. ``0`` means unlimited.
    """
    limit = parse_size(max_result_size)
    if not limit:
        return
    for side, n in ((USER, n_users), (ITEM, n_items)):
        need = n * (rank + 1) * 4 * RESULT_OVERHEAD + RESULT_OVERHEAD_BYTES
        if need > limit:
            raise MfsparkError(
                f"one {side} half-step returns {n:,} x ({rank} factors + bias) floats = about "
                f"{need / 2**20:,.0f} MB to the driver, over spark.driver.maxResultSize="
                f"{max_result_size} ({limit / 2**20:,.0f} MB). Raise it (e.g. --set "
                f"spark.conf.spark.driver.maxResultSize={max(1, int(need * 2 / 2**30) + 1)}g, with "
                "driver memory to match) or lower als.rank"
            )
