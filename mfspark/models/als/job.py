"""The train_als stage: prepared train/test → blocked biased ALS → model, predictions, metrics.

Writes (atomically, as one stage; :mod:`mfspark.models.outputs`) ``models/als/``,
``predictions/model=als/``, and this model's rows of ``metrics/history`` and
``metrics/summary``, and records the run in ``manifest.json``.
"""

from __future__ import annotations

import logging
import statistics
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mfspark import columns as C
from mfspark.checkpoint import Checkpointer, checkpoint_root
from mfspark.config import Config
from mfspark.errors import ConfigError
from mfspark.io import HadoopFS, read_manifest, update_manifest
from mfspark.models.als.spark import SparkBlockSolver, choose_exchange
from mfspark.models.als.train import ALSParams, ALSResult, ALSState, run_als
from mfspark.models.factor_model import FactorModel
from mfspark.models.outputs import test_predictions, write_model_stage
from mfspark.prepare import Prepared

log = logging.getLogger(__name__)

MODEL_NAME = "als"  # also the checkpoint directory: <output.path>/checkpoints/als/


def fit_prepared(
    spark: SparkSession,
    train: DataFrame,
    test: DataFrame | None,
    users: DataFrame,
    items: DataFrame,
    cfg: Config,
    name: str = MODEL_NAME,
) -> tuple[FactorModel, ALSResult, float]:
    """Fit on indexed ratings; returns (model, result, setup seconds).

    Predictions are clipped to the range of the training ratings when
    ``als.clip_predictions`` is on (e.g. 1–5 for MovieLens 100K even though
    ``data.rating_min`` allows 0.5).
    """
    als = cfg.als
    n_users, n_items = users.count(), items.count()
    max_result = spark.conf.get("spark.driver.maxResultSize", "1g")
    exchange = choose_exchange(
        n_users, n_items, als.rank, als.exchange, als.max_broadcast_mb, max_result
    )
    if exchange == "partitioned" and (als.checkpoint_interval or als.resume):
        raise ConfigError(
            "als.checkpoint_interval and als.resume save and restore the factors through the "
            "driver, which the partitioned exchange avoids; set als.exchange=broadcast to use "
            "them, or turn them off"
        )
    bounds = train.agg(F.min(C.RATING), F.max(C.RATING)).first()
    clip = (
        (float(bounds[0]), float(bounds[1])) if als.clip_predictions and bounds[0] is not None else None
    )
    params = ALSParams.from_config(als, clip=clip)
    with SparkBlockSolver(
        spark,
        train,
        test,
        n_users,
        n_items,
        params,
        als.num_user_blocks,
        als.num_item_blocks,
        exchange,
    ) as solver:
        start, on_iteration = checkpointing(spark, cfg, solver, clip)
        result = run_als(solver, params, name, start, on_iteration)
    metadata = {
        "reg": als.reg,
        "reg_bias": als.reg_bias,
        "reg_scaling": als.reg_scaling,
        "iterations": result.iterations,
        "clip_min": clip[0] if clip else None,
        "clip_max": clip[1] if clip else None,
        "converged": result.converged,
        "seed": als.seed,
        "n_users": n_users,
        "n_items": n_items,
        "n_train": solver.n_train,
    }
    model = FactorModel(
        result.model, users.select(C.USER_ID, C.USER_IDX), items.select(C.ITEM_ID, C.ITEM_IDX), metadata
    )
    return model, result, solver.setup_seconds


#: Settings that may differ between a checkpoint and its resumed run.
RESUMABLE_KEYS = ("max_iter", "resume", "checkpoint_interval")


def checkpoint_fingerprint(spark: SparkSession, cfg: Config, solver, clip) -> dict:
    """What the training state depends on: the settings (``als`` but for
    :data:`RESUMABLE_KEYS`, and the ``data``/``split``/``synthetic`` settings that made the
    prepared data) and facts of the prepared data itself (sizes, global mean, the input
    files' fingerprint recorded by ``prepare``)."""
    settings = cfg.to_dict()
    fingerprint = {
        f"{section}.{key}": value
        for section in ("als", "data", "split", "synthetic")
        for key, value in settings[section].items()
        if not (section == "als" and key in RESUMABLE_KEYS)
    }
    prepare = read_manifest(spark, cfg.output.path).get("stages", {}).get("prepare", {})
    fingerprint.update(
        {
            "prepared.n_users": solver.n_users,
            "prepared.n_items": solver.n_items,
            "prepared.n_train": solver.n_train,
            "prepared.n_test": solver.n_test,
            "prepared.global_mean": solver.global_mean,
            "prepared.clip": list(clip) if clip else None,
            "prepared.input": prepare.get("input"),
            "prepared.counts": prepare.get("counts"),
        }
    )
    return fingerprint


def checkpointing(spark: SparkSession, cfg: Config, solver, clip):
    """(state to start from or None, per-iteration callback or None) for ``als.resume`` and
    ``als.checkpoint_interval``; refuses a checkpoint made with other settings or data."""
    als = cfg.als
    if not als.checkpoint_interval and not als.resume:
        return None, None
    checkpointer = Checkpointer(
        spark,
        checkpoint_root(cfg.output.path, MODEL_NAME),
        checkpoint_fingerprint(spark, cfg, solver, clip),
    )
    start = None
    if als.resume:
        found = checkpointer.load()
        if found is None:
            log.warning("als.resume: no checkpoint under %s; training from the start", checkpointer.root)
        else:
            checkpointer.check_compatible(found)
            if found.iteration > als.max_iter:
                raise ConfigError(
                    f"cannot resume from {found.path}: it is past iteration {found.iteration}, "
                    f"beyond als.max_iter={als.max_iter}; raise als.max_iter or start afresh"
                )
            start = ALSState.restore(found.arrays, found.state)
            log.info("resuming ALS from the checkpoint of iteration %d", found.iteration)
    else:
        checkpointer.clear()  # a fresh run: older checkpoints describe another run
    if not als.checkpoint_interval:
        return start, None

    def save(state: ALSState) -> None:
        if state.iteration % als.checkpoint_interval == 0:
            checkpointer.save(state.iteration, state.arrays(), state.scalars())

    return start, save


def history_frame(spark: SparkSession, result: ALSResult, name: str = MODEL_NAME) -> DataFrame:
    rows = [
        (name, h.iteration, h.train_rmse, h.test_rmse, h.objective, h.seconds) for h in result.history
    ]
    return spark.createDataFrame(rows, C.HISTORY_SCHEMA)


def run_train_als(cfg: Config, spark: SparkSession) -> dict:
    started = time.time()
    out = cfg.output.path
    prepared = Prepared.load(spark, out)
    model, result, setup_seconds = fit_prepared(
        spark, prepared.train, prepared.test, prepared.users, prepared.items, cfg
    )
    fit_seconds = time.time() - started
    predictions = test_predictions(model, prepared.test)
    with model:  # the model's prediction broadcast lives until the predictions are written
        write_model_stage(
            spark,
            out,
            prepared,
            MODEL_NAME,
            model.write,
            predictions,
            history_frame(spark, result),
            cfg.evaluate.activity_buckets,
        )
    per_iter = [h.seconds for h in result.history]
    last = result.history[-1]
    timings = {
        "setup_seconds": round(setup_seconds, 3),
        "median_seconds_per_iteration": round(statistics.median(per_iter), 3),
        "fit_seconds": round(fit_seconds, 3),
        "total_seconds": round(time.time() - started, 3),
    }
    entry = {
        "model": MODEL_NAME,
        "summary": (
            f"rank {cfg.als.rank}, {result.iterations} iterations, "
            f"{timings['median_seconds_per_iteration']:.2f} s/iteration, fit {fit_seconds:.1f} s; "
            f"train RMSE {last.train_rmse:.4f}"
        ),
        "iterations": result.iterations,
        "converged": result.converged,
        "train_rmse": last.train_rmse,
        "test_rmse": last.test_rmse,
        "objective": last.objective,
        "timings": timings,
    }
    update_manifest(spark, out, "train_als", entry, cfg)
    # Checkpoints only serve to finish this run; once its outputs are committed they go.
    HadoopFS(spark).delete(checkpoint_root(out, MODEL_NAME))
    log.info(
        "ALS rank %d, %d iterations: train RMSE %.4f, test RMSE %s (%.1f s)",
        cfg.als.rank,
        result.iterations,
        last.train_rmse,
        f"{last.test_rmse:.4f}" if last.test_rmse is not None else "n/a",
        fit_seconds,
    )
    return entry
