"""Top-K of dense score blocks: numpy only, no Spark, so it is tested without a JVM.

For a block of rows (users, or items for "similar items") with vectors w_i and a candidate set
of columns with vectors v_j and offsets c_j, the ranking key is

    key_ij = c_j + w_iᵀ v_j        (float64)

— for a biased factor model c_j is the item bias, and adding the row's constant μ + b_i (done
by the caller) turns the key into the predicted rating without changing the order. Entries a
row must not get (its *seen* columns: items the user rated in train, or the item itself for
similar items) are set to −∞ and never returned.

**Order and ties.** Each row's list is its K largest keys in descending order; equal keys are
ordered by ascending column position (the caller keeps candidates sorted by index, so ties go
to the lower item index). A row with fewer than K admissible columns gets a shorter list.

**How.** The keys of a chunk of rows are one dense matrix product (BLAS), chunked so the
matrix stays around ``CHUNK_ELEMENTS`` entries. Selection never sorts or fully partitions a
row: the columns are cut into g strided groups of ``GROUP`` (group q: columns q, q + g,
q + 2g, …, so the group maxima are one element-wise maximum over ``GROUP`` contiguous slabs of
the row) and each row's group maxima are partitioned (``np.partition``) to find the K-th
largest group maximum t_i. At least K groups reach t_i, so the K-th largest key is ≥ t_i and
every entry of the top K satisfies key ≥ t_i — and lies in a group whose maximum reaches t_i.
Only those groups (about K per row) are gathered; their entries with key ≥ t_i (ties included)
are sorted by (row, −key, column): the first K per row are the answer, exactly, with ties
resolved as above. The dense keys are read twice (maxima, and the product that wrote them);
``np.argpartition`` over the full rows would cost several times more and pick arbitrarily
among tied entries at the K-th place.

A row's result depends only on its own vector, its own seen columns and the candidates, so
it is identical whatever block or chunk it is computed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Entries of one chunk's dense key matrix (float64: 8 MB, so the second read of the keys, for
#: the group maxima, mostly hits the cache; 4x fewer or 8x more entries measured slower).
CHUNK_ELEMENTS = 1 << 20
#: Columns per group; the K-th largest group maximum bounds the K-th largest key from below.
GROUP = 32


@dataclass
class TopK:
    """Long-format top-K lists: one entry per (row, rank)."""

    row: np.ndarray  # int64 position of the row in the block
    rank: np.ndarray  # int32, 1..K
    col: np.ndarray  # int64 candidate column position
    key: np.ndarray  # float64 c_j + w_iᵀ v_j

    @staticmethod
    def concat(parts: list[TopK]) -> TopK:
        if not parts:
            return TopK(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0))
        return TopK(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("row", "rank", "col", "key"))
        )


def select_top_k(keys: np.ndarray, k: int) -> TopK:
    """The top ``k`` of every row of ``keys`` (−∞ entries excluded), ties by column."""
    n, m = keys.shape
    if n == 0 or m == 0:
        return TopK.concat([])
    kk = min(k, m)
    g = m // GROUP  # strided groups of GROUP columns
    if g < kk:  # few columns: the K-th largest key itself, and one comparison pass
        bound = -np.partition(-keys, kk - 1, axis=1)[:, kk - 1]
        rows, cols = np.nonzero(keys >= bound[:, None])
    else:
        # Group q holds the columns q, q + g, q + 2g, … (GROUP of them): the group maxima are
        # an element-wise maximum over GROUP contiguous slabs, one streaming pass.
        maxima = keys[:, : g * GROUP].reshape(n, GROUP, g).max(axis=1)
        bound = -np.partition(-maxima, kk - 1, axis=1)[:, kk - 1]
        # Only groups whose maximum reaches the bound can hold a top-K entry: gather them.
        grow, gcol = np.nonzero(maxima >= bound[:, None])
        cand_cols = gcol[:, None] + g * np.arange(GROUP)
        rows = np.broadcast_to(grow[:, None], cand_cols.shape).ravel()
        cols = cand_cols.ravel()
        if g * GROUP < m:  # the columns past the last full slab: every one is a candidate
            tail = np.arange(g * GROUP, m)
            rows = np.concatenate([rows, np.repeat(np.arange(n), len(tail))])
            cols = np.concatenate([cols, np.tile(tail, n)])
    vals = keys[rows, cols]
    keep = (vals >= bound[rows]) & (vals != -np.inf)
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, len(rows)])
    rank = np.arange(len(rows)) - np.repeat(starts, lengths) + 1
    top = rank <= k
    return TopK(
        rows[top].astype(np.int64), rank[top].astype(np.int32), cols[top].astype(np.int64), vals[top]
    )


def top_k(
    row_vecs: np.ndarray,
    col_vecs: np.ndarray,
    col_offset: np.ndarray,
    k: int,
    seen_indptr: np.ndarray | None = None,
    seen_cols: np.ndarray | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> TopK:
    """Top-``k`` columns of every row by key = ``col_offset`` + ``row_vecs`` @ ``col_vecs``ᵀ.

    ``seen_indptr``/``seen_cols`` (CSR over the rows, column positions) list the entries each
    row must not get. Rows are processed in chunks of about ``chunk_elements`` keys.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, m = row_vecs.shape[0], col_vecs.shape[0]
    rows_per_chunk = max(1, chunk_elements // max(m, 1))
    row_vecs = np.asarray(row_vecs, np.float64)
    col_t = np.ascontiguousarray(np.asarray(col_vecs, np.float64).T)
    offset = np.asarray(col_offset, np.float64)
    parts = []
    for start in range(0, n, rows_per_chunk):
        stop = min(start + rows_per_chunk, n)
        keys = _products(row_vecs[start:stop], col_t)
        keys += offset
        if seen_indptr is not None:
            a, b = int(seen_indptr[start]), int(seen_indptr[stop])
            if b > a:
                local = np.repeat(np.arange(stop - start), np.diff(seen_indptr[start : stop + 1]))
                keys[local, seen_cols[a:b]] = -np.inf
        part = select_top_k(keys, k)
        part.row += start
        parts.append(part)
    return TopK.concat(parts)


def _products(rows: np.ndarray, col_t: np.ndarray) -> np.ndarray:
    """``rows @ col_t`` by a matrix-matrix product (BLAS gemm) even for a single row: numpy
    would use a matrix-vector product there, whose rounding differs, and a row's keys must
    not depend on the chunk it falls in."""
    if rows.shape[0] != 1:
        return rows @ col_t
    return (np.repeat(rows, 2, axis=0) @ col_t)[:1]


def seen_csr(n_rows: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, cols) of (row position, column position) pairs (duplicates harmless).

    The pairs are sorted as one int64 key (row << 32 | column): a value sort, several times
    faster than an argsort of the rows, and each row's columns come out ascending."""
    rows = np.asarray(rows, np.int64)
    key = (rows << 32) | np.asarray(cols, np.int64)
    key.sort()
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, key & 0xFFFFFFFF
