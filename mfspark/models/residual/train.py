"""Residual model r̂ = base(x) + NN(x): a small network learns what a factor model misses.

**Out-of-fold residuals.** A network trained on the residuals of a base fitted to the same
ratings only learns that base's overfit (its train residuals are small and biased towards
0). So the train ratings are cut into K folds by a hash of (user, item, seed) — the same
assignment whatever the partitioning — and for each fold f the base is refitted on the other
K − 1 folds and scored on fold f: every train rating gets a residual r − base_(−f)(x) from a
model that never saw it. The network learns those; the final base is the model fitted to all
of train, and r̂ = base_full(x) + NN(features of base_full at x).

**Features** of a (user i, item j) pair, from a biased factor model: the user's and item's
factor vectors w_i and u_j, biases b_i and c_j, the interaction w_iᵀu_j, the base prediction,
log(1 + train ratings) of user and item (always the full train counts) and the rating's
timestamp in days (0 when unknown). Factor vectors are only comparable across fits up to a
rotation (w_iᵀu_j = (Rᵀw_i)ᵀ(Rᵀu_j) for any orthogonal R), so every fold model is first
rotated onto the full model: R = argmin ‖U_f R − U_full‖ over orthogonal R (Procrustes:
R = A Bᵀ from the SVD U_fᵀ U_full = A Σ Bᵀ), applied to both sides.

No Spark here: :func:`fit_local` runs the whole scheme in one process (tests and
measurements); :mod:`mfspark.models.residual.job` runs it with the base fitted on Spark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mfspark.blocks.random import _splitmix64
from mfspark.models.factors import BiasedMF
from mfspark.models.residual.net import MLP, NetParams, NetResult, train_mlp

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class ResidualParams:
    net: NetParams = NetParams()
    folds: int = 5
    validation_fraction: float = 0.1
    max_train_rows: int = 2_000_000
    seed: int = 42

    @classmethod
    def from_config(cls, rc) -> ResidualParams:
        net = NetParams(
            hidden=tuple(rc.hidden_layers),
            learning_rate=rc.learning_rate,
            l2=rc.l2,
            epochs=rc.epochs,
            batch_size=rc.batch_size,
            patience=rc.patience,
            seed=rc.seed,
        )
        return cls(net, rc.folds, rc.validation_fraction, rc.max_train_rows, rc.seed)


def unit_hash(user_idx: np.ndarray, item_idx: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) per (user, item, seed, salt): the same on any partitioning."""
    key = (np.asarray(user_idx, np.uint64) << np.uint64(32)) | np.asarray(item_idx, np.uint64)
    with np.errstate(over="ignore"):
        key = key ^ _splitmix64(np.full(len(key), (seed * 1_000_003 + salt) & (2**63 - 1), np.uint64))
        return (_splitmix64(key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def fold_of(user_idx, item_idx, seed: int, folds: int) -> np.ndarray:
    return np.minimum((unit_hash(user_idx, item_idx, seed, 1) * folds).astype(np.int64), folds - 1)


def is_validation(user_idx, item_idx, seed: int, fraction: float) -> np.ndarray:
    return unit_hash(user_idx, item_idx, seed, 2) < fraction


def is_sampled(user_idx, item_idx, seed: int, rate: float) -> np.ndarray:
    """Rows kept for training the network when train is larger than ``max_train_rows``."""
    return unit_hash(user_idx, item_idx, seed, 3) < rate


def align(model: BiasedMF, reference: BiasedMF) -> BiasedMF:
    """``model`` with both factor sets rotated onto ``reference``'s item factors (Procrustes)."""
    a, _, bt = np.linalg.svd(
        model.item_factors.astype(np.float64).T @ reference.item_factors.astype(np.float64)
    )
    rot = a @ bt
    return BiasedMF(
        model.global_mean,
        model.user_factors @ rot,
        model.user_bias,
        model.item_factors @ rot,
        model.item_bias,
        model.user_counts,
        model.item_counts,
    )


def features(
    model: BiasedMF,
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    timestamp: np.ndarray | None,
    user_counts: np.ndarray,
    item_counts: np.ndarray,
    clip: tuple[float, float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(base prediction, feature matrix (n, 2k + 7) float32) — see the module docstring."""
    u, i = np.asarray(user_idx, np.int64), np.asarray(item_idx, np.int64)
    base = model.predict(u, i, clip)

    def take(arr, idx):  # unknown entities (past the end) get 0, like the prediction formula
        ok = (idx >= 0) & (idx < len(arr))
        out = np.take(arr, np.where(ok, idx, 0), axis=0).astype(np.float64)
        out[~ok] = 0.0
        return out

    w, v = take(model.user_factors, u), take(model.item_factors, i)
    ts = np.zeros(len(u)) if timestamp is None else np.nan_to_num(timestamp / SECONDS_PER_DAY)
    cols = [
        w,
        v,
        take(model.user_bias, u)[:, None],
        take(model.item_bias, i)[:, None],
        np.einsum("ij,ij->i", w, v)[:, None],
        base[:, None],
        np.log1p(take(user_counts, u))[:, None],
        np.log1p(take(item_counts, i))[:, None],
        ts[:, None],
    ]
    return base, np.hstack(cols).astype(np.float32)


@dataclass
class ResidualModel:
    base: BiasedMF
    net: MLP
    user_counts: np.ndarray
    item_counts: np.ndarray
    clip: tuple[float, float] | None

    def predict(self, user_idx, item_idx, timestamp=None) -> np.ndarray:
        base, x = features(
            self.base, user_idx, item_idx, timestamp, self.user_counts, self.item_counts, self.clip
        )
        out = base + self.net.predict(x)
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out


def sample_rate(n_train: int, cap: int) -> float:
    return min(1.0, cap / n_train) if n_train else 1.0


def fit_local(
    train,
    n_users: int,
    n_items: int,
    fit_base: Callable[[tuple], BiasedMF],
    params: ResidualParams,
    timestamp: np.ndarray | None = None,
    clip: tuple[float, float] | None = None,
) -> tuple[ResidualModel, NetResult]:
    """The whole scheme in one process; ``fit_base((u, i, r))`` fits the base model."""
    u, i, r = (np.asarray(a) for a in train)
    user_n = np.bincount(u, minlength=n_users)
    item_n = np.bincount(i, minlength=n_items)
    full = fit_base((u, i, r))
    fold = fold_of(u, i, params.seed, params.folds)
    keep = is_sampled(u, i, params.seed, sample_rate(len(r), params.max_train_rows))
    xs, ys, us, its = [], [], [], []
    for f in range(params.folds):
        held = fold == f
        model = align(fit_base((u[~held], i[~held], r[~held])), full)
        rows = held & keep
        ts = None if timestamp is None else timestamp[rows]
        base, x = features(model, u[rows], i[rows], ts, user_n, item_n, clip)
        xs.append(x)
        ys.append(r[rows] - base)
        us.append(u[rows])
        its.append(i[rows])
    x, y = np.concatenate(xs), np.concatenate(ys)
    val = is_validation(np.concatenate(us), np.concatenate(its), params.seed, params.validation_fraction)
    result = train_mlp(x, y, val, params.net)
    return ResidualModel(full, result.net, user_n, item_n, clip), result
