"""Bayesian MF on Spark: the :class:`~mfspark.models.bpmf.sampler.SideSampler` over the same
cached rating blocks as ALS (:class:`mfspark.blocks.spark.BlockStore`).

Each side's pass broadcasts the fixed side's current sample (float32), the side's drawn
hyper-parameters and α; every block draws all its rows at once
(:func:`mfspark.models.bpmf.kernels.draw_rows`) and returns only the new rows, their
per-row squared errors and — item blocks — r̂ of their test ratings, in the block's storage
order. The first item pass also returns the test ratings' coordinates, so the driver keeps
the running sums of the test predictions in arrays of n_test numbers (blocks ordered by their
first item; each block's order is fixed for the fit). Keeping the sums next to the stored
blocks on the executors instead would save that traffic but lose them with an executor;
O(n_test) on the driver is the simple, always-correct choice.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from mfspark.blocks.rows import ITEM, RatingRows, tile_width
from mfspark.blocks.spark import BlockStore
from mfspark.errors import MfsparkError
from mfspark.models.bpmf.kernels import Hyper, draw_rows
from mfspark.models.bpmf.sampler import (
    BPMFParams,
    SideOutcome,
    block_predictions,
    block_test_ratings,
)

log = logging.getLogger(__name__)


def _draw_fn(global_mean: float, params: BPMFParams):
    def draw(side: str, train: RatingRows, test: RatingRows, payload) -> dict:
        fixed_factors, fixed_bias, mean, precision, alpha, sweep, with_coords = payload
        try:
            res = draw_rows(
                train,
                train.local(fixed_factors),
                train.local(fixed_bias),
                global_mean,
                Hyper(mean, precision),
                alpha,
                params.seed,
                sweep,
                side,
                params.dtype,
            )
        except MfsparkError as exc:  # reported by the driver as one line
            return {"error": str(exc), "rows": np.asarray(train.rows)}
        out = {
            "rows": res.rows,
            "factors": res.factors,
            "bias": res.bias,
            "counts": res.counts,
            "row_sse": res.row_sse,
        }
        if side == ITEM:
            out["test_pred"] = block_predictions(global_mean, res, fixed_factors, fixed_bias, test)
            if with_coords:
                out["test"] = block_test_ratings(test)
        return out

    return draw


class SparkBlockSampler:
    """Gibbs passes on cached Spark blocks (see the module docstring)."""

    def __init__(
        self,
        spark: SparkSession,
        train: DataFrame,
        test: DataFrame | None,
        n_users: int,
        n_items: int,
        params: BPMFParams,
        num_user_blocks: int = 0,
        num_item_blocks: int = 0,
    ):
        self.params = params
        self.store = BlockStore(
            spark,
            train,
            test,
            n_users,
            n_items,
            tile_width(params.rank),
            num_user_blocks,
            num_item_blocks,
        )
        s = self.store
        self.n_users, self.n_items = n_users, n_items
        self.n_train, self.n_test, self.global_mean = s.n_train, s.n_test, s.global_mean
        self.counts = s.counts
        self.setup_seconds = s.setup_seconds
        self._test = None

    def draw(self, side, fixed_factors, fixed_bias, hyper: Hyper, alpha, sweep) -> SideOutcome:
        started = time.perf_counter()
        payload = (
            np.ascontiguousarray(fixed_factors, np.float32),
            np.ascontiguousarray(fixed_bias, np.float32),
            hyper.mean,
            hyper.precision,
            float(alpha),
            int(sweep),
            side == ITEM and self._test is None,
        )
        parts = self.store.run(side, payload, _draw_fn(self.global_mean, self.params))
        failed = [p for p in parts if "error" in p]
        if failed:
            raise MfsparkError(min(p["error"] for p in failed))
        parts.sort(key=lambda p: int(p["rows"][0]))  # a fixed order: blocks by first entity
        log.debug(
            "%s pass: %.2f s in Spark, blocks drawn in %s s",
            side,
            time.perf_counter() - started,
            ", ".join(f"{p['seconds']:.2f}" for p in parts),
        )
        k = fixed_factors.shape[1]

        def cat(key, dtype):
            return np.concatenate([p[key] for p in parts]) if parts else np.empty(0, dtype)

        out = SideOutcome(
            rows=cat("rows", np.int32),
            factors=cat("factors", np.float32).reshape(-1, k),
            bias=cat("bias", np.float32),
            counts=cat("counts", np.int64),
            row_sse=cat("row_sse", np.float64),
        )
        if side == ITEM:
            out.test_pred = cat("test_pred", np.float64)
            if self._test is None:
                self._test = tuple(np.concatenate([p["test"][i] for p in parts]) for i in range(3))
        return out

    def test_ratings(self):
        return self._test

    def close(self) -> None:
        self.store.close()
