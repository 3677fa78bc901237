"""The *compiled* strategy of the normal equations: one pass per row, in machine code (numba).

For each row of a block the kernel gathers the row's fixed-side vectors into a small
feature-major work matrix X (k+1 × ratings) and its targets t_ij = r_ij − μ − c_j, then forms
the lower triangle of G_i = X Xᵀ and b_i = X t as dot products along the row's ratings (which
the compiler vectorises), all in cache. :func:`als_rows` goes on, still per row, to add the
penalty and solve the (k+1) × (k+1) system by Cholesky, so ALS needs no array of Gram matrices
at all; :func:`gram_rows` returns G_i and b_i for the models that sample from them.

Against the numpy strategies of :mod:`mfspark.blocks.rows` this streams nothing per rating
but the rating's own fixed-side vector, and pays no per-call overhead per row: on one core it
is about 2.4x faster than the sparse strategy at rank 10 and 1.8x faster than the dense one at
rank 50 (``benchmarks/kernels.py``).

Every row's arithmetic depends only on its own ratings, taken in ascending column order (tile
by tile), so a row gets bit-identical results whichever block it is in. The compiler may
reorder the sums of one row (``FASTMATH`` allows reassociation, nothing that changes how NaN
or infinities behave); that order is fixed by the compiled code, not by the data's layout.
Products and sums are in the precision of the fixed side's factors (float32 or float64); the
Gram matrices, the solve and the squared errors are float64.

The functions are compiled on first use in each Python process (about a second each) and
cached on disk next to this module, or in numba's user-wide cache when that is read-only.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Reassociation lets the compiler vectorise each row's dot products; contraction lets it
#: fuse multiply-adds. Both only change the rounding of a row's sums, the same way for every
#: row; no flag that assumes away NaN or infinities is set.
FASTMATH = {"reassoc", "contract", "nsz"}

#: Ratings of a row gathered at a time: a task's work matrix x holds at most about SEGMENT ×
#: (k+2) values (48 KB at rank 10 in float32, 208 KB at rank 50) whatever its longest row
#: (a popular item's: 67,000 ratings in MovieLens 20M). From 200 to 3,000 the speed is the
#: same within 5 % at ranks 10 and 50 (user- and item-shaped blocks).
SEGMENT = 1000


def _compiled(function):
    """``function`` compiled on first call, cached on disk where numba finds a writable place
    (beside this module, or its user-wide cache, also for a module imported from a zip); where
    none is writable, compiled afresh in each process rather than failing the import."""
    try:
        return njit(cache=True, fastmath=FASTMATH, nogil=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return njit(cache=False, fastmath=FASTMATH, nogil=True)(function)


@_compiled
def _longest_row(indptr):
    longest = 1
    for r in range(indptr.shape[1] - 1):
        m = 0
        for tile in range(indptr.shape[0]):
            m += indptr[tile, r + 1] - indptr[tile, r]
        longest = max(longest, m)
    return longest


@_compiled
def _row_equations(indptr, cols, values, width, r, u, bias, mean, x, t, gram, rhs, segment):
    """Row r's normal equations: the lower triangle of G_r into gram, b_r into rhs, both
    float64; returns (ratings, Σ t²).

    The row's fixed-side vectors (with the constant 1 in row k) and targets are gathered into
    x and t a segment of at most ``segment`` ratings at a time, each segment's products added
    to gram and rhs, so x stays small however long the row. The segments are a function of
    the row's own ratings, so its sums stay independent of the blocking."""
    k = u.shape[1]
    gram[:, :] = 0.0
    rhs[:] = 0.0
    total = 0
    m = 0
    target_sq = 0.0
    for tile in range(indptr.shape[0]):
        first = tile * width
        for p in range(indptr[tile, r], indptr[tile, r + 1]):
            c = first + cols[p]
            for f in range(k):
                x[f, m] = u[c, f]
            x[k, m] = 1.0
            target = values[p] - mean - bias[c]
            t[m] = target
            target_sq += float(target) * float(target)
            m += 1
            if m == segment:
                _gram(x, t, m, gram, rhs)
                total += m
                m = 0
    if m:
        _gram(x, t, m, gram, rhs)
        total += m
    return total, target_sq


@_compiled
def _gram(x, t, m, gram, rhs):
    """Add x[:, :m] x[:, :m]ᵀ to the lower triangle of gram and x[:, :m] t[:m] to rhs.

    x has an even number of rows (a zero row pads an odd k + 1), taken two by two against
    two others: each pass over the row's ratings then loads 4 values per 4 multiply-adds,
    not 2 per 1 (1.2-1.5x faster at ranks 10-100). The sums accumulate in x's precision."""
    dim = x.shape[0]
    for i in range(0, dim, 2):
        x0 = x[i]
        x1 = x[i + 1]
        for j in range(i, dim, 2):
            y0 = x[j]
            y1 = x[j + 1]
            s00 = x0[0] * y0[0]
            s01 = x0[0] * y1[0]
            s10 = x1[0] * y0[0]
            s11 = x1[0] * y1[0]
            for p in range(1, m):  # m >= 1
                a0 = x0[p]
                a1 = x1[p]
                b0 = y0[p]
                b1 = y1[p]
                s00 += a0 * b0
                s01 += a0 * b1
                s10 += a1 * b0
                s11 += a1 * b1
            gram[j, i] += s00
            gram[j + 1, i] += s01
            gram[j, i + 1] += s10  # above the diagonal when j == i: never read
            gram[j + 1, i + 1] += s11
        s0 = x0[0] * t[0]
        s1 = x1[0] * t[0]
        for p in range(1, m):
            s0 += x0[p] * t[p]
            s1 += x1[p] * t[p]
        rhs[i] += s0
        rhs[i + 1] += s1


@_compiled
def _cholesky_solve(a, rhs, w, dim):
    """Solve a w = rhs for the symmetric positive definite leading dim × dim block of a,
    given by its lower triangle, which is overwritten by its Cholesky factor. False when it
    is not positive definite: when a pivot is not above the rounding noise of its diagonal
    entry (dim float64 epsilons of it), as a rank-deficient matrix's pivots are not."""
    for j in range(dim):
        d = a[j, j]
        noise = d * dim * 2.220446049250313e-16
        for q in range(j):
            d -= a[j, q] * a[j, q]
        if not d > noise:
            return False
        d = np.sqrt(d)
        a[j, j] = d
        for i in range(j + 1, dim):
            s = a[i, j]
            for q in range(j):
                s -= a[i, q] * a[j, q]
            a[i, j] = s / d
    for i in range(dim):
        s = rhs[i]
        for q in range(i):
            s -= a[i, q] * w[q]
        w[i] = s / a[i, i]
    for i in range(dim - 1, -1, -1):
        s = w[i]
        for q in range(i + 1, dim):
            s -= a[q, i] * w[q]
        w[i] = s / a[i, i]
    return True


@_compiled
def _work_arrays(indptr, u, segment):
    """The segment length, x (an even number of feature rows of it), t, and an even × even
    Gram matrix and right-hand side: what :func:`_row_equations` needs.

    x's rows are a multiple of 16 values apart but never a multiple of 256: rows a power of
    two apart (say 512 floats) fall into the same cache sets, which made the rank-50 products
    1.5x slower."""
    dim = u.shape[1] + 1
    even = dim + (dim & 1)
    length = min(_longest_row(indptr), segment)
    stride = -(-length // 16) * 16
    if stride % 256 == 0:
        stride += 16
    x = np.zeros((even, stride), dtype=u.dtype)  # a padding row stays zero
    return length, x, np.empty(length, dtype=u.dtype), np.empty((even, even)), np.empty(even)


@_compiled
def als_rows(
    indptr, cols, values, width, u, bias, mean, reg_diag, count_scaled, factors, row_bias, segment
):
    """Solve every row of a block (see :func:`mfspark.models.als.kernels.half_step`).

    Writes each row's factors and bias (zeros for a row without ratings) and returns
    (Σ squared error of the solved rows, the first row whose system is not positive
    definite or -1). ``segment``: ratings gathered at a time (:data:`SEGMENT`)."""
    k = u.shape[1]
    dim = k + 1
    segment, x, t, a, rhs = _work_arrays(indptr, u, segment)
    w = np.empty(dim)
    sse = 0.0
    for r in range(indptr.shape[1] - 1):
        m, target_sq = _row_equations(
            indptr, cols, values, width, r, u, bias, mean, x, t, a, rhs, segment
        )
        if m == 0:
            factors[r, :] = 0.0
            row_bias[r] = 0.0
            continue
        scale = float(m) if count_scaled else 1.0
        for i in range(dim):
            a[i, i] += scale * reg_diag[i]
        if not _cholesky_solve(a, rhs, w, dim):
            return sse, r
        # Σ_j (t_ij − w̃ᵀũ_j)² = Σ t² − w̃ᵀb − w̃ᵀΛw̃ (from (G + Λ) w̃ = b), O(k) per row
        fitted = 0.0
        shrink = 0.0
        for i in range(dim):
            fitted += w[i] * rhs[i]
            shrink += w[i] * w[i] * scale * reg_diag[i]
        sse += target_sq - fitted - shrink
        for f in range(k):
            factors[r, f] = w[f]
        row_bias[r] = w[k]
    return sse, -1


@_compiled
def gram_rows(indptr, cols, values, width, start, stop, u, bias, mean, gram, rhs, row_sq, segment):
    """G_i (full, symmetric) and b_i of rows start..stop into gram[:n], rhs[:n], and each
    row's Σ t² into row_sq[:n]; returns Σ t² over the rows."""
    dim = u.shape[1] + 1
    segment, x, t, g, b = _work_arrays(indptr[:, start : stop + 1], u, segment)
    total = 0.0
    for r in range(start, stop):
        n = r - start
        _, target_sq = _row_equations(indptr, cols, values, width, r, u, bias, mean, x, t, g, b, segment)
        row_sq[n] = target_sq
        total += target_sq
        for i in range(dim):
            rhs[n, i] = b[i]
            for j in range(i, dim):
                gram[n, i, j] = g[j, i]
                gram[n, j, i] = g[j, i]
    return total
