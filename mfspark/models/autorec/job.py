"""The train_autorec stage: ae_inputs → AutoRec (item- or user-based) → model, predictions, metrics.

Reads ``ae_inputs/<orientation>`` and ``ae_inputs/metadata`` (built by the
``build_autoencoder_inputs`` stage) and ``prepared/*``; writes, atomically as one stage,

* ``models/<name>/weights`` — one row per column entity c (users for ``autorec``, items for
  ``autorec_user``): its id and idx, ``encoder`` (array<float>, row c of E), ``decoder``
  (array<float>, row c of D), ``output_bias`` (b_c);
* ``models/<name>/metadata`` — one row: the settings, ``hidden_bias`` (array<double>),
  ``global_mean``, the iteration kept and why training stopped;
* ``predictions/model=<name>/`` — one row per test rating (``user_id``, ``item_id``,
  ``user_idx``, ``item_idx``, ``rating``, ``prediction``, ``cold_user``, ``cold_item``);
* this model's rows of ``metrics/history`` (one per iteration) and ``metrics/summary``.

A test rating whose user or item has no train rating is predicted as μ + the ALS biases when
an ALS model is under ``models/als/`` (μ alone otherwise), never by the network.
"""

from __future__ import annotations

import datetime as _dt
import logging
import statistics
import time

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.config import Config
from mfspark.errors import ConfigError, InputError
from mfspark.io import HadoopFS, join, staged_outputs, update_manifest
from mfspark.models.autorec.network import Shape
from mfspark.models.autorec.spark import SparkEvaluator, predict_test_cells
from mfspark.models.autorec.train import MODEL_NAMES, AutoRecParams, AutoRecResult, fit
from mfspark.session import RESULT_OVERHEAD, RESULT_OVERHEAD_BYTES, parse_size

log = logging.getLogger(__name__)

STAGE = "train_autorec"
ALS_MODEL = "models/als"

WEIGHTS, METADATA = "weights", "metadata"
METADATA_FIELDS = (
    ("model", T.StringType()),
    ("orientation", T.StringType()),
    ("hidden", T.IntegerType()),
    ("activation", T.StringType()),
    ("l2", T.DoubleType()),
    ("input_dropout", T.DoubleType()),
    ("optimizer", T.StringType()),
    ("validation_fraction", T.DoubleType()),
    ("seed", T.LongType()),
    ("precision", T.StringType()),
    ("iterations", T.IntegerType()),
    ("best_iteration", T.IntegerType()),
    ("best_validation_rmse", T.DoubleType()),
    ("stop_reason", T.StringType()),
    ("global_mean", T.DoubleType()),
    ("clip_min", T.DoubleType()),
    ("clip_max", T.DoubleType()),
    ("n_users", T.LongType()),
    ("n_items", T.LongType()),
    ("hidden_bias", T.ArrayType(T.DoubleType(), False)),
    ("mfspark_version", T.StringType()),
    ("created_at", T.StringType()),
)
METADATA_SCHEMA = T.StructType([T.StructField(n, t, True) for n, t in METADATA_FIELDS])


def model_name(cfg: Config) -> str:
    return MODEL_NAMES[cfg.autorec.orientation]


def check_config(cfg: Config) -> None:
    """What the config loader cannot check alone (runs before Spark starts)."""
    ar = cfg.autorec
    if ar.hidden <= 0:  # also refused by the loader; kept for configs built in code
        raise ConfigError(f"config key autorec.hidden must be >= 1, got {ar.hidden}")
    if not 0 <= ar.input_dropout < 1:
        raise ConfigError(f"config key autorec.input_dropout must be in [0, 1), got {ar.input_dropout}")


def optimizer_bytes(width: int, params: AutoRecParams) -> int:
    """Driver memory the optimiser keeps: (5 + 2·history)·|θ| for L-BFGS, 5·|θ| for Rprop."""
    vectors = 5 + 2 * params.lbfgs_history if params.optimizer == "lbfgs" else 5
    return vectors * Shape(width, params.hidden).size * np.dtype(params.dtype).itemsize


def check_driver_memory(width: int, params: AutoRecParams, name: str) -> None:
    """Refuse, before training, a network whose optimiser state would not fit in this
    machine's memory (the driver's): with the size and the remedies."""
    import os

    need = optimizer_bytes(width, params)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not knowable here: nothing to check
        return
    if need > 0.6 * total:
        raise ConfigError(
            f"{name}: the optimiser keeps {need / 2**30:.1f} GiB on the driver "
            f"(rows of width {width:,}, autorec.hidden={params.hidden}), over 60% of this "
            f"machine's {total / 2**30:.1f} GiB; lower autorec.hidden or autorec.lbfgs_history, "
            "use autorec.optimizer=rprop"
            + (", autorec.precision=float32" if np.dtype(params.dtype).itemsize > 4 else "")
            + ", or leave train_autorec out of pipeline.stages"
        )


def check_result_size(width: int, params: AutoRecParams, max_result_size: str) -> None:
    """Refuse, before training, a gradient larger than ``spark.driver.maxResultSize``: every
    iteration collects one summed gradient (|θ| values) to the driver. ``0``: unlimited."""
    limit = parse_size(max_result_size)
    size = Shape(width, params.hidden).size * np.dtype(params.dtype).itemsize
    need = size * RESULT_OVERHEAD + RESULT_OVERHEAD_BYTES
    if limit and need > limit:
        raise ConfigError(
            f"each AutoRec iteration returns one gradient of {need / 2**20:,.0f} MB to the driver "
            f"(rows of width {width:,}, autorec.hidden={params.hidden}), over "
            f"spark.driver.maxResultSize={max_result_size}; raise it (e.g. --set "
            f"spark.conf.spark.driver.maxResultSize={int(need * 2 / 2**30) + 1}g) or lower "
            "autorec.hidden"
        )


def missing_input_message(out: str, orientation: str) -> str:
    return (
        f"no autoencoder inputs at {join(out, C.AE_PATHS[orientation])}; train_autorec needs them: "
        f"run the build_autoencoder_inputs stage first (jobs/build_autoencoder_inputs.py with the "
        f"same output.path and {orientation} in autoencoder.orientations)"
    )


def preflight_train_autorec(cfg: Config, earlier_stages: tuple = ()) -> None:
    """Config checks and, for a local output path, the inputs' presence — before the JVM starts.

    ``earlier_stages``: the stages a pipeline runs before this one; when they include
    ``build_autoencoder_inputs``, the inputs need not exist yet.
    """
    builds_inputs = "build_autoencoder_inputs" in earlier_stages
    import os

    check_config(cfg)
    out = cfg.output.path
    if builds_inputs or "://" in out:
        return
    for name in (C.AE_PATHS[cfg.autorec.orientation], C.AE_METADATA):
        if not os.path.isdir(os.path.join(out, name)):
            raise InputError(missing_input_message(out, cfg.autorec.orientation))


def _ae_metadata(spark: SparkSession, out: str, orientation: str) -> dict:
    fs = HadoopFS(spark)
    for name in (C.AE_PATHS[orientation], C.AE_METADATA):
        if not fs.exists(join(out, name)):
            raise InputError(missing_input_message(out, orientation))
    return spark.read.parquet(join(out, C.AE_METADATA)).first().asDict()


def _fallback(
    spark: SparkSession, out: str, test: DataFrame, global_mean: float, clip
) -> tuple[DataFrame, str]:
    """``test`` plus ``_fallback``: μ + ALS biases when ``models/als`` exists, else μ."""
    fs = HadoopFS(spark)
    path = join(out, ALS_MODEL)
    if all(fs.exists(join(path, n)) for n in ("user_factors", "item_factors", "metadata")):
        mu = float(spark.read.parquet(join(path, "metadata")).first()["global_mean"])
        ub = spark.read.parquet(join(path, "user_factors")).select(C.USER_ID, F.col(C.BIAS).alias("_ub"))
        ib = spark.read.parquet(join(path, "item_factors")).select(C.ITEM_ID, F.col(C.BIAS).alias("_ib"))
        value = F.lit(mu) + F.coalesce("_ub", F.lit(0.0)) + F.coalesce("_ib", F.lit(0.0))
        if clip is not None:
            value = F.least(F.greatest(value, F.lit(clip[0])), F.lit(clip[1]))
        joined = test.join(F.broadcast(ub), C.USER_ID, "left").join(F.broadcast(ib), C.ITEM_ID, "left")
        return joined.withColumn("_fallback", value).drop("_ub", "_ib"), "global mean + ALS biases"
    return test.withColumn("_fallback", F.lit(float(global_mean))), "global mean"


def weights_frame(
    spark: SparkSession, theta: np.ndarray, shape: Shape, entities: DataFrame, orientation: str
) -> DataFrame:
    """``models/<name>/weights``: one row per column entity with its rows of E and D and b."""
    enc, dec, _, out_bias = shape.unpack(theta)
    h = shape.hidden
    offsets = pa.array(np.arange(0, shape.width * h + 1, h, dtype=np.int64), pa.int64())

    def lists(m: np.ndarray) -> pa.Array:
        return pa.LargeListArray.from_arrays(
            offsets, pa.array(np.ascontiguousarray(m, np.float32).ravel())
        )

    col_idx = C.AE_COLUMN_IDX[orientation]
    col_id = C.USER_ID if col_idx == C.USER_IDX else C.ITEM_ID
    table = pa.table(
        {
            col_idx: pa.array(np.arange(shape.width, dtype=np.int32)),
            "encoder": lists(enc).cast(pa.list_(pa.float32())),
            "decoder": lists(dec).cast(pa.list_(pa.float32())),
            "output_bias": pa.array(out_bias.astype(np.float64)),
        }
    )
    values = spark.createDataFrame(table)
    return (
        entities.select(col_id, col_idx)
        .join(values, col_idx)
        .select(col_id, col_idx, "encoder", "decoder", "output_bias")
    )


def load_weights(spark: SparkSession, path: str) -> tuple[np.ndarray, Shape, dict]:
    """θ, its shape and the metadata of a model written by this stage."""
    meta = spark.read.parquet(join(path, METADATA)).first().asDict()
    orientation = meta["orientation"]
    col_idx = C.AE_COLUMN_IDX[orientation]
    width = int(meta["n_users"] if orientation == "by_item" else meta["n_items"])
    shape = Shape(width, int(meta["hidden"]))
    dtype = np.float64 if meta["precision"] == "float64" else np.float32
    table = (
        spark.read.parquet(join(path, WEIGHTS))
        .select(col_idx, "encoder", "decoder", "output_bias")
        .toArrow()
    )
    idx = table.column(col_idx).to_numpy()
    theta = np.zeros(shape.size, dtype)
    enc, dec, hb, ob = shape.unpack(theta)
    for name, target in (("encoder", enc), ("decoder", dec)):
        flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        target[idx] = flat.reshape(-1, shape.hidden)
    ob[idx] = table.column("output_bias").to_numpy()
    hb[:] = np.asarray(meta["hidden_bias"], dtype)
    return theta, shape, meta


def _write_history(spark: SparkSession, stage, out: str, result: AutoRecResult, name: str) -> None:
    """Stage ``metrics/history``: other models' rows kept, this model's replaced."""
    rows = [
        (name, e.iteration, e.train_rmse, e.test_rmse, e.objective, e.seconds) for e in result.history
    ]
    mine = spark.createDataFrame(rows, C.HISTORY_SCHEMA)
    final = join(out, C.METRICS_HISTORY)
    if HadoopFS(spark).exists(final):
        old = spark.read.parquet(final)
        if "model" in old.columns:
            old = old.where(F.col("model") != name)
            mine = old.unionByName(mine, allowMissingColumns=True).select(
                *[F.col(f.name).cast(f.dataType) for f in C.HISTORY_SCHEMA.fields]
            )
    stage.write(mine.coalesce(1), C.METRICS_HISTORY)


def run_train_autorec(cfg: Config, spark: SparkSession) -> dict:
    from mfspark.evaluation import summarize_predictions, write_summary
    from mfspark.prepare import Prepared

    started = time.time()
    check_config(cfg)
    ar = cfg.autorec
    out = cfg.output.path
    name = model_name(cfg)
    orientation = ar.orientation
    meta = _ae_metadata(spark, out, orientation)
    prepared = Prepared.load(spark, out)
    width = int(meta["n_users"] if orientation == "by_item" else meta["n_items"])
    lo, hi = meta["train_rating_min"], meta["train_rating_max"]
    clip = (float(lo), float(hi)) if ar.clip_predictions and lo is not None else None
    if meta["global_mean"] is None:
        raise InputError(f"{join(out, C.AE_METADATA)} records no train ratings; nothing to train on")
    global_mean = float(meta["global_mean"])
    params = AutoRecParams.from_config(ar, clip=clip)
    check_driver_memory(width, params, name)
    check_result_size(width, params, spark.conf.get("spark.driver.maxResultSize", "1g"))
    rows = spark.read.parquet(join(out, C.AE_PATHS[orientation]))
    partitions = ar.num_partitions or spark.sparkContext.defaultParallelism
    evaluator = SparkEvaluator(spark, rows, orientation, width, params, partitions)
    try:
        result = fit(evaluator, params, global_mean)
    finally:
        evaluator.close()
    fit_seconds = time.time() - started

    shape = evaluator.shape
    cells, bc = predict_test_cells(rows, orientation, result.theta, shape, params)
    test = prepared.test.select(
        C.USER_ID, C.ITEM_ID, C.USER_IDX, C.ITEM_IDX, C.RATING, C.COLD_USER, C.COLD_ITEM
    )
    test, fallback_kind = _fallback(spark, out, test, global_mean, clip)
    cold = F.col(C.COLD_USER) | F.col(C.COLD_ITEM) | F.col(C.PREDICTION).isNull()
    predictions = (
        test.join(cells, [C.USER_IDX, C.ITEM_IDX], "left")
        .withColumn(C.PREDICTION, F.when(cold, F.col("_fallback")).otherwise(F.col(C.PREDICTION)))
        .select(
            C.USER_ID,
            C.ITEM_ID,
            C.USER_IDX,
            C.ITEM_IDX,
            C.RATING,
            C.PREDICTION,
            C.COLD_USER,
            C.COLD_ITEM,
        )
    )
    best = result.best
    from mfspark import __version__

    metadata = {
        "model": name,
        "orientation": orientation,
        "hidden": ar.hidden,
        "activation": ar.activation,
        "l2": ar.l2,
        "input_dropout": ar.input_dropout,
        "optimizer": ar.optimizer,
        "validation_fraction": ar.validation_fraction,
        "seed": ar.seed,
        "precision": ar.precision,
        "iterations": len(result.history),
        "best_iteration": result.best_iteration,
        "best_validation_rmse": best.validation_rmse if best else None,
        "stop_reason": result.stop_reason,
        "global_mean": global_mean,
        "clip_min": clip[0] if clip else None,
        "clip_max": clip[1] if clip else None,
        "n_users": int(meta["n_users"]),
        "n_items": int(meta["n_items"]),
        "hidden_bias": [float(v) for v in shape.unpack(result.theta)[2]],
        "mfspark_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    model_dir = f"models/{name}"
    pred_dir = f"{C.PREDICTIONS}/model={name}"
    entities = prepared.users if orientation == "by_item" else prepared.items
    try:
        with staged_outputs(spark, out) as stage:
            stage.write(
                weights_frame(spark, result.theta, shape, entities, orientation),
                f"{model_dir}/{WEIGHTS}",
            )
            stage.write(
                spark.createDataFrame([tuple(metadata[n] for n, _ in METADATA_FIELDS)], METADATA_SCHEMA),
                f"{model_dir}/{METADATA}",
            )
            stage.write(predictions, pred_dir)
            _write_history(spark, stage, out, result, name)
            written = spark.read.parquet(stage.path(pred_dir))
            n_fallback = written.where(F.col(C.COLD_USER) | F.col(C.COLD_ITEM)).count()
            summary = summarize_predictions(
                written, prepared.test, prepared.users, name, cfg.evaluate.activity_buckets
            )
            overall = summary.where(F.col("segment") == "all").first()
            write_summary(spark, stage, out, summary, name)
    finally:
        bc.destroy()
    per_iter = [e.seconds for e in result.history]
    entry = {
        "model": name,
        "orientation": orientation,
        "iterations": len(result.history),
        "evaluations": result.evaluations,
        "best_iteration": result.best_iteration,
        "stop_reason": result.stop_reason,
        "train_rmse": best.train_rmse if best else None,
        "validation_rmse": best.validation_rmse if best else None,
        "test_rmse": overall["rmse"],
        "cold_fallback": {"rows": n_fallback, "value": fallback_kind},
        "blocks": {
            "partitions": evaluator.num_partitions,
            "blocks": evaluator.n_blocks,
            "training_cells": evaluator.n_train,
            "validation_cells": evaluator.n_validation,
            "test_cells": evaluator.n_test,
        },
        "timings": {
            "setup_seconds": round(evaluator.setup_seconds, 3),
            "median_seconds_per_iteration": round(statistics.median(per_iter), 3) if per_iter else None,
            "fit_seconds": round(fit_seconds, 3),
            "total_seconds": round(time.time() - started, 3),
        },
    }
    entry["summary"] = (
        f"kept iteration {entry['best_iteration']} of {entry['iterations']}, "
        f"{entry['timings']['median_seconds_per_iteration'] or 0:.2f} s/iteration, "
        f"fit {fit_seconds:.1f} s"
    )
    update_manifest(spark, out, STAGE, entry, cfg)
    log.info(
        "%s: h=%d, λ=%g, dropout %g, %s: kept iteration %d of %d; test RMSE %.4f (%.1f s)",
        name,
        ar.hidden,
        ar.l2,
        ar.input_dropout,
        ar.optimizer,
        result.best_iteration,
        len(result.history),
        overall["rmse"] if overall["rmse"] is not None else float("nan"),
        fit_seconds,
    )
    return entry


def _fit_predict(spark, train, pairs, users, items, cfg, orientation: str) -> DataFrame:
    """Blend member: AutoRec of ``orientation`` trained on ``train``; its predictions at
    ``pairs`` (computed from the train vectors, as the stage's test predictions; every pair's
    row gets a vector, so each is scored — the train mean only guards the join)."""
    import dataclasses

    from mfspark.autoencoder import build_rows

    check_config(cfg)
    ar = dataclasses.replace(cfg.autorec, orientation=orientation)
    stats = train.agg(F.min(C.RATING), F.max(C.RATING), F.avg(C.RATING)).first()
    if stats[2] is None:
        raise InputError(f"{MODEL_NAMES[orientation]} (blend member): no train ratings")
    clip = (float(stats[0]), float(stats[1])) if ar.clip_predictions else None
    global_mean = float(stats[2])
    params = AutoRecParams.from_config(ar, clip=clip)
    partitions = ar.num_partitions or spark.sparkContext.defaultParallelism
    scored = pairs.select(C.USER_IDX, C.ITEM_IDX, F.lit(0.0).cast("float").alias(C.RATING))
    entities = items if orientation == "by_item" else users
    width = (users if orientation == "by_item" else items).count()
    check_driver_memory(width, params, f"{MODEL_NAMES[orientation]} (blend member)")
    check_result_size(width, params, spark.conf.get("spark.driver.maxResultSize", "1g"))
    rows = build_rows(train, scored, entities, orientation, partitions).persist()
    evaluator = SparkEvaluator(spark, rows, orientation, width, params, partitions)
    try:  # the pairs' cells hold placeholder ratings: there is no test RMSE to report
        result = fit(evaluator, params, global_mean, score_test=False)
        cells, bc = predict_test_cells(rows, orientation, result.theta, evaluator.shape, params)
        try:  # the pairs are a validation share of train: small enough to hold on the driver
            scores = cells.toPandas()
        finally:
            bc.destroy()
    finally:
        evaluator.close()
        rows.unpersist()
    found = spark.createDataFrame(scores, cells.schema)
    keys = pairs.select(C.USER_IDX, C.ITEM_IDX).join(found, [C.USER_IDX, C.ITEM_IDX], "left")
    return keys.select(
        C.USER_IDX, C.ITEM_IDX, F.coalesce(C.PREDICTION, F.lit(global_mean)).alias(C.PREDICTION)
    )


def fit_predict(spark, train, pairs, users, items, cfg) -> DataFrame:
    """Blend member ``autorec`` (I-AutoRec: one row per item)."""
    return _fit_predict(spark, train, pairs, users, items, cfg, "by_item")


def fit_predict_user(spark, train, pairs, users, items, cfg) -> DataFrame:
    """Blend member ``autorec_user`` (U-AutoRec: one row per user)."""
    return _fit_predict(spark, train, pairs, users, items, cfg, "by_user")
