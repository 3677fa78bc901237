"""numpy kernels of Bayesian matrix factorisation (BPMF with biases) — no Spark here.

Model: r_ij ~ N(μ + b_i + c_j + w_iᵀu_j, α⁻¹). With the augmented vectors w̃_i = [w_i, b_i]
and ũ_j = [u_j, 1] of the ALS kernels, every user's w̃_i ~ N(μ_W, Λ_W⁻¹) and every item's
ṽ_j = [u_j, c_j] ~ N(μ_V, Λ_V⁻¹) (k + 1 dimensions: factors and bias together), and each
side's (μ, Λ) has a Normal-Wishart hyper-prior: Λ ~ Wishart(W₀, ν₀), μ | Λ ~ N(μ₀, (β₀Λ)⁻¹)
with μ₀ = 0 and W₀ = ``w0_scale`` · I. μ is the global train mean (fixed).

One Gibbs step for one side, with the other side fixed:

1. :func:`draw_hyper` — (μ, Λ) from its Normal-Wishart posterior given the side's current
   sample, through the sufficient statistics N, Σx, Σxxᵀ of the entities with ratings
   (:func:`side_statistics`):  β* = β₀ + N, ν* = ν₀ + N, x̄ = Σx / N,
   μ* = N x̄ / β*,  W*⁻¹ = W₀⁻¹ + (Σxxᵀ − N x̄x̄ᵀ) + (β₀N/β*) x̄x̄ᵀ.
2. :func:`draw_rows` — every row i of a block from its Gaussian conditional
   N(m_i, P_i⁻¹) with P_i = Λ + α G_i and m_i = P_i⁻¹(Λμ + α b_i), where G_i and b_i are
   the ALS normal equations (:func:`mfspark.blocks.rows.normal_equations`): the ALS system
   with the prior in place of λ. With the Cholesky factor P_i = L_i L_iᵀ (batched), the
   draw is x_i = L_i⁻ᵀ(L_i⁻¹ h_i + z_i), h_i = Λμ + α b_i, z_i ~ N(0, I): mean m_i,
   covariance (L_i L_iᵀ)⁻¹ = P_i⁻¹. z_i is keyed by (seed, sweep, side, entity id)
   (:func:`mfspark.blocks.random.keyed_normal`), so a row's draw does not depend on the
   block it is in. Both triangular solves are vectorised over the rows (a loop over the
   k + 1 dimensions, never over rows).
3. :func:`draw_noise` (after the item side) — α ~ Gamma(a₀ + n/2, b₀ + SSE/2) when the noise
   precision is sampled; the per-row squared error comes free from the normal equations,
   Σ_j (t_ij − x_iᵀũ_j)² = Σ_j t_ij² − 2 x_iᵀb_i + x_iᵀG_i x_i.

An entity without training ratings keeps the value 0 (not a draw from the prior), so its
predictions fall back to μ plus the known bias — never NaN — as for ALS, and it is left out
of the hyper-parameter statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mfspark.blocks.random import keyed_normal
from mfspark.blocks.rows import CHUNK_ROWS, ITEM, USER, RatingRows, normal_equations
from mfspark.errors import MfsparkError
from mfspark.exactsum import ExactSum

SIDE_CODE = {USER: 0, ITEM: 1}


@dataclass(frozen=True)
class HyperPrior:
    """Normal-Wishart hyper-prior of one side: μ₀ = 0, β₀, W₀ = w0_scale·I, ν₀ (≥ k + 1)."""

    beta0: float = 2.0
    nu0: float = 0.0  # 0: k + 1, the number of dimensions
    w0_scale: float = 1.0

    def degrees(self, dim: int) -> float:
        return float(self.nu0) if self.nu0 else float(dim)


@dataclass
class Hyper:
    """A side's drawn hyper-parameters: prior mean μ and precision Λ of its rows."""

    mean: np.ndarray  # (dim,)
    precision: np.ndarray  # (dim, dim)


def noise_stream(seed: int, sweep: int, what: str) -> np.random.Generator:
    """The driver's generator for one (sweep, draw): hyper-parameters of a side, or α."""
    code = {USER: 0, ITEM: 1, "noise": 2}[what]
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, sweep, code, 7]))


def row_stream(sweep: int, side: str) -> int:
    """The key of the row draws of one (sweep, side) for :func:`keyed_normal`."""
    return 2 * sweep + SIDE_CODE[side]


@dataclass
class SideStats:
    """A side's sufficient statistics N, Σx, Σxxᵀ (x = [factors, bias] of the entities with
    ratings), kept as exact sums (:class:`mfspark.exactsum.ExactSum`): blocks' statistics add
    up to the same numbers whatever the blocking, so the hyper-parameter draws — and the whole
    chain — do not depend on it."""

    n: int
    total: ExactSum  # Σx, (dim,)
    upper: ExactSum  # upper triangle of Σxxᵀ, (dim(dim+1)/2,)
    dim: int

    def __add__(self, other: SideStats) -> SideStats:
        return SideStats(self.n + other.n, self.total + other.total, self.upper + other.upper, self.dim)

    def values(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(N, Σx, Σxxᵀ) as float64 arrays, each sum rounded once."""
        iu, ju = np.triu_indices(self.dim)
        outer = np.empty((self.dim, self.dim))
        outer[iu, ju] = outer[ju, iu] = self.upper.value()
        return self.n, np.asarray(self.total.value()), outer


def side_statistics(factors: np.ndarray, bias: np.ndarray, counts: np.ndarray) -> SideStats:
    """The :class:`SideStats` of some entities of a side (those with ``counts`` > 0)."""
    rated = np.asarray(counts) > 0
    dim = factors.shape[1] + 1
    iu, ju = np.triu_indices(dim)
    stats = SideStats(0, ExactSum((dim,)), ExactSum((len(iu),)), dim)
    for start in range(0, len(rated), CHUNK_ROWS):
        keep = rated[start : start + CHUNK_ROWS]
        x = np.hstack(
            [factors[start : start + CHUNK_ROWS][keep], bias[start : start + CHUNK_ROWS][keep, None]]
        ).astype(np.float64)
        if len(x):
            stats = stats + SideStats(len(x), ExactSum.of(x), ExactSum.of(x[:, iu] * x[:, ju]), dim)
    return stats


def posterior_parameters(stats, prior: HyperPrior, dim: int):
    """(μ*, β*, W*, ν*) of the Normal-Wishart posterior (module docstring, step 1), from a
    :class:`SideStats` or its (N, Σx, Σxxᵀ) values."""
    n, total, outer = stats.values() if isinstance(stats, SideStats) else stats
    beta = prior.beta0 + n
    nu = prior.degrees(dim) + n
    if n:
        mean = total / n
        scatter = outer - n * np.outer(mean, mean)
        w_inv = np.eye(dim) / prior.w0_scale + scatter + (prior.beta0 * n / beta) * np.outer(mean, mean)
        mu = n * mean / beta
    else:
        w_inv, mu = np.eye(dim) / prior.w0_scale, np.zeros(dim)
    w = np.linalg.inv((w_inv + w_inv.T) / 2)
    return mu, beta, (w + w.T) / 2, nu


def wishart(rng: np.random.Generator, scale: np.ndarray, dof: float) -> np.ndarray:
    """One draw from Wishart(scale, dof) by the Bartlett decomposition."""
    dim = scale.shape[0]
    chol = np.linalg.cholesky(scale)
    a = np.zeros((dim, dim))
    a[np.diag_indices(dim)] = np.sqrt(rng.chisquare(dof - np.arange(dim)))
    low = np.tril_indices(dim, -1)
    a[low] = rng.standard_normal(len(low[0]))
    la = chol @ a
    return la @ la.T


def draw_hyper(stats, prior: HyperPrior, dim: int, rng: np.random.Generator) -> Hyper:
    """(μ, Λ) from the Normal-Wishart posterior given a side's statistics."""
    mu, beta, w, nu = posterior_parameters(stats, prior, dim)
    precision = wishart(rng, w, nu)
    cov = np.linalg.inv(beta * precision)
    mean = rng.multivariate_normal(mu, (cov + cov.T) / 2, method="cholesky")
    return Hyper(mean, precision)


def draw_noise(sse: float, n: int, shape: float, rate: float, rng: np.random.Generator) -> float:
    """α ~ Gamma(shape + n/2, rate + SSE/2) (rate parameterisation)."""
    return float(rng.gamma(shape + n / 2.0, 1.0 / (rate + sse / 2.0)))


def forward_substitution(low: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """y with L y = rhs for a batch of lower-triangular L (n, d, d) and rhs (n, d)."""
    y = np.empty_like(rhs)
    for d in range(rhs.shape[1]):
        y[:, d] = (rhs[:, d] - np.einsum("nj,nj->n", low[:, d, :d], y[:, :d])) / low[:, d, d]
    return y


def backward_substitution(low: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """x with Lᵀ x = rhs for a batch of lower-triangular L (n, d, d) and rhs (n, d)."""
    x = np.empty_like(rhs)
    for d in range(rhs.shape[1] - 1, -1, -1):
        x[:, d] = (rhs[:, d] - np.einsum("nj,nj->n", low[:, d + 1 :, d], x[:, d + 1 :])) / low[:, d, d]
    return x


def _cholesky(precision: np.ndarray, rows: np.ndarray, side: str, sweep: int) -> np.ndarray:
    """Batched Cholesky; a precision that is not numerically positive definite is an error
    naming the entity and the sweep (never NaN in the output)."""
    bad = ~np.isfinite(precision).all(axis=(1, 2))
    if not bad.any():
        try:
            low = np.linalg.cholesky(precision)
            bad = ~np.isfinite(low).all(axis=(1, 2)) | (np.diagonal(low, axis1=1, axis2=2) <= 0).any(1)
            if not bad.any():
                return low
        except np.linalg.LinAlgError:
            with np.errstate(invalid="ignore"):
                bad = ~(np.linalg.eigvalsh(precision)[:, 0] > 0)
    first = int(np.flatnonzero(bad)[0])
    raise MfsparkError(
        f"bpmf sweep {sweep}: the posterior precision of {side} idx {int(rows[first])} is not "
        f"positive definite ({int(bad.sum())} rows of its block); the sampler diverged — use a "
        "larger bpmf.w0_scale⁻¹ (smaller w0_scale) or a fixed, smaller bpmf.noise_precision"
    )


@dataclass
class SideDraw:
    """One side's new sample for the rows of a block."""

    rows: np.ndarray  # int32 (n,) global indices
    factors: np.ndarray  # (n, k)
    bias: np.ndarray  # (n,)
    counts: np.ndarray  # (n,) train ratings per row
    row_sse: np.ndarray  # (n,) Σ (r − r̂)² over each row's ratings with the new sample


def draw_rows(
    block: RatingRows,
    fixed_factors: np.ndarray,
    fixed_bias: np.ndarray,
    global_mean: float,
    hyper: Hyper,
    alpha: float,
    seed: int,
    sweep: int,
    side: str,
    dtype=np.float32,
    chunk_rows: int = CHUNK_ROWS,
) -> SideDraw:
    """Draw every row of ``block`` from its conditional (module docstring, step 2)."""
    k = fixed_factors.shape[1]
    dim = k + 1
    counts = block.counts()
    factors = np.zeros((block.n_rows, k), dtype=dtype)
    row_bias = np.zeros(block.n_rows, dtype=dtype)
    row_sse = np.zeros(block.n_rows)
    prior_rhs = hyper.precision @ hyper.mean
    stream = row_stream(sweep, side)
    equations = normal_equations(
        block, fixed_factors, fixed_bias, global_mean, dtype, chunk_rows, row_sums=True
    )
    for eq in equations:
        rows = block.rows[eq.start : eq.stop]
        precision = hyper.precision[None] + alpha * eq.gram
        rhs = prior_rhs[None] + alpha * eq.rhs
        low = _cholesky(precision, rows, side, sweep)
        z = keyed_normal(seed, stream, rows, dim)
        x = backward_substitution(low, forward_substitution(low, rhs) + z)
        x[eq.counts == 0] = 0.0  # no ratings: keep 0 (module docstring)
        fitted = np.einsum("ni,ni->n", x, eq.rhs)
        quad = np.einsum("ni,nij,nj->n", x, eq.gram, x)
        row_sse[eq.start : eq.stop] = np.maximum(eq.row_target_sq - 2.0 * fitted + quad, 0.0)
        factors[eq.start : eq.stop] = x[:, :k]
        row_bias[eq.start : eq.stop] = x[:, k]
    return SideDraw(block.rows, factors, row_bias, counts, row_sse)
