"""Rating blocks: the ratings of a set of rows, tiled by column, and the normal equations
every factor model builds from them — no Spark here, so they are tested without a JVM.

A *block* holds the ratings of some rows (the entities being solved: users, or items) against
the *fixed* side (the other entities, with factors u_j and biases c_j). Every bilinear model in
mfspark (ALS, Bayesian MF, ...) needs, for each row i of a block, the same two sums over its
ratings, with the augmented vectors ũ_j = [u_j, 1]:

    G_i = Σ_j∈Ω_i ũ_j ũ_jᵀ              (the Gram matrix, (k+1) × (k+1))
    b_i = Σ_j∈Ω_i (r_ij − μ − c_j) ũ_j    (the right-hand side)

:func:`normal_equations` computes them for a whole block at once:

* the Gram matrices are one sparse × dense product: the rows' 0/1 pattern (CSR) times the
  matrix P whose row j holds the upper triangle of ũ_j ũ_jᵀ ((k+1)(k+2)/2 columns);
* the right-hand sides are the CSR of targets t_ij = r_ij − μ − c_j times Ũ.

That *sparse* strategy streams (k+1)(k+2)/2 packed values per rating: memory-bound, and the
cost grows with k². The *dense* strategy gathers each row's fixed-side vectors into a padded
(length × (k+1)) matrix and forms G_i = Xᵢᵀ Xᵢ, b_i = Xᵢᵀ t_i as batched dense matrix products
(BLAS-3), rows grouped by their padded length. The *compiled* strategy
(:mod:`mfspark.blocks.compiled`) does the same gather and products row by row in machine code,
in cache and without per-call overhead: on one core it is faster than both at every rank
measured (``benchmarks/kernels.py``, ranks 10-100), so ``"auto"`` picks it
(:func:`gram_strategy`). All three give the same sums up to float rounding; the numpy two stay
selectable (``als.gram_strategy``) and serve as cross-checks in the tests.

No Python loop runs over rows or ratings. Each row's arithmetic depends only on its own
ratings (kept in ascending column order; in the dense strategy padded to a length that is a
function of its own count), so a row gets bit-identical sums whichever block it is in:
results never depend on the number of blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

try:  # scipy's CSR × dense kernel, called directly so it accumulates in place
    from scipy.sparse._sparsetools import csr_matvecs as _csr_matvecs
except ImportError:  # pragma: no cover
    _csr_matvecs = None

#: The two sides. A block holds rows of one side; its columns index the other.
USER, ITEM = "user", "item"

# Rows per chunk of a block: bounds the dense (rows × (k+1)²) float64 work arrays.
CHUNK_ROWS = 32_768

#: Values of one chunk's Gram matrices (rows × (k+1)²): at high ranks a chunk has fewer rows
#: than ``CHUNK_ROWS``, so its float64 work arrays stay at 8 MB whatever the rank. Small enough
#: for glibc to recycle a freed chunk's memory instead of returning it to the OS: fresh pages
#: cost about 3 µs each to fault in on a virtual machine, which at 32 MB chunks made up half
#: of a rank-50 half-step.
CHUNK_GRAM_VALUES = 1 << 20


def chunk_size(dim: int, chunk_rows: int = CHUNK_ROWS) -> int:
    """Rows per chunk for systems of size ``dim``: ``chunk_rows``, bounded by CHUNK_GRAM_VALUES.
    Each row's sums depend only on its own ratings, so the chunking never changes a result."""
    return max(1, min(int(chunk_rows), CHUNK_GRAM_VALUES // (dim * dim)))


#: Padded cells (rows × padded length) per batch of the dense strategy: bounds its
#: (cells × (k+1)) gathered operand (13 MB at rank 50). From 2^14 to 2^18 cells the speed is
#: the same within 10 % at ranks 20-100 (benchmarks/kernels.py's block).
DENSE_BATCH_CELLS = 1 << 16

STRATEGIES = ("auto", "compiled", "sparse", "dense")


def gram_strategy(rank: int, strategy: str = "auto") -> str:
    """The Gram strategy for ``rank``: ``strategy`` itself unless it is ``"auto"``, which is
    ``"compiled"`` at every rank. Measured by ``benchmarks/kernels.py`` (one core, float32, a
    20M-shaped block of 1.8M ratings, Gram matrices and right-hand sides): compiled 2.4x
    faster than sparse at rank 10, and 1.9x faster than dense at rank 50. The rank stays an
    argument so that a future crossover needs no change of signature."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Gram strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return "compiled" if strategy == "auto" else strategy


def padded_length(counts: np.ndarray) -> np.ndarray:
    """Padded length of rows with ``counts`` ratings: at least 8, then the count rounded up
    to a multiple of 1/8 of its power of two (≤ 12.5 % padding). A function of the count
    alone, so a row's dense products have the same shape in every block."""
    c = np.maximum(np.asarray(counts, dtype=np.int64), 1)
    step = np.maximum(1, 2 ** np.maximum(0, np.floor(np.log2(c)).astype(np.int64) - 3))
    return np.maximum(8, -(-c // step) * step)


#: Width of a column tile when the fixed side has rank 10: its packed outer products
#: (66 float32 per entity) then fill about 1 MB, one core's L2 cache (see tile_width).
CACHE_BYTES = 1 << 20


#: The tile width meaning "one tile": the dense and compiled strategies read no packed
#: products, so they gain nothing from tiles, and one tile keeps a block's index (tiles ×
#: rows) small.
ONE_TILE = 1 << 30


def tile_width(rank: int, strategy: str = "auto") -> int:
    """Fixed-side entities per column tile for ``rank``: for the sparse strategy a power of
    two whose packed outer products fit in ``CACHE_BYTES``; for the others one tile (a
    function of the rank only, so results never depend on blocking)."""
    if gram_strategy(rank, strategy) != "sparse":
        return ONE_TILE
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

    Columns are *block-local* when ``col_ids`` is given: column c is the fixed-side entity
    ``col_ids[c]`` (ascending), and the kernels take fixed-side arrays with one row per local
    column (:meth:`local`), so a task holds only the fixed-side rows its block touches. The
    map is monotone, so every row adds the same terms in the same order as with global
    columns: results are bit-identical either way.
    """

    rows: np.ndarray  # int32 (n,) global indices of the rows
    indptr: np.ndarray  # int64 (n_tiles, n+1) offsets into cols/values
    cols: np.ndarray  # int32 (nnz,) column within its tile
    values: np.ndarray  # float32 (nnz,)
    tile_width: int
    col_ids: np.ndarray | None = None  # int32 global index of each local column; None: global

    def local(self, fixed: np.ndarray) -> np.ndarray:
        """The rows of a fixed-side array (indexed by global index) this block's columns
        address: ``fixed[col_ids]``, or ``fixed`` itself when the columns are global."""
        return fixed if self.col_ids is None else np.take(fixed, self.col_ids, axis=0)

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
        out = self.local_cols()
        return out if self.col_ids is None else np.take(np.asarray(self.col_ids, np.int64), out)

    def local_cols(self) -> np.ndarray:
        """Column of every stored rating in the block's own column index (in storage order):
        the position in a :meth:`local` array."""
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
        col_ids: np.ndarray | None = None,
    ) -> RatingRows:
        """Tile (row, col, value) triples; ``width=None`` gives one tile (a plain CSR).

        ``entities`` (sorted, unique) lists the rows to include, also those without ratings;
        by default the distinct values of ``rows``. ``col_ids``: the columns are local, column
        c standing for entity ``col_ids[c]`` (see the class docstring).
        """
        # A block's build holds its ratings several times over; every step below is in place
        # where it can be, so the peak is about three 8-byte arrays per rating.
        if entities is None:
            entities, pos = distinct(rows)
        else:
            entities = np.asarray(entities, dtype=np.int64)
            pos = positions(entities, rows)
        del rows
        cols = np.asarray(cols)
        if not np.issubdtype(cols.dtype, np.integer):
            cols = cols.astype(np.int64)
        n_cols = int(cols.max()) + 1 if len(cols) else 1
        width = int(width) if width else max(n_cols, 1)
        n_tiles = max(1, -(-n_cols // width))
        n = len(entities)
        # With one tile the key's stride is the column count, not the (larger) nominal width,
        # so the keys stay small enough for the packed sort below.
        stride = min(width, n_cols)
        # cell = tile · n + row position: a rating's CSR row among all tiles
        if n_tiles == 1:
            cell, local = pos, cols
        else:
            cell, local = np.divmod(np.asarray(cols, dtype=np.int64), stride)
            cell *= n
            cell += pos
        del pos, cols
        starts = np.zeros(n_tiles * n + 1, dtype=np.int64)
        np.cumsum(np.bincount(cell, minlength=n_tiles * n), out=starts[1:])
        # (tile, row, col) as one key, cell · stride + col: the storage order is the keys' order
        key = cell  # a fresh array (from positions/distinct/divmod): safe to update in place
        key *= stride
        key += local
        del cell, local
        values = np.asarray(values).astype(np.float32, copy=False)
        if n_tiles * n * stride <= PACKED_KEYS:
            # key and value bits in one uint64: one plain sort (SIMD, ~15x faster than a stable
            # argsort of the keys); (row, col) pairs are unique, so the order is the keys' order
            packed = key.view(np.uint64)
            packed <<= np.uint64(32)
            packed |= values.view(np.uint32)
            del key
            packed.sort()
            values = packed.astype(np.uint32).view(np.float32)  # the low 32 bits
            packed >>= np.uint64(32)
            key = packed.view(np.int64)
            del packed
        else:
            order = np.argsort(key, kind="stable")
            key, values = np.take(key, order), np.take(values, order)
            del order
        key %= stride
        local = key.astype(np.int32)
        del key
        indptr = np.stack([starts[t * n : t * n + n + 1] for t in range(n_tiles)])
        return RatingRows(
            entities.astype(np.int32),
            indptr,
            local,
            values,
            width,
            None if col_ids is None else np.asarray(col_ids, np.int32),
        )


#: Keys below this fit the upper half of a uint64 whose lower half holds the value's bits.
PACKED_KEYS = 2**32

#: An index lookup table is used while the indices span at most this many times their count
#: (plus TABLE_SLACK): linear time, where sorting and binary search cost n log n.
TABLE_SPAN = 8
TABLE_SLACK = 1 << 16


def _table_fits(span: int, count: int) -> bool:
    return span <= TABLE_SPAN * count + TABLE_SLACK


def distinct(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct values of ``ids`` (non-negative integers) and the position of each
    element among them: ``np.unique(ids, return_inverse=True)``, in linear time when the values
    are not too sparse."""
    ids = np.asarray(ids, dtype=np.int64)
    if not len(ids):
        return ids, ids
    span = int(ids.max()) + 1
    if ids.min() < 0 or not _table_fits(span, len(ids)):
        values, inverse = np.unique(ids, return_inverse=True)
        return values, inverse.reshape(-1)
    present = np.zeros(span, dtype=np.bool_)
    present[ids] = True
    rank = np.cumsum(present, dtype=np.int64)
    rank -= 1
    return np.flatnonzero(present), np.take(rank, ids)


def positions(entities: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The position of every element of ``ids`` in ``entities`` (sorted, unique); a ValueError
    when one is not there."""
    ids = np.asarray(ids, dtype=np.int64)
    if not len(ids):
        return ids
    missing = ValueError("ratings for rows that are not among the entities")
    span = int(max(ids.max(), entities[-1] if len(entities) else 0)) + 1
    if ids.min() >= 0 and len(entities) and _table_fits(span, len(ids)):
        table = np.full(span, -1, dtype=np.int64)
        table[entities] = np.arange(len(entities))
        pos = np.take(table, ids)
        if pos.min() < 0:
            raise missing
        return pos
    pos = np.searchsorted(entities, ids)
    if pos.max() >= len(entities) or not np.array_equal(entities[pos], ids):
        raise missing
    return pos


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


@dataclass
class NormalEquations:
    """The normal-equation pieces of rows ``start:stop`` of a block (float64)."""

    start: int
    stop: int
    gram: np.ndarray  # (n, k+1, k+1): G_i
    rhs: np.ndarray  # (n, k+1): b_i
    counts: np.ndarray  # (n,) ratings per row
    target_sq: float  # Σ t_ij² over the chunk's ratings
    row_target_sq: np.ndarray | None  # (n,) Σ_j t_ij² per row, when asked for (row_sums)


def normal_equations(
    block: RatingRows,
    fixed_factors: np.ndarray,
    fixed_bias: np.ndarray,
    global_mean: float,
    dtype=np.float32,
    chunk_rows: int = CHUNK_ROWS,
    row_sums: bool = False,
    strategy: str = "auto",
    batch_cells: int | None = None,
) -> Iterator[NormalEquations]:
    """G_i and b_i (module docstring) for every row of ``block``, chunk by chunk.

    ``dtype`` is the precision of the products (float32 is faster); the returned arrays
    are float64, ready for a solve or a Cholesky factorisation. ``row_sums`` also returns
    Σ_j t_ij² per row, for a per-row squared error. ``strategy`` is one of ``STRATEGIES``
    (:func:`gram_strategy`); ``batch_cells`` bounds a dense batch (default
    ``DENSE_BATCH_CELLS``).
    """
    k = fixed_factors.shape[1]
    chunk_rows = chunk_size(k + 1, chunk_rows)
    chosen = gram_strategy(k, strategy)
    if chosen == "compiled":
        yield from _compiled_normal_equations(
            block, fixed_factors, fixed_bias, global_mean, dtype, chunk_rows, row_sums
        )
        return
    if chosen == "dense":
        yield from _dense_normal_equations(
            block,
            fixed_factors,
            fixed_bias,
            global_mean,
            dtype,
            chunk_rows,
            row_sums,
            batch_cells or DENSE_BATCH_CELLS,
        )
        return
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
    unit = np.ones((n_fixed, 1), dtype=dtype)  # sums t² per row (a contiguous dense operand)
    mean = dtype(global_mean)
    counts = block.counts()
    ones = np.ones(int(np.max(np.diff(block.indptr[:, [0, -1]], axis=1), initial=0)), dtype)
    for start in range(0, block.n_rows, chunk_rows):
        stop = min(start + chunk_rows, block.n_rows)
        n = stop - start
        gram_packed = np.zeros((n, n_packed), dtype=dtype)
        rhs = np.zeros((n, n_aug), dtype=dtype)
        row_sq = np.zeros((n, 1), dtype=dtype)
        target_sq = 0.0  # Σ t² over the chunk
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
            if row_sums:
                _accumulate(row_sq, ptr, cols, target * target, unit[first:last])
            target_sq += float(np.einsum("i,i->", target, target, dtype=np.float64))
        gram = np.empty((n, dim, dim))
        gram.reshape(n, dim * dim)[:] = np.take(gram_packed, full, axis=1)  # 4x faster than [:, full]
        yield NormalEquations(
            start,
            stop,
            gram,
            rhs[:, :dim].astype(np.float64),
            counts[start:stop],
            target_sq,
            row_sq[:, 0].astype(np.float64) if row_sums else None,
        )


def _row_major(block: RatingRows, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global columns and values of rows start..stop in row-major order (a row's ratings
    ascending by column, as the tiles store them), and each row's first position."""
    ptrs = np.asarray(block.indptr[:, start : stop + 1], dtype=np.int64)
    per_tile = np.diff(ptrs, axis=1)  # (tiles, rows)
    row_start = np.zeros(stop - start + 1, dtype=np.int64)
    np.cumsum(per_tile.sum(axis=0), out=row_start[1:])
    before = np.cumsum(per_tile, axis=0) - per_tile  # the row's ratings in earlier tiles
    cols = np.empty(row_start[-1], dtype=np.int64)
    values = np.empty(row_start[-1], dtype=np.float32)
    for t in range(block.n_tiles):
        a, b = int(ptrs[t, 0]), int(ptrs[t, -1])
        if a == b:
            continue
        shift = row_start[:-1] + before[t] - ptrs[t, :-1]  # storage → row-major position
        dest = np.repeat(shift, per_tile[t]) + np.arange(a, b)
        cols[dest] = np.asarray(block.cols[a:b], dtype=np.int64) + t * block.tile_width
        values[dest] = block.values[a:b]
    return cols, values, row_start


def _dense_normal_equations(
    block: RatingRows,
    fixed_factors: np.ndarray,
    fixed_bias: np.ndarray,
    global_mean: float,
    dtype,
    chunk_rows: int,
    row_sums: bool,
    batch_cells: int,
) -> Iterator[NormalEquations]:
    """The dense strategy (module docstring): rows grouped by :func:`padded_length`, each
    batch's Gram matrices one stacked ``matmul`` (a BLAS-3 product per row) of its gathered
    (length × (k+1)) matrices. The gathered operand and the products go to work buffers
    allocated once per call: fresh pages for every batch cost more than the products."""
    k = fixed_factors.shape[1]
    dim = k + 1
    n_fixed = fixed_factors.shape[0]
    # Ũ with one extra zero row: the padding cells gather it and add exact zeros.
    u_aug = np.zeros((n_fixed + 1, dim), dtype=dtype)
    u_aug[:n_fixed, :k] = fixed_factors
    u_aug[:n_fixed, k] = 1.0
    bias = fixed_bias.astype(dtype, copy=False)
    counts = block.counts()
    longest = int(padded_length(counts).max(initial=8))
    batch_cells = max(batch_cells, longest)  # a batch holds at least one row
    gathered = np.empty(batch_cells * dim, dtype=dtype)
    products = np.empty(min(chunk_rows, batch_cells // 8) * dim * dim, dtype=dtype)
    for start in range(0, block.n_rows, chunk_rows):
        stop = min(start + chunk_rows, block.n_rows)
        n = stop - start
        cols, values, row_start = _row_major(block, start, stop)
        target = values.astype(dtype, copy=False) - dtype(global_mean)
        target -= np.take(bias, cols)
        # position n_cells of the padded arrays: the zero row / zero target
        cols = np.append(cols, n_fixed)
        target = np.append(target, dtype(0))
        gram = np.zeros((n, dim, dim))
        rhs = np.zeros((n, dim))
        row_sq = np.zeros(n)
        cnt = counts[start:stop]
        length = padded_length(cnt)
        rated = np.flatnonzero(cnt > 0)
        by_length = rated[np.argsort(length[rated], kind="stable")]
        bounds = np.flatnonzero(np.diff(length[by_length])) + 1
        for group in np.split(by_length, bounds) if len(by_length) else []:
            width = int(length[group[0]])
            lanes = np.arange(width)
            step = min(batch_cells // width, len(products) // (dim * dim))
            for b in range(0, len(group), step):
                rows = group[b : b + step]
                pos = row_start[rows, None] + lanes
                pos = np.where(lanes < cnt[rows, None], pos, len(cols) - 1)
                x = gathered[: pos.size * dim].reshape(len(rows), width, dim)
                np.take(u_aug, np.take(cols, pos), axis=0, out=x)
                t = np.take(target, pos)  # (rows, width)
                g = products[: len(rows) * dim * dim].reshape(len(rows), dim, dim)
                gram[rows] = np.matmul(x.transpose(0, 2, 1), x, out=g)
                rhs[rows] = np.matmul(t[:, None, :], x)[:, 0, :]
                if row_sums:
                    row_sq[rows] = np.einsum("rw,rw->r", t, t)
        yield NormalEquations(
            start,
            stop,
            gram,
            rhs,
            cnt,
            float(np.einsum("i,i->", target[:-1], target[:-1], dtype=np.float64)),
            row_sq if row_sums else None,
        )


def compiled_operands(block: RatingRows, fixed_factors, fixed_bias, global_mean, dtype) -> tuple:
    """The arguments of the compiled kernels (:mod:`mfspark.blocks.compiled`) that describe a
    block and its fixed side: tiles, columns, values, tile width, Ũ's factors, biases and μ,
    in the product precision ``dtype`` (which fixes the compiled specialisation)."""
    dtype = np.dtype(dtype).type
    return (
        np.ascontiguousarray(block.indptr, dtype=np.int64),
        np.ascontiguousarray(block.cols, dtype=np.int32),
        np.ascontiguousarray(block.values, dtype=np.float32),
        int(block.tile_width),
        np.ascontiguousarray(fixed_factors, dtype=dtype),
        np.ascontiguousarray(fixed_bias, dtype=dtype),
        dtype(global_mean),
    )


def _compiled_normal_equations(
    block: RatingRows, fixed_factors, fixed_bias, global_mean, dtype, chunk_rows: int, row_sums: bool
) -> Iterator[NormalEquations]:
    """The compiled strategy (module docstring), chunk by chunk."""
    from mfspark.blocks.compiled import SEGMENT, gram_rows

    indptr, cols, values, width, u, bias, mean = compiled_operands(
        block, fixed_factors, fixed_bias, global_mean, dtype
    )
    dim = u.shape[1] + 1
    counts = block.counts()
    for start in range(0, block.n_rows, chunk_rows):
        stop = min(start + chunk_rows, block.n_rows)
        gram = np.empty((stop - start, dim, dim))
        rhs = np.empty((stop - start, dim))
        row_sq = np.empty(stop - start)
        total = gram_rows(
            indptr, cols, values, width, start, stop, u, bias, mean, gram, rhs, row_sq, SEGMENT
        )
        yield NormalEquations(
            start, stop, gram, rhs, counts[start:stop], float(total), row_sq if row_sums else None
        )
