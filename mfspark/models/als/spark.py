"""Blocked ALS on Spark: the :class:`~mfspark.models.als.train.SideSolver` over a
:class:`~mfspark.blocks.spark.BlockStore`.

Two ways to give a half-step the fixed side (``als.exchange``, chosen by :func:`choose_exchange`):

* ``broadcast``: the driver broadcasts the fixed side's factors and biases (float32), every block
  takes the rows its columns address, solves every entity at once
  (:func:`mfspark.models.als.kernels.half_step`), and the driver collects the solved factors;
* ``partitioned``: the factors stay on the executors as one cached state per block
  (:class:`DistributedState`); each half-step ships every block only the fixed rows it rates
  (:meth:`~mfspark.blocks.spark.BlockStore.step`) and collects only sums (error, penalty).
  The fitted model is brought to the driver at the end one block per job.

Both run the same kernel on the same numbers, so they give bit-identical factors. Item blocks
also hold the test ratings of their items, so the masked test error is computed where the new
item factors are born.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from mfspark.blocks.random import seeded_normal
from mfspark.blocks.rows import ITEM, USER, RatingRows
from mfspark.blocks.spark import BlockStore, exchanged_block_fn, factor_fields, state_records
from mfspark.errors import MfsparkError
from mfspark.models.als.kernels import half_step
from mfspark.models.als.train import ALSParams, ALSState, SideOutcome
from mfspark.models.factors import BiasedMF, squared_error
from mfspark.session import RESULT_OVERHEAD, RESULT_OVERHEAD_BYTES, parse_size

log = logging.getLogger(__name__)


def _solve_block(global_mean: float, params: ALSParams, side, train, test, fixed_f, fixed_b):
    """Solve one block given the fixed side's rows aligned with its columns (local arrays)."""
    res = half_step(train, fixed_f, fixed_b, global_mean, params.reg, params.dtype, **params.kernel)
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
            global_mean, res.factors, res.bias, fixed_f, fixed_b, test, params.clip
        )
    return out, res


def _broadcast_solve_fn(global_mean: float, params: ALSParams):
    """Block function of a broadcast pass: the whole fixed side arrives; take the block's rows."""

    def solve(side: str, train: RatingRows, test: RatingRows, fixed) -> dict:
        fixed_factors, fixed_bias = fixed
        local = train.local(fixed_factors), train.local(fixed_bias)
        # Rows and counts are known to the driver since set-up: only what changes comes back.
        return _solve_block(global_mean, params, side, train, test, *local)[0]

    return solve


def _exchange_solve_fn(global_mean: float, params: ALSParams):
    """Block function of a partitioned pass: the block's rows of the fixed side were shipped;
    the result stays on the executor as the block's state (rows, counts and all)."""

    def solve(side: str, train: RatingRows, test: RatingRows, local: dict, previous) -> dict:
        out, res = _solve_block(global_mean, params, side, train, test, local["factors"], local["bias"])
        out.update(rows=np.asarray(res.rows), counts=res.counts)
        return out

    return solve


def _initial_items_fn(params: ALSParams):
    """``make_state`` of the first step: an item block's seeded factors (as ``ALSState.initial``)."""

    def initial(token: dict, messages, previous) -> dict:
        rows = np.asarray(token["rows"], dtype=np.int64)
        factors = seeded_normal(params.seed, rows, params.rank, params.init_std).astype(params.dtype)
        bias = np.zeros(len(rows), dtype=params.dtype)
        counts = np.asarray(token["counts"])
        return {
            "rows": rows.astype(np.int32),
            "factors": factors,
            "bias": bias,
            "counts": counts,
            "penalty": params.reg.penalty(factors, bias, counts),
        }

    return initial


#: What the driver receives of a block's state after a partitioned step.
STATS = ("sse", "penalty", "test_sse", "test_abs", "test_n", "seconds", "received")


def _summary(state: dict) -> dict:
    return {k: state[k] for k in STATS if k in state}


class DistributedState(ALSState):
    """The ALS loop's state when factors stay on the executors (partitioned exchange): per
    side, the cached RDD of its block states and the messages they sent (the other side's
    next step reads them), instead of arrays."""

    def __init__(self, solver: SparkBlockSolver, items, outgoing, item_penalty: float):
        super().__init__(0, None, None, None, None, None, None, item_penalty)
        self.solver = solver
        self.states = {USER: None, ITEM: items}
        self.outgoing = {USER: None, ITEM: outgoing}

    def fixed(self, side: str):
        return self.outgoing[side]

    def update(self, side: str, out: SideOutcome) -> None:
        old = self.states[side]
        self.states[side], self.outgoing[side] = out.handle
        if old is not None:  # the new state is materialised: the old one is not needed
            old.unpersist()

    def model(self, global_mean: float) -> BiasedMF:
        """The fitted factors on the driver, brought one block per job (``toLocalIterator``):
        no single result is larger than a block."""
        s, k = self.solver, self.solver.params.rank
        st = ALSState.initial(s, s.params)
        for side, rdd in self.states.items():
            if rdd is None:
                continue
            f, b, n = (
                (st.users_f, st.users_b, st.users_n)
                if side == USER
                else (st.items_f, st.items_b, st.items_n)
            )
            for r in state_records(rdd):
                rows = np.asarray(r["rows"], dtype=np.int64)
                f[rows] = np.asarray(r["factors"]).reshape(-1, k)
                b[rows], n[rows] = r["bias"], r["counts"]
        return st.model(global_mean)

    def arrays(self):  # pragma: no cover - refused up front by the train_als job
        raise MfsparkError("ALS checkpoints need als.exchange=broadcast")

    def release(self) -> None:
        for rdd in self.states.values():
            if rdd is not None:
                rdd.unpersist()


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
        exchange: str = "broadcast",
    ):
        if exchange not in ("broadcast", "partitioned"):
            raise ValueError(f"exchange must be broadcast or partitioned, got {exchange!r}")
        self.params, self.exchange, self.spark = params, exchange, spark
        self._states: list[DistributedState] = []
        #: (side, fixed-side rows shipped to its blocks) of every partitioned half-step.
        self.shipped_rows: list[tuple[str, int]] = []
        self.store = BlockStore(
            spark,
            train,
            test,
            n_users,
            n_items,
            params.tile_width,
            num_user_blocks,
            num_item_blocks,
            per_entity=exchange == "broadcast",
        )
        s = self.store
        self.n_users, self.n_items = n_users, n_items
        self.num_blocks = s.num_blocks
        self.n_train, self.n_test, self.global_mean = s.n_train, s.n_test, s.global_mean
        self.item_counts = s.item_counts
        self.setup_seconds = s.setup_seconds

    def initial_state(self, params: ALSParams) -> ALSState:
        if self.exchange == "broadcast":
            return ALSState.initial(self, params)
        items, outgoing, parts = self.store.step(
            ITEM, None, tuple(factor_fields(params.rank)), _initial_items_fn(params), _summary
        )
        state = DistributedState(self, items, outgoing, float(sum(p["penalty"] for p in parts)))
        self._states.append(state)
        return state

    def solve(self, side: str, fixed) -> SideOutcome:
        if self.exchange == "partitioned":
            return self._solve_partitioned(side, fixed)
        started = time.perf_counter()
        fixed_factors, fixed_bias = fixed
        fixed = (
            np.ascontiguousarray(fixed_factors, np.float32),
            np.ascontiguousarray(fixed_bias, np.float32),
        )
        parts = self.store.run(side, fixed, _broadcast_solve_fn(self.global_mean, self.params))
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
        return _outcome(
            parts,
            rows=rows,
            factors=cat("factors", np.float32).reshape(-1, k),
            bias=cat("bias", np.float32),
            counts=self.store.counts[side][rows],
        )

    def _solve_partitioned(self, side: str, incoming) -> SideOutcome:
        """A half-step by partitioned exchange: every block of ``side`` gets the fixed rows it
        rates from ``incoming`` (sent by the fixed side's last step), solves, keeps its state
        cached and sends its own rows on; only sums reach the driver."""
        started = time.perf_counter()
        k = self.params.rank
        fields = factor_fields(k)
        solve = exchanged_block_fn(fields, _exchange_solve_fn(self.global_mean, self.params))
        states, outgoing, parts = self.store.step(side, incoming, tuple(fields), solve, _summary)
        shipped = sum(p["received"] for p in parts)
        self.shipped_rows.append((side, shipped))
        log.debug(
            "%s half-step (partitioned): %.2f s in Spark, %s fixed rows shipped, blocks solved in %s s",
            side,
            time.perf_counter() - started,
            f"{shipped:,}",
            ", ".join(f"{p['seconds']:.2f}" for p in parts),
        )
        empty = np.empty(0, np.int64)
        return _outcome(
            parts,
            rows=empty,
            factors=np.empty((0, k)),
            bias=empty,
            counts=empty,
            handle=(states, outgoing),
        )

    def close(self) -> None:
        for state in self._states:
            state.release()
        self.store.close()

    def __enter__(self) -> SparkBlockSolver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _outcome(parts: list[dict], **fields) -> SideOutcome:
    """A SideOutcome with the sums of the blocks' results (added in block order)."""
    return SideOutcome(
        sse=float(sum(p["sse"] for p in parts)),
        penalty=float(sum(p["penalty"] for p in parts)),
        test_sse=float(sum(p["test_sse"] for p in parts)),
        test_abs=float(sum(p["test_abs"] for p in parts)),
        test_n=int(sum(p["test_n"] for p in parts)),
        **fields,
    )


EXCHANGES = ("auto", "broadcast", "partitioned")


def choose_exchange(
    n_users: int,
    n_items: int,
    rank: int,
    exchange: str,
    limit_mb: float,
    max_result_size: str,
    model: str = "als",
    returned_bytes: int | None = None,
) -> str:
    """``broadcast`` or ``partitioned`` for ``<model>.exchange`` (``auto``: broadcast while a
    side fits ``als.max_broadcast_mb`` and the driver's result-size limit). A forced
    ``broadcast`` that does not fit is refused here, before training. ``returned_bytes``: what a
    broadcast pass returns per entity (default: its factors and bias as float32)."""
    label = "ALS factor" if model == "als" else f"{model.upper()} sample"
    if exchange not in EXCHANGES:
        raise MfsparkError(f"{model}.exchange must be one of {', '.join(EXCHANGES)}, got {exchange!r}")
    if exchange == "partitioned":
        log.info("%s exchange: partitioned (%s.exchange=partitioned)", label, model)
        return exchange
    try:
        check_broadcast_size(n_users, n_items, rank, limit_mb)
        check_result_size(n_users, n_items, rank, max_result_size, returned_bytes)
    except MfsparkError as exc:
        if exchange == "broadcast":
            raise
        log.info("%s exchange: partitioned, because broadcast would not fit: %s", label, exc)
        return "partitioned"
    log.info(
        "%s exchange: broadcast (the larger side is %.1f MB, within als.max_broadcast_mb=%g "
        "and spark.driver.maxResultSize=%s)",
        label,
        max(n_users, n_items) * (rank + 1) * 4 / 2**20,
        limit_mb,
        max_result_size,
    )
    return "broadcast"


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


def check_result_size(
    n_users: int, n_items: int, rank: int, max_result_size: str, returned_bytes: int | None = None
) -> None:
    """Fail before training when one half-step's results exceed ``spark.driver.maxResultSize``.

    A half-step collects the solved side's factors and biases: n x (rank + 1) float32 values
    (or ``returned_bytes`` per entity), plus a little framing. ``0`` means unlimited.
    """
    limit = parse_size(max_result_size)
    if not limit:
        return
    per_entity = returned_bytes or (rank + 1) * 4
    for side, n in ((USER, n_users), (ITEM, n_items)):
        need = n * per_entity * RESULT_OVERHEAD + RESULT_OVERHEAD_BYTES
        if need > limit:
            raise MfsparkError(
                f"one {side} half-step returns {n:,} x {per_entity} bytes ({rank} factors + bias) "
                "= about "
                f"{need / 2**20:,.0f} MB to the driver, over spark.driver.maxResultSize="
                f"{max_result_size} ({limit / 2**20:,.0f} MB). Raise it (e.g. --set "
                f"spark.conf.spark.driver.maxResultSize={max(1, int(need * 2 / 2**30) + 1)}g, with "
                "driver memory to match) or lower als.rank"
            )
