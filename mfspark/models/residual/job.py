"""The train_residual stage: r̂ = base(x) + NN(x) on Spark (the scheme of
:mod:`mfspark.models.residual.train`).

How the work is split: the K + 1 base fits run on the cached rating blocks like any base fit.
The out-of-fold *feature rows* of each held-out fold are computed on the executors (one
mapInArrow per fold with the fold model broadcast) and only they come to the driver, as a few
float32 arrays per Arrow batch — at most ``residual.max_train_rows`` rows (a hash sample of
train beyond that). The network is small (a few thousand weights) and is trained there in
numpy: a data-parallel SGD with one Spark job per minibatch would spend its time on
scheduling, and model averaging across partitions changes the result with the partitioning.
Test predictions are computed on the executors with the final base and the net broadcast.

Writes (atomically) ``models/residual/base/`` (the full-train base in the factor-model
layout), ``models/residual/network`` (one row per layer), ``models/residual/metadata``,
``predictions/model=residual/``, this model's rows of ``metrics/history`` (one per epoch:
``train_rmse`` and ``objective`` = validation RMSE of the corrected out-of-fold predictions)
and ``metrics/summary``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.columns import model_dir, predictions_dir
from mfspark.config import Config
from mfspark.evaluation import write_history
from mfspark.io import staged_outputs, update_manifest
from mfspark.models.factor_model import FactorModel
from mfspark.models.members import fit_factor_model
from mfspark.models.outputs import PREDICTION_COLUMNS, with_pair_column
from mfspark.models.residual.net import MLP, NetResult, train_mlp
from mfspark.models.residual.train import (
    ResidualModel,
    ResidualParams,
    align,
    features,
    fold_of,
    is_sampled,
    is_validation,
    sample_rate,
)
from mfspark.prepare import Prepared

log = logging.getLogger(__name__)

MODEL_NAME = "residual"
FOLD = "_fold"
NETWORK_SCHEMA = T.StructType(
    [
        T.StructField("layer", T.IntegerType(), False),
        T.StructField("inputs", T.IntegerType(), False),
        T.StructField("outputs", T.IntegerType(), False),
        T.StructField("weights", T.ArrayType(T.DoubleType(), False), False),  # row-major
        T.StructField("bias", T.ArrayType(T.DoubleType(), False), False),
    ]
)


def _timestamps(batch: pa.RecordBatch) -> np.ndarray | None:
    if C.TIMESTAMP not in batch.schema.names:
        return None
    col = pa.compute.cast(batch.column(C.TIMESTAMP), pa.float64())
    return col.to_numpy(zero_copy_only=False)


def _idx(batch: pa.RecordBatch, name: str) -> np.ndarray:
    return batch.column(name).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def with_fold(df: DataFrame, seed: int, folds: int) -> DataFrame:
    """``df`` plus its hash fold (0..K−1) per (user_idx, item_idx)."""
    return with_pair_column(
        df, FOLD, T.IntegerType(), lambda u, i: fold_of(u, i, seed, folds).astype(np.int32)
    )


_FEATURE_ROWS = T.StructType(
    [
        T.StructField("n", T.IntegerType(), False),
        T.StructField("features", T.BinaryType(), False),
        T.StructField("target", T.BinaryType(), False),
        T.StructField("user_idx", T.BinaryType(), False),
        T.StructField("item_idx", T.BinaryType(), False),
    ]
)


def collect_features(spark, rows: DataFrame, model, counts, clip, seed: int, rate: float):
    """(features, target = r − base, user_idx, item_idx) of ``rows`` as driver arrays: the
    feature rows are built on the executors and travel as raw float32 bytes per batch."""
    bc = spark.sparkContext.broadcast((model, counts, clip))

    def build(batches):
        from mfspark.session import worker_single_thread

        worker_single_thread()
        m, (user_n, item_n), cl = bc.value
        for b in batches:
            u, i = _idx(b, C.USER_IDX), _idx(b, C.ITEM_IDX)
            keep = is_sampled(u, i, seed, rate)
            if not keep.any():
                continue
            ts = _timestamps(b)
            base, x = features(m, u[keep], i[keep], None if ts is None else ts[keep], user_n, item_n, cl)
            target = b.column(C.RATING).to_numpy(zero_copy_only=False)[keep] - base
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array([int(keep.sum())], pa.int32()),
                    *[
                        pa.array([np.ascontiguousarray(a).tobytes()], pa.binary())
                        for a in (x, target.astype(np.float32), u[keep], i[keep])
                    ],
                ],
                schema=pa.schema(
                    [(f.name, pa.int32() if f.name == "n" else pa.binary()) for f in _FEATURE_ROWS]
                ),
            )

    try:
        parts = rows.mapInArrow(build, _FEATURE_ROWS).collect()
    finally:
        bc.destroy()
    width = None
    xs, ys, us, its = [], [], [], []
    for p in parts:
        x = np.frombuffer(p["features"], np.float32)
        width = len(x) // p["n"]
        xs.append(x.reshape(p["n"], width))
        ys.append(np.frombuffer(p["target"], np.float32))
        us.append(np.frombuffer(p["user_idx"], np.int64))
        its.append(np.frombuffer(p["item_idx"], np.int64))
    if not parts:
        return (
            np.zeros((0, 0), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(us), np.concatenate(its)


def fit_spark(
    spark: SparkSession,
    train: DataFrame,
    test: DataFrame | None,
    users: DataFrame,
    items: DataFrame,
    cfg: Config,
) -> tuple[ResidualModel, NetResult, FactorModel]:
    """Full-train base, K out-of-fold refits, features collected, network trained; returns
    the model, the network's training record and the full-train base with its id tables."""
    rc = cfg.residual
    params = ResidualParams.from_config(rc)
    full = fit_factor_model(rc.base, spark, train, test, users, items, cfg)
    counts = (full.params.user_counts, full.params.item_counts)
    n_train = int(np.sum(counts[1]))
    rate = sample_rate(n_train, params.max_train_rows)
    folded = with_fold(train, params.seed, params.folds).persist()
    try:
        xs, ys, us, its = [], [], [], []
        for f in range(params.folds):
            started = time.perf_counter()
            rest = folded.where(F.col(FOLD) != f).drop(FOLD)
            model = fit_factor_model(rc.base, spark, rest, None, users, items, cfg)
            aligned = align(model.params, full.params)
            held = folded.where(F.col(FOLD) == f).drop(FOLD)
            x, y, u, i = collect_features(spark, held, aligned, counts, full.clip, params.seed, rate)
            xs.append(x), ys.append(y), us.append(u), its.append(i)
            log.info(
                "residual fold %d/%d: %s base refitted, %s out-of-fold feature rows (%.1f s)",
                f + 1,
                params.folds,
                rc.base,
                f"{len(y):,}",
                time.perf_counter() - started,
            )
    finally:
        folded.unpersist()
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.float64)
    val = is_validation(np.concatenate(us), np.concatenate(its), params.seed, params.validation_fraction)
    result = train_mlp(x, y, val, params.net)
    return ResidualModel(full.params, result.net, counts[0], counts[1], full.clip), result, full


def predict_frame(spark: SparkSession, model: ResidualModel, df: DataFrame) -> DataFrame:
    """``df`` (``user_idx``, ``item_idx``, optional ``timestamp``) plus ``prediction``."""
    bc = spark.sparkContext.broadcast(model)
    schema = T.StructType(df.schema.fields + [T.StructField(C.PREDICTION, T.DoubleType(), True)])

    def add(batches):
        from mfspark.session import worker_single_thread

        worker_single_thread()
        m = bc.value
        for b in batches:
            pred = m.predict(_idx(b, C.USER_IDX), _idx(b, C.ITEM_IDX), _timestamps(b))
            yield pa.RecordBatch.from_arrays(
                [*b.columns, pa.array(pred)], names=[*b.schema.names, C.PREDICTION]
            )

    return df.mapInArrow(add, schema)


def fit_predict(spark, train, pairs, users, items, cfg) -> DataFrame:
    """Blend member: fit the residual model on ``train``, predict ``pairs``."""
    model, _, _ = fit_spark(spark, train, None, users, items, cfg)
    cols = [c for c in (C.USER_IDX, C.ITEM_IDX, C.TIMESTAMP) if c in pairs.columns]
    return predict_frame(spark, model, pairs.select(*cols)).select(C.USER_IDX, C.ITEM_IDX, C.PREDICTION)


def network_frame(spark: SparkSession, net: MLP) -> DataFrame:
    rows = [
        (layer + 1, int(w.shape[0]), int(w.shape[1]), w.ravel().tolist(), b.tolist())
        for layer, (w, b) in enumerate(zip(net.weights, net.biases, strict=True))
    ]
    return spark.createDataFrame(rows, NETWORK_SCHEMA)


def metadata_frame(
    spark: SparkSession, cfg: Config, model: ResidualModel, result: NetResult
) -> DataFrame:
    schema = T.StructType(
        [
            T.StructField("base", T.StringType(), False),
            T.StructField("enabled", T.BooleanType(), False),
            T.StructField("best_epoch", T.IntegerType(), False),
            T.StructField("validation_rmse", T.DoubleType(), True),
            T.StructField("no_correction_validation_rmse", T.DoubleType(), False),
            T.StructField("input_mean", T.ArrayType(T.DoubleType(), False), False),
            T.StructField("input_scale", T.ArrayType(T.DoubleType(), False), False),
            T.StructField("folds", T.IntegerType(), False),
            T.StructField("seed", T.LongType(), False),
        ]
    )
    best = result.history[result.best_epoch - 1].validation_rmse if result.best_epoch else None
    row = (
        cfg.residual.base,
        bool(model.net.enabled),
        int(result.best_epoch),
        best,
        float(result.baseline_validation_rmse),
        model.net.mean.tolist(),
        model.net.scale.tolist(),
        cfg.residual.folds,
        cfg.residual.seed,
    )
    return spark.createDataFrame([row], schema)


def history_frame(spark: SparkSession, result: NetResult) -> DataFrame:
    rows = [(MODEL_NAME, h.epoch, h.train_rmse, None, h.validation_rmse, 0.0) for h in result.history]
    return spark.createDataFrame(rows, C.HISTORY_SCHEMA)


def run_train_residual(cfg: Config, spark: SparkSession) -> dict:
    from mfspark.evaluation import summarize_predictions, write_summary

    started = time.time()
    out = cfg.output.path
    prepared = Prepared.load(spark, out)
    if cfg.residual.base == "svd":
        from mfspark.models.outputs import prepared_sizes
        from mfspark.models.svd.job import check_rank

        check_rank(cfg, *prepared_sizes(spark, out, prepared.users, prepared.items))
    model, result, base = fit_spark(
        spark, prepared.train, prepared.test, prepared.users, prepared.items, cfg
    )
    fit_seconds = time.time() - started
    test = prepared.test.select(*[c for c in PREDICTION_COLUMNS if c != C.PREDICTION], C.TIMESTAMP)
    predictions = predict_frame(spark, model, test).select(*PREDICTION_COLUMNS)
    base_dir = model_dir(MODEL_NAME)
    with staged_outputs(spark, out) as stage:
        base.write(stage, prefix=f"{base_dir}/base")
        stage.write(network_frame(spark, model.net).coalesce(1), f"{base_dir}/network")
        stage.write(metadata_frame(spark, cfg, model, result).coalesce(1), f"{base_dir}/metadata")
        stage.write(predictions, predictions_dir(MODEL_NAME))
        write_history(spark, stage, out, history_frame(spark, result), MODEL_NAME)
        written = spark.read.parquet(stage.path(predictions_dir(MODEL_NAME)))
        summary = summarize_predictions(
            written, prepared.test, prepared.users, MODEL_NAME, cfg.evaluate.activity_buckets
        )
        write_summary(spark, stage, out, summary, MODEL_NAME)
        test_rmse = summary.where("segment = 'all'").first()["rmse"]
    entry = {
        "model": MODEL_NAME,
        "base": cfg.residual.base,
        "network_enabled": bool(model.net.enabled),
        "best_epoch": result.best_epoch,
        "no_correction_validation_rmse": result.baseline_validation_rmse,
        "test_rmse": test_rmse,
        "timings": {
            "fit_seconds": round(fit_seconds, 3),
            "total_seconds": round(time.time() - started, 3),
        },
    }
    entry["summary"] = (
        f"base {entry['base']}, network "
        f"{'on' if entry['network_enabled'] else 'off (did not beat its base)'}, "
        f"best epoch {entry['best_epoch']}; fit {entry['timings']['fit_seconds']:.1f} s"
    )
    update_manifest(spark, out, "train_residual", entry, cfg)
    log.info("residual model on %s: test RMSE %s (%.1f s)", cfg.residual.base, test_rmse, fit_seconds)
    return entry
