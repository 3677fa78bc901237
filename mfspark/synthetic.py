"""MovieLens-shaped synthetic ratings with a known planted model, generated in parallel by Spark.

The model (the same one :mod:`mfspark` fits, see the README, "The model")::

    x_ij = μ + b_i + c_j + w_iᵀ u_j + ε_ij,        ε_ij ~ N(0, noise²)
    r_ij = round_to_step(clip(x_ij, rating_min, rating_max))

    b_i ~ N(0, user_bias_sd²)          user bias
    c_j ~ N(0, item_bias_sd²)          item bias
    w_i, u_j ∈ R^k, entries ~ N(0, s²)  with s² = factor_sd / √k, so that
                                        var(w_iᵀu_j) = k·s⁴ = factor_sd²   (k = 0: no factor term)

``round_to_step`` rounds to the grid rating_min, rating_min + step, … (step
``synthetic.rating_step``, 0.5 by default; 0 keeps ratings continuous) and never above
rating_max. Timestamps are integer epoch seconds, uniform in [2000-01-01, 2015-12-31].

Shape, as in MovieLens:

* **User activity** is a power law: n_i = m + s·y_i with y_i ~ Lomax (Pareto II) of tail index
  ``activity_exponent``, clipped to [m, cap] (m = ``min_user_ratings``, lowered to
  max(1, n_ratings // n_users) when the total cannot give everyone m; cap = half the items),
  with the scale s solved so that the counts add up to exactly ``n_ratings``.
* **Item popularity** is Zipf: the item of popularity rank r has weight r^(−popularity_exponent);
  ranks are a seeded permutation of the item ids, so popular items are not the low ids.
* Each user's n_i items are drawn **without replacement, weighted by popularity** (successive
  sampling): i.i.d. draws in a few rounds keeping the first n_i distinct items in draw order;
  users for whom that would waste draws (heavy users, whose set covers most of the weight) and
  the few still short after the rounds are finished with an exponential race (the n smallest
  of E_j / p_j over the items not yet chosen), which continues the same sampling exactly.

Parallelism and determinism: the per-user counts and all item parameters are computed on the
driver and broadcast. Users are grouped into fixed chunks of :data:`USERS_PER_CHUNK` ids; one
``mapInArrow`` over ``spark.range(n_chunks)`` generates each chunk's ratings with vectorised
numpy from RNG streams keyed by (seed, stream, chunk), so the data are identical for any
number of partitions or any master. The user truth is regenerated from its own stream by a
second ``mapInArrow``; nothing is collected to the driver.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.config import SyntheticConfig
from mfspark.errors import ConfigError
from mfspark.session import worker_single_thread

# Users per generation chunk. Fixed (never derived from the partition count) because the
# chunk is the unit of randomness: changing it changes the data.
USERS_PER_CHUNK = 4096
# Items per chunk of the item-truth DataFrame (rows only; items are drawn on the driver).
ITEMS_PER_CHUNK = 65536
# Timestamps: uniform epoch seconds in [2000-01-01T00:00:00Z, 2015-12-31T23:59:59Z].
TIME_START = 946_684_800
TIME_END = 1_451_606_399

# Independent RNG streams: each random quantity has its own, so e.g. the user truth can be
# regenerated without replaying the sampling of items.
_STREAM_ACTIVITY = 1
_STREAM_ITEMS = 2
_STREAM_USERS = 3
_STREAM_SAMPLING = 4
_STREAM_NOISE = 5

# Without-replacement sampling by rounds of i.i.d. draws.
_MAX_ROUNDS = 4
_OVERDRAW = 1.1  # draws per expected-needed draw: most users finish in the first round
_EXTRA_DRAWS = 2
# A user whose expected draws exceed this fraction of the items goes to the exponential race.
_RACE_DRAW_FRACTION = 0.25
# Race matrix size per block (float64 keys): bounds worker memory to ~64 MB.
_RACE_BLOCK_ELEMENTS = 4_000_000

RATINGS_SCHEMA = T.StructType(
    [
        T.StructField(C.USER_ID, T.LongType(), False),
        T.StructField(C.ITEM_ID, T.LongType(), False),
        T.StructField(C.RATING, T.DoubleType(), False),
        T.StructField(C.TIMESTAMP, T.LongType(), False),
    ]
)


def _truth_schema(id_col: str) -> T.StructType:
    return T.StructType(
        [
            T.StructField(id_col, T.LongType(), False),
            T.StructField(C.BIAS, T.DoubleType(), False),
            T.StructField(C.FACTORS, T.ArrayType(T.FloatType(), False), False),
        ]
    )


@dataclass
class SyntheticData:
    """Ratings and the planted truth that generated them.

    ``ratings``: user_id, item_id (long), rating (double), timestamp (long), no duplicate pair.
    ``user_truth``: user_id, bias, factors for every user 0..n_users-1 (all have ratings).
    ``item_truth``: item_id, bias, factors for every item 0..n_items-1 (rated or not).
    ``metadata``: the parameters and the planted variances (plain Python values).
    """

    ratings: DataFrame
    user_truth: DataFrame
    item_truth: DataFrame
    metadata: dict


@dataclass(frozen=True)
class _Params:
    """Scalars the workers need (the arrays travel in the broadcast)."""

    seed: int
    n_users: int
    rank: int
    global_mean: float
    noise: float
    user_bias_sd: float
    factor_entry_sd: float
    rating_min: float
    rating_max: float
    rating_step: float


# ----------------------------------------------------------------------------------------
# Randomness


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    # SeedSequence needs non-negative integers; map any int seed to its 64-bit pattern.
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFF_FFFF_FFFF_FFFF, stream, *keys]))


def factor_entry_sd(factor_sd: float, rank: int) -> float:
    """s with var(wᵀu) = k·s⁴ = factor_sd² for independent N(0, s²) entries."""
    return math.sqrt(factor_sd / math.sqrt(rank)) if rank > 0 else 0.0


def user_parameters(
    seed: int, chunk: int, n: int, rank: int, bias_sd: float, entry_sd: float
) -> tuple[np.ndarray, np.ndarray]:
    """Bias (float64) and factors (float32, n × rank) of the users of one chunk."""
    rng = _rng(seed, _STREAM_USERS, chunk)
    bias = rng.normal(0.0, bias_sd, n)
    factors = (rng.standard_normal((n, rank)) * entry_sd).astype(np.float32)
    return bias, factors


def item_parameters(
    seed: int, n_items: int, rank: int, bias_sd: float, entry_sd: float, exponent: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bias (float64), factors (float32) and popularity (probabilities) of every item."""
    rng = _rng(seed, _STREAM_ITEMS)
    bias = rng.normal(0.0, bias_sd, n_items)
    factors = (rng.standard_normal((n_items, rank)) * entry_sd).astype(np.float32)
    # Zipf over popularity ranks; a random permutation decides which item has which rank.
    weight = np.arange(1, n_items + 1, dtype=np.float64) ** -exponent
    popularity = np.empty(n_items)
    popularity[rng.permutation(n_items)] = weight / weight.sum()
    return bias, factors, popularity


# ----------------------------------------------------------------------------------------
# User activity


def activity_bounds(syn: SyntheticConfig) -> tuple[int, int]:
    """(fewest, most) ratings per user; ConfigError when n_ratings cannot be met exactly."""
    cap = max(1, syn.n_items // 2)
    if syn.n_ratings > syn.n_users * cap:
        raise ConfigError(
            f"synthetic.n_ratings = {syn.n_ratings} does not fit: each of synthetic.n_users = "
            f"{syn.n_users} users rates at most half of synthetic.n_items = {syn.n_items} "
            f"({cap}), so at most {syn.n_users * cap} ratings; lower synthetic.n_ratings or "
            "raise synthetic.n_users / synthetic.n_items"
        )
    if syn.n_ratings < syn.n_users:
        raise ConfigError(
            f"synthetic.n_ratings = {syn.n_ratings} is below synthetic.n_users = "
            f"{syn.n_users}, but every user needs at least one rating; raise "
            "synthetic.n_ratings or lower synthetic.n_users"
        )
    fewest = syn.min_user_ratings
    if syn.n_ratings < syn.n_users * fewest:
        fewest = max(1, syn.n_ratings // syn.n_users)
    return min(fewest, cap), cap


def user_activity(
    n_users: int,
    n_ratings: int,
    fewest: int,
    most: int,
    exponent: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Ratings per user: fewest + s·Lomax(exponent), clipped to [fewest, most], sum n_ratings.

    Needs n_users·fewest <= n_ratings <= n_users·most.
    """
    u = rng.random(n_users)
    y = np.expm1(-np.log1p(-u) / exponent)  # Lomax: (1 − U)^(−1/α) − 1 ≥ 0

    def total(scale: float) -> float:
        return float(np.clip(fewest + scale * y, fewest, most).sum())

    lo, hi = 0.0, 1.0
    while total(hi) < n_ratings and hi < 1e30:
        lo, hi = hi, hi * 2.0
    for _ in range(100):  # bisection on the scale; total() is monotone
        mid = 0.5 * (lo + hi)
        if total(mid) <= n_ratings:
            lo = mid
        else:
            hi = mid
    target = np.clip(fewest + lo * y, fewest, most)
    counts = np.floor(target).astype(np.int64)
    # Hand out what the floors left over, largest fractional part first, so the total is
    # exact. Usually one pass; the loop only guarantees termination in degenerate cases.
    order = np.argsort(-(target - counts), kind="stable")
    while (deficit := n_ratings - int(counts.sum())) > 0:
        open_users = order[counts[order] < most]
        counts[open_users[:deficit]] += 1
    return counts


# ----------------------------------------------------------------------------------------
# Weighted sampling without replacement


def distinct_curve(popularity: np.ndarray, points: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(draws, expected distinct items) for i.i.d. popularity draws, on a geometric grid.

    E[distinct after n draws] = Σ_j 1 − (1 − p_j)^n; inverted by interpolation it tells how
    many draws a user needs to see n_i distinct items.
    """
    n_items = len(popularity)
    draws = np.unique(np.geomspace(1, max(2, n_items), points).round())
    log_miss = np.log1p(-np.minimum(popularity, 1 - 1e-12))
    distinct = np.array([np.sum(-np.expm1(n * log_miss)) for n in draws])
    return draws, distinct


def _first_distinct(
    user: np.ndarray, item: np.ndarray, counts: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the first counts[user] distinct items in array order, grouped by user."""
    key = user * n_items + item
    _, first = np.unique(key, return_index=True)
    first_user = user[first]
    # Order each user's distinct items by their first occurrence: that is the order in which
    # successive sampling would have picked them.
    first = first[np.argsort(first_user * len(key) + first)]
    first_user = user[first]
    n_users = len(counts)
    start = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(first_user, minlength=n_users), out=start[1:])
    rank = np.arange(len(first)) - start[first_user]
    keep = first[rank < counts[first_user]]
    return user[keep], item[keep]


def _exponential_race(
    users: np.ndarray,
    need: np.ndarray,
    taken_user: np.ndarray,
    taken_item: np.ndarray,
    popularity: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``users``, need[u] more items by popularity, excluding the taken ones.

    The items with the smallest E_j / p_j (E_j ~ Exp(1)) are a weighted sample without
    replacement; restricted to the items not yet taken it continues successive sampling.
    """
    n_items = len(popularity)
    block = max(1, _RACE_BLOCK_ELEMENTS // n_items)
    row_of = np.full(int(max(users.max(), taken_user.max(initial=0))) + 1, -1, dtype=np.int64)
    out_user, out_item = [], []
    for start in range(0, len(users), block):  # blocks of users, bounded memory
        rows = users[start : start + block]
        want = need[start : start + block]
        keys = rng.standard_exponential((len(rows), n_items)) / popularity
        row_of[rows] = np.arange(len(rows))
        taken_row = row_of[taken_user]
        hit = taken_row >= 0
        keys[taken_row[hit], taken_item[hit]] = np.inf
        row_of[rows] = -1
        k = int(want.max())
        part = np.argpartition(keys, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(keys, part, axis=1), axis=1)
        chosen = np.take_along_axis(part, order, axis=1)
        out_item.append(chosen[np.arange(k)[None, :] < want[:, None]])
        out_user.append(np.repeat(rows, want))
    return np.concatenate(out_user), np.concatenate(out_item)


def guide_table(cdf: np.ndarray) -> np.ndarray:
    """The answers of ``np.searchsorted(cdf, ·, side="right")`` at b/k, b = 0..k, for k = 2^m
    ≥ 4·len(cdf) buckets: what :func:`inverse_cdf` starts from (build it once per cdf)."""
    k = 1 << max(1, int(np.ceil(np.log2(4 * max(1, len(cdf))))))
    return np.searchsorted(cdf, np.arange(k + 1) / k, side="right")


def inverse_cdf(cdf: np.ndarray, u: np.ndarray, guide: np.ndarray | None = None) -> np.ndarray:
    """``np.searchsorted(cdf, u, side="right")`` for a sorted ``cdf`` and ``u`` in [0, 1).

    The same indices, found through the :func:`guide_table` of ``cdf`` (built here when not
    given): the answer for u in [b/k, (b+1)/k) lies between the answers for b/k and (b+1)/k
    (u·k and b/k are exact in binary floating point), and each bucket holds few cdf entries,
    so a couple of vectorised steps finish it. Binary search over the whole cdf misses the
    cache at every level: at 26,744 items this is several times faster.
    """
    guide = guide_table(cdf) if guide is None else guide
    k = len(guide) - 1
    bucket = (u * k).astype(np.int64)
    idx, hi = guide[bucket], guide[bucket + 1]
    active = np.flatnonzero(idx < hi)
    while active.size:  # count the bucket's entries <= u
        active = active[cdf[idx[active]] <= u[active]]
        idx[active] += 1
        active = active[idx[active] < hi[active]]
    return idx


def sample_items(
    counts: np.ndarray,
    popularity: np.ndarray,
    cdf: np.ndarray,
    curve: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) with counts[u] distinct items per user u, weighted by popularity.

    Users are local indices 0..len(counts)-1; needs counts[u] <= number of items.
    """
    n_users, n_items = len(counts), len(popularity)
    draws_grid, distinct_grid = curve

    def draws_for(n_distinct: np.ndarray) -> np.ndarray:
        # Beyond the grid the interpolation saturates at n_items draws: race territory.
        return np.interp(n_distinct, distinct_grid, draws_grid)

    racing = (counts > distinct_grid[-1]) | (draws_for(counts) > _RACE_DRAW_FRACTION * n_items)
    done_user: list[np.ndarray] = []
    done_item: list[np.ndarray] = []
    acc_user = np.empty(0, dtype=np.int64)
    acc_item = np.empty(0, dtype=np.int64)
    have = np.zeros(n_users, dtype=np.int64)
    guide = guide_table(cdf)  # once for the rounds below
    for _ in range(_MAX_ROUNDS):
        short = (have < counts) & ~racing
        if not short.any():
            break
        # Users already complete leave the working set, so later rounds stay small.
        finished = ~short[acc_user]
        done_user.append(acc_user[finished])
        done_item.append(acc_item[finished])
        acc_user, acc_item = acc_user[~finished], acc_item[~finished]
        extra = draws_for(counts) - draws_for(have)
        n_draws = np.where(short, np.ceil(extra * _OVERDRAW).astype(np.int64) + _EXTRA_DRAWS, 0)
        new_user = np.repeat(np.arange(n_users, dtype=np.int64), n_draws)
        new_item = inverse_cdf(cdf, rng.random(len(new_user)), guide)
        np.minimum(new_item, n_items - 1, out=new_item)  # guard cdf[-1] rounding below 1
        # Items kept from earlier rounds come first, so they stay ahead of new draws.
        acc_user, acc_item = _first_distinct(
            np.concatenate([acc_user, new_user]),
            np.concatenate([acc_item, new_item.astype(np.int64)]),
            counts,
            n_items,
        )
        # The working set holds exactly this round's users; the others keep their count.
        have = np.where(short, np.bincount(acc_user, minlength=n_users), have)
    users = np.flatnonzero(have < counts)
    if len(users):
        race_user, race_item = _exponential_race(
            users, counts[users] - have[users], acc_user, acc_item, popularity, rng
        )
        done_user.append(race_user)
        done_item.append(race_item.astype(np.int64))
    done_user.append(acc_user)
    done_item.append(acc_item)
    return np.concatenate(done_user), np.concatenate(done_item)


# ----------------------------------------------------------------------------------------
# Ratings


def round_to_step(x: np.ndarray, lo: float, hi: float, step: float) -> np.ndarray:
    """Clip to [lo, hi], then round to the grid lo, lo + step, … (never above hi)."""
    x = np.clip(x, lo, hi)
    if step <= 0:
        return x
    top = lo + math.floor((hi - lo) / step + 1e-9) * step
    return np.minimum(lo + np.round((x - lo) / step) * step, top)


def _chunk_users(chunk: int, n_users: int) -> tuple[int, int]:
    first = chunk * USERS_PER_CHUNK
    return first, min(n_users, first + USERS_PER_CHUNK)


def _list_array(factors: np.ndarray) -> pa.ListArray:
    n, rank = factors.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * np.int32(rank))
    return pa.ListArray.from_arrays(offsets, pa.array(factors.reshape(-1), pa.float32()))


def ratings_chunk(chunk: int, p: _Params, arrays: dict[str, np.ndarray]) -> pa.RecordBatch:
    """All ratings of the users of one chunk (a pure function of seed, chunk and arrays)."""
    first, stop = _chunk_users(chunk, p.n_users)
    counts = arrays["counts"][first:stop].astype(np.int64)
    user_bias, user_factors = user_parameters(
        p.seed, chunk, stop - first, p.rank, p.user_bias_sd, p.factor_entry_sd
    )
    user, item = sample_items(
        counts,
        arrays["popularity"],
        arrays["cdf"],
        (arrays["curve_draws"], arrays["curve_distinct"]),
        _rng(p.seed, _STREAM_SAMPLING, chunk),
    )
    noise_rng = _rng(p.seed, _STREAM_NOISE, chunk)
    x = p.global_mean + user_bias[user] + arrays["item_bias"][item]
    if p.rank > 0:
        x += np.einsum("ij,ij->i", user_factors[user], arrays["item_factors"][item], dtype=np.float64)
    x += noise_rng.normal(0.0, p.noise, len(x)) if p.noise > 0 else 0.0
    rating = round_to_step(x, p.rating_min, p.rating_max, p.rating_step)
    timestamp = noise_rng.integers(TIME_START, TIME_END, len(x), endpoint=True)
    return pa.RecordBatch.from_arrays(
        [pa.array(user + first), pa.array(item), pa.array(rating), pa.array(timestamp)],
        schema=pa.schema(
            [
                pa.field(C.USER_ID, pa.int64(), False),
                pa.field(C.ITEM_ID, pa.int64(), False),
                pa.field(C.RATING, pa.float64(), False),
                pa.field(C.TIMESTAMP, pa.int64(), False),
            ]
        ),
    )


def _truth_batch(id_col: str, ids: np.ndarray, bias: np.ndarray, factors: np.ndarray):
    return pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.int64()), pa.array(bias, pa.float64()), _list_array(factors)],
        names=[id_col, C.BIAS, C.FACTORS],
    )


def _chunk_ids(batches: Iterator[pa.RecordBatch]) -> Iterator[int]:
    for batch in batches:
        yield from batch.column(0).to_numpy().tolist()


def _ratings_task(p: _Params, bc: Any):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        worker_single_thread()
        arrays = bc.value
        for chunk in _chunk_ids(batches):
            yield ratings_chunk(chunk, p, arrays)

    return run


def _user_truth_task(p: _Params):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        worker_single_thread()
        for chunk in _chunk_ids(batches):
            first, stop = _chunk_users(chunk, p.n_users)
            bias, factors = user_parameters(
                p.seed, chunk, stop - first, p.rank, p.user_bias_sd, p.factor_entry_sd
            )
            yield _truth_batch(C.USER_ID, np.arange(first, stop), bias, factors)

    return run


def _item_truth_task(bc: Any):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        worker_single_thread()
        arrays = bc.value
        n_items = len(arrays["item_bias"])
        for chunk in _chunk_ids(batches):
            first = chunk * ITEMS_PER_CHUNK
            stop = min(n_items, first + ITEMS_PER_CHUNK)
            yield _truth_batch(
                C.ITEM_ID,
                np.arange(first, stop),
                arrays["item_bias"][first:stop],
                arrays["item_factors"][first:stop],
            )

    return run


def generate(
    spark: SparkSession,
    syn: SyntheticConfig,
    rating_min: float,
    rating_max: float,
    num_partitions: int | None = None,
) -> SyntheticData:
    """Synthetic ratings and their planted truth (lazy DataFrames; see the module docstring).

    ``num_partitions`` only spreads the chunks over tasks (default: one chunk per task); the
    data do not depend on it.
    """
    if not rating_min < rating_max:
        raise ConfigError(f"data.rating_min ({rating_min}) must be below data.rating_max ({rating_max})")
    fewest, most = activity_bounds(syn)
    step = float(syn.rating_step)
    entry_sd = factor_entry_sd(syn.factor_sd, syn.rank)
    counts = user_activity(
        syn.n_users,
        syn.n_ratings,
        fewest,
        most,
        syn.activity_exponent,
        _rng(syn.seed, _STREAM_ACTIVITY),
    )
    item_bias, item_factors, popularity = item_parameters(
        syn.seed, syn.n_items, syn.rank, syn.item_bias_sd, entry_sd, syn.popularity_exponent
    )
    cdf = np.cumsum(popularity)
    cdf /= cdf[-1]
    curve_draws, curve_distinct = distinct_curve(popularity)
    # Arrays go to the workers once per executor through a broadcast, never in a closure.
    bc = spark.sparkContext.broadcast(
        {
            "counts": counts.astype(np.int32),
            "popularity": popularity,
            "cdf": cdf,
            "curve_draws": curve_draws,
            "curve_distinct": curve_distinct,
            "item_bias": item_bias,
            "item_factors": item_factors,
        }
    )
    p = _Params(
        seed=syn.seed,
        n_users=syn.n_users,
        rank=syn.rank,
        global_mean=syn.global_mean,
        noise=syn.noise,
        user_bias_sd=syn.user_bias_sd,
        factor_entry_sd=entry_sd,
        rating_min=float(rating_min),
        rating_max=float(rating_max),
        rating_step=step,
    )
    n_chunks = -(-syn.n_users // USERS_PER_CHUNK)
    parts = max(1, min(num_partitions or n_chunks, n_chunks))
    chunks = spark.range(0, n_chunks, numPartitions=parts)
    ratings = chunks.mapInArrow(_ratings_task(p, bc), RATINGS_SCHEMA)
    # The truth is a few numbers per user: a task per core, not per chunk (a Python task costs
    # ~0.1 s to start; 34 of them made writing the 20M-shaped truth a 3-s stage).
    truth_parts = max(1, min(n_chunks, spark.sparkContext.defaultParallelism))
    user_truth = spark.range(0, n_chunks, numPartitions=truth_parts).mapInArrow(
        _user_truth_task(p), _truth_schema(C.USER_ID)
    )
    n_item_chunks = -(-syn.n_items // ITEMS_PER_CHUNK)
    item_truth = spark.range(0, n_item_chunks, numPartitions=n_item_chunks).mapInArrow(
        _item_truth_task(bc), _truth_schema(C.ITEM_ID)
    )
    metadata = {
        "global_mean": float(syn.global_mean),
        "noise_sd": float(syn.noise),
        "rank": int(syn.rank),
        "n_users": int(syn.n_users),
        "n_items": int(syn.n_items),
        "n_ratings": int(syn.n_ratings),
        "rating_min": float(rating_min),
        "rating_max": float(rating_max),
        "rating_step": step,
        "seed": int(syn.seed),
        "user_bias_sd": float(syn.user_bias_sd),
        "item_bias_sd": float(syn.item_bias_sd),
        "factor_sd": float(syn.factor_sd),
        "factor_entry_sd": entry_sd,
        # Planted variances of x = μ + b + c + wᵀu + ε before clipping and rounding; the
        # rounding adds about step²/12 (less where clipping bites).
        "user_bias_var": float(syn.user_bias_sd) ** 2,
        "item_bias_var": float(syn.item_bias_sd) ** 2,
        "factor_var": float(syn.factor_sd) ** 2 if syn.rank > 0 else 0.0,
        "noise_var": float(syn.noise) ** 2,
        "rounding_var": step * step / 12.0,
        "min_user_ratings": int(counts.min()),
        "median_user_ratings": float(np.median(counts)),
        "max_user_ratings": int(counts.max()),
        "user_ratings_cap": int(most),
        "activity_exponent": float(syn.activity_exponent),
        "popularity_exponent": float(syn.popularity_exponent),
        "users_per_chunk": USERS_PER_CHUNK,
        "timestamp_min": TIME_START,
        "timestamp_max": TIME_END,
    }
    return SyntheticData(ratings, user_truth, item_truth, metadata)
