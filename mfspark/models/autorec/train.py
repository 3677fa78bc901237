"""The AutoRec training loop, shared by the Spark trainer and the single-process one.

The loop needs an *evaluator*: something that, given θ, returns the block sums of
:func:`mfspark.models.autorec.network.block_totals` over every training row (loss, gradient,
errors at train/validation/test cells). :class:`LocalEvaluator` does it in one process over a
list of :class:`RowBlock`; :class:`mfspark.models.autorec.spark.SparkEvaluator` does it on
cached Spark partitions and reduces with ``treeAggregate``. The loop adds the penalty, runs
the optimiser (:mod:`mfspark.models.autorec.optim`), and stops early:

* every iteration (a full pass over the rows; an L-BFGS line search may take a few) reports the
  RMSE on the validation share of the train cells (cells picked by a keyed hash, so the same
  ones whatever the partitioning);
* the weights with the lowest validation RMSE so far are kept; training stops when it has not
  improved for ``patience`` iterations, after ``epochs`` iterations, or when the relative
  change of J falls below ``tol``. The kept (best) weights are the model.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa

from mfspark import columns as C
from mfspark.models.autorec.network import (
    BlockTotals,
    RowBlock,
    Shape,
    add_penalty_gradient,
    block_totals,
    init_params,
    penalty,
)
from mfspark.models.autorec.optim import LBFGS, Evaluation, Rprop

log = logging.getLogger(__name__)

MODEL_NAMES = {"by_item": "autorec", "by_user": "autorec_user"}


@dataclass(frozen=True)
class AutoRecParams:
    orientation: str = "by_item"
    hidden: int = 500
    activation: str = "sigmoid"
    l2: float = 300.0
    input_dropout: float = 0.0
    optimizer: str = "lbfgs"
    lbfgs_history: int = 5
    rprop_initial_step: float = 1e-3
    epochs: int = 200
    tol: float = 1e-6
    patience: int = 20
    validation_fraction: float = 0.1
    seed: int = 42
    init_std: float = 0.03
    clip: tuple[float, float] | None = None
    dtype: type = np.float32
    block_cells: int = 1_000_000

    @property
    def model_name(self) -> str:
        return MODEL_NAMES[self.orientation]

    @classmethod
    def from_config(cls, ar, clip: tuple[float, float] | None = None, **overrides) -> AutoRecParams:
        """From the ``[autorec]`` section; ``clip`` is the rating range predictions are clipped to."""
        values = dict(
            orientation=ar.orientation,
            hidden=ar.hidden,
            activation=ar.activation,
            l2=ar.l2,
            input_dropout=ar.input_dropout,
            optimizer=ar.optimizer,
            lbfgs_history=ar.lbfgs_history,
            rprop_initial_step=ar.rprop_initial_step,
            epochs=ar.epochs,
            tol=ar.tol,
            patience=ar.patience,
            validation_fraction=ar.validation_fraction,
            seed=ar.seed,
            init_std=ar.init_std,
            clip=clip,
            dtype=np.float64 if ar.precision == "float64" else np.float32,
            block_cells=ar.block_cells,
        )
        values.update(overrides)
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# Blocks from the autoencoder inputs (Arrow), used by both trainers and by prediction
# ---------------------------------------------------------------------------------------------


def _list_parts(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, flat values) of a list column."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy().astype(np.int64)
    flat = arr.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], flat


def blocks_from_table(
    table: pa.Table, orientation: str, width: int, params: AutoRecParams
) -> list[RowBlock]:
    """Cut a table of ``ae_inputs`` rows into :class:`RowBlock` s of about ``block_cells``
    train cells each (a row is never split)."""
    if table.num_rows == 0:
        return []
    row_idx = table.column(C.AE_ROW_KEYS[orientation][1]).to_numpy().astype(np.int64)
    tr_off, tr_cols = _list_parts(table.column(C.TRAIN_INDICES))
    _, tr_vals = _list_parts(table.column(C.TRAIN_VALUES))
    te_off, te_cols = _list_parts(table.column(C.TEST_INDICES))
    _, te_vals = _list_parts(table.column(C.TEST_VALUES))
    # Block boundaries: whenever the running train-cell count passes another block_cells.
    cuts = np.searchsorted(tr_off, np.arange(params.block_cells, tr_off[-1], params.block_cells))
    bounds = np.unique(np.r_[0, cuts, len(row_idx)])
    blocks = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        ta, tb, sa, sb = tr_off[a], tr_off[b], te_off[a], te_off[b]
        blocks.append(
            RowBlock.from_lists(
                row_idx[a:b],
                tr_off[a : b + 1] - ta,
                tr_cols[ta:tb],
                tr_vals[ta:tb],
                te_off[a : b + 1] - sa,
                te_cols[sa:sb],
                te_vals[sa:sb],
                width,
                params.validation_fraction,
                params.seed,
                params.dtype,
            )
        )
    return blocks


# ---------------------------------------------------------------------------------------------
# Evaluators and the loop
# ---------------------------------------------------------------------------------------------


class Evaluator(Protocol):
    shape: Shape

    def totals(self, theta: np.ndarray, iteration: int, with_gradient: bool) -> BlockTotals: ...


class LocalEvaluator:
    """Every block in this process (the oracle for the Spark evaluator, and small data)."""

    def __init__(self, blocks: list[RowBlock], shape: Shape, params: AutoRecParams):
        self.blocks, self.shape, self.params = blocks, shape, params

    def totals(self, theta: np.ndarray, iteration: int, with_gradient: bool) -> BlockTotals:
        p = self.params
        grad = np.zeros(self.shape.size, dtype=theta.dtype) if with_gradient else None
        total = BlockTotals()
        for block in self.blocks:
            t = block_totals(
                theta,
                self.shape,
                block,
                p.activation,
                gradient_out=grad,
                dropout=p.input_dropout,
                seed=p.seed,
                iteration=iteration,
                clip=p.clip,
            )
            t.gradient = None
            total.add(t)
        total.gradient = grad
        return total


def rmse(sse: float, n: int) -> float | None:
    return math.sqrt(sse / n) if n else None


@dataclass
class Epoch:
    iteration: int
    train_rmse: float | None
    validation_rmse: float | None
    test_rmse: float | None
    objective: float
    seconds: float


@dataclass
class AutoRecResult:
    theta: np.ndarray  # the kept (best-on-validation) weights
    shape: Shape
    history: list[Epoch] = field(default_factory=list)
    best_iteration: int = 0
    stop_reason: str = ""
    evaluations: int = 0

    @property
    def best(self) -> Epoch | None:
        return next((h for h in self.history if h.iteration == self.best_iteration), None)


def objective_function(evaluator: Evaluator, params: AutoRecParams):
    """evaluate(θ, iteration) → Evaluation: J = data loss + (λ/2)‖W‖² and ∇J."""
    shape = evaluator.shape

    def evaluate(theta: np.ndarray, iteration: int) -> Evaluation:
        t = evaluator.totals(theta, iteration, True)
        add_penalty_gradient(t.gradient, theta, shape, params.l2)
        grad, t.gradient = t.gradient, None
        return Evaluation(t.loss + penalty(theta, shape, params.l2), grad, {"totals": t})

    return evaluate


def fit(
    evaluator: Evaluator, params: AutoRecParams, global_mean: float, score_test: bool = True
) -> AutoRecResult:
    """Train from θ₀ (seeded) until early stopping, ``epochs`` or ``tol``; keep the best θ.

    ``score_test=False`` when the test cells are only places to predict (a blend member's
    pairs carry no ratings): no test RMSE is recorded or logged for them.
    """
    shape = evaluator.shape
    evaluate = objective_function(evaluator, params)
    theta = init_params(shape, params.seed, params.init_std, global_mean, params.dtype)
    started = time.time()
    current = evaluate(theta, 0)
    if params.optimizer == "lbfgs":
        optimizer = LBFGS(params.lbfgs_history)
    else:
        optimizer = Rprop(shape.size, params.dtype, params.rprop_initial_step)
    result = AutoRecResult(theta.copy(), shape)
    early_stopping = params.validation_fraction > 0
    best_val, since_best = math.inf, 0
    for it in range(1, params.epochs + 1):
        t0 = time.time()
        if params.input_dropout > 0 and params.optimizer == "lbfgs" and it > 1:
            # A new corruption each iteration: the line search must compare J under one mask.
            current = evaluate(theta, it)
        previous = current.objective
        theta, current, ok = optimizer.step(theta, current, evaluate, it)
        if not ok:
            result.stop_reason = "line search failed"
            break
        tot: BlockTotals = current.info["totals"]
        epoch = Epoch(
            it,
            rmse(tot.train_sse, tot.train_n),
            rmse(tot.validation_sse, tot.validation_n),
            rmse(tot.test_sse, tot.test_n) if score_test else None,
            current.objective,
            time.time() - t0,
        )
        result.history.append(epoch)
        log.info(
            "%s iteration %d: J %.6g, train RMSE %.4f, validation RMSE %s, test RMSE %s (%.1f s)",
            params.model_name,
            it,
            epoch.objective,
            epoch.train_rmse or float("nan"),
            f"{epoch.validation_rmse:.4f}" if epoch.validation_rmse is not None else "n/a",
            f"{epoch.test_rmse:.4f}" if epoch.test_rmse is not None else "n/a",
            epoch.seconds,
        )
        watched = epoch.validation_rmse if early_stopping and epoch.validation_rmse is not None else None
        if watched is None or watched < best_val:
            best_val = watched if watched is not None else best_val
            since_best = 0
            result.theta[...] = theta
            result.best_iteration = it
        else:
            since_best += 1
            if since_best >= params.patience:
                result.stop_reason = f"validation RMSE did not improve for {params.patience} iterations"
                break
        if abs(previous - current.objective) <= params.tol * max(abs(current.objective), 1.0):
            result.stop_reason = f"relative change of J below tol={params.tol}"
            break
    else:
        result.stop_reason = f"epochs={params.epochs} reached"
    result.evaluations = optimizer.evaluations + 1
    log.info(
        "%s: stopped after %d iterations (%s); kept iteration %d; %.1f s",
        params.model_name,
        len(result.history),
        result.stop_reason,
        result.best_iteration,
        time.time() - started,
    )
    return result
