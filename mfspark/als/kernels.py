"""numpy kernels of biased ALS — no Spark here, so they are tested without a JVM.

Model (DESIGN.md section 1): r̂_ij = μ + b_i + c_j + w_iᵀu_j. Objective

    J = Σ_(i,j)∈Ω (r_ij − r̂_ij)² + Σ_i s_i (λ_f‖w_i‖² + λ_b b_i²) + Σ_j s_j (λ_f‖u_j‖² + λ_b c_j²)

with s = 1 (``reg_scaling="none"``: plain L2, the MAP estimate of probabilistic MF) or
s = the row's number of ratings (``"count"``: ALS-WR, Spark's scaling).

A *half-step* fixes one side (the "fixed" entities j with factors u_j and biases c_j) and
solves every entity i of the other side jointly for its factors and bias, with the augmented
vectors ũ_j = [u_j, 1] and w̃_i = [w_i, b_i]:

    (Σ_j∈Ω_i ũ_j ũ_jᵀ + s_i diag(λ_f,…,λ_f, λ_b)) w̃_i = Σ_j∈Ω_i (r_ij − μ − c_j) ũ_j

For a whole block of rows at once:

* the Gram matrices are one sparse × dense product: the rows' 0/1 pattern (CSR) times the
  matrix P whose row j holds the upper triangle of ũ_j ũ_jᵀ ((k+1)(k+2)/2 columns);
* the right-hand sides are the CSR of targets t_ij = r_ij − μ − c_j times Ũ;
* one batched ``np.linalg.solve`` (float64) solves all systems.

No Python loop runs over users, items or ratings. Each row's arithmetic depends only on
its own ratings (kept in ascending column order), so a row gets bit-identical results
whichever block it is in.

The squared error of the solved rows comes free from the normal equations:
Σ_j (t_ij − w̃_iᵀũ_j)² = Σ_j t_ij² − 2 w̃_iᵀ b_i + w̃_iᵀ G_i w̃_i.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

try:  # scipy's CSR × dense kernel, called directly so it accumulates in place
    from scipy.sparse._sparsetools import csr_matvecs as _csr_matvecs
except ImportError:  # pragma: no cover
    _csr_matvecs = None

# Rows per chunk inside a half-step: bounds the dense (rows × (k+1)²) float64 work arrays.
CHUNK_ROWS = 32_768


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


#: Width of a column tile when the fixed side has rank 10: its packed outer products
#: (66 float32 per entity) then fill about 1 MB, one core's L2 cache (see tile_width).
CACHE_BYTES = 1 << 20


def tile_width(rank: int) -> int:
    """Fixed-side entities per column tile for ``rank``: a power of two whose packed outer
    products fit in ``CACHE_BYTES`` (a function of the rank only, so results never depend
    on blocking)."""
    per_entity = (rank + 1) * (rank + 2) // 2 * 4
    return int(2 ** max(6, int(np.log2(max(1, CACHE_BYTES // per_entity)))))


@dataclass
class RatingRows:
    """Ratings of a set of rows (the entities being solved), tiled by column.

    The fixed side's index range is cut into tiles of ``tile_width`` columns and the
    ratings are stored tile by tile, each tile a CSR over all rows: rating p of row r in
    tile t has ``indptr[t, r] <= p < indptr[t, r + 1]``, column ``t * tile_width + cols[p]``
    (columns ascending within a row) and value ``values[p]``. A sparse × dense product tile
    by tile reads only one tile's slice of the dense operand, which stays in cache; on
    MovieLens-20M-sized blocks that is about 4x faster than one product over all columns.
    One tile as wide as the fixed side is a plain CSR. Rows may have no ratings.
    """

    rows: np.ndarray  # int32 (n,) global indices of the rows
    indptr: np.ndarray  # int64 (n_tiles, n+1) offsets into cols/values
    cols: np.ndarray  # int32 (nnz,) column within its tile
    values: np.ndarray  # float32 (nnz,)
    tile_width: int

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @property
    def n_tiles(self) -> int:
        return self.indptr.shape[0]

    @property
    def nnz(self) -> int:
        return len(self.cols)

    def counts(self) -> np.ndarray:
        """Ratings per row."""
        return (self.indptr[:, 1:] - self.indptr[:, :-1]).sum(axis=0)

    def tile(self, t: int, start: int, stop: int) -> tuple[int, int, np.ndarray]:
        """(first, last) rating offsets and the rebased indptr of rows start..stop in tile t."""
        ptr = self.indptr[t, start : stop + 1]
        return int(ptr[0]), int(ptr[-1]), ptr - ptr[0]

    def global_cols(self) -> np.ndarray:
        """Global column of every stored rating (in storage order)."""
        out = self.cols.astype(np.int64)
        for t in range(1, self.n_tiles):
            out[self.indptr[t, 0] : self.indptr[t, -1]] += t * self.tile_width
        return out

    def row_positions(self) -> np.ndarray:
        """Row position (0..n-1) of every stored rating (in storage order)."""
        out = np.empty(self.nnz, dtype=np.int64)
        for t in range(self.n_tiles):
            a, b, ptr = self.tile(t, 0, self.n_rows)
            out[a:b] = np.repeat(np.arange(self.n_rows), np.diff(ptr))
        return out

    @staticmethod
    def from_coo(
        rows: np.ndarray,
        cols: np.ndarray,
        values: np.ndarray,
        entities: np.ndarray | None = None,
        width: int | None = None,
    ) -> RatingRows:
        """Tile (row, col, value) triples; ``width=None`` gives one tile (a plain CSR).

        ``entities`` (sorted, unique) lists the rows to include, also those without ratings;
        by default the distinct values of ``rows``.
        """
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        if entities is None:
            entities = np.unique(rows)
        entities = np.asarray(entities, dtype=np.int64)
        pos = np.searchsorted(entities, rows)
        if len(rows) and (pos.max() >= len(entities) or not np.array_equal(entities[pos], rows)):
            raise ValueError("ratings for rows that are not among the entities")
        n_cols = int(cols.max()) + 1 if len(cols) else 1
        width = int(width) if width else max(n_cols, 1)
        n_tiles = max(1, -(-n_cols // width))
        tile, local = np.divmod(cols, width)
        n = len(entities)
        # one stable sort of a combined (tile, row, col) key
        cell = tile * n + pos
        order = np.argsort(cell * width + local, kind="stable")
        starts = np.zeros(n_tiles * n + 1, dtype=np.int64)
        np.cumsum(np.bincount(cell, minlength=n_tiles * n), out=starts[1:])
        indptr = np.stack([starts[t * n : t * n + n + 1] for t in range(n_tiles)])
        return RatingRows(
            entities.astype(np.int32),
            indptr,
            np.take(local, order).astype(np.int32),
            np.take(np.asarray(values), order).astype(np.float32),
            width,
        )


@dataclass
class HalfStepResult:
    rows: np.ndarray  # int32 (n,) global indices
    factors: np.ndarray  # (n, k)
    bias: np.ndarray  # (n,)
    counts: np.ndarray  # int64 (n,) ratings per row
    sse: float  # Σ (r − r̂)² over the rows' ratings, with the new parameters
    penalty: float  # regularisation of the solved rows


def triangle_layout(dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, col) of the packed upper triangle, and the packed position of every full cell."""
    iu, ju = np.triu_indices(dim)
    full = np.empty((dim, dim), dtype=np.int64)
    full[iu, ju] = np.arange(len(iu))
    full[ju, iu] = np.arange(len(iu))
    return iu, ju, full.ravel()


def _padded(width: int) -> int:
    """Columns of a dense operand padded to a multiple of 4: scipy's CSR × dense loop runs
    ~30% faster on 12 columns than on 11 (the padding columns are zeros, never read back)."""
    return -(-width // 4) * 4


def _accumulate(out: np.ndarray, ptr: np.ndarray, cols: np.ndarray, data, dense: np.ndarray):
    """``out += CSR(data, cols, ptr) @ dense`` in place (no temporary the size of ``out``)."""
    if _csr_matvecs is not None:
        _csr_matvecs(out.shape[0], dense.shape[0], dense.shape[1], ptr, cols, data, dense, out)
    else:  # pragma: no cover - scipy moved its private kernel
        out += sp.csr_matrix((data, cols, ptr), shape=(out.shape[0], dense.shape[0])) @ dense


def half_step(
    block: RatingRows,
    fixed_factors: np.ndarray,
    fixed_bias: np.ndarray,
    global_mean: float,
    reg: Regularization,
    dtype=np.float32,
    chunk_rows: int = CHUNK_ROWS,
) -> HalfStepResult:
    """Solve every row of ``block`` with the other side fixed (see module docstring).

    ``dtype`` is the precision of the sparse products (float32 is ~2x faster; the solve is
    always float64) and of the returned factors.
    """
    k = fixed_factors.shape[1]
    dim = k + 1
    n_fixed = fixed_factors.shape[0]
    iu, ju, full = triangle_layout(dim)
    n_packed, n_aug = _padded(len(iu)), _padded(dim)
    u_aug = np.zeros((n_fixed, n_aug), dtype=dtype)
    u_aug[:, :k] = fixed_factors
    u_aug[:, k] = 1.0
    outer = np.zeros((n_fixed, n_packed), dtype=dtype)  # P: row j = upper triangle of ũ_j ũ_jᵀ
    np.multiply(u_aug[:, iu], u_aug[:, ju], out=outer[:, : len(iu)])
    bias = fixed_bias.astype(dtype, copy=False)
    mean = dtype(global_mean)
    reg_diag = np.array([reg.reg] * k + [reg.reg_bias], dtype=np.float64)
    counts = block.counts()
    ones = np.ones(int(np.max(np.diff(block.indptr[:, [0, -1]], axis=1), initial=0)), dtype)
    factors = np.zeros((block.n_rows, k), dtype=dtype)
    row_bias = np.zeros(block.n_rows, dtype=dtype)
    sse = 0.0
    for start in range(0, block.n_rows, chunk_rows):
        stop = min(start + chunk_rows, block.n_rows)
        n = stop - start
        gram_packed = np.zeros((n, n_packed), dtype=dtype)
        rhs = np.zeros((n, n_aug), dtype=dtype)
        target_sq = 0.0  # Σ t² over the chunk: only the total is needed
        for t in range(block.n_tiles):
            a, b, ptr = block.tile(t, start, stop)
            if a == b:
                continue
            first = t * block.tile_width
            last = min(first + block.tile_width, n_fixed)
            cols = np.asarray(block.cols[a:b])
            ptr = ptr.astype(cols.dtype)
            target = block.values[a:b].astype(dtype, copy=False) - mean
            target -= np.take(bias[first:last], cols)
            _accumulate(gram_packed, ptr, cols, ones[: b - a], outer[first:last])
            _accumulate(rhs, ptr, cols, target, u_aug[first:last])
            target_sq += float(np.einsum("i,i->", target, target, dtype=np.float64))
        system = np.empty((n, dim, dim))
        system.reshape(n, dim * dim)[:] = np.take(gram_packed, full, axis=1)  # 4x faster than [:, full]
        rhs64 = rhs[:, :dim].astype(np.float64)
        cnt = counts[start:stop]
        penalty_diag = reg.row_scale(cnt)[:, None] * reg_diag  # Λ_i, (n, dim)
        diagonal = np.arange(dim)
        system[:, diagonal, diagonal] += penalty_diag
        system[cnt == 0] = np.eye(dim)  # no ratings: factor 0 and bias 0 (rhs is 0 too)
        penalty_diag[cnt == 0] = 0.0
        try:
            solution = np.linalg.solve(system, rhs64[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            raise np.linalg.LinAlgError(
                "singular ALS normal equations: some rows have fewer ratings than rank + 1; "
                "use a positive regularisation (als.reg, als.reg_bias)"
            ) from None
        # Σ_j (t_ij − w̃ᵀũ_j)² = Σ t² − 2 w̃ᵀb + w̃ᵀG w̃, and (G + Λ) w̃ = b gives
        # w̃ᵀG w̃ = w̃ᵀb − w̃ᵀΛ w̃: the squared error costs O(k) per row, not O(k²).
        fitted = np.einsum("ni,ni->n", solution, rhs64)
        shrink = np.einsum("ni,ni->n", solution * solution, penalty_diag)
        sse += target_sq - float(np.sum(fitted) + np.sum(shrink))
        factors[start:stop] = solution[:, :k]
        row_bias[start:stop] = solution[:, k]
    return HalfStepResult(
        rows=block.rows,
        factors=factors,
        bias=row_bias,
        counts=counts,
        sse=max(sse, 0.0),
        penalty=reg.penalty(factors, row_bias, counts),
    )


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


def predict(
    global_mean: float,
    row_factors: np.ndarray,
    row_bias: np.ndarray,
    col_factors: np.ndarray,
    col_bias: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    clip: tuple[float, float] | None = None,
    chunk: int = 1 << 20,
) -> np.ndarray:
    """r̂ = μ + b_row + c_col + w_rowᵀu_col for index pairs, optionally clipped (float64)."""
    out = np.empty(len(rows), dtype=np.float64)
    for a in range(0, len(rows), chunk):
        r, c = rows[a : a + chunk], cols[a : a + chunk]
        # np.take gathers rows about twice as fast as fancy indexing
        dot = np.einsum(
            "ij,ij->i",
            np.take(row_factors, r, axis=0),
            np.take(col_factors, c, axis=0),
            dtype=np.float64,
        )
        bias = np.take(row_bias, r).astype(np.float64) + np.take(col_bias, c).astype(np.float64)
        out[a : a + chunk] = global_mean + bias + dot
    if clip is not None:
        np.clip(out, clip[0], clip[1], out=out)
    return out


def squared_error(
    global_mean: float,
    row_factors: np.ndarray,
    row_bias: np.ndarray,
    col_factors: np.ndarray,
    col_bias: np.ndarray,
    block: RatingRows,
    clip: tuple[float, float] | None = None,
) -> tuple[float, float, int]:
    """(Σ squared error, Σ absolute error, n) over ``block``'s ratings.

    ``row_factors``/``row_bias`` are aligned with ``block``'s rows (position r = row r),
    ``col_factors``/``col_bias`` are indexed by the global column index.
    """
    if block.nnz == 0:
        return 0.0, 0.0, 0
    rows, cols = block.row_positions(), block.global_cols()
    pred = predict(global_mean, row_factors, row_bias, col_factors, col_bias, rows, cols, clip)
    err = block.values.astype(np.float64) - pred
    return float(err @ err), float(np.abs(err).sum()), block.nnz


def seeded_normal(seed: int, entity_idx: np.ndarray, dim: int, std: float) -> np.ndarray:
    """Initial factors: N(0, std²) entries that depend only on (seed, entity, dimension).

    A counter-based generator (splitmix64 of the cell's coordinates, then Box-Muller), so an
    entity gets the same start whatever block or partition it lands in.
    """
    idx = np.asarray(entity_idx, dtype=np.uint64)[:, None]
    dims = np.arange(dim, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        base = (idx * np.uint64(2 * dim) + dims * np.uint64(2)) ^ (
            np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        )
        u1 = _to_unit(_splitmix64(base))
        u2 = _to_unit(_splitmix64(base + np.uint64(1)))
    radius = np.sqrt(-2.0 * np.log1p(-u1))  # u1 in [0, 1): log1p(-u1) is finite
    return (std * radius * np.cos(2.0 * np.pi * u2)).astype(np.float32)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _to_unit(z: np.ndarray) -> np.ndarray:
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
