"""The train_bpmf stage: prepared train/test → Gibbs sampling on the cached rating blocks →
posterior mean and saved samples, predictions with a predictive sd, metrics.

Writes (atomically, as one stage; :mod:`mfspark.models.outputs`) ``models/bpmf/`` (layout in
:mod:`mfspark.models.bpmf.posterior`), ``predictions/model=bpmf/`` (with ``prediction_sd``),
and this model's rows of ``metrics/history`` (one per sweep: ``iteration`` = the sweep,
``train_rmse`` of that sweep's sample, ``test_rmse`` of the running average of the kept
samples — of the current sample during burn-in —, ``objective`` = the log-likelihood of the
train ratings under the sample) and ``metrics/summary``; records the run in ``manifest.json``.
"""

from __future__ import annotations

import logging
import statistics
import time

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mfspark import columns as C
from mfspark.config import Config
from mfspark.io import update_manifest
from mfspark.models.als.spark import choose_exchange
from mfspark.models.bpmf.posterior import BayesianPosterior
from mfspark.models.bpmf.sampler import BPMFParams, BPMFResult, run_gibbs
from mfspark.models.bpmf.spark import SparkBlockSampler
from mfspark.models.factor_model import FactorModel
from mfspark.models.outputs import write_model_stage
from mfspark.prepare import Prepared

log = logging.getLogger(__name__)

MODEL_NAME = "bpmf"


def training_clip(train: DataFrame, enabled: bool) -> tuple[float, float] | None:
    """The range of the training ratings (to clip predictions to), or None."""
    if not enabled:
        return None
    lo, hi = train.agg(F.min(C.RATING), F.max(C.RATING)).first()
    return None if lo is None else (float(lo), float(hi))


def fit_bpmf(
    spark: SparkSession,
    train: DataFrame,
    test: DataFrame | None,
    users: DataFrame,
    items: DataFrame,
    params: BPMFParams,
    num_user_blocks: int = 0,
    num_item_blocks: int = 0,
    max_broadcast_mb: float = 2048.0,
    name: str = MODEL_NAME,
    exchange: str = "auto",
) -> tuple[BayesianPosterior, BPMFResult, float]:
    """Sample on indexed ratings; returns (posterior, result, setup seconds). ``exchange``:
    as ``bpmf.exchange`` (``auto`` decides by the sides' sizes, :func:`choose_exchange`)."""
    n_users, n_items = users.count(), items.count()
    exchange = choose_exchange(
        n_users,
        n_items,
        params.rank,
        exchange,
        max_broadcast_mb,
        spark.conf.get("spark.driver.maxResultSize", "1g"),
        model=MODEL_NAME,
        returned_bytes=4 * (params.rank + 1) + 12,  # + row index and rating count
    )
    sampler = SparkBlockSampler(
        spark, train, test, n_users, n_items, params, num_user_blocks, num_item_blocks, exchange
    )
    try:
        result = run_gibbs(sampler, params, name)
    finally:
        sampler.close()
    metadata = {
        "iterations": params.samples,
        "clip_min": params.clip[0] if params.clip else None,
        "clip_max": params.clip[1] if params.clip else None,
        "seed": params.seed,
        "n_users": n_users,
        "n_items": n_items,
        "n_train": sampler.n_train,
    }
    mean = FactorModel(
        result.posterior_mean,
        users.select(C.USER_ID, C.USER_IDX),
        items.select(C.ITEM_ID, C.ITEM_IDX),
        metadata,
    )
    return BayesianPosterior.from_samples(mean, result.samples), result, sampler.setup_seconds


def history_frame(spark: SparkSession, result: BPMFResult, name: str = MODEL_NAME) -> DataFrame:
    rows = [
        (name, h.iteration, h.train_rmse, h.test_rmse, h.objective, h.seconds) for h in result.history
    ]
    return spark.createDataFrame(rows, C.HISTORY_SCHEMA)


def predictions_frame(spark: SparkSession, result: BPMFResult, test: DataFrame) -> DataFrame:
    """The test predictions (running averages over the kept samples) joined to the test rows."""
    table = pa.table(
        {
            C.USER_IDX: pa.array(np.asarray(result.test_users, np.int32)),
            C.ITEM_IDX: pa.array(np.asarray(result.test_items, np.int32)),
            C.PREDICTION: pa.array(result.test_mean),
            C.PREDICTION_SD: pa.array(result.test_sd),
        }
    )
    return test.join(spark.createDataFrame(table), [C.USER_IDX, C.ITEM_IDX], "left")


def run_train_bpmf(cfg: Config, spark: SparkSession) -> dict:
    started = time.time()
    out = cfg.output.path
    b = cfg.bpmf
    prepared = Prepared.load(spark, out)
    params = BPMFParams.from_config(b, clip=training_clip(prepared.train, b.clip_predictions))
    posterior, result, setup_seconds = fit_bpmf(
        spark,
        prepared.train,
        prepared.test,
        prepared.users,
        prepared.items,
        params,
        b.num_user_blocks,
        b.num_item_blocks,
        cfg.als.max_broadcast_mb,
        exchange=b.exchange,
    )
    fit_seconds = time.time() - started
    test = prepared.test.select(
        C.USER_ID, C.ITEM_ID, C.USER_IDX, C.ITEM_IDX, C.RATING, C.COLD_USER, C.COLD_ITEM
    )
    predictions = predictions_frame(spark, result, test)
    write_model_stage(
        spark,
        out,
        prepared,
        MODEL_NAME,
        posterior.write,
        predictions,
        history_frame(spark, result),
        cfg.evaluate.activity_buckets,
    )
    per_sweep = [h.seconds for h in result.history]
    last = result.history[-1]
    coverage = None
    if result.test_ratings is not None and len(result.test_ratings):
        inside = np.abs(result.test_ratings - result.test_mean) <= 1.96 * result.test_sd
        coverage = float(np.mean(inside))
    timings = {
        "setup_seconds": round(setup_seconds, 3),
        "median_seconds_per_sweep": round(statistics.median(per_sweep), 3),
        "fit_seconds": round(fit_seconds, 3),
        "total_seconds": round(time.time() - started, 3),
    }
    entry = {
        "model": MODEL_NAME,
        "summary": (
            f"rank {b.rank}, {b.samples} sweeps ({b.burn_in} burn-in, {result.n_kept} kept), "
            f"{timings['median_seconds_per_sweep']:.2f} s/sweep, fit {fit_seconds:.1f} s; "
            + (f"95% interval coverage {coverage:.3f}" if coverage is not None else "no test set")
        ),
        "sweeps": b.samples,
        "kept_samples": result.n_kept,
        "saved_samples": len(result.samples),
        "train_rmse": last.train_rmse,
        "test_rmse": last.test_rmse,
        "noise_variance": result.noise_variance,
        "interval_coverage_95": coverage,
        "timings": timings,
    }
    update_manifest(spark, out, "train_bpmf", entry, cfg)
    log.info(
        "BPMF rank %d, %d sweeps: test RMSE %s, 95%% coverage %s (%.1f s)",
        b.rank,
        b.samples,
        f"{last.test_rmse:.4f}" if last.test_rmse is not None else "n/a",
        f"{coverage:.3f}" if coverage is not None else "n/a",
        fit_seconds,
    )
    return entry


def fit_predict(spark, train, pairs, users, items, cfg) -> DataFrame:
    """Blend member: sample on ``train``; the posterior predictive means of ``pairs`` (the
    average of the kept samples' predictions, as the stage's test predictions)."""
    b = cfg.bpmf
    params = BPMFParams.from_config(b, clip=training_clip(train, b.clip_predictions))
    # The pairs ride along as the sampler's test rows; their ratings (when there are any)
    # only feed its logged test RMSE.
    rating = F.col(C.RATING) if C.RATING in pairs.columns else F.lit(0.0)
    scored = pairs.select(C.USER_IDX, C.ITEM_IDX, rating.cast("double").alias(C.RATING))
    _, result, _ = fit_bpmf(
        spark,
        train,
        scored,
        users,
        items,
        params,
        b.num_user_blocks,
        b.num_item_blocks,
        cfg.als.max_broadcast_mb,
        name=f"{MODEL_NAME} (blend member)",
        exchange=b.exchange,
    )
    keys = pairs.select(C.USER_IDX, C.ITEM_IDX)
    return predictions_frame(spark, result, keys).select(C.USER_IDX, C.ITEM_IDX, C.PREDICTION)
