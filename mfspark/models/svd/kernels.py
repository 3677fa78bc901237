"""numpy kernels of the truncated SVD — no Spark here, so they are tested without a JVM.

The matrix decomposed is the rating matrix with a bias baseline removed,

    X_ij = r_ij − (μ + b_i + c_j)   for observed (i, j),   X_ij = 0 elsewhere,

and it is never formed: its products with a dense k-wide matrix are computed block by
block from the stored ratings. For a block of rows (users, or items) against the fixed
side (the other entities),

    (X D)_i = Σ_j∈Ω_i x_ij D_j

is one sparse × dense product per column tile, the per-cell shift μ + b_i + c_j computed on
the fly from the biases. A user block gives rows of X·D, an item block rows of Xᵀ·D: the same
function serves both sides. Each row's sum runs over its own ratings in ascending column
order, so a row gets bit-identical results whichever block it is in.
"""

from __future__ import annotations

import numpy as np

from mfspark.blocks.rows import RatingRows, _accumulate, _padded


def residual_product(
    block: RatingRows,
    row_bias: np.ndarray,
    col_bias: np.ndarray,
    global_mean: float,
    dense: np.ndarray,
) -> np.ndarray:
    """Σ_j∈Ω_i (r_ij − μ − b_i − c_j) D_j for every row i of ``block`` (float64, (n, l)).

    ``row_bias`` is indexed by global index (``block.rows``), ``col_bias`` and ``dense``
    (fixed entities × l) by the block's column index (global, or local: ``block.local``).
    """
    n_fixed, width = dense.shape
    padded = _padded(width)
    operand = np.zeros((n_fixed, padded), dtype=np.float64)
    operand[:, :width] = dense
    out = np.zeros((block.n_rows, padded), dtype=np.float64)
    own_bias = np.take(np.asarray(row_bias, np.float64), block.rows)
    col_bias = np.asarray(col_bias, np.float64)
    for t in range(block.n_tiles):
        a, b, ptr = block.tile(t, 0, block.n_rows)
        if a == b:
            continue
        first = t * block.tile_width
        last = min(first + block.tile_width, n_fixed)
        cols = np.asarray(block.cols[a:b])
        shift = np.repeat(own_bias, np.diff(ptr)) + np.take(col_bias[first:last], cols) + global_mean
        values = np.asarray(block.values[a:b], dtype=np.float64) - shift
        _accumulate(out, ptr.astype(cols.dtype), cols, values, operand[first:last])
    return out[:, :width]


def orthonormal(matrix: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of ``matrix`` (reduced QR, float64)."""
    q, _ = np.linalg.qr(np.asarray(matrix, np.float64), mode="reduced")
    return q


def rayleigh_ritz(
    basis: np.ndarray, projected: np.ndarray, rank: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, s, V) of the rank-``rank`` SVD of X restricted to the row space ``basis`` = Q.

    ``projected`` is Xᵀ Q (items × l), so B = Qᵀ X = projectedᵀ is small (l × items);
    B = Ũ S Vᵀ gives X ≈ (Q Ũ) S Vᵀ, the best approximation of X within span(Q).
    """
    left, s, right_t = np.linalg.svd(projected.T, full_matrices=False)
    return basis @ left[:, :rank], s[:rank], right_t[:rank].T
