"""The Gibbs loop of Bayesian MF, shared by the Spark sampler and the single-process one.

The loop (:func:`run_gibbs`) runs on a *chain*: the object that holds the current sample and
the running sums and draws one side given the hyper-parameters and α. :class:`DriverChain`
keeps them as arrays on the driver and draws a side with a *side sampler* (given the fixed
side's current sample: draw every entity of the other side and, on the item side, return r̂ of
every test rating, in the sampler's fixed test order) — :class:`LocalSampler` in one process,
:class:`mfspark.models.bpmf.spark.SparkBlockSampler` on cached Spark blocks;
:class:`mfspark.models.bpmf.spark.DistributedChain` keeps them on the executors as block
states. All call :func:`mfspark.models.bpmf.kernels.draw_rows`, and every sum that feeds a draw
is exact (:class:`mfspark.exactsum.ExactSum`), so all give the same chain.

Sweep s = 1 … ``samples``: draw (μ_W, Λ_W) and every user, then (μ_V, Λ_V) and every item,
then α (when sampled). The first ``burn_in`` sweeps are discarded; after them every
``thin``-th sweep's sample is *kept*: it enters the running sums of the posterior mean of the
parameters and of the test predictions (Σ r̂ and Σ r̂² per test rating — O(n_test) numbers,
never one sample per rating). The predictive mean is the average r̂ (clipped to the
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
from mfspark.exactsum import ExactSum
from mfspark.models.bpmf.kernels import (
    Hyper,
    HyperPrior,
    SideDraw,
    SideStats,
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
    """A side's new sample (entities the sampler touched, in any order), the statistics of
    the new sample, the exact squared error of the side's train ratings with it and, on the
    item side, r̂ of every test rating in the sampler's test order."""

    rows: np.ndarray
    factors: np.ndarray
    bias: np.ndarray
    counts: np.ndarray
    stats: SideStats
    sse: ExactSum
    test_pred: np.ndarray | None = None


@dataclass
class PassResult:
    """What the Gibbs loop needs of one side's pass: the statistics of the new sample (the
    side's next hyper-parameters), Σ (r − r̂)² over the train ratings and, on the item side,
    Σ (current estimate − r)² over the n test ratings (``test_n`` 0: none)."""

    stats: SideStats
    sse: float
    test_sse: float = 0.0
    test_n: int = 0


class Chain(Protocol):
    """Where a chain's state lives: the driver (:class:`DriverChain`, arrays) or the
    executors (:class:`mfspark.models.bpmf.spark.DistributedChain`, block states)."""

    def start(self) -> dict[str, SideStats]:
        """Set the initial sample; the statistics of both sides."""

    def draw(
        self, side: str, hyper: Hyper, alpha: float, sweep: int, kept: bool, n_kept: int
    ) -> PassResult:
        """Draw every entity of ``side``; when ``kept``, add the new sample (and, item side, its
        test predictions) to the running sums, which then hold ``n_kept`` samples."""

    def sample(self, sweep: int, alpha: float) -> Sample:
        """The whole current sample."""

    def finish(self, n_kept: int, noise_variance: float) -> BPMFResult:
        """The posterior mean and test predictions from the running sums (history empty)."""

    def close(self) -> None: ...


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

    def chain(self, params: BPMFParams) -> Chain:
        """The chain this sampler runs (usually ``DriverChain(self, params)``)."""


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


def initial_sample(seed: int, rows: np.ndarray, counts: np.ndarray, side: str, params: BPMFParams):
    """The start of a side's chain for ``rows``: N(0, init_std²) factors keyed by entity id
    (users salted), zero biases, and zeros for entities without ratings."""
    factors = seeded_normal(
        seed ^ USER_INIT_SALT if side == USER else seed, rows, params.rank, params.init_std
    )
    factors[np.asarray(counts) == 0] = 0.0
    return factors, np.zeros(len(rows), dtype=np.float32)


def test_estimate(
    pred: np.ndarray, test_sum: np.ndarray, test_sq: np.ndarray, kept: bool, n_kept: int, clip
) -> np.ndarray:
    """Add this sweep's test predictions to the running sums when ``kept`` (in place) and
    return the current estimate: the average of the kept samples, or — during burn-in — this
    sample's prediction (clipped when asked)."""
    if kept:
        test_sum += pred
        test_sq += pred * pred
    if n_kept:
        return predictive(test_sum, test_sq, n_kept, 0.0, clip)[0]
    return pred if clip is None else np.clip(pred, *clip)


class DriverChain:
    """The chain's state as arrays on the driver; each side's pass is one ``sampler.draw``."""

    def __init__(self, sampler: SideSampler, params: BPMFParams):
        self.sampler, self.params = sampler, params
        self.counts = {USER: np.asarray(sampler.counts[USER]), ITEM: np.asarray(sampler.counts[ITEM])}
        n = {USER: sampler.n_users, ITEM: sampler.n_items}
        self.f, self.b = {}, {}
        for side in (USER, ITEM):
            self.f[side], self.b[side] = initial_sample(
                params.seed, np.arange(n[side]), self.counts[side], side, params
            )
        self.sums = {side: (np.zeros((n[side], params.rank)), np.zeros(n[side])) for side in n}
        self.truth = self.test_sum = self.test_sq = None

    def start(self) -> dict[str, SideStats]:
        return {s: side_statistics(self.f[s], self.b[s], self.counts[s]) for s in (USER, ITEM)}

    def draw(self, side, hyper, alpha, sweep, kept, n_kept) -> PassResult:
        other = ITEM if side == USER else USER
        out = self.sampler.draw(side, self.f[other], self.b[other], hyper, alpha, sweep)
        self.f[side][out.rows], self.b[side][out.rows] = out.factors, out.bias
        if kept:
            self.sums[side][0][...] += self.f[side]
            self.sums[side][1][...] += self.b[side]
        result = PassResult(out.stats, out.sse.value())
        pred = out.test_pred
        if pred is not None:
            if self.truth is None:
                self.truth = self.sampler.test_ratings()
                self.test_sum, self.test_sq = np.zeros(len(pred)), np.zeros(len(pred))
            current = test_estimate(pred, self.test_sum, self.test_sq, kept, n_kept, self.params.clip)
            result.test_sse = ExactSum.of((current - self.truth[2]) ** 2).value()
            result.test_n = len(pred)
        return result

    def sample(self, sweep: int, alpha: float) -> Sample:
        f, b = self.f, self.b
        return Sample(sweep, f[USER].copy(), b[USER].copy(), f[ITEM].copy(), b[ITEM].copy(), alpha)

    def finish(self, n_kept: int, noise_variance: float) -> BPMFResult:
        scale = 1.0 / max(n_kept, 1)
        (uf, ub), (vf, vb) = self.sums[USER], self.sums[ITEM]
        mean = posterior_mean(self.sampler.global_mean, scale, uf, ub, vf, vb, self.counts)
        result = BPMFResult(mean, [], [], n_kept, noise_variance)
        if self.truth is not None:
            result.test_users, result.test_items, result.test_ratings = self.truth
            result.test_mean, result.test_sd = predictive(
                self.test_sum, self.test_sq, n_kept, noise_variance, self.params.clip
            )
        return result

    def close(self) -> None:
        pass


def posterior_mean(global_mean, scale, uf, ub, vf, vb, counts) -> BiasedMF:
    """The posterior mean model from the running sums (``scale`` = 1 / samples kept)."""
    f32 = lambda a: (a * scale).astype(np.float32)  # noqa: E731
    return BiasedMF(global_mean, f32(uf), f32(ub), f32(vf), f32(vb), counts[USER], counts[ITEM])


def run_gibbs(sampler: SideSampler, params: BPMFParams, name: str = "bpmf") -> BPMFResult:
    """Run ``params.samples`` Gibbs sweeps (module docstring) on ``sampler.chain(params)``."""
    dim, seed = params.rank + 1, params.seed
    chain = sampler.chain(params)
    try:
        stats = chain.start()
        alpha = float(params.noise_precision)
        kept_sweeps, saved_sweeps = set(params.kept_sweeps()), set(params.saved_sweeps())
        inv_alpha_sum, n_kept = 0.0, 0
        history: list[SweepRecord] = []
        saved: list[Sample] = []
        for sweep in range(1, params.samples + 1):
            started = time.perf_counter()
            kept = sweep in kept_sweeps
            n_kept += kept
            for side in (USER, ITEM):
                hyper = draw_hyper(stats[side], params.prior, dim, noise_stream(seed, sweep, side))
                out = chain.draw(side, hyper, alpha, sweep, kept, n_kept)
                stats[side] = out.stats
            sse = out.sse  # the item pass's errors use the new users and the new items
            if params.sample_noise:
                alpha = draw_noise(
                    sse,
                    sampler.n_train,
                    params.noise_shape,
                    params.noise_rate,
                    noise_stream(seed, sweep, "noise"),
                )
            if kept:
                inv_alpha_sum += 1.0 / alpha
                if sweep in saved_sweeps:
                    saved.append(chain.sample(sweep, alpha))
            test_rmse = math.sqrt(out.test_sse / out.test_n) if out.test_n else None
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
        result = chain.finish(n_kept, inv_alpha_sum / max(n_kept, 1))
    finally:
        chain.close()
    result.history, result.samples = history, saved
    return result


def block_predictions(
    global_mean: float, draw: SideDraw, users_f: np.ndarray, users_b: np.ndarray, test: RatingRows
) -> np.ndarray:
    """r̂ (unclipped) of an item block's test ratings with its new items and the users, given
    as the block's local arrays (:meth:`RatingRows.local`)."""
    if test.nnz == 0:
        return np.zeros(0)
    return predict(
        global_mean, draw.factors, draw.bias, users_f, users_b, test.row_positions(), test.local_cols()
    )


def block_outcome(draw: SideDraw) -> SideOutcome:
    """A block's SideOutcome: its new sample, the statistics of it and its exact error sum."""
    return SideOutcome(
        draw.rows,
        draw.factors,
        draw.bias,
        draw.counts,
        side_statistics(draw.factors, draw.bias, draw.counts),
        ExactSum.of(draw.row_sse),
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
        out = block_outcome(res)
        if side == ITEM:
            out.test_pred = block_predictions(
                self.global_mean, res, fixed_factors, fixed_bias, self.test_by_item
            )
        return out

    def test_ratings(self):
        return block_test_ratings(self.test_by_item)

    def chain(self, params: BPMFParams) -> DriverChain:
        return DriverChain(self, params)
