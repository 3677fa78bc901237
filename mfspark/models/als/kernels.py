"""numpy kernels of biased ALS — no Spark here, so they are tested without a JVM.

Model: r̂_ij = μ + b_i + c_j + w_iᵀu_j. Objective

    J = Σ_(i,j)∈Ω (r_ij − r̂_ij)² + Σ_i s_i (λ_f‖w_i‖² + λ_b b_i²) + Σ_j s_j (λ_f‖u_j‖² + λ_b c_j²)

with s = 1 (``reg_scaling="none"``: plain L2, the MAP estimate of probabilistic MF) or
s = the row's number of ratings (``"count"``: ALS-WR, Spark's scaling).

A *half-step* fixes one side (the "fixed" entities j with factors u_j and biases c_j) and
solves every entity i of the other side jointly for its factors and bias, with the augmented
vectors ũ_j = [u_j, 1] and w̃_i = [w_i, b_i]:

    (Σ_j∈Ω_i ũ_j ũ_jᵀ + s_i diag(λ_f,…,λ_f, λ_b)) w̃_i = Σ_j∈Ω_i (r_ij − μ − c_j) ũ_j

With the compiled Gram strategy (the default) one compiled pass per row forms the system,
adds the penalty and solves it by Cholesky (:func:`mfspark.blocks.compiled.als_rows`), so no
array of Gram matrices exists. With the numpy strategies the Gram matrices and right-hand
sides of a whole block come from the shared :func:`mfspark.blocks.rows.normal_equations`, and
this module adds the penalty and one batched ``np.linalg.solve`` (float64) for all systems.
No Python loop runs over users, items or ratings, and a row gets bit-identical results
whichever block it is in.

The squared error of the solved rows comes free from the normal equations:
Σ_j (t_ij − w̃_iᵀũ_j)² = Σ_j t_ij² − 2 w̃_iᵀ b_i + w̃_iᵀ G_i w̃_i.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mfspark.blocks.rows import (
    CHUNK_ROWS,
    RatingRows,
    compiled_operands,
    gram_strategy,
    normal_equations,
)

SINGULAR = (
    "singular ALS normal equations: some rows have fewer ratings than rank + 1; "
    "use a positive regularisation (als.reg, als.reg_bias)"
)


@dataclass(frozen=True)
class Regularization:
    """λ_f (``reg``) on factors, λ_b (``reg_bias``) on biases, and how they scale per row."""

    reg: float
    reg_bias: float
    scaling: str = "count"  # "none" | "count"

    def __post_init__(self):
        if self.scaling not in ("none", "count"):
            raise ValueError(f"reg_scaling must be 'none' or 'count', got {self.scaling!r}")

    def row_scale(self, counts: np.ndarray) -> np.ndarray:
        return counts.astype(np.float64) if self.scaling == "count" else np.ones(len(counts))

    def penalty(self, factors: np.ndarray, bias: np.ndarray, counts: np.ndarray) -> float:
        """Σ_i s_i (λ_f‖w_i‖² + λ_b b_i²) over the given rows."""
        f = factors.astype(np.float64)
        b = bias.astype(np.float64)
        per_row = self.reg * np.einsum("ij,ij->i", f, f) + self.reg_bias * b * b
        return float(np.dot(self.row_scale(counts), per_row))


@dataclass
class HalfStepResult:
    rows: np.ndarray  # int32 (n,) global indices
    factors: np.ndarray  # (n, k)
    bias: np.ndarray  # (n,)
    counts: np.ndarray  # int64 (n,) ratings per row
    sse: float  # Σ (r − r̂)² over the rows' ratings, with the new parameters
    penalty: float  # regularisation of the solved rows


def half_step(
    block: RatingRows,
    fixed_factors: np.ndarray,
    fixed_bias: np.ndarray,
    global_mean: float,
    reg: Regularization,
    dtype=np.float32,
    chunk_rows: int = CHUNK_ROWS,
    strategy: str = "auto",
    batch_cells: int | None = None,
) -> HalfStepResult:
    """Solve every row of ``block`` with the other side fixed (see module docstring).

    ``dtype`` is the precision of the products (float32 is faster; the solve is always
    float64) and of the returned factors; ``strategy`` the Gram strategy
    (:func:`mfspark.blocks.rows.gram_strategy`); ``chunk_rows`` and ``batch_cells`` bound
    its work arrays.
    """
    k = fixed_factors.shape[1]
    reg_diag = np.array([reg.reg] * k + [reg.reg_bias], dtype=np.float64)
    counts = block.counts()
    factors = np.zeros((block.n_rows, k), dtype=dtype)
    row_bias = np.zeros(block.n_rows, dtype=dtype)
    if gram_strategy(k, strategy) == "compiled":
        from mfspark.blocks.compiled import SEGMENT, als_rows

        operands = compiled_operands(block, fixed_factors, fixed_bias, global_mean, dtype)
        sse, singular = als_rows(*operands, reg_diag, reg.scaling == "count", factors, row_bias, SEGMENT)
        if singular >= 0:
            raise np.linalg.LinAlgError(SINGULAR)
    else:
        equations = normal_equations(
            block,
            fixed_factors,
            fixed_bias,
            global_mean,
            dtype,
            chunk_rows,
            strategy=strategy,
            batch_cells=batch_cells,
        )
        sse = _solve(equations, reg, reg_diag, factors, row_bias)
    return HalfStepResult(
        rows=block.rows,
        factors=factors,
        bias=row_bias,
        counts=counts,
        sse=max(float(sse), 0.0),
        penalty=reg.penalty(factors, row_bias, counts),
    )


def _solve(equations, reg: Regularization, reg_diag, factors, row_bias) -> float:
    """Add the penalty to each chunk's normal equations, solve them in one batched solve into
    ``factors`` and ``row_bias``, and return the rows' squared error."""
    k = factors.shape[1]
    dim = k + 1
    diagonal = np.arange(dim)
    sse = 0.0
    for eq in equations:
        system, cnt = eq.gram, eq.counts
        penalty_diag = reg.row_scale(cnt)[:, None] * reg_diag  # Λ_i, (n, dim)
        system[:, diagonal, diagonal] += penalty_diag
        system[cnt == 0] = np.eye(dim)  # no ratings: factor 0 and bias 0 (rhs is 0 too)
        penalty_diag[cnt == 0] = 0.0
        try:
            solution = np.linalg.solve(system, eq.rhs[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            raise np.linalg.LinAlgError(SINGULAR) from None
        # Σ_j (t_ij − w̃ᵀũ_j)² = Σ t² − 2 w̃ᵀb + w̃ᵀG w̃, and (G + Λ) w̃ = b gives
        # w̃ᵀG w̃ = w̃ᵀb − w̃ᵀΛ w̃: the squared error costs O(k) per row, not O(k²).
        fitted = np.einsum("ni,ni->n", solution, eq.rhs)
        shrink = np.einsum("ni,ni->n", solution * solution, penalty_diag)
        sse += eq.target_sq - float(np.sum(fitted) + np.sum(shrink))
        factors[eq.start : eq.stop] = solution[:, :k]
        row_bias[eq.start : eq.stop] = solution[:, k]
    return sse


def reference_half_step(
    block: RatingRows,
    fixed_factors: np.ndarray,
    fixed_bias: np.ndarray,
    global_mean: float,
    reg: Regularization,
) -> tuple[np.ndarray, np.ndarray]:
    """The obvious per-row loop in float64: the test oracle for :func:`half_step`."""
    k = fixed_factors.shape[1]
    factors = np.zeros((block.n_rows, k))
    bias = np.zeros(block.n_rows)
    all_cols, all_rows = block.global_cols(), block.row_positions()
    for r in range(block.n_rows):
        mine = all_rows == r
        if not mine.any():
            continue
        cols = all_cols[mine]
        x = np.hstack([fixed_factors[cols].astype(np.float64), np.ones((len(cols), 1))])
        t = block.values[mine].astype(np.float64) - global_mean - fixed_bias[cols]
        s = len(cols) if reg.scaling == "count" else 1.0
        lam = np.diag([reg.reg * s] * k + [reg.reg_bias * s])
        w = np.linalg.solve(x.T @ x + lam, x.T @ t)
        factors[r], bias[r] = w[:k], w[k]
    return factors, bias
