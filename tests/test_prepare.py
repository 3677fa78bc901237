"""The prepare stage end to end: written datasets, manifest counts, cold flags, predefined splits,
and the failure cases run as a user runs them (``python jobs/prepare.py``)."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pandas as pd
import pyspark
import pytest

from mfspark import columns as C
from mfspark.config import load_config
from mfspark.prepare import run_prepare

SAMPLE = os.path.join(pyspark.__path__[0], "data", "mllib", "als", "sample_movielens_ratings.txt")
FAST_SPARK = [
    "--set",
    "spark.master=local[2]",
    "--set",
    "spark.conf.spark.sql.shuffle.partitions=4",
    "--set",
    "spark.conf.spark.ui.enabled=false",
]
KEY = [C.USER_ID, C.ITEM_ID]


def _prepare(spark, out, *overrides):
    cfg = load_config(None, [f"output.path={out}", *overrides])
    return run_prepare(cfg, spark)


def _read(spark, out, name) -> pd.DataFrame:
    """A written dataset, read by pyarrow (an independent reader, and no Spark job)."""
    return pd.read_parquet(os.path.join(out, name))


def _manifest(out) -> dict:
    with open(os.path.join(out, C.MANIFEST)) as f:
        return json.load(f)["stages"]["prepare"]


def _assert_schema(spark, out, name, schema):
    got = spark.read.parquet(os.path.join(out, name)).schema
    assert [(f.name, f.dataType) for f in got.fields] == [(f.name, f.dataType) for f in schema.fields]


def _check_prepared(spark, out, ratings: pd.DataFrame):
    """Properties every prepared dataset has, checked against ``ratings`` (the valid input)."""
    train, test = _read(spark, out, C.PREPARED_TRAIN), _read(spark, out, C.PREPARED_TEST)
    users, items = _read(spark, out, C.PREPARED_USERS), _read(spark, out, C.PREPARED_ITEMS)
    # train and test are exactly the valid ratings, split.
    cols = [C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP]
    both = pd.concat([train[cols], test[cols]]).sort_values(KEY, ignore_index=True)
    expected = ratings[cols].sort_values(KEY, ignore_index=True)
    pd.testing.assert_frame_equal(both, expected, check_dtype=False)
    assert not set(map(tuple, train[KEY].values)) & set(map(tuple, test[KEY].values))
    for entity, id_col, idx_col in ((users, C.USER_ID, C.USER_IDX), (items, C.ITEM_ID, C.ITEM_IDX)):
        # Dense indices in id order; the round trip through idx gives the original id.
        entity = entity.sort_values(id_col, ignore_index=True)
        assert entity[id_col].tolist() == sorted(ratings[id_col].unique())
        assert entity[idx_col].tolist() == list(range(len(entity)))
        lookup = dict(zip(entity[idx_col], entity[id_col], strict=True))
        for part in (train, test):
            assert (part[idx_col].map(lookup) == part[id_col]).all()
        n_train = train.groupby(id_col).size()
        assert (entity[C.N_TRAIN] == entity[id_col].map(n_train).fillna(0)).all()
    # Cold flags: the test row's user (item) has no train rating.
    assert (test[C.COLD_USER] == ~test[C.USER_ID].isin(set(train[C.USER_ID]))).all()
    assert (test[C.COLD_ITEM] == ~test[C.ITEM_ID].isin(set(train[C.ITEM_ID]))).all()
    # The manifest's counts are those of the written datasets.
    counts = _manifest(out)["counts"]
    assert counts["train"] == len(train) and counts["test"] == len(test)
    assert counts["users"] == len(users) and counts["items"] == len(items)
    assert counts["test_cold_user"] == int(test[C.COLD_USER].sum())
    assert counts["test_cold_item"] == int(test[C.COLD_ITEM].sum())
    assert counts["test_cold_any"] == int((test[C.COLD_USER] | test[C.COLD_ITEM]).sum())
    return train, test, users, items


def test_random_split_of_the_bundled_sample(spark, tmp_path):
    out = str(tmp_path / "out")
    _prepare(spark, out, f"data.path={SAMPLE}", "data.format=movielens-dat", "split.test_fraction=0.2")
    with open(SAMPLE) as f:
        rows = [ln.split("::") for ln in f.read().splitlines() if ln.strip()]
    ratings = pd.DataFrame(rows, columns=[C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP]).astype(
        {C.USER_ID: "int64", C.ITEM_ID: "int64", C.RATING: "float64", C.TIMESTAMP: "int64"}
    )
    train, test, _, _ = _check_prepared(spark, out, ratings)
    assert abs(len(test) - 0.2 * len(ratings)) < 4.5 * np.sqrt(len(ratings) * 0.2 * 0.8)
    from pyspark.sql import types as T

    _assert_schema(spark, out, C.PREPARED_TRAIN, C.ratings_schema(T.LongType()))
    _assert_schema(spark, out, C.PREPARED_TEST, C.test_schema(T.LongType()))
    _assert_schema(spark, out, C.PREPARED_REJECTED, C.REJECTED_SCHEMA)
    manifest = _manifest(out)
    assert manifest["rejected_by_reason"] == {} and manifest["counts"]["rejected"] == 0
    assert manifest["counts"]["input_rows"] == len(ratings)
    assert _read(spark, out, C.PREPARED_REJECTED).empty
    assert not os.path.exists(os.path.join(out, "_staging"))
    # Per-user and per-rating columns are written without a dictionary, the others with one.
    import glob

    import pyarrow.parquet as pq

    for name in (C.PREPARED_TRAIN, C.PREPARED_TEST):
        for path in glob.glob(os.path.join(out, name, "*.parquet")):
            meta = pq.ParquetFile(path).metadata
            for g in range(meta.num_row_groups):
                for c in range(meta.num_columns):
                    col = meta.row_group(g).column(c)
                    column, no_dictionary = col.path_in_schema, col.dictionary_page_offset is None
                    if column in (C.USER_ID, C.USER_IDX, C.TIMESTAMP):
                        assert no_dictionary, (path, column)
                    elif column in (C.ITEM_ID, C.ITEM_IDX, C.RATING):
                        assert not no_dictionary, (path, column)


def test_predefined_split_is_exact_and_flags_cold_rows(spark, tmp_path):
    rng = np.random.default_rng(11)
    pairs = [(u, i) for u in range(1, 41) for i in range(1, 31) if rng.random() < 0.5]
    base = pd.DataFrame(pairs, columns=KEY)
    base[C.RATING] = rng.integers(1, 6, len(base)).astype(float)
    base[C.TIMESTAMP] = rng.integers(8e8, 9e8, len(base))
    held = base.sample(frac=0.2, random_state=1)
    train_part = base.drop(held.index)
    cold = pd.DataFrame(
        {
            C.USER_ID: [41, 41, 1, 2],  # user 41 and item 99 are in no train row
            C.ITEM_ID: [1, 99, 99, 99],
            C.RATING: [3.0, 4.0, 5.0, 1.0],
            C.TIMESTAMP: [1, 2, 3, 4],
        }
    )
    test_part = pd.concat([held, cold], ignore_index=True)
    leak = train_part.iloc[[0]]  # a train pair again in the test file

    def write(df, path):
        rows = df[[*KEY, C.RATING, C.TIMESTAMP]].astype("int64").values.tolist()
        path.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))

    write(train_part, tmp_path / "u1.base")
    write(pd.concat([test_part, leak]), tmp_path / "u1.test")
    out = str(tmp_path / "out")
    _prepare(
        spark,
        out,
        f"data.path={tmp_path / 'u1.base'}",
        f"data.test_path={tmp_path / 'u1.test'}",
        "split.method=predefined",
        "data.max_rejected_fraction=0.05",
    )
    train, test, users, items = _check_prepared(spark, out, pd.concat([train_part, test_part]))
    # Exactly the files' rows: train = the base file, test = the test file minus the leak.
    assert sorted(map(tuple, train[KEY].values)) == sorted(map(tuple, train_part[KEY].values))
    assert sorted(map(tuple, test[KEY].values)) == sorted(map(tuple, test_part[KEY].values))
    flags = test.set_index(KEY)[[C.COLD_USER, C.COLD_ITEM]]
    assert flags.loc[(41, 1)].tolist() == [True, False]
    assert flags.loc[(41, 99)].tolist() == [True, True]
    assert flags.loc[(1, 99)].tolist() == [False, True]
    assert int(flags.values.any(axis=1).sum()) == 4
    # Cold entities are indexed (n_train 0), never dropped.
    assert users.set_index(C.USER_ID).loc[41, C.N_TRAIN] == 0
    assert items.set_index(C.ITEM_ID).loc[99, C.N_TRAIN] == 0
    rejected = _read(spark, out, C.PREPARED_REJECTED)
    u, i, r, t = leak.values[0]
    assert rejected[[C.USER_ID, C.ITEM_ID, C.REASON]].values.tolist() == [
        [str(int(u)), str(int(i)), C.REASON_TEST_PAIR_IN_TRAIN]
    ]
    assert rejected["line"].tolist() == [f"{int(u)}\t{int(i)}\t{int(r)}\t{int(t)}"]
    assert rejected["source"].iloc[0].endswith("/u1.test")
    assert _manifest(out)["rejected_by_reason"] == {C.REASON_TEST_PAIR_IN_TRAIN: 1}


def test_synthetic_time_split(spark, tmp_path):
    out = str(tmp_path / "out")
    _prepare(
        spark,
        out,
        "synthetic.n_users=300",
        "synthetic.n_items=200",
        "synthetic.n_ratings=6000",
        "synthetic.min_user_ratings=5",
        "split.method=time",
        "split.test_fraction=0.25",
    )
    train = _read(spark, out, C.PREPARED_TRAIN)
    test = _read(spark, out, C.PREPARED_TEST)
    assert len(train) + len(test) == 6000
    ratings = pd.concat([train, test])[[C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP]]
    _check_prepared(spark, out, ratings)
    # Per user, every test rating is at least as recent as every train rating.
    both = pd.concat(
        [train.groupby(C.USER_ID)[C.TIMESTAMP].max(), test.groupby(C.USER_ID)[C.TIMESTAMP].min()],
        axis=1,
        keys=["last_train", "first_test"],
    ).dropna()
    assert len(both) == 300 and (both["first_test"] >= both["last_train"]).all()
    truth = _read(spark, out, f"{C.SYNTHETIC_TRUTH}/user_factors")
    assert len(truth) == 300 and truth[C.USER_IDX].notna().all()
    assert _manifest(out)["input"]["synthetic"]["n_ratings"] == 6000


# The acceptance scenario: 1,000 good rows, 5 malformed lines, 3 NaN ratings,
# 4 out-of-range ratings and 6 older duplicates of good pairs, shuffled.
def _acceptance_lines(seed: int = 3):
    rng = np.random.default_rng(seed)
    pairs = rng.choice(100 * 300, size=1000, replace=False)
    good = [
        (
            int(p // 300) + 1,
            int(p % 300) + 1,
            int(rng.integers(1, 6)),
            880_000_000 + int(rng.integers(1e6)),
        )
        for p in pairs
    ]
    lines = [(f"{u}\t{i}\t{r}\t{t}", None) for u, i, r, t in good]
    lines += [
        ("12\t34\t5", C.REASON_WRONG_FIELD_COUNT),
        ("12\t34\t5\t881000000\t9", C.REASON_WRONG_FIELD_COUNT),
        ("12 34 5 881000000", C.REASON_WRONG_FIELD_COUNT),
        ("abc\t34\t5\t881000000", C.REASON_BAD_NUMBER),
        ("12\t34\tfour\t881000000", C.REASON_BAD_NUMBER),
    ]
    lines += [(f"{200 + k}\t{k + 1}\tNaN\t881000000", C.REASON_NAN_RATING) for k in range(3)]
    lines += [
        (f"{300 + k}\t{k + 1}\t{r}\t881000000", C.REASON_OUT_OF_RANGE)
        for k, r in enumerate((0, 6, 10, -1))
    ]
    for k in rng.choice(1000, size=6, replace=False):
        u, i, r, t = good[k]
        lines.append((f"{u}\t{i}\t{(r % 5) + 1}\t{t - 1000}", C.REASON_DUPLICATE))
    lines += [("", None), ("  ", None)]  # blank lines: skipped and counted, not rejected
    order = rng.permutation(len(lines))
    return [lines[k] for k in order], good


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory):
    folder = tmp_path_factory.mktemp("acceptance")
    lines, good = _acceptance_lines()
    (folder / "u.data").write_text("\n".join(line for line, _ in lines) + "\n")
    return folder, lines, good


def test_acceptance_default_threshold_fails(run_job, acceptance):
    folder, lines, _ = acceptance
    out = folder / "out_default"
    result = run_job(
        "prepare", "--set", f"data.path={folder / 'u.data'}", "--set", f"output.path={out}", *FAST_SPARK
    )
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "18 of 1018 input rows rejected" in message, result.stderr[-3000:]
    for reason, n in Counter(reason for _, reason in lines if reason).items():
        assert f"{reason}={n}" in message
    assert "data.max_rejected_fraction" in message
    assert not (out / "prepared" / "train").exists()
    assert not out.exists()  # the run created it, so it removes it


def test_acceptance_with_raised_threshold(spark, acceptance):
    # In this process (the failing run above is the subprocess): same code path, no JVM start.
    folder, lines, good = acceptance
    out = folder / "out_raised"
    _prepare(spark, str(out), f"data.path={folder / 'u.data'}", "data.max_rejected_fraction=0.05")
    rejected = _read(spark, str(out), C.PREPARED_REJECTED)
    assert sorted(zip(rejected["line"], rejected[C.REASON], strict=True)) == sorted(
        (line, reason) for line, reason in lines if reason
    )
    ratings = pd.DataFrame(good, columns=[C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP])
    _check_prepared(spark, str(out), ratings)  # train + test hold exactly the 1,000
    manifest = _manifest(str(out))
    assert manifest["rejected_by_reason"] == dict(Counter(reason for _, reason in lines if reason))
    assert manifest["counts"]["rejected"] == len(rejected) == 18
    assert manifest["counts"]["blank_lines_skipped"] == 2


def test_missing_path_fails_in_one_line_and_leaves_nothing(run_job, tmp_path):
    missing = tmp_path / "nowhere" / "u.data"
    out = tmp_path / "out"
    result = run_job("prepare", "--set", f"data.path={missing}", "--set", f"output.path={out}")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(missing) in lines[0] and "not found" in lines[0]
    assert not out.exists()


def test_empty_input_fails_in_one_line(run_job, tmp_path):
    empty = tmp_path / "ratings.csv"
    empty.write_text("")
    out = tmp_path / "out"
    result = run_job("prepare", "--set", f"data.path={empty}", "--set", f"output.path={out}")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "empty" in lines[0] and str(empty) in lines[0], result.stderr
    assert not out.exists()


def test_header_only_input_has_no_ratings(spark, tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n\n")
    out = tmp_path / "out"
    with pytest.raises(Exception, match="no ratings found") as err:
        _prepare(spark, str(out), f"data.path={path}")
    assert str(path) in str(err.value)
    assert not out.exists()
