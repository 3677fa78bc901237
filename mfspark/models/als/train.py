"""The ALS driver loop, shared by the Spark trainer and the single-process numpy trainer.

The loop only needs a *side solver*: something that, given the fixed side's factors and
biases, solves every entity of the other side and reports the squared error, penalty and
(on the item side) the masked test error. :class:`LocalSolver` does it in one process with
numpy; :class:`mfspark.models.als.spark.SparkBlockSolver` does it on cached Spark blocks with a
broadcast of the fixed side. Both call :func:`mfspark.models.als.kernels.half_step`.

Each iteration is a user half-step then an item half-step. The objective J after a half-step
is the new side's squared error and penalty plus the other side's penalty; it never
increases (each half-step minimises J exactly over one side). Training stops after
``max_iter`` iterations or when |ΔJ| / J < ``tol``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mfspark.blocks.random import seeded_normal
from mfspark.blocks.rows import (
    CHUNK_ROWS,
    DENSE_BATCH_CELLS,
    ITEM,
    USER,
    RatingRows,
    tile_width,
)
from mfspark.models.als.kernels import Regularization, half_step
from mfspark.models.factors import BiasedMF, squared_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ALSParams:
    rank: int = 10
    max_iter: int = 15
    reg: Regularization = field(default_factory=lambda: Regularization(0.05, 0.05, "count"))
    seed: int = 42
    tol: float = 1e-4
    init_std: float = 0.1
    clip: tuple[float, float] | None = None
    dtype: type = np.float32
    gram: str = "auto"  # Gram strategy of the normal equations (mfspark.blocks.rows)
    # Work-array bounds of the kernels (rows per chunk, cells per dense batch): not results.
    chunk_rows: int = CHUNK_ROWS
    batch_cells: int = DENSE_BATCH_CELLS
    tile: int | None = None  # column tile width; None: tile_width(rank, gram)

    @property
    def kernel(self) -> dict:
        """The keyword arguments of :func:`~mfspark.models.als.kernels.half_step` these set."""
        return {"strategy": self.gram, "chunk_rows": self.chunk_rows, "batch_cells": self.batch_cells}

    @property
    def tile_width(self) -> int:
        """Column tile width of the rating blocks for this rank and Gram strategy."""
        return self.tile or tile_width(self.rank, self.gram)

    @classmethod
    def from_config(cls, als, data=None, **overrides) -> ALSParams:
        """From the ``[als]`` section (and ``[data]`` for the rating scale used to clip)."""
        clip = (data.rating_min, data.rating_max) if data is not None and als.clip_predictions else None
        values = dict(
            rank=als.rank,
            max_iter=als.max_iter,
            reg=Regularization(als.reg, als.reg_bias, als.reg_scaling),
            seed=als.seed,
            tol=als.tol,
            init_std=als.init_std,
            clip=clip,
            gram=als.gram_strategy,
        )
        values.update(overrides)
        return cls(**values)


@dataclass
class SideOutcome:
    """What solving one side returns (entities the solver touched, in any order)."""

    rows: np.ndarray
    factors: np.ndarray
    bias: np.ndarray
    counts: np.ndarray
    sse: float
    penalty: float
    test_sse: float = 0.0
    test_abs: float = 0.0
    test_n: int = 0
    #: The solved side kept where it was solved (partitioned exchange); rows/factors are then
    #: empty and the state keeps this handle instead of arrays.
    handle: object = None


class SideSolver(Protocol):
    n_users: int
    n_items: int
    global_mean: float
    n_train: int
    n_test: int

    def initial_state(self, params: ALSParams) -> ALSState:
        """The state before the first iteration (seeded item factors)."""

    def solve(self, side: str, fixed) -> SideOutcome:
        """Solve every entity of ``side`` with the other side fixed (``ALSState.fixed``)."""


@dataclass
class IterationRecord:
    iteration: int
    train_rmse: float
    test_rmse: float | None
    objective: float
    seconds: float


@dataclass
class ALSResult:
    model: BiasedMF
    history: list[IterationRecord]
    half_step_objectives: list[float]
    converged: bool

    @property
    def iterations(self) -> int:
        return len(self.history)


@dataclass
class ALSState:
    """The loop's state after ``iteration`` completed iterations: all a resumed run needs to
    continue exactly as if never interrupted (see :mod:`mfspark.checkpoint`)."""

    iteration: int
    users_f: np.ndarray
    users_b: np.ndarray
    items_f: np.ndarray
    items_b: np.ndarray
    users_n: np.ndarray
    items_n: np.ndarray
    item_penalty: float  # of the current item factors (NaN before the first user half-step)
    history: list[IterationRecord] = field(default_factory=list)
    half_objectives: list[float] = field(default_factory=list)
    converged: bool = False

    ARRAYS = ("users_f", "users_b", "items_f", "items_b", "users_n", "items_n")

    @classmethod
    def initial(cls, solver: SideSolver, params: ALSParams) -> ALSState:
        k = params.rank
        items_f = seeded_normal(params.seed, np.arange(solver.n_items), k, params.init_std)
        return cls(
            iteration=0,
            users_f=np.zeros((solver.n_users, k), dtype=params.dtype),
            users_b=np.zeros(solver.n_users, dtype=params.dtype),
            items_f=items_f.astype(params.dtype),
            items_b=np.zeros(solver.n_items, dtype=params.dtype),
            users_n=np.zeros(solver.n_users, dtype=np.int64),
            items_n=np.zeros(solver.n_items, dtype=np.int64),
            item_penalty=float("nan"),
        )

    def fixed(self, side: str):
        """What a solver needs of ``side`` when it is the fixed side: (factors, biases)."""
        return (self.users_f, self.users_b) if side == USER else (self.items_f, self.items_b)

    def update(self, side: str, out: SideOutcome) -> None:
        """Take the solved rows of ``side`` into the state."""
        f, b, n = (
            (self.users_f, self.users_b, self.users_n)
            if side == USER
            else (self.items_f, self.items_b, self.items_n)
        )
        f[out.rows], b[out.rows], n[out.rows] = out.factors, out.bias, out.counts

    def initial_item_penalty(self, solver: SideSolver, params: ALSParams) -> float:
        """The penalty of the initial item factors (the first half-step's J needs it)."""
        counts = getattr(solver, "item_counts", None)
        if counts is None:
            return 0.0
        return params.reg.penalty(self.items_f, self.items_b, counts)

    def model(self, global_mean: float) -> BiasedMF:
        return BiasedMF(
            global_mean,
            self.users_f,
            self.users_b,
            self.items_f,
            self.items_b,
            self.users_n,
            self.items_n,
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.ARRAYS}

    def scalars(self) -> dict:
        """Everything but the arrays, JSON-able (floats round-trip exactly through JSON)."""
        return {
            "iteration": self.iteration,
            "item_penalty": self.item_penalty,
            "history": [vars(h) for h in self.history],
            "half_objectives": self.half_objectives,
            "converged": self.converged,
        }

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray], scalars: dict) -> ALSState:
        return cls(
            iteration=int(scalars["iteration"]),
            **{name: np.array(arrays[name]) for name in cls.ARRAYS},
            item_penalty=float(scalars["item_penalty"]),
            history=[IterationRecord(**h) for h in scalars["history"]],
            half_objectives=[float(x) for x in scalars["half_objectives"]],
            converged=bool(scalars["converged"]),
        )


def run_als(
    solver: SideSolver,
    params: ALSParams,
    name: str = "als",
    start: ALSState | None = None,
    on_iteration: Callable[[ALSState], None] | None = None,
) -> ALSResult:
    """Alternate user and item half-steps until ``max_iter`` or the objective settles.

    ``start`` resumes from a saved state (iteration, factors, history: the convergence test
    continues from its last objective); ``on_iteration(state)`` is called after every
    iteration (e.g. to save a checkpoint).
    """
    st = start if start is not None else solver.initial_state(params)
    for it in range(st.iteration + 1, params.max_iter + 1):
        if st.converged:
            break
        started = time.perf_counter()
        if math.isnan(st.item_penalty):
            st.item_penalty = st.initial_item_penalty(solver, params)
        u = solver.solve(USER, st.fixed(ITEM))
        st.update(USER, u)
        st.half_objectives.append(u.sse + u.penalty + st.item_penalty)
        i = solver.solve(ITEM, st.fixed(USER))
        st.update(ITEM, i)
        st.item_penalty = i.penalty
        objective = i.sse + u.penalty + i.penalty
        st.half_objectives.append(objective)
        record = IterationRecord(
            iteration=it,
            train_rmse=math.sqrt(i.sse / max(solver.n_train, 1)),
            test_rmse=math.sqrt(i.test_sse / i.test_n) if i.test_n else None,
            objective=objective,
            seconds=time.perf_counter() - started,
        )
        previous = st.history[-1].objective if st.history else None
        st.history.append(record)
        st.iteration = it
        log.info(
            "%s iteration %d: train RMSE %.5f, test RMSE %s, J %.6g, %.2f s",
            name,
            it,
            record.train_rmse,
            f"{record.test_rmse:.5f}" if record.test_rmse is not None else "n/a",
            objective,
            record.seconds,
        )
        if previous is not None and abs(previous - objective) <= params.tol * abs(previous):
            st.converged = True
            log.info("%s converged: relative change of J below als.tol=%g", name, params.tol)
        if on_iteration is not None:
            on_iteration(st)
    return ALSResult(st.model(solver.global_mean), st.history, st.half_objectives, st.converged)


class LocalSolver:
    """Both sides in one process: the numpy trainer (and the tests' oracle set-up).

    ``train`` and ``test`` are (user_idx, item_idx, rating) arrays; test ratings are scored
    after every item half-step (the masked test RMSE of the history).
    """

    def __init__(self, train, n_users: int, n_items: int, params: ALSParams, test=None):
        u, i, r = (np.asarray(a) for a in train)
        self.n_users, self.n_items, self.params = n_users, n_items, params
        self.n_train = len(r)
        self.global_mean = float(np.mean(r, dtype=np.float64)) if len(r) else 0.0
        users, items = np.arange(n_users), np.arange(n_items)
        width = params.tile_width
        self.by_user = RatingRows.from_coo(u, i, r, entities=users, width=width)
        self.by_item = RatingRows.from_coo(i, u, r, entities=items, width=width)
        self.item_counts = self.by_item.counts()
        if test is not None:
            tu, ti, tr = (np.asarray(a) for a in test)
            self.test_by_item = RatingRows.from_coo(ti, tu, tr, entities=items)
            self.n_test = len(tr)
        else:
            self.test_by_item, self.n_test = None, 0

    def initial_state(self, params: ALSParams) -> ALSState:
        return ALSState.initial(self, params)

    def solve(self, side: str, fixed) -> SideOutcome:
        fixed_factors, fixed_bias = fixed
        block = self.by_user if side == USER else self.by_item
        p = self.params
        res = half_step(block, fixed_factors, fixed_bias, self.global_mean, p.reg, p.dtype, **p.kernel)
        out = SideOutcome(res.rows, res.factors, res.bias, res.counts, res.sse, res.penalty)
        if side == ITEM and self.test_by_item is not None:
            out.test_sse, out.test_abs, out.test_n = squared_error(
                self.global_mean,
                res.factors,
                res.bias,
                fixed_factors,
                fixed_bias,
                self.test_by_item,
                self.params.clip,
            )
        return out


def objective(model: BiasedMF, train, reg: Regularization) -> float:
    """J computed from scratch (float64): the independent check of the loop's bookkeeping."""
    u, i, r = (np.asarray(a) for a in train)
    pred = model.predict(u, i)
    sse = float(np.sum((r.astype(np.float64) - pred) ** 2))
    user_counts = np.bincount(u, minlength=len(model.user_bias))
    item_counts = np.bincount(i, minlength=len(model.item_bias))
    return (
        sse
        + reg.penalty(model.user_factors, model.user_bias, user_counts)
        + reg.penalty(model.item_factors, model.item_bias, item_counts)
    )
