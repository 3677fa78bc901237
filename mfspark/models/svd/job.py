"""The train_svd stage: prepared train/test → truncated SVD of the bias-removed ratings.

Writes (atomically, as one stage) ``models/svd/`` (``user_factors``, ``item_factors``,
``metadata`` in the factor-model layout, plus ``singular_values``), ``predictions/model=svd/``,
this model's rows of ``metrics/history`` (one per power iteration) and ``metrics/summary``,
and records the run in ``manifest.json``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.columns import model_dir, predictions_dir
from mfspark.config import Config
from mfspark.errors import ConfigError
from mfspark.evaluation import write_history
from mfspark.io import staged_outputs, update_manifest
from mfspark.models.factor_model import FactorModel
from mfspark.models.outputs import prepared_sizes, test_predictions
from mfspark.models.svd.spark import SparkOperator
from mfspark.models.svd.train import SVDParams, SVDResult, run_svd
from mfspark.prepare import Prepared

log = logging.getLogger(__name__)

MODEL_NAME = "svd"
SINGULAR_VALUES = "singular_values"
SINGULAR_VALUES_SCHEMA = T.StructType(
    [
        T.StructField("index", T.IntegerType(), False),
        T.StructField("value", T.DoubleType(), False),
        T.StructField("explained_share", T.DoubleType(), False),
    ]
)


def check_rank(cfg: Config, n_users: int, n_items: int) -> None:
    """Fail before any block is built when the rank cannot be reached."""
    smaller = min(n_users, n_items)
    if cfg.svd.rank > smaller:
        raise ConfigError(
            f"svd.rank={cfg.svd.rank} is larger than the smaller dimension of the rating matrix "
            f"({n_users:,} users x {n_items:,} items); set svd.rank <= {smaller}"
        )


def fit_prepared(
    spark: SparkSession,
    train: DataFrame,
    test: DataFrame | None,
    users: DataFrame,
    items: DataFrame,
    cfg: Config,
    sizes: tuple[int, int] | None = None,
    name: str = MODEL_NAME,
) -> tuple[FactorModel, SVDResult, float]:
    """Fit on indexed ratings; returns (model, result, setup seconds)."""
    svd = cfg.svd
    n_users, n_items = sizes or (users.count(), items.count())
    check_rank(cfg, n_users, n_items)
    clip = None
    if svd.clip_predictions:
        bounds = train.agg(F.min(C.RATING), F.max(C.RATING)).first()
        clip = (float(bounds[0]), float(bounds[1])) if bounds[0] is not None else None
    params = SVDParams.from_config(svd, clip)
    width = min(svd.rank + svd.oversampling, n_users, n_items)
    op = SparkOperator(
        spark, train, test, n_users, n_items, width, svd.num_user_blocks, svd.num_item_blocks
    )
    try:
        result = run_svd(op, params, name)
    finally:
        op.close()
    metadata = {
        "reg_bias": svd.reg_bias,
        "iterations": len(result.history),
        "clip_min": clip[0] if clip else None,
        "clip_max": clip[1] if clip else None,
        "seed": svd.seed,
        "n_users": n_users,
        "n_items": n_items,
        "n_train": op.n_train,
    }
    model = FactorModel(
        result.model, users.select(C.USER_ID, C.USER_IDX), items.select(C.ITEM_ID, C.ITEM_IDX), metadata
    )
    return model, result, op.setup_seconds


def singular_values_frame(spark: SparkSession, result: SVDResult) -> DataFrame:
    share = result.explained_share
    rows = [(i + 1, float(v), float(share[i])) for i, v in enumerate(result.singular_values)]
    return spark.createDataFrame(rows, SINGULAR_VALUES_SCHEMA)


def history_frame(spark: SparkSession, result: SVDResult, name: str = MODEL_NAME) -> DataFrame:
    rows = [
        (name, h.iteration, h.train_rmse, h.test_rmse, h.objective, h.seconds) for h in result.history
    ]
    return spark.createDataFrame(rows, C.HISTORY_SCHEMA)


def run_train_svd(cfg: Config, spark: SparkSession) -> dict:
    from mfspark.evaluation import summarize_predictions, write_summary

    started = time.time()
    out = cfg.output.path
    prepared = Prepared.load(spark, out)
    sizes = prepared_sizes(spark, out, prepared.users, prepared.items)
    check_rank(cfg, *sizes)
    model, result, setup_seconds = fit_prepared(
        spark, prepared.train, prepared.test, prepared.users, prepared.items, cfg, sizes
    )
    fit_seconds = time.time() - started
    with staged_outputs(spark, out) as stage:
        model.write(stage, prefix=model_dir(MODEL_NAME))
        stage.write(
            singular_values_frame(spark, result).coalesce(1),
            f"{model_dir(MODEL_NAME)}/{SINGULAR_VALUES}",
        )
        stage.write(test_predictions(model, prepared.test), predictions_dir(MODEL_NAME))
        write_history(spark, stage, out, history_frame(spark, result), MODEL_NAME)
        written = spark.read.parquet(stage.path(predictions_dir(MODEL_NAME)))
        summary = summarize_predictions(
            written, prepared.test, prepared.users, MODEL_NAME, cfg.evaluate.activity_buckets
        )
        write_summary(spark, stage, out, summary, MODEL_NAME)
    last = result.history[-1]
    entry = {
        "model": MODEL_NAME,
        "rank": cfg.svd.rank,
        "iterations": len(result.history),
        "singular_values": [round(float(v), 6) for v in result.singular_values],
        "explained_share": round(float(np.sum(result.explained_share)), 6),
        "train_rmse": last.train_rmse,
        "test_rmse": last.test_rmse,
        "timings": {
            "setup_seconds": round(setup_seconds, 3),
            "fit_seconds": round(fit_seconds, 3),
            "total_seconds": round(time.time() - started, 3),
        },
    }
    entry["summary"] = (
        f"rank {entry['rank']}, {entry['iterations']} power iterations, top-{entry['rank']} "
        f"triplets remove {100 * entry['explained_share']:.1f}% of the baseline's squared error; "
        f"fit {entry['timings']['fit_seconds']:.1f} s"
    )
    update_manifest(spark, out, "train_svd", entry, cfg)
    log.info(
        "SVD rank %d: train RMSE %.4f, test RMSE %s, top-%d triplets explain %.1f%% of the "
        "baseline's squared error (%.1f s)",
        cfg.svd.rank,
        last.train_rmse,
        f"{last.test_rmse:.4f}" if last.test_rmse is not None else "n/a",
        cfg.svd.rank,
        100 * entry["explained_share"],
        fit_seconds,
    )
    return entry
