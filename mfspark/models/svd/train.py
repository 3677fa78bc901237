"""Truncated SVD of the bias-removed rating matrix by randomized subspace iteration.

The driver loop (:func:`run_svd`) needs an *operator*: something that fits the bias baseline
and multiplies X (or Xᵀ) by a dense k-wide matrix block by block. :class:`LocalOperator` does
it in one process (the tests' reference and the numpy trainer);
:class:`mfspark.models.svd.spark.SparkOperator` does it on the cached Spark rating blocks.
Both run the same per-block functions below.

**Baseline.** μ is the train mean; user and item biases are a ridge fit of r − μ ≈ b_i + c_j
(penalty λ_b on every bias), found by a few alternating exact bias-only steps — an ALS
half-step of rank 0: b_i = Σ_j∈Ω_i (r_ij − μ − c_j) / (|Ω_i| + λ_b), then the items.

**Decomposition** (Halko, Martinsson & Tropp 2011, randomized range finder with subspace
iteration). With l = k + p columns (p = oversampling) and q power iterations:

    Ω = N(0, 1) per item (item-keyed draws)        Q = orth(X Ω)
    repeat q + 1 times:
        Z = Xᵀ Q            (item blocks)           B = Zᵀ = Qᵀ X = Ũ S Vᵀ  (l × items, SVD)
        U = Q Ũ_k, s = S_k, V = V_k                 (the Rayleigh–Ritz estimate; recorded)
        (not after the last) Q = orth(X · orth(Z))  (user blocks)

Only n × l matrices (X Ω, Z, Q) reach the driver, where they are orthonormalised (QR).
The error of σ_i shrinks like (σ_(l+1)/σ_i)^(2q+1): more power iterations or oversampling buy
accuracy at one pass over each side per iteration.

**Model.** r̂_ij = μ + b_i + c_j + Σ_k u_ik s_k v_jk; stored as a biased factor model with user
factors U·√S and item factors V·√S (so w_iᵀu_j = Σ u_ik s_k v_jk).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mfspark.blocks.random import seeded_normal
from mfspark.blocks.rows import ITEM, USER, RatingRows
from mfspark.models.als.kernels import Regularization, half_step
from mfspark.models.factors import BiasedMF, squared_error
from mfspark.models.svd.kernels import orthonormal, rayleigh_ritz, residual_product

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SVDParams:
    rank: int = 10
    oversampling: int = 10
    power_iterations: int = 4
    seed: int = 42
    reg_bias: float = 3.0
    bias_iterations: int = 5
    clip: tuple[float, float] | None = None

    @classmethod
    def from_config(cls, svd, clip=None) -> SVDParams:
        return cls(
            rank=svd.rank,
            oversampling=svd.oversampling,
            power_iterations=svd.power_iterations,
            seed=svd.seed,
            reg_bias=svd.reg_bias,
            bias_iterations=svd.bias_iterations,
            clip=clip,
        )


# -- per-block functions (the same on Spark and in one process) ------------------------------


def block_bias(side: str, train: RatingRows, test: RatingRows, payload) -> dict:
    """Exact ridge biases of the block's rows with the other side's biases fixed."""
    fixed_bias, global_mean, reg_bias = payload
    fixed_bias = train.local(fixed_bias)
    res = half_step(
        train,
        np.zeros((len(fixed_bias), 0)),
        fixed_bias,
        global_mean,
        Regularization(0.0, reg_bias, "none"),
        dtype=np.float64,
    )
    return {"rows": res.rows, "bias": res.bias, "counts": res.counts, "sse": res.sse}


def block_product(side: str, train: RatingRows, test: RatingRows, payload) -> dict:
    """Rows of X·D (user blocks) or Xᵀ·D (item blocks)."""
    user_bias, item_bias, global_mean, dense = payload
    own, other = (user_bias, item_bias) if side == USER else (item_bias, user_bias)
    product = residual_product(train, own, train.local(other), global_mean, train.local(dense))
    return {"rows": train.rows, "product": product}


def block_errors(side: str, train: RatingRows, test: RatingRows, payload) -> dict:
    """Squared errors of the model on an item block's train and test ratings.

    ``residual_sse`` is ‖X − U S Vᵀ‖² over the train cells (unclipped); ``sse``/``test_sse``
    are the errors of the clipped predictions, as scored.
    """
    global_mean, user_f, user_b, item_f, item_b, clip = payload
    rows = np.asarray(train.rows)
    own_f, own_b = np.take(item_f, rows, axis=0), np.take(item_b, rows)
    user_f, user_b = train.local(user_f), train.local(user_b)  # train and test share columns
    residual_sse, _, _ = squared_error(global_mean, own_f, own_b, user_f, user_b, train, None)
    sse, _, n = squared_error(global_mean, own_f, own_b, user_f, user_b, train, clip)
    test_sse, _, test_n = squared_error(global_mean, own_f, own_b, user_f, user_b, test, clip)
    return {"residual_sse": residual_sse, "sse": sse, "n": n, "test_sse": test_sse, "test_n": test_n}


class Operator(Protocol):
    n_users: int
    n_items: int
    global_mean: float

    def run(self, side: str, payload, block_fn) -> list[dict]:
        """``block_fn(side, train, test, payload)`` on every block of ``side``."""


def gather(parts: list[dict], key: str, n: int, width: int | None = None) -> np.ndarray:
    """Scatter the blocks' ``key`` arrays into one array indexed by global row index."""
    out = np.zeros((n,) if width is None else (n, width), dtype=np.float64)
    for p in parts:
        out[p["rows"]] = p[key]
    return out


# -- the driver loop -------------------------------------------------------------------------


@dataclass
class IterationRecord:
    iteration: int
    train_rmse: float
    test_rmse: float | None
    objective: float  # ‖X − U S Vᵀ‖² over the train cells
    seconds: float
    singular_values: np.ndarray


@dataclass
class SVDResult:
    model: BiasedMF
    singular_values: np.ndarray  # (k,)
    residual_norm_sq: float  # ‖X‖² over the train cells: the baseline's squared error
    history: list[IterationRecord]

    @property
    def explained_share(self) -> np.ndarray:
        """s_k² / ‖X‖²: the share of the baseline's squared error each triplet removes."""
        total = self.residual_norm_sq
        return self.singular_values**2 / total if total > 0 else np.zeros_like(self.singular_values)


def fit_biases(
    op: Operator, params: SVDParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(user bias, item bias, user counts, item counts, ‖X‖²) of the ridge baseline."""
    user_b, item_b = np.zeros(op.n_users), np.zeros(op.n_items)
    user_n, item_n = np.zeros(op.n_users, np.int64), np.zeros(op.n_items, np.int64)
    sse = 0.0
    for _ in range(params.bias_iterations):
        parts = op.run(USER, (item_b, op.global_mean, params.reg_bias), block_bias)
        user_b = gather(parts, "bias", op.n_users)
        parts = op.run(ITEM, (user_b, op.global_mean, params.reg_bias), block_bias)
        item_b = gather(parts, "bias", op.n_items)
        sse = float(sum(p["sse"] for p in parts))
    for p in op.run(USER, (item_b, op.global_mean, params.reg_bias), _counts_only):
        user_n[p["rows"]] = p["counts"]
    for p in parts:
        item_n[p["rows"]] = p["counts"]
    return user_b, item_b, user_n, item_n, sse


def _counts_only(side: str, train: RatingRows, test: RatingRows, payload) -> dict:
    return {"rows": train.rows, "counts": train.counts()}


def run_svd(op: Operator, params: SVDParams, name: str = "svd") -> SVDResult:
    """Baseline, then randomized subspace iteration (module docstring)."""
    k = params.rank
    width = min(k + params.oversampling, op.n_users, op.n_items)
    started = time.perf_counter()
    user_b, item_b, user_n, item_n, norm_sq = fit_biases(op, params)
    mu = op.global_mean
    log.info(
        "%s baseline: biases fitted (λ_b=%g), residual RMSE %.5f, %.2f s",
        name,
        params.reg_bias,
        math.sqrt(norm_sq / max(int(item_n.sum()), 1)),
        time.perf_counter() - started,
    )

    def product(side: str, dense: np.ndarray) -> np.ndarray:
        parts = op.run(side, (user_b, item_b, mu, dense), block_product)
        return gather(parts, "product", op.n_users if side == USER else op.n_items, dense.shape[1])

    sketch = seeded_normal(params.seed, np.arange(op.n_items), width, 1.0).astype(np.float64)
    basis = orthonormal(product(USER, sketch))
    history: list[IterationRecord] = []
    for it in range(params.power_iterations + 1):
        t0 = time.perf_counter()
        projected = product(ITEM, basis)  # Xᵀ Q
        left, s, right = rayleigh_ritz(basis, projected, k)
        root = np.sqrt(s)
        model = BiasedMF(mu, left * root, user_b, right * root, item_b, user_n, item_n)
        history.append(_evaluate(op, model, params, it, s, started if it == 0 else t0, name))
        if it < params.power_iterations:
            basis = orthonormal(product(USER, orthonormal(projected)))
    return SVDResult(model, s, norm_sq, history)


def _evaluate(op, model: BiasedMF, params, it: int, s, t0: float, name: str) -> IterationRecord:
    payload = (
        model.global_mean,
        model.user_factors,
        model.user_bias,
        model.item_factors,
        model.item_bias,
        params.clip,
    )
    parts = op.run(ITEM, payload, block_errors)
    n = sum(p["n"] for p in parts)
    test_n = sum(p["test_n"] for p in parts)
    record = IterationRecord(
        iteration=it,
        train_rmse=math.sqrt(sum(p["sse"] for p in parts) / max(n, 1)),
        test_rmse=math.sqrt(sum(p["test_sse"] for p in parts) / test_n) if test_n else None,
        objective=float(sum(p["residual_sse"] for p in parts)),
        seconds=time.perf_counter() - t0,
        singular_values=np.array(s),
    )
    log.info(
        "%s power iteration %d: σ_1..σ_%d = %s, train RMSE %.5f, test RMSE %s, %.2f s",
        name,
        it,
        len(s),
        np.array2string(np.asarray(s[:5]), precision=3) + ("…" if len(s) > 5 else ""),
        record.train_rmse,
        f"{record.test_rmse:.5f}" if record.test_rmse is not None else "n/a",
        record.seconds,
    )
    return record


class LocalOperator:
    """Both sides in one process: ``train``/``test`` are (user_idx, item_idx, rating) arrays."""

    def __init__(self, train, n_users: int, n_items: int, test=None, width: int | None = None):
        u, i, r = (np.asarray(a) for a in train)
        self.n_users, self.n_items = n_users, n_items
        self.global_mean = float(np.mean(r, dtype=np.float64)) if len(r) else 0.0
        users, items = np.arange(n_users), np.arange(n_items)
        tu, ti, tr = (np.asarray(a) for a in test) if test is not None else ([], [], [])
        self.blocks = {
            USER: (RatingRows.from_coo(u, i, r, users, width), RatingRows.from_coo([], [], [], users)),
            ITEM: (RatingRows.from_coo(i, u, r, items, width), RatingRows.from_coo(ti, tu, tr, items)),
        }

    def run(self, side: str, payload, block_fn) -> list[dict]:
        return [block_fn(side, *self.blocks[side], payload)]
