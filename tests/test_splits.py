"""Splits: disjoint and complete, the right fraction, per-user guarantees, and no dependence on
partitioning. Expectations are computed here with pandas from the input, not from the split."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mfspark import columns as C
from mfspark.config import SplitConfig
from mfspark.errors import InputError
from mfspark.splits import split

COLS = [C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP]
FRACTION = 0.2


@pytest.fixture(scope="module")
def ratings_pd() -> pd.DataFrame:
    """3,000 users with 1 to 24 ratings each (a quarter with exactly one), distinct times per user."""
    rng = np.random.default_rng(5)
    counts = rng.integers(1, 25, size=3000)
    counts[rng.random(3000) < 0.25] = 1
    rows = []
    for user, n in enumerate(counts):
        items = rng.choice(1000, size=n, replace=False)
        times = 1_000_000 + rng.permutation(10_000)[:n]
        rows.append(pd.DataFrame({C.USER_ID: user, C.ITEM_ID: items, C.TIMESTAMP: times}))
    df = pd.concat(rows, ignore_index=True)
    df[C.RATING] = rng.integers(1, 6, size=len(df)).astype(float)
    return df[COLS].astype({C.USER_ID: "int64", C.ITEM_ID: "int64", C.TIMESTAMP: "int64"})


@pytest.fixture(scope="module")
def ratings(spark, ratings_pd):
    df = spark.createDataFrame(ratings_pd).cache()
    df.count()
    yield df
    df.unpersist()


def _split_pd(df, method: str, seed: int = 3):
    train, test = split(df, SplitConfig(method=method, test_fraction=FRACTION, seed=seed))
    key = [C.USER_ID, C.ITEM_ID]
    return (
        train.toPandas().sort_values(key, ignore_index=True),
        test.toPandas().sort_values(key, ignore_index=True),
    )


def _assert_partition_of_input(train, test, ratings_pd):
    key = [C.USER_ID, C.ITEM_ID]
    assert not set(map(tuple, train[key].values)) & set(map(tuple, test[key].values))
    union = pd.concat([train, test]).sort_values(key, ignore_index=True)[COLS]
    expected = ratings_pd.sort_values(key, ignore_index=True)[COLS]
    pd.testing.assert_frame_equal(union, expected, check_dtype=False)


@pytest.fixture(scope="module")
def splits(ratings):
    """method -> (split of the input in 1 partition, split of it in 8 partitions), computed once."""
    done = {}

    def get(method):
        if method not in done:
            done[method] = (
                _split_pd(ratings.repartition(1), method),
                _split_pd(ratings.repartition(8), method),
            )
        return done[method]

    return get


@pytest.mark.parametrize("method", ["random", "user", "time"])
def test_train_and_test_partition_the_input(splits, method, ratings_pd):
    (train, test), _ = splits(method)
    _assert_partition_of_input(train, test, ratings_pd)


@pytest.mark.parametrize("method", ["random", "user", "time"])
def test_split_does_not_depend_on_partitioning(splits, method):
    (train1, test1), (train8, test8) = splits(method)
    pd.testing.assert_frame_equal(test1, test8)
    pd.testing.assert_frame_equal(train1, train8)


@pytest.mark.parametrize("method", ["random", "user", "time"])
def test_fraction_within_binomial_bound(splits, method, ratings_pd):
    (_, test), _ = splits(method)
    n_per_user = ratings_pd.groupby(C.USER_ID).size()
    if method == "random":
        n = len(ratings_pd)
        # Each rating is an independent Bernoulli(f): 4.5 standard deviations.
        tolerance = 4.5 * math.sqrt(n * FRACTION * (1 - FRACTION))
        expected = FRACTION * n
    else:
        # Users with n >= 2 put floor(f·n + v) in test, v uniform: a Bernoulli on top of
        # floor(f·n), so the total has mean f·Σn and variance at most n_users / 4.
        eligible = n_per_user[n_per_user >= 2]
        expected = FRACTION * eligible.sum()
        tolerance = 4.5 * math.sqrt(len(eligible) / 4)
    assert abs(len(test) - expected) <= tolerance, (len(test), expected, tolerance)


@pytest.mark.parametrize("method", ["user", "time"])
def test_per_user_counts(splits, method, ratings_pd):
    (train, test), _ = splits(method)
    n = ratings_pd.groupby(C.USER_ID).size()
    n_test = test.groupby(C.USER_ID).size().reindex(n.index, fill_value=0)
    n_train = train.groupby(C.USER_ID).size().reindex(n.index, fill_value=0)
    single = n == 1
    assert single.sum() > 500
    assert (n_test[single] == 0).all() and (n_train[single] == 1).all()
    several = ~single
    assert (n_train[several] >= 1).all()
    low = np.floor(FRACTION * n[several])
    assert ((n_test[several] == low) | (n_test[several] == np.minimum(low + 1, n[several] - 1))).all()


def test_time_split_holds_out_each_users_latest(splits):
    (train, test), _ = splits("time")
    last_train = train.groupby(C.USER_ID)[C.TIMESTAMP].max()
    first_test = test.groupby(C.USER_ID)[C.TIMESTAMP].min()
    both = pd.concat([last_train, first_test], axis=1, keys=["last_train", "first_test"]).dropna()
    assert len(both) > 1000
    assert (both["first_test"] > both["last_train"]).all()


def test_user_split_is_not_the_time_split(splits):
    """The user split picks test ratings at random, not the latest."""
    (_, user_test), _ = splits("user")
    (_, time_test), _ = splits("time")
    assert len(user_test.merge(time_test, on=[C.USER_ID, C.ITEM_ID])) < 0.5 * len(time_test)


def test_seed_changes_the_random_split(splits, ratings):
    (_, test_a), _ = splits("random")  # seed 3
    _, test_b = _split_pd(ratings, "random", seed=2)
    overlap = len(test_a.merge(test_b, on=[C.USER_ID, C.ITEM_ID]))
    # Independent draws overlap in about f² of the ratings, not f.
    assert overlap < 0.5 * len(test_a)


def test_time_split_needs_timestamps(spark):
    df = spark.createDataFrame(
        [(1, 1, 3.0, None), (1, 2, 4.0, 5)], "user_id long, item_id long, rating double, timestamp long"
    )
    with pytest.raises(InputError, match="1 ratings have none"):
        split(df, SplitConfig(method="time", test_fraction=0.5))
