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
row: the columns are cut into groups of ``GROUP`` and each row's group maxima are
partitioned (``np.partition``) to find the K-th largest group maximum t_i. At least K groups
reach t_i, so the K-th largest key is ≥ t_i and every entry of the top K satisfies
key ≥ t_i. The few entries with key ≥ t_i (about K per row, ties included) are gathered with
one comparison pass and sorted by (row, −key, column): the first K per row are the answer,
exactly, with ties resolved as above. This is several times cheaper than ``np.argpartition``
over the full rows, which would also pick arbitrarily among tied entries at the K-th place.

A row's result depends only on its own vector, its own seen columns and the candidates, so
it is identical whatever block or chunk it is computed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Entries of one chunk's dense key matrix (float64: 64 MB).
CHUNK_ELEMENTS = 1 << 23
#: Columns per group whose maximum bounds the K-th largest key from below.
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


def _kth_group_max(keys: np.ndarray, k: int) -> np.ndarray:
    """Per row, a lower bound t on its K-th largest key: the K-th largest of its group maxima
    (the K-th largest key itself when there are fewer than K groups)."""
    n, m = keys.shape
    full = m // GROUP
    if full < k:
        return -np.partition(-keys, k - 1, axis=1)[:, k - 1]
    maxima = keys[:, : full * GROUP].reshape(n, full, GROUP).max(axis=2)
    if full * GROUP < m:
        maxima = np.concatenate([maxima, keys[:, full * GROUP :].max(axis=1, keepdims=True)], axis=1)
    return -np.partition(-maxima, k - 1, axis=1)[:, k - 1]


def select_top_k(keys: np.ndarray, k: int) -> TopK:
    """The top ``k`` of every row of ``keys`` (−∞ entries excluded), ties by column."""
    n, m = keys.shape
    if n == 0 or m == 0:
        return TopK.concat([])
    kk = min(k, m)
    bound = _kth_group_max(keys, kk)
    rows, cols = np.nonzero(keys >= bound[:, None])
    vals = keys[rows, cols]
    keep = vals != -np.inf
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
    """CSR (indptr, cols) of (row position, column position) pairs (duplicates harmless)."""
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, np.asarray(cols)[order].astype(np.int64)
