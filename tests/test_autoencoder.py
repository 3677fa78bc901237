"""Autoencoder inputs: layout invariants against the source ratings, assembly across Arrow
batches, independence of partitioning, and the numpy batch reader."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prepared_data import prepared_frames
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.autoencoder import (
    _KEY,
    _ROW_SHIFT,
    _TEST_BIT,
    _VALUE,
    _assemble,
    _rows_from_cells,
    build_rows,
    iter_batches,
    run_build_autoencoder_inputs,
)
from mfspark.config import load_config
from mfspark.io import staged_outputs

N_USERS, N_ITEMS = 50, 30
USER_ID0, ITEM_ID0 = 1000, 500  # ids differ from idx, so the id attached to each row is checked
WIDTH = {"by_item": N_USERS, "by_user": N_ITEMS}
ROW = {"by_item": (C.ITEM_IDX, C.USER_IDX), "by_user": (C.USER_IDX, C.ITEM_IDX)}  # (row, column) idx


def random_ratings(seed: int = 5):
    """Train/test cells; users 45.. and items 27.. have test ratings only."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(N_USERS * N_ITEMS, 700, replace=False)
    u, i = cells // N_ITEMS, cells % N_ITEMS
    r = rng.integers(1, 11, len(cells)) / 2.0
    is_test = (rng.random(len(cells)) < 0.25) | (u >= 45) | (i >= 27)
    frame = pd.DataFrame({C.USER_IDX: u, C.ITEM_IDX: i, C.RATING: r})
    return frame[~is_test].reset_index(drop=True), frame[is_test].reset_index(drop=True)


def write_prepared(spark, out: str, train: pd.DataFrame, test: pd.DataFrame) -> None:
    frames = prepared_frames(spark, train, test, N_USERS, N_ITEMS, USER_ID0, ITEM_ID0)
    paths = (C.PREPARED_TRAIN, C.PREPARED_TEST, C.PREPARED_USERS, C.PREPARED_ITEMS)
    with staged_outputs(spark, out, stage="prepare") as stage:  # committed, as prepare does
        for frame, path in zip(frames, paths, strict=True):
            stage.write(frame, path)


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    """Prepared data written to disk, then the stage run in-process: by_user only, then both."""
    out = str(tmp_path_factory.mktemp("ae"))
    train, test = random_ratings()
    write_prepared(spark, out, train, test)
    base = [f"output.path={out}", "data.rating_min=0.5", "data.rating_max=5"]
    first = run_build_autoencoder_inputs(
        load_config(None, [*base, 'autoencoder.orientations=["by_user"]']), spark
    )
    only_by_user = (os.path.exists(f"{out}/{C.AE_BY_USER}"), os.path.exists(f"{out}/{C.AE_BY_ITEM}"))
    entry = run_build_autoencoder_inputs(load_config(None, base), spark)
    return out, train, test, first, only_by_user, entry


def read_rows(out: str, orientation: str) -> pd.DataFrame:
    return pq.read_table(f"{out}/{C.AE_PATHS[orientation]}").to_pandas()


def cells_of(rows: pd.DataFrame, row_col: str, kind: str) -> pd.DataFrame:
    """The (row, col, value) cells held in the array columns, one per array element."""
    lengths = rows[f"{kind}_indices"].map(len).to_numpy()
    return pd.DataFrame(
        {
            "row": np.repeat(rows[row_col].to_numpy(), lengths),
            "col": np.concatenate([*rows[f"{kind}_indices"], np.array([], np.int32)]),
            "value": np.concatenate([*rows[f"{kind}_values"], np.array([], np.float32)]),
        }
    )


def test_orientations_come_from_config(built):
    _, _, _, first, only_by_user, entry = built
    assert only_by_user == (True, False)
    assert first["orientations"] == ["by_user"]
    assert entry["orientations"] == ["by_item", "by_user"]


@pytest.mark.parametrize("orientation", ["by_item", "by_user"])
def test_layout_invariants(spark, built, orientation):
    out, train, test, _, _, _ = built
    row_col, col_col = ROW[orientation]
    row_id = C.AE_ROW_KEYS[orientation][0]
    rows = read_rows(out, orientation)
    written = spark.read.parquet(f"{out}/{C.AE_PATHS[orientation]}").schema
    expected = C.ae_schema(orientation, T.LongType())
    assert [(f.name, f.dataType) for f in written] == [
        (
            f.name,
            T.ArrayType(f.dataType.elementType) if isinstance(f.dataType, T.ArrayType) else f.dataType,
        )
        for f in expected
    ]

    # One row per entity that has any rating, in ascending idx order, with its own id.
    entities = np.union1d(train[row_col], test[row_col])
    assert rows[row_col].tolist() == entities.tolist()
    offset = ITEM_ID0 if orientation == "by_item" else USER_ID0
    assert (rows[row_id] == rows[row_col] + offset).all()

    for kind, source in (("train", train), ("test", test)):
        lengths = rows[f"{kind}_indices"].map(len)
        assert lengths.sum() == len(source)
        assert (lengths == rows[f"{kind}_values"].map(len)).all()
        assert (rows[f"n_{kind}"] == lengths).all()
        for idx in rows[f"{kind}_indices"]:
            assert idx.dtype == np.int32
            assert np.all(np.diff(idx) > 0)  # strictly ascending
            assert len(idx) == 0 or (idx.min() >= 0 and idx.max() < WIDTH[orientation])
        got = cells_of(rows, row_col, kind).sort_values(["row", "col"], ignore_index=True)
        want = source.rename(columns={row_col: "row", col_col: "col", C.RATING: "value"})
        want = want.sort_values(["row", "col"], ignore_index=True)
        np.testing.assert_array_equal(got["row"], want["row"])
        np.testing.assert_array_equal(got["col"], want["col"])
        np.testing.assert_array_equal(got["value"], want["value"].astype(np.float32))

    # Entities with test ratings only are there, with empty train arrays.
    test_only = np.setdiff1d(test[row_col], train[row_col])
    assert len(test_only) > 0
    only = rows[rows[row_col].isin(test_only)]
    assert len(only) == len(test_only)
    assert (only[C.N_TRAIN] == 0).all() and (only[C.N_TEST] > 0).all()
    assert all(len(a) == 0 for a in only[C.TRAIN_VALUES])


def test_metadata_and_manifest(built):
    out, train, test, _, _, entry = built
    meta = pq.read_table(f"{out}/{C.AE_METADATA}").to_pylist()
    assert len(meta) == 1
    m = meta[0]
    assert (m["n_users"], m["n_items"]) == (N_USERS, N_ITEMS)
    assert (m["nnz_train"], m["nnz_test"]) == (len(train), len(test))
    assert (m["rating_min"], m["rating_max"]) == (0.5, 5.0)
    assert m["train_rating_min"] == train[C.RATING].min()
    assert m["train_rating_max"] == train[C.RATING].max()
    assert m["global_mean"] == pytest.approx(train[C.RATING].mean(), abs=1e-12)
    assert entry["counts"]["by_item"]["train_values"] == len(train)
    assert entry["counts"]["by_user"]["test_values"] == len(test)
    assert entry["timings"]["by_item_seconds"] > 0


def test_rows_do_not_depend_on_partitioning(spark, built):
    out = built[0]
    read = lambda name: spark.read.parquet(f"{out}/{name}")  # noqa: E731
    train, test, items = read(C.PREPARED_TRAIN), read(C.PREPARED_TEST), read(C.PREPARED_ITEMS)
    shuffled = train.repartition(7)  # input order differs too

    def rows(n_partitions, source):
        frame = build_rows(source, test, items, "by_item", n_partitions).toPandas()
        return frame.sort_values(C.ITEM_IDX, ignore_index=True).map(
            lambda v: v.tolist() if isinstance(v, np.ndarray) else v
        )

    pd.testing.assert_frame_equal(rows(1, train), rows(5, shuffled))


# ---------------------------------------------------------------------------------------------
# The Arrow assembly step without Spark
# ---------------------------------------------------------------------------------------------


def sorted_cells(rng, n_rows: int, big_row: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted cell keys and values; row ``big_row`` has far more cells than the others."""
    keys = []
    for row in range(0, n_rows, 2):  # odd rows have no cells at all
        n = 40 if row == big_row else rng.integers(1, 4)
        cols = rng.choice(60, n, replace=False)
        test = rng.random(n) < 0.3
        keys.append((row << _ROW_SHIFT) + cols + np.where(test, _TEST_BIT, 0))
    key = np.sort(np.concatenate(keys)).astype(np.int64)
    return key, rng.integers(1, 11, len(key)).astype(np.float32) / 2


@pytest.mark.parametrize(("batch_size", "batch_cells"), [(1, 5), (3, 1), (7, 64), (10_000, 1 << 20)])
def test_assembly_of_shuffled_cells_across_arrow_batches(batch_size, batch_cells):
    rng = np.random.default_rng(1)
    key, value = sorted_cells(rng, 30, big_row=10)
    shuffled = rng.permutation(len(key))  # cells arrive in any order
    names = C.ae_schema("by_item", T.LongType()).names[1:]
    batches = [
        pa.RecordBatch.from_arrays(
            [pa.array(key[shuffled][s : s + batch_size]), pa.array(value[shuffled][s : s + batch_size])],
            [_KEY, _VALUE],
        )
        for s in range(0, len(key), batch_size)
    ]
    batches.insert(1, batches[0].slice(0, 0))  # empty batches are skipped
    produced = list(_rows_from_cells(iter(batches), names, batch_cells))
    # Rows are never split: at most one row per batch goes past batch_cells.
    sizes = [sum(b.column(C.N_TRAIN).to_numpy() + b.column(C.N_TEST).to_numpy()) for b in produced]
    assert all(size <= batch_cells or b.num_rows == 1 for size, b in zip(sizes, produced, strict=True))
    out = pa.Table.from_batches(produced).to_pandas()

    rows = key >> _ROW_SHIFT
    assert out[C.ITEM_IDX].tolist() == sorted(set(rows.tolist()))
    for r in out.itertuples():
        mine = rows == r.item_idx
        is_test = (key & _TEST_BIT) != 0
        for kind, sel in (("train", mine & ~is_test), ("test", mine & is_test)):
            np.testing.assert_array_equal(getattr(r, f"{kind}_indices"), key[sel] & (_TEST_BIT - 1))
            np.testing.assert_array_equal(getattr(r, f"{kind}_values"), value[sel])
            assert getattr(r, f"n_{kind}") == sel.sum()


def test_repeated_pair_is_refused():
    key = np.array([5 << _ROW_SHIFT, (5 << _ROW_SHIFT) + 3, (5 << _ROW_SHIFT) + 3], np.int64)
    with pytest.raises(ValueError, match="row idx 5 has a repeated"):
        _assemble(key, np.ones(3, np.float32), C.ae_schema("by_item", T.LongType()).names[1:])


# ---------------------------------------------------------------------------------------------
# The batch reader
# ---------------------------------------------------------------------------------------------


def dense_truth(train, test, orientation):
    row_col, col_col = ROW[orientation]
    n_rows = N_ITEMS if orientation == "by_item" else N_USERS
    mats = []
    for source in (train, test):
        x = np.zeros((n_rows, WIDTH[orientation]), np.float32)
        m = np.zeros_like(x, bool)
        x[source[row_col], source[col_col]] = source[C.RATING]
        m[source[row_col], source[col_col]] = True
        mats += [x, m]
    return mats


def collect(batches, n_rows, width, with_test=True):
    """Place every batch row at its row idx; also return the batch sizes and row order."""
    x, m = np.full((n_rows, width), np.nan, np.float32), np.zeros((n_rows, width), bool)
    tx, tm = x.copy(), m.copy()
    seen = np.zeros(n_rows, int)
    sizes, order = [], []
    for b in batches:
        sizes.append(len(b))
        order += b.row_idx.tolist()
        seen[b.row_idx] += 1
        x[b.row_idx], m[b.row_idx] = b.x, b.train_mask
        if with_test:
            tx[b.row_idx], tm[b.row_idx] = b.test_x, b.test_mask
        else:
            assert b.test_x is None and b.test_mask is None
        assert (b.n_train == b.train_mask.sum(1)).all()
    return x, m, tx, tm, seen, sizes, order


@pytest.mark.parametrize("orientation", ["by_item", "by_user"])
@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_batch_reader_reproduces_dense_matrix_and_masks(built, orientation, batch_size):
    out, train, test, _, _, _ = built
    path = f"{out}/{C.AE_PATHS[orientation]}"
    tx_true, tm_true, sx_true, sm_true = dense_truth(train, test, orientation)
    n_rows = len(tx_true)
    present = np.zeros(n_rows, bool)
    present[read_rows(out, orientation)[ROW[orientation][0]]] = True
    x, m, tx, tm, seen, sizes, order = collect(
        iter_batches(path, batch_size), n_rows, WIDTH[orientation]
    )
    assert (seen == present).all()  # every row exactly once
    assert order == sorted(order)  # file order: ascending idx
    assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    np.testing.assert_array_equal(x[present], tx_true[present])
    np.testing.assert_array_equal(m[present], tm_true[present])
    np.testing.assert_array_equal(tx[present], sx_true[present])
    np.testing.assert_array_equal(tm[present], sm_true[present])
    assert not m[present].any(1).all()  # test-only rows come as all-zero inputs


def test_batch_reader_shuffles_and_skips_test(built):
    out, train, test, _, _, _ = built
    path = f"{out}/{C.AE_BY_USER}"
    plain = collect(iter_batches(path, 6), N_USERS, N_ITEMS)
    a = collect(iter_batches(path, 6, shuffle_seed=3, with_test=False), N_USERS, N_ITEMS, False)
    b = collect(iter_batches(path, 6, shuffle_seed=3, with_test=False), N_USERS, N_ITEMS, False)
    assert a[6] == b[6] != plain[6]  # same seed, same order; not the file order
    np.testing.assert_array_equal(a[0], plain[0])
    np.testing.assert_array_equal(a[1], plain[1])


def test_batch_reader_across_row_groups_and_files(tmp_path):
    """Without Spark: two files of several row groups each, batch sizes that do not divide."""
    rng = np.random.default_rng(2)
    n_rows, width = 23, 11
    truth = np.where(rng.random((n_rows, width)) < 0.3, rng.integers(1, 6, (n_rows, width)), 0)
    test_truth = np.where((truth == 0) & (rng.random((n_rows, width)) < 0.2), 2.5, 0)

    def lists(mat):
        idx = [np.flatnonzero(r).astype(np.int32) for r in mat]
        return pa.array(idx, pa.list_(pa.int32())), pa.array(
            [r[i].astype(np.float32) for r, i in zip(mat, idx, strict=True)], pa.list_(pa.float32())
        )

    ti, tv = lists(truth)
    si, sv = lists(test_truth)
    table = pa.table(
        {
            C.USER_ID: np.arange(n_rows) + 7,
            C.USER_IDX: np.arange(n_rows, dtype=np.int32),
            C.N_TRAIN: (truth > 0).sum(1),
            C.N_TEST: (test_truth > 0).sum(1),
            C.TRAIN_INDICES: ti,
            C.TRAIN_VALUES: tv,
            C.TEST_INDICES: si,
            C.TEST_VALUES: sv,
        }
    )
    root = tmp_path / "by_user"
    root.mkdir()
    pq.write_table(table.slice(0, 10), root / "part-0.parquet", row_group_size=4)
    pq.write_table(table.slice(10), root / "part-1.parquet", row_group_size=3)
    (root / "_SUCCESS").write_text("")
    assert pq.ParquetFile(root / "part-0.parquet").num_row_groups == 3
    for batch_size in (2, 5, 23, 40):
        x, m, tx, tm, seen, sizes, order = collect(
            iter_batches(str(root), batch_size, n_cols=width), n_rows, width
        )
        assert order == list(range(n_rows)) and (seen == 1).all()
        assert all(s == batch_size for s in sizes[:-1])
        np.testing.assert_array_equal(x, truth)
        np.testing.assert_array_equal(m, truth > 0)
        np.testing.assert_array_equal(tx, test_truth)
        np.testing.assert_array_equal(tm, test_truth > 0)
    with pytest.raises(ValueError, match="metadata"):
        next(iter_batches(str(root), 4))  # no sibling metadata: n_cols must be given
    with pytest.raises(ValueError, match="outside a row width"):
        next(iter_batches(str(root), 4, n_cols=3))
