"""What the report shows, read from an output directory as small aggregates.

Every function here returns plain Python values of bounded size: counts per rating value, per
activity level or per rejection reason, metric tables that are already small (``metrics/*``,
``benchmark``), and a handful of recommendation rows. Rating rows never come to the driver:
the largest things collected are ``(n_train, entities)`` pairs — at most about √(2·ratings)
distinct activity levels — and the rating histogram.

A dataset that is absent gives ``None``; the report then says which stage did not run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mfspark import columns as C
from mfspark.io import HadoopFS, join

log = logging.getLogger(__name__)

PREDICTION_SD = "prediction_sd"
METRICS_RANKING = "metrics/ranking"
RECOMMENDATIONS = "recommendations"
MODEL_PARTITION = "model="
# Up to this many distinct rating values the histogram is exact; beyond, equal-width bins.
MAX_RATING_VALUES = 60
RATING_BINS = 20
# Interval half-widths (in predictive sd) of the calibration check.
CALIBRATION_Z = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


@dataclass
class Activity:
    """Train ratings per entity (user or item) as (level, entities) counts."""

    side: str  # "users" or "items"
    levels: list[tuple[int, int]]  # (n_train, number of entities with it), n_train >= 1, ascending
    n_zero: int  # entities with no train rating (they occur only in test)

    @property
    def n_active(self) -> int:
        return sum(c for _, c in self.levels)

    def quantile(self, q: float) -> int | None:
        """Smallest level with at least a fraction q of the active entities at or below it."""
        total = self.n_active
        if not total:
            return None
        need, seen = q * total, 0
        for level, count in self.levels:
            seen += count
            if seen >= need:
                return level
        return self.levels[-1][0]

    @property
    def mean(self) -> float | None:
        total = self.n_active
        return sum(lv * c for lv, c in self.levels) / total if total else None


@dataclass
class DataFacts:
    n_train: int
    n_test: int
    n_users: int
    n_items: int
    test_cold_user: int
    test_cold_item: int
    rejected: list[tuple[str, int]] | None  # None: no prepared/rejected dataset
    # (low, high, train count, test count); low == high for an exact rating value.
    rating_hist: list[tuple[float, float, int, int]]
    users: Activity
    items: Activity

    @property
    def n_ratings(self) -> int:
        return self.n_train + self.n_test

    @property
    def density(self) -> float:
        cells = self.n_users * self.n_items
        return self.n_ratings / cells if cells else 0.0


@dataclass
class Calibration:
    model: str
    n: int  # test rows with a finite prediction and a finite, positive sd
    n_total: int
    mean_sd: float | None
    coverage: list[tuple[float, float, float]] = field(default_factory=list)  # (z, nominal, observed)


@dataclass
class Recommendations:
    users: list  # the sample users' ids, in order
    rows: list[dict]  # model, user_id, rank, item_id, score
    liked: list[dict]  # user_id, item_id, rating: each sample user's top train ratings


def _read(spark: SparkSession, fs: HadoopFS, path: str) -> DataFrame | None:
    return spark.read.parquet(path) if fs.exists(path) else None


def nominal_coverage(z: float) -> float:
    """P(|X| <= z) for a standard normal X."""
    return math.erf(z / math.sqrt(2.0))


def activities(users: DataFrame, items: DataFrame) -> tuple[Activity, Activity]:
    """Exact counts of users and of items per train-rating level (one aggregation for both)."""
    side, n = "_side", C.N_TRAIN
    both = users.select(F.lit("users").alias(side), n).unionByName(
        items.select(F.lit("items").alias(side), n)
    )
    rows = both.groupBy(side, n).count().collect()
    out = []
    for name in ("users", "items"):
        levels = sorted((int(r[n]), int(r["count"])) for r in rows if r[side] == name)
        zero = sum(c for lv, c in levels if lv <= 0)
        out.append(Activity(name, [(lv, c) for lv, c in levels if lv > 0], zero))
    return out[0], out[1]


def rating_histogram(
    ratings: DataFrame, lo: float, hi: float, n_values: int
) -> list[tuple[float, float, int, int]]:
    """Ratings counted per value, train and test apart (one aggregation).

    ``ratings`` has ``rating`` and a boolean ``_test``; ``n_values`` is an (approximate) count
    of distinct ratings: up to :data:`MAX_RATING_VALUES` each value is its own bar, beyond
    (continuous ratings) :data:`RATING_BINS` equal-width bins between ``lo`` and ``hi``.
    """
    counts = [F.count_if(~F.col("_test")).alias("train"), F.count_if(F.col("_test")).alias("test")]
    if n_values <= MAX_RATING_VALUES:
        rows = ratings.groupBy(C.RATING).agg(*counts).collect()
        return sorted((float(r[C.RATING]),) * 2 + (int(r["train"]), int(r["test"])) for r in rows)
    width = (hi - lo) / RATING_BINS or 1.0
    b = F.least(F.floor((F.col(C.RATING) - lo) / width).cast("int"), F.lit(RATING_BINS - 1))
    got = {
        int(r["_bin"]): (int(r["train"]), int(r["test"]))
        for r in ratings.groupBy(b.alias("_bin")).agg(*counts).collect()
    }
    return [(lo + k * width, lo + (k + 1) * width, *got.get(k, (0, 0))) for k in range(RATING_BINS)]


def data_facts(spark: SparkSession, out: str) -> DataFacts | None:
    """Counts, rejections, rating histogram and activity levels of ``prepared/*`` (four jobs)."""
    fs = HadoopFS(spark)
    train = _read(spark, fs, join(out, C.PREPARED_TRAIN))
    test = _read(spark, fs, join(out, C.PREPARED_TEST))
    users = _read(spark, fs, join(out, C.PREPARED_USERS))
    items = _read(spark, fs, join(out, C.PREPARED_ITEMS))
    if train is None or test is None or users is None or items is None:
        return None
    rejected_df = _read(spark, fs, join(out, C.PREPARED_REJECTED))
    rejected = None
    if rejected_df is not None:
        counts = {r[C.REASON]: int(r["count"]) for r in rejected_df.groupBy(C.REASON).count().collect()}
        order = {reason: i for i, reason in enumerate(C.REJECTION_REASONS)}
        rejected = sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    no = F.lit(False)
    ratings = train.select(C.RATING, no.alias("_test"), no.alias("_cu"), no.alias("_ci")).unionByName(
        test.select(
            C.RATING,
            F.lit(True).alias("_test"),
            F.col(C.COLD_USER).alias("_cu"),
            F.col(C.COLD_ITEM).alias("_ci"),
        )
    )
    t = ratings.agg(
        F.count_if(~F.col("_test")).alias("train"),
        F.count_if(F.col("_test")).alias("test"),
        F.count_if(F.col("_cu")).alias("cu"),
        F.count_if(F.col("_ci")).alias("ci"),
        F.min(C.RATING).alias("lo"),
        F.max(C.RATING).alias("hi"),
        F.approx_count_distinct(C.RATING, 0.05).alias("values"),
    ).first()
    user_act, item_act = activities(users, items)
    hist = (
        rating_histogram(ratings, float(t["lo"]), float(t["hi"]), int(t["values"]))
        if t["lo"] is not None
        else []
    )
    return DataFacts(
        n_train=int(t["train"]),
        n_test=int(t["test"]),
        n_users=user_act.n_active + user_act.n_zero,
        n_items=item_act.n_active + item_act.n_zero,
        test_cold_user=int(t["cu"]),
        test_cold_item=int(t["ci"]),
        rejected=rejected,
        rating_hist=hist,
        users=user_act,
        items=item_act,
    )


def small_table(spark: SparkSession, out: str, name: str) -> list[dict] | None:
    """All rows of a small dataset (``metrics/*``, ``benchmark``) as dicts, or None if absent."""
    df = _read(spark, HadoopFS(spark), join(out, name))
    return None if df is None else [r.asDict() for r in df.collect()]


def partitions(spark: SparkSession, out: str, name: str) -> dict[str, str]:
    """``{model: path}`` of a dataset partitioned as ``<name>/model=<model>/``."""
    fs = HadoopFS(spark)
    found = {}
    for path in fs.glob(join(out, name, MODEL_PARTITION + "*")):
        model = path.rstrip("/").rsplit("/", 1)[-1][len(MODEL_PARTITION) :]
        found[model] = path
    return found


def prediction_sets(spark: SparkSession, out: str) -> dict[str, str]:
    """``{model: path}`` of every prediction dataset (partitioned, or one unpartitioned set)."""
    found = partitions(spark, out, C.PREDICTIONS)
    root = join(out, C.PREDICTIONS)
    if not found and HadoopFS(spark).exists(root):
        from mfspark.evaluation import _default_model_name

        found[_default_model_name(spark, out, root)] = root
    return found


def calibration(spark: SparkSession, model: str, path: str) -> Calibration | None:
    """Coverage of the intervals prediction ± z·prediction_sd, or None without ``prediction_sd``.

    One aggregation over the model's test predictions: for each z, the share of rows whose
    rating lies within z predictive standard deviations of the prediction.
    """
    df = spark.read.parquet(path)
    if PREDICTION_SD not in df.columns:
        return None
    p, sd, r = F.col(C.PREDICTION), F.col(PREDICTION_SD), F.col(C.RATING)
    usable = p.isNotNull() & ~F.isnan(p) & sd.isNotNull() & ~F.isnan(sd) & (sd > 0) & (sd < float("inf"))
    err = F.abs(r - p)
    aggs = [
        F.count(F.lit(1)).alias("total"),
        F.count_if(usable).alias("n"),
        F.avg(F.when(usable, sd)).alias("mean_sd"),
    ]
    aggs += [F.count_if(usable & (err <= z * sd)).alias(f"z{i}") for i, z in enumerate(CALIBRATION_Z)]
    row = df.agg(*aggs).first()
    n = int(row["n"])
    cov = [
        (z, nominal_coverage(z), int(row[f"z{i}"]) / n if n else float("nan"))
        for i, z in enumerate(CALIBRATION_Z)
    ]
    return Calibration(model, n, int(row["total"]), row["mean_sd"], cov)


def recommendations(
    spark: SparkSession, out: str, n_users: int = 3, top: int = 10
) -> Recommendations | None:
    """The first ``top`` recommendations of every model for a few users (the smallest user ids).

    Also each sample user's highest train ratings, so a reader can judge the recommendations.
    """
    found = partitions(spark, out, RECOMMENDATIONS)
    if not found:
        return None
    recs = spark.read.parquet(join(out, RECOMMENDATIONS))
    sample = [
        r[0] for r in recs.select(C.USER_ID).distinct().orderBy(C.USER_ID).limit(n_users).collect()
    ]
    if not sample:
        return Recommendations([], [], [])
    picked = (
        recs.where(F.col(C.USER_ID).isin(sample) & (F.col("rank") <= top))
        .select("model", C.USER_ID, "rank", C.ITEM_ID, "score")
        .collect()
    )
    rows = sorted(
        (r.asDict() for r in picked), key=lambda d: (d["model"], sample.index(d[C.USER_ID]), d["rank"])
    )
    liked: list[dict] = []
    train_path = join(out, C.PREPARED_TRAIN)
    if HadoopFS(spark).exists(train_path):
        from pyspark.sql import Window

        w = Window.partitionBy(C.USER_ID).orderBy(F.col(C.RATING).desc(), F.col(C.ITEM_ID))
        best = (
            spark.read.parquet(train_path)
            .where(F.col(C.USER_ID).isin(sample))
            .withColumn("_k", F.row_number().over(w))
            .where(F.col("_k") <= 5)
            .select(C.USER_ID, C.ITEM_ID, C.RATING, "_k")
            .collect()
        )
        liked = sorted((r.asDict() for r in best), key=lambda d: (sample.index(d[C.USER_ID]), d["_k"]))
    return Recommendations(sample, rows, liked)
