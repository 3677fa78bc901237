"""Bayesian MF on Spark: the Gibbs loop (:func:`mfspark.models.bpmf.sampler.run_gibbs`) over
the same cached rating blocks as ALS (:class:`mfspark.blocks.spark.BlockStore`), with the same
two ways to give a pass the fixed side (``bpmf.exchange``, chosen as for ALS):

* ``broadcast`` (:class:`~mfspark.models.bpmf.sampler.DriverChain`): each side's pass
  broadcasts the fixed side's current sample (float32), the side's drawn hyper-parameters and
  α; every block draws all its rows at once (:func:`mfspark.models.bpmf.kernels.draw_rows`) and
  returns its new rows, the exact statistics of them and its exact squared error, and — item
  blocks — r̂ of their test ratings in the block's storage order. The driver keeps the chain:
  both sides' samples, the running sums of the posterior mean and of the test predictions
  (O(n_test) numbers; the first item pass also returns the test ratings' coordinates, blocks
  ordered by their first item).
* ``partitioned`` (:class:`DistributedChain`): the chain stays on the executors as one state
  per block — its current sample, its running sums and, item blocks, the running sums of its
  test predictions — and each pass ships every block only the fixed rows it rates
  (:meth:`~mfspark.blocks.spark.BlockStore.step`). The driver receives per-block sums only:
  the exact statistics that the next hyper-parameters are drawn from, the squared errors; it
  gathers whole samples block by block for the saved samples and, at the end, the posterior
  mean and test predictions.

Every sum that feeds a draw is exact (:class:`mfspark.exactsum.ExactSum`) and every row draw
is keyed by (seed, sweep, side, entity), so both give the same chain, bit for bit, for any
number of blocks.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from mfspark.blocks.rows import ITEM, USER, RatingRows, tile_width
from mfspark.blocks.spark import BlockStore, exchanged_block_fn, factor_fields, state_records
from mfspark.errors import MfsparkError
from mfspark.exactsum import ExactSum, exact_total
from mfspark.models.bpmf.kernels import Hyper, SideDraw, SideStats, draw_rows, side_statistics
from mfspark.models.bpmf.sampler import (
    BPMFParams,
    BPMFResult,
    DriverChain,
    PassResult,
    Sample,
    SideOutcome,
    block_outcome,
    block_predictions,
    block_test_ratings,
    initial_sample,
    posterior_mean,
    predictive,
    test_estimate,
)

log = logging.getLogger(__name__)


def _draw_fn(global_mean: float, params: BPMFParams):
    def draw(side: str, train: RatingRows, test: RatingRows, payload) -> dict:
        fixed_factors, fixed_bias, mean, precision, alpha, sweep, with_coords = payload
        local_f, local_b = train.local(fixed_factors), train.local(fixed_bias)
        try:
            res = draw_rows(
                train,
                local_f,
                local_b,
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
        out = block_outcome(res).__dict__
        if side == ITEM:
            out["test_pred"] = block_predictions(global_mean, res, local_f, local_b, test)
            if with_coords:
                out["test"] = block_test_ratings(test)
        return out

    return draw


#: A block state's entries that travel to the block's next pass: the running sums.
CARRY = ("sum_f", "sum_b", "test_sum", "test_sq")

#: What the driver receives of a block's state after a partitioned pass.
SUMMARY = ("stats", "sse", "test_sse", "test_n", "error", "seconds", "received")


def _summary(state: dict) -> dict:
    return {k: state[k] for k in SUMMARY if k in state}


def _state(draw, test_n: int, previous) -> dict:
    """A block's state around its new sample ``draw``, with the running sums carried over
    (zeros at the first pass)."""
    n, k = draw.factors.shape
    out = block_outcome(draw)
    prev = previous or {}
    return {
        "rows": np.asarray(draw.rows, np.int32),
        "counts": np.asarray(draw.counts),
        "factors": draw.factors,
        "bias": draw.bias,
        "stats": out.stats,
        "sse": out.sse,
        "sum_f": prev.get("sum_f", np.zeros((n, k))),
        "sum_b": prev.get("sum_b", np.zeros(n)),
        "test_sum": prev.get("test_sum", np.zeros(test_n)),
        "test_sq": prev.get("test_sq", np.zeros(test_n)),
        "test_sse": ExactSum(),
        "test_n": 0,
    }


def _exchange_draw_fn(global_mean, params: BPMFParams, hyper: Hyper, alpha, sweep, kept, n_kept):
    """Block function of a partitioned pass: draw the block's rows given the shipped fixed
    rows; add the new sample (and its test predictions) to the carried sums when ``kept``."""

    def draw(side: str, train: RatingRows, test: RatingRows, local: dict, previous) -> dict:
        try:
            res = draw_rows(
                train,
                local["factors"],
                local["bias"],
                global_mean,
                hyper,
                alpha,
                params.seed,
                sweep,
                side,
                params.dtype,
            )
        except MfsparkError as exc:
            res = SideDraw(
                np.asarray(train.rows),
                np.zeros((train.n_rows, params.rank), params.dtype),
                np.zeros(train.n_rows, params.dtype),
                train.counts(),
                np.zeros(train.n_rows),
            )
            state = _state(res, 0, None)
            state["error"] = str(exc)
            return state
        state = _state(res, test.nnz if side == ITEM else 0, previous)
        if kept:
            state["sum_f"] = state["sum_f"] + res.factors
            state["sum_b"] = state["sum_b"] + res.bias
        if side == ITEM and test.nnz:
            pred = block_predictions(global_mean, res, local["factors"], local["bias"], test)
            current = test_estimate(pred, state["test_sum"], state["test_sq"], kept, n_kept, params.clip)
            state["test_sse"] = ExactSum.of((current - np.asarray(test.values, np.float64)) ** 2)
            state["test_n"] = test.nnz
        return state

    return draw


def _initial_fn(params: BPMFParams):
    """``make_state`` of the first step (items): the seeded initial sample of an item block."""

    def initial(token: dict, messages, previous) -> dict:
        rows, counts = np.asarray(token["rows"], np.int64), np.asarray(token["counts"])
        factors, bias = initial_sample(params.seed, rows, counts, ITEM, params)
        draw = SideDraw(rows, factors.astype(params.dtype), bias, counts, np.zeros(len(rows)))
        return _state(draw, 0, None)

    return initial


def _initial_stats_fn(params: BPMFParams):
    """Block function: the statistics of a block's seeded initial sample."""

    def stats(side: str, train: RatingRows, test: RatingRows, payload) -> dict:
        rows, counts = np.asarray(train.rows, np.int64), train.counts()
        factors, bias = initial_sample(params.seed, rows, counts, side, params)
        return {"stats": side_statistics(factors.astype(params.dtype), bias, counts)}

    return stats


def _test_coordinates(side: str, train: RatingRows, test: RatingRows, payload) -> dict:
    return {"test": block_test_ratings(test)}


def _total(parts: list[dict], key: str):
    """The sum of the blocks' ``key`` (exact sums or statistics)."""
    return exact_total(p[key] for p in parts)


def _raise_errors(parts: list[dict]) -> None:
    failed = [p["error"] for p in parts if "error" in p]
    if failed:
        raise MfsparkError(min(failed))


class DistributedChain:
    """The chain's state on the executors, one state per block (module docstring)."""

    def __init__(self, sampler: SparkBlockSampler, params: BPMFParams):
        self.s, self.params = sampler, params
        self.fields = factor_fields(params.rank)
        self.states = {USER: None, ITEM: None}
        self.outgoing = None

    def _step(self, side, make_state, carry=CARRY) -> list[dict]:
        started = time.perf_counter()
        states, outgoing, parts = self.s.store.step(
            side, self.outgoing, tuple(self.fields), make_state, _summary, carry
        )
        old, self.states[side], self.outgoing = self.states[side], states, outgoing
        if old is not None:
            old.unpersist()
        _raise_errors(parts)
        log.debug(
            "%s pass (partitioned): %.2f s in Spark, %s fixed rows shipped",
            side,
            time.perf_counter() - started,
            f"{sum(p['received'] for p in parts):,}",
        )
        return parts

    def start(self) -> dict[str, SideStats]:
        items = self._step(ITEM, _initial_fn(self.params), carry=())  # no sums yet
        users = self.s.store.run(USER, None, _initial_stats_fn(self.params))
        return {USER: _total(users, "stats"), ITEM: _total(items, "stats")}

    def draw(self, side, hyper, alpha, sweep, kept, n_kept) -> PassResult:
        block_fn = _exchange_draw_fn(
            self.s.global_mean, self.params, hyper, float(alpha), int(sweep), kept, n_kept
        )
        parts = self._step(side, exchanged_block_fn(self.fields, block_fn))
        return PassResult(
            _total(parts, "stats"),
            _total(parts, "sse").value(),
            _total(parts, "test_sse").value(),
            int(sum(p["test_n"] for p in parts)),
        )

    def _gather(self, side: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Per-entity arrays of ``side`` from its block states (entities in no block: 0)."""
        n = self.s.n_users if side == USER else self.s.n_items
        out = {}
        for r in state_records(self.states[side]):
            rows = np.asarray(r["rows"], np.int64)
            for name in names:
                value = np.asarray(r[name])
                if name not in out:
                    out[name] = np.zeros((n, *value.shape[1:]), value.dtype)
                out[name][rows] = value
        return out

    def sample(self, sweep: int, alpha: float) -> Sample:
        u, v = (self._gather(side, ("factors", "bias")) for side in (USER, ITEM))
        return Sample(sweep, u["factors"], u["bias"], v["factors"], v["bias"], alpha)

    def finish(self, n_kept: int, noise_variance: float) -> BPMFResult:
        names = ("sum_f", "sum_b", "counts")
        u, v = (self._gather(side, names) for side in (USER, ITEM))
        counts = {USER: u["counts"].astype(np.int64), ITEM: v["counts"].astype(np.int64)}
        scale = 1.0 / max(n_kept, 1)
        mean = posterior_mean(
            self.s.global_mean, scale, u["sum_f"], u["sum_b"], v["sum_f"], v["sum_b"], counts
        )
        result = BPMFResult(mean, [], [], n_kept, noise_variance)
        if self.s.n_test:
            # test sums and coordinates of each item block, both in the block's storage order
            sums = {r["block"]: (r["test_sum"], r["test_sq"]) for r in state_records(self.states[ITEM])}
            coords = self.s.store.run(ITEM, None, _test_coordinates)
            coords.sort(key=lambda p: p["block"])
            result.test_users, result.test_items, result.test_ratings = (
                np.concatenate([p["test"][i] for p in coords]) for i in range(3)
            )
            total = np.concatenate([sums[p["block"]][0] for p in coords])
            total_sq = np.concatenate([sums[p["block"]][1] for p in coords])
            result.test_mean, result.test_sd = predictive(
                total, total_sq, n_kept, noise_variance, self.params.clip
            )
        return result

    def close(self) -> None:
        for rdd in self.states.values():
            if rdd is not None:
                rdd.unpersist()


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
        exchange: str = "broadcast",
    ):
        if exchange not in ("broadcast", "partitioned"):
            raise ValueError(f"exchange must be broadcast or partitioned, got {exchange!r}")
        self.params, self.exchange = params, exchange
        self.store = BlockStore(
            spark,
            train,
            test,
            n_users,
            n_items,
            tile_width(params.rank),
            num_user_blocks,
            num_item_blocks,
            per_entity=exchange == "broadcast",
        )
        s = self.store
        self.n_users, self.n_items = n_users, n_items
        self.n_train, self.n_test, self.global_mean = s.n_train, s.n_test, s.global_mean
        self.counts = s.counts
        self.setup_seconds = s.setup_seconds
        self._test = None

    def chain(self, params: BPMFParams):
        return (
            DriverChain(self, params) if self.exchange == "broadcast" else DistributedChain(self, params)
        )

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
        _raise_errors(parts)
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
            stats=_total(parts, "stats"),
            sse=_total(parts, "sse"),
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
