"""The train_blend stage: a ridge blend of trained models' predictions.

1. Hold out a share of train (``blend.validation_fraction``, by a hash of (user, item, seed)).
2. Fit every member on the rest and predict the held-out ratings
   (:func:`mfspark.models.members.fit_predict`: one function per model).
3. Fit ridge weights and an intercept on those predictions
   (:mod:`mfspark.models.blend.ridge`; Spark sums the sufficient statistics).
4. Apply the weights to the members refitted on the whole train — the test predictions their
   own stages wrote under ``predictions/model=<member>/`` — clipped to the train rating range.

Writes ``models/blend/weights`` (``member``, ``weight``; the intercept as member
``intercept``), ``models/blend/validation`` (``model``, ``n``, ``rmse`` of every member and of
the blend on the held-out share; the blend's weights were fitted there, so its figure is
in-sample), ``predictions/model=blend/`` and this model's ``metrics/summary`` rows.
"""

from __future__ import annotations

import logging
import time
from functools import reduce

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.columns import model_dir, predictions_dir
from mfspark.config import Config
from mfspark.errors import ConfigError, InputError
from mfspark.io import HadoopFS, join, read_manifest, staged_outputs, update_manifest
from mfspark.models.blend.ridge import RidgeStats
from mfspark.models.members import MEMBERS, fit_predict
from mfspark.models.outputs import PREDICTION_COLUMNS, with_pair_column
from mfspark.models.residual.train import is_validation
from mfspark.prepare import Prepared

log = logging.getLogger(__name__)

MODEL_NAME = "blend"
IS_VALIDATION = "_is_validation"
WEIGHTS_SCHEMA = T.StructType(
    [T.StructField("member", T.StringType(), False), T.StructField("weight", T.DoubleType(), False)]
)
VALIDATION_SCHEMA = T.StructType(
    [
        T.StructField("model", T.StringType(), False),
        T.StructField("n", T.LongType(), False),
        T.StructField("rmse", T.DoubleType(), False),
    ]
)


def resolve_members(cfg: Config, spark: SparkSession) -> list[str]:
    """The members to blend; fails (before any Spark job) on an unknown or untrained one."""
    out, fs = cfg.output.path, HadoopFS(spark)
    trained = lambda m: fs.exists(join(out, predictions_dir(m)))  # noqa: E731
    if cfg.blend.validation_fraction <= 0:
        raise ConfigError("blend.validation_fraction must be > 0: the weights are fitted on that share")
    counts = read_manifest(spark, out).get("stages", {}).get("prepare", {}).get("counts", {})
    n_train = counts.get("train")
    if isinstance(n_train, int) and n_train * cfg.blend.validation_fraction < 1:
        raise ConfigError(
            f"blend.validation_fraction={cfg.blend.validation_fraction} of {n_train} train ratings "
            "leaves an empty validation split; raise blend.validation_fraction"
        )
    if not cfg.blend.models:
        members = [m for m in MEMBERS if trained(m)]
        if len(members) < 2:
            raise ConfigError(
                f"blend.models is empty and only {members or 'no models'} have predictions under "
                f"{join(out, C.PREDICTIONS)}; train two or more of {', '.join(MEMBERS)} or list them "
                "in blend.models"
            )
        return members
    unknown = [m for m in cfg.blend.models if m not in MEMBERS]
    if unknown:
        raise ConfigError(
            f"blend.models: {unknown[0]!r} cannot be blended yet (no fit-and-predict function "
            f"registered); blendable: {', '.join(MEMBERS)}"
        )
    for m in cfg.blend.models:
        if not trained(m):
            raise ConfigError(
                f"blend.models: member {m!r} was not trained (no {join(out, predictions_dir(m))}); "
                f"run jobs/train_{m}.py first or remove it from blend.models"
            )
    return list(cfg.blend.models)


def split_validation(train: DataFrame, seed: int, fraction: float) -> tuple[DataFrame, DataFrame]:
    flagged = with_pair_column(
        train, IS_VALIDATION, T.BooleanType(), lambda u, i: is_validation(u, i, seed, fraction)
    )
    return (
        flagged.where(~F.col(IS_VALIDATION)).drop(IS_VALIDATION),
        flagged.where(F.col(IS_VALIDATION)).drop(IS_VALIDATION),
    )


def _joined(rows: DataFrame, frames: dict[str, DataFrame]) -> DataFrame:
    """``rows`` with one column ``p_<member>`` per member (inner join on the index pair)."""
    keys = [C.USER_IDX, C.ITEM_IDX]
    return reduce(
        lambda df, m: df.join(frames[m].select(*keys, F.col(C.PREDICTION).alias(f"p_{m}")), keys),
        frames,
        rows,
    )


def ridge_stats(validation: DataFrame, members: list[str]) -> RidgeStats:
    """AᵀA, Aᵀy, Σy² and n summed by Spark (one aggregation)."""
    cols = [F.lit(1.0)] + [F.col(f"p_{m}").cast("double") for m in members]
    y = F.col(C.RATING).cast("double")
    dim = len(cols)
    aggs = [F.sum(cols[a] * cols[b]).alias(f"g{a}_{b}") for a in range(dim) for b in range(a, dim)]
    aggs += [F.sum(cols[a] * y).alias(f"h{a}") for a in range(dim)]
    aggs += [F.sum(y * y).alias("yy"), F.count(F.lit(1)).alias("n")]
    row = validation.agg(*aggs).first()
    if not row["n"]:
        raise InputError("the blend's validation split is empty; raise blend.validation_fraction")
    gram = np.zeros((dim, dim))
    for a in range(dim):
        for b in range(a, dim):
            gram[a, b] = gram[b, a] = row[f"g{a}_{b}"]
    return RidgeStats(
        gram, np.array([row[f"h{a}"] for a in range(dim)]), float(row["yy"]), int(row["n"])
    )


def run_train_blend(cfg: Config, spark: SparkSession) -> dict:
    from mfspark.evaluation import summarize_predictions, write_summary

    started = time.time()
    out = cfg.output.path
    members = resolve_members(cfg, spark)
    prepared = Prepared.load(spark, out)
    if "svd" in members or ("residual" in members and cfg.residual.base == "svd"):
        from mfspark.models.outputs import prepared_sizes
        from mfspark.models.svd.job import check_rank

        check_rank(cfg, *prepared_sizes(spark, out, prepared.users, prepared.items))
    rest, validation = split_validation(prepared.train, cfg.blend.seed, cfg.blend.validation_fraction)
    rest, validation = rest.persist(), validation.persist()
    frames: dict[str, DataFrame] = {}
    try:
        pairs = validation.select(C.USER_IDX, C.ITEM_IDX, C.TIMESTAMP)
        for m in members:
            t = time.time()
            frames[m] = fit_predict(m, spark, rest, pairs, prepared.users, prepared.items, cfg).persist()
            frames[m].count()
            log.info("blend member %s fitted on train minus validation (%.1f s)", m, time.time() - t)
        stats = ridge_stats(
            _joined(validation.select(C.USER_IDX, C.ITEM_IDX, C.RATING), frames), members
        )
    finally:
        for df in (rest, validation, *frames.values()):
            df.unpersist()
    intercept, weights = stats.solve(cfg.blend.l2)
    val_rmse = {m: stats.member_rmse(k) for k, m in enumerate(members)}
    val_rmse[MODEL_NAME] = stats.rmse(intercept, weights)
    log.info(
        "blend weights: intercept %.4f, %s; validation RMSE %s",
        intercept,
        ", ".join(f"{m} {w:.4f}" for m, w in zip(members, weights, strict=True)),
        ", ".join(f"{m} {v:.4f}" for m, v in val_rmse.items()),
    )
    bounds = prepared.train.agg(F.min(C.RATING), F.max(C.RATING)).first()
    full = {m: spark.read.parquet(join(out, predictions_dir(m))) for m in members}
    test = prepared.test.select(*[c for c in PREDICTION_COLUMNS if c != C.PREDICTION])
    blended = F.lit(intercept)
    for m, w in zip(members, weights, strict=True):
        blended = blended + F.lit(float(w)) * F.col(f"p_{m}")
    clipped = F.least(F.greatest(blended, F.lit(float(bounds[0]))), F.lit(float(bounds[1])))
    predictions = _joined(test, full).withColumn(C.PREDICTION, clipped).select(*PREDICTION_COLUMNS)
    weight_rows = [("intercept", intercept)] + [
        (m, float(w)) for m, w in zip(members, weights, strict=True)
    ]
    validation_rows = [(m, stats.n, float(v)) for m, v in val_rmse.items()]
    with staged_outputs(spark, out) as stage:
        stage.write(
            spark.createDataFrame(weight_rows, WEIGHTS_SCHEMA).coalesce(1),
            f"{model_dir(MODEL_NAME)}/weights",
        )
        stage.write(
            spark.createDataFrame(validation_rows, VALIDATION_SCHEMA).coalesce(1),
            f"{model_dir(MODEL_NAME)}/validation",
        )
        stage.write(predictions, predictions_dir(MODEL_NAME))
        written = spark.read.parquet(stage.path(predictions_dir(MODEL_NAME)))
        summary = summarize_predictions(
            written, prepared.test, prepared.users, MODEL_NAME, cfg.evaluate.activity_buckets
        )
        write_summary(spark, stage, out, summary, MODEL_NAME)
        test_rmse = summary.where("segment = 'all'").first()["rmse"]
    entry = {
        "model": MODEL_NAME,
        "members": members,
        "intercept": intercept,
        "weights": dict(zip(members, map(float, weights), strict=True)),
        "validation_rmse": val_rmse,
        "n_validation": stats.n,
        "test_rmse": test_rmse,
        "timings": {"total_seconds": round(time.time() - started, 3)},
    }
    entry["summary"] = "intercept {:.3f}, weights {}".format(
        entry["intercept"], ", ".join(f"{m} {w:.3f}" for m, w in entry["weights"].items())
    )
    update_manifest(spark, out, "train_blend", entry, cfg)
    log.info("blend of %s: test RMSE %s", ", ".join(members), test_rmse)
    return entry
