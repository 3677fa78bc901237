"""The Gibbs loop of Bayesian MF, shared by the Spark sampler and the single-process one.

The loop only needs a *side sampler*: given the fixed side's current sample, the drawn
hyper-parameters and α, draw every entity of the other side (and, on the item side, return
r̂ of every test rating with the new sample, in the sampler's fixed test order).
:class:`LocalSampler` does it in one process; :class:`mfspark.models.bpmf.spark.SparkBlockSampler`
on cached Spark blocks. Both call :func:`mfspark.models.bpmf.kernels.draw_rows`.

Sweep s = 1 … ``samples``: draw (μ_W, Λ_W) and every user, then (μ_V, Λ_V) and every item,
then α (when sampled). The first ``burn_in`` sweeps are discarded; after them every
``thin``-th sweep's sample is *kept*: it enters the running sums of the posterior mean of the
parameters and of the test predictions (Σ r̂ and Σ r̂² per test rating — O(n_test) numbers on
the driver, never one sample per rating). The predictive mean is the average r̂ (clipped to the
training range when asked), the predictive sd sqrt(Var r̂ + E[1/α]). ``saved_samples`` kept
samples, evenly spread over the kept sweeps, are returned whole for later scoring.

Start: users and items N(0, ``init_std``²) per entity id (biases 0; entities without training
ratings 0 throughout), α = ``noise_precision``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mfspark.blocks.random import seeded_normal
from mfspark.blocks.rows import ITEM, USER, RatingRows, tile_width
from mfspark.models.bpmf.kernels import (
    Hyper,
    HyperPrior,
    SideDraw,
    draw_hyper,
    draw_noise,
    draw_rows,
    noise_stream,
    side_statistics,
)
from mfspark.models.factors import BiasedMF, predict

log = logging.getLogger(__name__)

#: Seed offset of the users' initial factors (items use the seed itself, as ALS).
USER_INIT_SALT = 0x5BD1E995


@dataclass(frozen=True)
class BPMFParams:
    rank: int = 10
    burn_in: int = 40
    samples: int = 240
    thin: int = 1
    prior: HyperPrior = field(default_factory=HyperPrior)
    noise_precision: float = 1.0
    sample_noise: bool = True
    noise_shape: float = 1.0
    noise_rate: float = 1.0
    seed: int = 42
    saved_samples: int = 20
    init_std: float = 0.1
    clip: tuple[float, float] | None = None
    dtype: type = np.float32

    @classmethod
    def from_config(cls, bpmf, **overrides) -> BPMFParams:
        """From the ``[bpmf]`` section."""
        values = dict(
            rank=bpmf.rank,
            burn_in=bpmf.burn_in,
            samples=bpmf.samples,
            thin=bpmf.thin,
            prior=HyperPrior(bpmf.beta0, bpmf.nu0, bpmf.w0_scale),
            noise_precision=bpmf.noise_precision,
            sample_noise=bpmf.sample_noise,
            noise_shape=bpmf.noise_shape,
            noise_rate=bpmf.noise_rate,
            seed=bpmf.seed,
            saved_samples=bpmf.saved_samples,
            init_std=bpmf.init_std,
        )
        values.update(overrides)
        return cls(**values)

    def kept_sweeps(self) -> list[int]:
        """Sweeps whose sample enters the averages: after burn-in, every ``thin``-th."""
        return list(range(self.burn_in + self.thin, self.samples + 1, self.thin))

    def saved_sweeps(self) -> list[int]:
        """``saved_samples`` of the kept sweeps, evenly spread, ending with the last."""
        kept = self.kept_sweeps()
        n = min(self.saved_samples, len(kept))
        if n <= 0:
            return []
        picks = np.linspace(0, len(kept) - 1, n).round().astype(int) if n > 1 else [len(kept) - 1]
        return sorted({kept[p] for p in picks})


@dataclass
class SideOutcome:
    """A side's new sample (entities the sampler touched, in any order) and, on the item
    side, r̂ of every test rating in the sampler's test order."""

    rows: np.ndarray
    factors: np.ndarray
    bias: np.ndarray
    counts: np.ndarray
    row_sse: np.ndarray
    test_pred: np.ndarray | None = None


class SideSampler(Protocol):
    n_users: int
    n_items: int
    global_mean: float
    n_train: int
    n_test: int
    counts: dict

    def draw(
        self, side: str, fixed_factors, fixed_bias, hyper: Hyper, alpha: float, sweep: int
    ) -> SideOutcome:
        """Draw every entity of ``side`` given the other side's sample."""

    def test_ratings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user_idx, item_idx, rating) of the test ratings in the order of ``test_pred``."""


@dataclass
class SweepRecord:
    iteration: int
    train_rmse: float
    test_rmse: float | None
    objective: float  # log-likelihood of the train ratings under the sample
    seconds: float
    alpha: float


@dataclass
class Sample:
    """One whole kept sample (saved for later scoring)."""

    sweep: int
    user_factors: np.ndarray
    user_bias: np.ndarray
    item_factors: np.ndarray
    item_bias: np.ndarray
    alpha: float


@dataclass
class BPMFResult:
    posterior_mean: BiasedMF
    history: list[SweepRecord]
    samples: list[Sample]
    n_kept: int
    noise_variance: float  # E[1/α] over the kept samples
    test_users: np.ndarray | None = None
    test_items: np.ndarray | None = None
    test_ratings: np.ndarray | None = None
    test_mean: np.ndarray | None = None  # predictive mean (clipped when asked)
    test_sd: np.ndarray | None = None  # predictive sd


def predictive(
    total: np.ndarray, total_sq: np.ndarray, n: int, noise_variance: float, clip=None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of the predictive distribution from running sums of r̂ over n samples."""
    mean = total / n
    var = np.maximum(total_sq / n - mean * mean, 0.0)
    if clip is not None:
        mean = np.clip(mean, clip[0], clip[1])
    return mean, np.sqrt(var + noise_variance)


def run_gibbs(sampler: SideSampler, params: BPMFParams, name: str = "bpmf") -> BPMFResult:
    """Run ``params.samples`` Gibbs sweeps (module docstring)."""
    k, dim = params.rank, params.rank + 1
    seed = params.seed
    counts = {USER: np.asarray(sampler.counts[USER]), ITEM: np.asarray(sampler.counts[ITEM])}
    users_f = seeded_normal(seed ^ USER_INIT_SALT, np.arange(sampler.n_users), k, params.init_std)
    items_f = seeded_normal(seed, np.arange(sampler.n_items), k, params.init_std)
    users_b = np.zeros(sampler.n_users, dtype=np.float32)
    items_b = np.zeros(sampler.n_items, dtype=np.float32)
    # entities without ratings are 0 from the start (a sampler may never visit them)
    users_f[counts[USER] == 0] = 0.0
    items_f[counts[ITEM] == 0] = 0.0
    alpha = float(params.noise_precision)
    kept_sweeps, saved_sweeps = set(params.kept_sweeps()), set(params.saved_sweeps())
    sums = [np.zeros((sampler.n_users, k)), np.zeros(sampler.n_users)]
    sums += [np.zeros((sampler.n_items, k)), np.zeros(sampler.n_items)]
    inv_alpha_sum, n_kept = 0.0, 0
    test_sum = test_sq = truth = None
    history: list[SweepRecord] = []
    saved: list[Sample] = []
    for sweep in range(1, params.samples + 1):
        started = time.perf_counter()
        for side in (USER, ITEM):
            mine_f, mine_b = (users_f, users_b) if side == USER else (items_f, items_b)
            other_f, other_b = (items_f, items_b) if side == USER else (users_f, users_b)
            hyper = draw_hyper(
                side_statistics(mine_f, mine_b, counts[side]),
                params.prior,
                dim,
                noise_stream(seed, sweep, side),
            )
            out = sampler.draw(side, other_f, other_b, hyper, alpha, sweep)
            mine_f[out.rows], mine_b[out.rows] = out.factors, out.bias
        # the item pass's squared errors use the new users and the new items
        row_sse = np.zeros(sampler.n_items)
        row_sse[out.rows] = out.row_sse
        sse = float(row_sse.sum())  # summed in entity order: the same for any blocking
        if params.sample_noise:
            alpha = draw_noise(
                sse,
                sampler.n_train,
                params.noise_shape,
                params.noise_rate,
                noise_stream(seed, sweep, "noise"),
            )
        pred = out.test_pred
        if pred is not None and truth is None:
            truth = sampler.test_ratings()
            test_sum, test_sq = np.zeros(len(pred)), np.zeros(len(pred))
        if sweep in kept_sweeps:
            n_kept += 1
            inv_alpha_sum += 1.0 / alpha
            for acc, value in zip(sums, (users_f, users_b, items_f, items_b), strict=True):
                acc += value
            if pred is not None:
                test_sum += pred
                test_sq += pred * pred
            if sweep in saved_sweeps:
                saved.append(
                    Sample(sweep, users_f.copy(), users_b.copy(), items_f.copy(), items_b.copy(), alpha)
                )
        test_rmse = None
        if truth is not None and len(truth[2]):
            if n_kept:
                current = predictive(test_sum, test_sq, n_kept, 0.0, params.clip)[0]
            else:
                current = pred if params.clip is None else np.clip(pred, *params.clip)
            test_rmse = float(np.sqrt(np.mean((current - truth[2]) ** 2)))
        n = max(sampler.n_train, 1)
        record = SweepRecord(
            iteration=sweep,
            train_rmse=math.sqrt(sse / n),
            test_rmse=test_rmse,
            objective=0.5 * n * math.log(alpha / (2 * math.pi)) - 0.5 * alpha * sse,
            seconds=time.perf_counter() - started,
            alpha=alpha,
        )
        history.append(record)
        log.info(
            "%s sweep %d%s: train RMSE %.5f, test RMSE %s, alpha %.4f, %.2f s",
            name,
            sweep,
            " (burn-in)" if sweep <= params.burn_in else "",
            record.train_rmse,
            f"{test_rmse:.5f}" if test_rmse is not None else "n/a",
            alpha,
            record.seconds,
        )
    scale = 1.0 / max(n_kept, 1)
    f32 = lambda a: (a * scale).astype(np.float32)  # noqa: E731
    mean_model = BiasedMF(
        sampler.global_mean,
        f32(sums[0]),
        f32(sums[1]),
        f32(sums[2]),
        f32(sums[3]),
        counts[USER],
        counts[ITEM],
    )
    noise_var = inv_alpha_sum * scale
    result = BPMFResult(mean_model, history, saved, n_kept, noise_var)
    if truth is not None:
        result.test_users, result.test_items, result.test_ratings = truth
        result.test_mean, result.test_sd = predictive(test_sum, test_sq, n_kept, noise_var, params.clip)
    return result


def block_predictions(
    global_mean: float, draw: SideDraw, users_f: np.ndarray, users_b: np.ndarray, test: RatingRows
) -> np.ndarray:
    """r̂ (unclipped) of an item block's test ratings with its new items and the users."""
    if test.nnz == 0:
        return np.zeros(0)
    return predict(
        global_mean, draw.factors, draw.bias, users_f, users_b, test.row_positions(), test.global_cols()
    )


def block_test_ratings(test: RatingRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_idx, item_idx, rating) of an item block's test ratings, in storage order."""
    items = np.asarray(test.rows, np.int64)[test.row_positions()]
    return test.global_cols(), items, np.asarray(test.values, np.float64)


class LocalSampler:
    """Both sides in one process: the numpy sampler (and the tests' reference).

    ``train`` and ``test`` are (user_idx, item_idx, rating) arrays.
    """

    def __init__(self, train, n_users: int, n_items: int, params: BPMFParams, test=None):
        u, i, r = (np.asarray(a) for a in train)
        self.n_users, self.n_items, self.params = n_users, n_items, params
        self.n_train = len(r)
        self.global_mean = float(np.mean(r, dtype=np.float64)) if len(r) else 0.0
        users, items = np.arange(n_users), np.arange(n_items)
        width = tile_width(params.rank)
        self.blocks = {
            USER: RatingRows.from_coo(u, i, r, entities=users, width=width),
            ITEM: RatingRows.from_coo(i, u, r, entities=items, width=width),
        }
        self.counts = {side: block.counts() for side, block in self.blocks.items()}
        tu, ti, tr = (np.asarray(a) for a in test) if test is not None else ([], [], [])
        self.test_by_item = RatingRows.from_coo(ti, tu, tr, entities=items)
        self.n_test = self.test_by_item.nnz

    def draw(self, side, fixed_factors, fixed_bias, hyper, alpha, sweep) -> SideOutcome:
        p = self.params
        res = draw_rows(
            self.blocks[side],
            fixed_factors,
            fixed_bias,
            self.global_mean,
            hyper,
            alpha,
            p.seed,
            sweep,
            side,
            p.dtype,
        )
        out = SideOutcome(res.rows, res.factors, res.bias, res.counts, res.row_sse)
        if side == ITEM:
            out.test_pred = block_predictions(
                self.global_mean, res, fixed_factors, fixed_bias, self.test_by_item
            )
        return out

    def test_ratings(self):
        return block_test_ratings(self.test_by_item)
