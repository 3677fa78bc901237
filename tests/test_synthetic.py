"""Synthetic MovieLens-shaped ratings: exact shape, determinism, and a consistent planted truth.

Every expectation is computed here independently of :mod:`mfspark.synthetic` (own rounding,
own simulation, numpy's own weighted sampling without replacement as the reference).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mfspark import synthetic as S
from mfspark.config import SyntheticConfig
from mfspark.errors import ConfigError

LO, HI = 0.5, 5.0
# 17k users = 5 chunks of USERS_PER_CHUNK, so 1 vs 4 partitions really regroups the chunks.
SYN = SyntheticConfig(
    n_users=17_000, n_items=2_000, n_ratings=250_000, rank=4, min_user_ratings=5, seed=7
)


def _ratings_pd(data: S.SyntheticData) -> pd.DataFrame:
    return data.ratings.toPandas().sort_values(["user_id", "item_id"], ignore_index=True)


def _truth_np(df: pd.DataFrame, id_col: str, n: int, rank: int):
    df = df.sort_values(id_col, ignore_index=True)
    assert df[id_col].tolist() == list(range(n))
    factors = np.stack(df["factors"].to_numpy()).reshape(n, rank).astype(np.float64)
    return df["bias"].to_numpy(), factors


@pytest.fixture(scope="module")
def data(spark):
    return S.generate(spark, SYN, LO, HI)


@pytest.fixture(scope="module")
def ratings(data):
    return _ratings_pd(data)


@pytest.fixture(scope="module")
def truth(data):
    users = _truth_np(data.user_truth.toPandas(), "user_id", SYN.n_users, SYN.rank)
    items = _truth_np(data.item_truth.toPandas(), "item_id", SYN.n_items, SYN.rank)
    return users, items


def _planted(ratings: pd.DataFrame, truth, mu: float) -> np.ndarray:
    """μ + b + c + wᵀu for every rating, before noise, clipping and rounding."""
    (b, w), (c, v) = truth
    u, i = ratings["user_id"].to_numpy(), ratings["item_id"].to_numpy()
    return mu + b[u] + c[i] + np.einsum("ij,ij->i", w[u], v[i])


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


# ---------------------------------------------------------------------------- shape


def test_schema_and_metadata(data):
    fields = {f.name: (f.dataType.simpleString(), f.nullable) for f in data.ratings.schema}
    assert fields == {
        "user_id": ("bigint", False),
        "item_id": ("bigint", False),
        "rating": ("double", False),
        "timestamp": ("bigint", False),
    }
    for df, id_col in ((data.user_truth, "user_id"), (data.item_truth, "item_id")):
        assert [(f.name, f.dataType.simpleString()) for f in df.schema] == [
            (id_col, "bigint"),
            ("bias", "double"),
            ("factors", "array<float>"),
        ]
    md = data.metadata
    assert md["n_ratings"] == SYN.n_ratings and md["rank"] == SYN.rank
    assert md["rating_step"] == 0.5 and md["noise_sd"] == SYN.noise
    assert md["factor_var"] == pytest.approx(SYN.factor_sd**2)
    assert md["rounding_var"] == pytest.approx(0.25 / 12)


def test_exact_count_distinct_pairs_and_ranges(ratings):
    assert len(ratings) == SYN.n_ratings
    assert not ratings.duplicated(["user_id", "item_id"]).any()
    assert ratings["user_id"].between(0, SYN.n_users - 1).all()
    assert ratings["item_id"].between(0, SYN.n_items - 1).all()
    r = ratings["rating"].to_numpy()
    assert r.min() >= LO and r.max() <= HI
    np.testing.assert_array_equal(r * 2, np.round(r * 2))  # on the 0.5 grid
    # Every grid value occurs, the ends included (clipping piles up there).
    assert set(np.unique(r)) == set(np.arange(LO, HI + 0.25, 0.5))
    ts = ratings["timestamp"].to_numpy()
    assert ts.min() >= 946_684_800 and ts.max() <= 1_451_606_399  # 2000-01-01 .. 2015-12-31
    assert len(np.unique(ts)) > 0.99 * len(ts)  # a time split has something to cut


def test_user_activity_is_a_heavy_tail_above_the_minimum(ratings):
    per_user = ratings.groupby("user_id").size()
    assert len(per_user) == SYN.n_users  # every user has ratings
    assert per_user.min() >= SYN.min_user_ratings
    assert per_user.max() <= SYN.n_items // 2
    assert per_user.max() > 20 * per_user.median()
    # Power law: the top 10% of users give far more than 10% of the ratings.
    top = per_user.sort_values().to_numpy()[-SYN.n_users // 10 :]
    assert top.sum() > 0.35 * SYN.n_ratings


def test_item_popularity_is_skewed_and_not_ordered_by_id(ratings):
    per_item = ratings.groupby("item_id").size().reindex(range(SYN.n_items), fill_value=0)
    counts = np.sort(per_item.to_numpy())
    assert counts[-10:].sum() > 10 * 10 * np.median(counts)  # Zipf head
    # The popularity ranks are a random permutation of ids: no trend with the id.
    rank_corr = np.corrcoef(per_item.index, per_item.rank())[0, 1]
    assert abs(rank_corr) < 0.1


def test_truth_tables_cover_every_user_and_item(data, truth):
    (b, w), (c, v) = truth  # _truth_np checked ids 0..n-1, one row each
    assert w.shape == (SYN.n_users, SYN.rank) and v.shape == (SYN.n_items, SYN.rank)
    # The planted spreads are the configured ones.
    assert b.std() == pytest.approx(SYN.user_bias_sd, rel=0.05)
    assert c.std() == pytest.approx(SYN.item_bias_sd, rel=0.1)
    entry_sd = math.sqrt(SYN.factor_sd / math.sqrt(SYN.rank))
    assert w.std() == pytest.approx(entry_sd, rel=0.05)


# ---------------------------------------------------------------------------- determinism


def test_same_data_for_any_partition_count_and_same_seed(spark, ratings, truth):
    for parts in (1, 4):
        again = S.generate(spark, SYN, LO, HI, num_partitions=parts)
        assert again.ratings.rdd.getNumPartitions() == parts
        pd.testing.assert_frame_equal(_ratings_pd(again), ratings)
        b, w = _truth_np(again.user_truth.toPandas(), "user_id", SYN.n_users, SYN.rank)
        np.testing.assert_array_equal(b, truth[0][0])
        np.testing.assert_array_equal(w, truth[0][1])


def test_other_seed_gives_other_data(spark, ratings, truth):
    other = S.generate(spark, replace(SYN, seed=SYN.seed + 1), LO, HI)
    o = _ratings_pd(other)
    assert len(o) == SYN.n_ratings
    pairs = set(zip(ratings["user_id"], ratings["item_id"], strict=True))
    shared = sum(p in pairs for p in zip(o["user_id"], o["item_id"], strict=True))
    assert shared < 0.5 * SYN.n_ratings
    b, _ = _truth_np(other.user_truth.toPandas(), "user_id", SYN.n_users, SYN.rank)
    assert abs(np.corrcoef(b, truth[0][0])[0, 1]) < 0.05


# ---------------------------------------------------------------------------- planted truth


def test_planted_truth_explains_the_ratings(ratings, truth):
    x = _planted(ratings, truth, SYN.global_mean)
    r = ratings["rating"].to_numpy()
    rmse_truth = _rmse(np.clip(x, LO, HI), r)
    # Expected: simulate the noise, clipping and rounding again with an independent RNG
    # (round to multiples of 0.5 first, then clip: the same grid since LO is on it).
    sim = np.clip(np.round((x + np.random.default_rng(0).normal(0, SYN.noise, len(x))) * 2) / 2, LO, HI)
    expected = _rmse(np.clip(x, LO, HI), sim)
    assert rmse_truth == pytest.approx(expected, abs=0.01)
    # Clipping only lowers the error below the unclipped sqrt(noise² + step²/12).
    assert rmse_truth < math.sqrt(SYN.noise**2 + 0.25 / 12) + 0.005
    # Far better than the global mean, and the factors add to the biases.
    assert rmse_truth < 0.8 * _rmse(np.full_like(r, r.mean()), r)
    (b, _), (c, _) = truth
    biases_only = SYN.global_mean + b[ratings["user_id"]] + c[ratings["item_id"]]
    assert rmse_truth < _rmse(np.clip(biases_only, LO, HI), r) - 0.03
    # Over all user × item pairs, E[(wᵀu)²] = tr(E[wwᵀ] E[uuᵀ]) is the configured factor_sd².
    (_, w), (_, v) = truth
    pair_var = np.trace((w.T @ w / len(w)) @ (v.T @ v / len(v)))
    assert pair_var == pytest.approx(SYN.factor_sd**2, rel=0.08)


def test_without_clipping_the_error_is_noise_plus_rounding(spark):
    syn = replace(SYN, n_users=3_000, n_ratings=100_000, seed=3)
    lo, hi = -50.0, 50.0  # never reached: no clipping
    data = S.generate(spark, syn, lo, hi)
    r = _ratings_pd(data)
    users = _truth_np(data.user_truth.toPandas(), "user_id", syn.n_users, syn.rank)
    items = _truth_np(data.item_truth.toPandas(), "item_id", syn.n_items, syn.rank)
    x = _planted(r, (users, items), syn.global_mean)
    # Uniform rounding error on a 0.5 grid has variance 0.5²/12, independent of the noise.
    assert _rmse(x, r["rating"].to_numpy()) == pytest.approx(
        math.sqrt(syn.noise**2 + 0.5**2 / 12), abs=0.01
    )


def test_small_catalogue_lowered_minimum_and_rank_zero(spark):
    # 1500 ratings < 100 users × 20: the minimum drops to 15; the cap is 25 of 50 items, so
    # heavy users take the exponential-race path.
    syn = SyntheticConfig(n_users=100, n_items=50, n_ratings=1_500, rank=0, seed=1)
    data = S.generate(spark, syn, LO, HI)
    r = _ratings_pd(data)
    assert len(r) == 1_500 and not r.duplicated(["user_id", "item_id"]).any()
    per_user = r.groupby("user_id").size()
    assert len(per_user) == 100 and per_user.min() >= 15 and per_user.max() <= 25
    items = data.item_truth.toPandas()
    assert len(items) == 50 and all(len(f) == 0 for f in items["factors"])
    assert data.metadata["factor_var"] == 0.0


def test_impossible_sizes_raise_config_error(spark):
    with pytest.raises(ConfigError, match=r"synthetic\.n_ratings.*synthetic\.n_items"):
        S.generate(spark, SyntheticConfig(n_users=10, n_items=10, n_ratings=51), LO, HI)
    with pytest.raises(ConfigError, match=r"synthetic\.n_users"):
        S.generate(spark, SyntheticConfig(n_users=10, n_items=10, n_ratings=9), LO, HI)


# ---------------------------------------------------------------------------- numpy core


@pytest.mark.parametrize(
    "n_ratings, fewest, most",
    [(25_000, 20, 500), (1_000 * 20, 20, 500), (1_000 * 500, 20, 500), (777_777, 3, 1_000)],
)
def test_user_activity_hits_the_total_exactly(n_ratings, fewest, most):
    counts = S.user_activity(1_000, n_ratings, fewest, most, 1.4, np.random.default_rng(0))
    assert counts.sum() == n_ratings
    assert counts.min() >= fewest and counts.max() <= most


@pytest.mark.parametrize("path", ["rounds", "race", "rounds_then_race"])
def test_weighted_sampling_without_replacement_matches_numpy(path, monkeypatch):
    """Item inclusion frequencies agree with numpy's choice(replace=False, p=...)."""
    n_items, n_users = 200, 6_000
    k = 100 if path == "race" else 8
    if path == "rounds_then_race":  # one starved round, then the race finishes every user
        monkeypatch.setattr(S, "_MAX_ROUNDS", 1)
        monkeypatch.setattr(S, "_OVERDRAW", 0.5)
        monkeypatch.setattr(S, "_EXTRA_DRAWS", 0)
    rng = np.random.default_rng(11)
    popularity = np.arange(1, n_items + 1, dtype=float) ** -1.0
    popularity = popularity[rng.permutation(n_items)]
    popularity /= popularity.sum()
    cdf = np.cumsum(popularity)
    counts = np.full(n_users, k, dtype=np.int64)
    user, item = S.sample_items(counts, popularity, cdf / cdf[-1], S.distinct_curve(popularity), rng)
    assert np.array_equal(np.bincount(user, minlength=n_users), counts)
    assert len(np.unique(user * n_items + item)) == len(user)
    got = np.bincount(item, minlength=n_items) / n_users
    ref_rng = np.random.default_rng(12)
    ref_users = 3_000
    ref = (
        np.bincount(
            np.concatenate(
                [ref_rng.choice(n_items, k, replace=False, p=popularity) for _ in range(ref_users)]
            ),
            minlength=n_items,
        )
        / ref_users
    )
    se = np.sqrt(ref * (1 - ref) / ref_users + got * (1 - got) / n_users) + 1e-3
    assert np.max(np.abs(got - ref) / se) < 5


def test_inverse_cdf_is_searchsorted():
    """The guide-table lookup gives np.searchsorted's indices exactly: random points, bucket
    edges, the cdf's own values (ties included), 0 and the largest float below 1."""
    rng = np.random.default_rng(4)
    for n in (1, 2, 7, 1000, 26744):
        weights = rng.pareto(1.0, n) + 1e-9
        weights[rng.random(n) < 0.1] = 0.0  # repeated cdf values
        weights[0] = max(weights[0], 1e-9)
        cdf = np.cumsum(weights) / weights.sum()
        k = len(S.guide_table(cdf)) - 1  # the buckets: their edges are tried below
        assert k >= 4 * n and k & (k - 1) == 0
        u = np.concatenate(
            [rng.random(5000), np.arange(k) / k, cdf[cdf < 1], [0.0, np.nextafter(1.0, 0.0)]]
        )
        np.testing.assert_array_equal(S.inverse_cdf(cdf, u), np.searchsorted(cdf, u, side="right"))
