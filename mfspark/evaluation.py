"""Masked test metrics: RMSE, MAE and counts over held-out cells only, by segment.

For the test cells T_s of a segment s, predictions r̂ and true ratings r,

    RMSE_s = sqrt( Σ_(i,j)∈F_s (r̂_ij − r_ij)² / |F_s| ),    MAE_s = Σ_(i,j)∈F_s |r̂_ij − r_ij| / |F_s|,

where F_s ⊆ T_s are the cells with a finite prediction. Only the sums Σe², Σ|e| and the
counts are reduced across the cluster (one aggregation, a few numbers to the driver); RMSEs
of partitions are never averaged.

**Every test row counts.** ``n`` is |T_s|, all test ratings of the segment. A prediction that is
NaN or ±inf is counted in ``n_nonfinite``, a test row without a prediction (no row for it, or
a null) in ``n_missing``; both stay in ``n`` but are left out of RMSE and MAE, which average
over the n − n_nonfinite − n_missing finite predictions, and a warning names the counts. (A
model that wants them scored, e.g. MLlib's NaN for cold rows, must fill them itself — e.g.
with the global mean — before scoring.) A prediction for a cell that is not in the test set
is ignored and counted in the log; two predictions for the same test cell are an error.

**Segments** (a row can be in several): ``all``; ``warm`` (user and item both have train
ratings); ``cold_user``; ``cold_item``; and user-activity buckets by the user's train count
with lower edges e_0 < e_1 < … (``evaluate.activity_buckets``): ``activity_{e_k}_{e_(k+1)−1}``
and ``activity_{e_last}_plus``. Users below e_0 (with the default edge 1: cold users, who have
their own segment) are in no activity bucket. Every segment is reported, with ``rmse`` and
``mae`` null when it has no finite prediction.

Predictions come either long — (user, item, prediction), joined to ``prepared/test`` on
``user_idx``/``item_idx`` when present, else on ``user_id``/``item_id`` — or as row-vector
reconstructions (an autoencoder's output: row idx, array<float> over the other side), of which
only the test cells are picked out (:func:`reconstructions_to_predictions`; the matrix is
never densified).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.errors import ConfigError, InputError, MfsparkError

log = logging.getLogger(__name__)

BASE_SEGMENTS = ("all", "warm", "cold_user", "cold_item")
# Test cells grouped by row are broadcast to the reconstructions below this many cells, so the
# (wide) reconstruction rows are never shuffled.
BROADCAST_TEST_CELLS = 5_000_000


def activity_segments(edges: Sequence[int]) -> list[tuple[str, int, int | None]]:
    """(name, lowest n_train, highest n_train or None) per bucket.

    >>> activity_segments([1, 20, 1000])
    [('activity_1_19', 1, 19), ('activity_20_999', 20, 999), ('activity_1000_plus', 1000, None)]
    """
    edges = list(edges)
    ok = all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in edges)
    if not ok or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ConfigError(
            f"evaluate.activity_buckets must be strictly increasing integers >= 0, got {edges!r}"
        )
    out = [(f"activity_{lo}_{hi - 1}", lo, hi - 1) for lo, hi in zip(edges, edges[1:], strict=False)]
    if edges:
        out.append((f"activity_{edges[-1]}_plus", edges[-1], None))
    return out


@dataclass
class Scores:
    """The result of scoring one model: one dict per segment (SUMMARY_SCHEMA fields) and checks."""

    model: str
    rows: list[dict] = field(default_factory=list)
    n_test: int = 0
    n_extra_predictions: int = 0

    def row(self, segment: str) -> dict:
        return next(r for r in self.rows if r["segment"] == segment)

    def to_frame(self, spark: SparkSession) -> DataFrame:
        return spark.createDataFrame(
            [tuple(r[f] for f in C.SUMMARY_SCHEMA.names) for r in self.rows], C.SUMMARY_SCHEMA
        )


def _join_keys(predictions: DataFrame) -> list[str]:
    cols = set(predictions.columns)
    for keys in ((C.USER_IDX, C.ITEM_IDX), (C.USER_ID, C.ITEM_ID)):
        if set(keys) <= cols:
            return list(keys)
    raise InputError(
        f"predictions need ({C.USER_IDX}, {C.ITEM_IDX}) or ({C.USER_ID}, {C.ITEM_ID}) columns, "
        f"found {predictions.columns}"
    )


def score_predictions(
    predictions: DataFrame,
    test: DataFrame,
    users: DataFrame,
    model_name: str,
    activity_buckets: Sequence[int] = (1, 20, 50, 200, 1000),
) -> Scores:
    """Masked metrics of long ``predictions`` against ``test`` (``prepared/test``), by segment.

    ``users`` is ``prepared/users`` (``user_idx``, ``n_train``) for the activity buckets.
    One outer join and one aggregation; returns small per-segment numbers on the driver.
    """
    if C.PREDICTION not in predictions.columns:
        raise InputError(f"predictions have no {C.PREDICTION!r} column: {predictions.columns}")
    buckets = activity_segments(activity_buckets)
    keys = _join_keys(predictions)
    pred = predictions.select(*keys, F.col(C.PREDICTION).cast("double").alias("_pred"))
    truth = test.select(
        *dict.fromkeys([*keys, C.USER_IDX]),
        F.col(C.RATING).cast("double").alias("_rating"),
        F.col(C.COLD_USER).alias("_cold_user"),
        F.col(C.COLD_ITEM).alias("_cold_item"),
        F.lit(True).alias("_in_test"),
    ).join(users.select(C.USER_IDX, F.col(C.N_TRAIN).alias("_n_train")), C.USER_IDX, "left")
    joined = truth.join(pred, keys, "full")

    in_test = F.col("_in_test").isNotNull()
    p = F.col("_pred")
    missing = p.isNull()
    finite = ~missing & ~F.isnan(p) & (F.abs(p) < float("inf"))
    nonfinite = ~missing & ~finite
    err = p - F.col("_rating")
    cold_u, cold_i, n_train = F.col("_cold_user"), F.col("_cold_item"), F.col("_n_train")
    conditions = {
        "all": F.lit(True),
        "warm": ~cold_u & ~cold_i,
        "cold_user": cold_u,
        "cold_item": cold_i,
    }
    for name, lo, hi in buckets:
        conditions[name] = (n_train >= lo) if hi is None else n_train.between(lo, hi)

    aggs = [
        F.count(F.when(in_test, 1)).alias("n_test_rows"),
        F.count(F.when(~in_test, 1)).alias("n_extra"),
    ]
    for i, cond in enumerate(conditions.values()):
        c = in_test & cond
        aggs += [
            F.count(F.when(c, 1)).alias(f"n{i}"),
            F.sum(F.when(c & finite, err * err)).alias(f"sse{i}"),
            F.sum(F.when(c & finite, F.abs(err))).alias(f"sae{i}"),
            F.count(F.when(c & nonfinite, 1)).alias(f"nonfinite{i}"),
            F.count(F.when(c & missing, 1)).alias(f"missing{i}"),
        ]
    totals = joined.agg(*aggs).first()
    n_test = test.count()
    if totals["n_test_rows"] != n_test:
        raise MfsparkError(
            f"{model_name}: {totals['n_test_rows'] - n_test} test rows have more than one prediction "
            f"(joined on {', '.join(keys)}); deduplicate the predictions before scoring"
        )
    scores = Scores(model_name, n_test=n_test, n_extra_predictions=int(totals["n_extra"]))
    for i, segment in enumerate(conditions):
        n = int(totals[f"n{i}"])
        bad, absent = int(totals[f"nonfinite{i}"]), int(totals[f"missing{i}"])
        scored = n - bad - absent
        sse, sae = totals[f"sse{i}"], totals[f"sae{i}"]
        scores.rows.append(
            {
                "model": model_name,
                "segment": segment,
                "n": n,
                "rmse": math.sqrt(sse / scored) if scored else None,
                "mae": sae / scored if scored else None,
                "n_nonfinite": bad,
                "n_missing": absent,
            }
        )
    _warn(scores)
    return scores


def _warn(scores: Scores) -> None:
    overall = scores.row("all")
    if overall["n_nonfinite"] or overall["n_missing"]:
        log.warning(
            "%s: of %s test ratings, %s predictions are NaN/inf and %s are missing; they count in n "
            "but not in rmse/mae",
            scores.model,
            f"{overall['n']:,}",
            f"{overall['n_nonfinite']:,}",
            f"{overall['n_missing']:,}",
        )
    if scores.n_extra_predictions:
        log.warning(
            "%s: %s predictions are for cells not in the test set and were ignored",
            scores.model,
            f"{scores.n_extra_predictions:,}",
        )


def summarize_predictions(
    predictions: DataFrame,
    test: DataFrame,
    users: DataFrame,
    model_name: str,
    activity_buckets: Sequence[int] = (1, 20, 50, 200, 1000),
) -> DataFrame:
    """``metrics/summary`` rows (schema ``SUMMARY_SCHEMA``) for one model; see :func:`score_predictions`.

    Also logs the table. The result is a small driver-built DataFrame (one row per segment).
    """
    scores = score_predictions(predictions, test, users, model_name, activity_buckets)
    log.info("test metrics of %s:\n%s", model_name, format_summary(scores.rows))
    return scores.to_frame(predictions.sparkSession)


def reconstructions_to_predictions(
    reconstructions: DataFrame,
    test: DataFrame,
    orientation: str,
    column: str = C.RECONSTRUCTION,
) -> DataFrame:
    """Long predictions (``user_idx``, ``item_idx``, ``prediction``) at the test cells only.

    ``reconstructions`` has one row per row idx — ``item_idx`` for ``by_item`` (``user_idx``
    for ``by_user``), or ``row_idx`` — and an array ``column`` over the other side's idx. Test
    cells are grouped by row and joined to the reconstructions (broadcast when small, so the
    wide rows stay where they are); only the test positions are read from each array. A null
    array or one too short gives a null prediction; a row with no reconstruction gives none.
    Both are counted as missing by :func:`score_predictions`.
    """
    if orientation not in C.AE_ROW_KEYS:
        raise ConfigError(f"reconstruction orientation must be by_item or by_user, got {orientation!r}")
    row_idx = C.AE_ROW_KEYS[orientation][1]
    col_idx = C.AE_COLUMN_IDX[orientation]
    cols = reconstructions.columns
    key = row_idx if row_idx in cols else C.ROW_IDX if C.ROW_IDX in cols else None
    if key is None or column not in cols:
        raise InputError(
            f"reconstructions for {orientation} need a {row_idx} (or {C.ROW_IDX}) column and an "
            f"array column {column!r}; found {cols} (set evaluate.reconstruction_column)"
        )
    dtype = reconstructions.schema[column].dataType
    if not isinstance(dtype, T.ArrayType) or not isinstance(dtype.elementType, T.NumericType):
        raise InputError(f"reconstruction column {column!r} must be an array of numbers, got {dtype}")
    cells = test.groupBy(row_idx).agg(F.collect_list(col_idx).alias("_cols"))
    if test.count() <= BROADCAST_TEST_CELLS:
        cells = F.broadcast(cells)
    recon = reconstructions.select(F.col(key).cast("int").alias(row_idx), F.col(column).alias("_recon"))
    picked = F.transform(
        "_cols",
        lambda c: F.struct(
            c.alias(col_idx), F.get(F.col("_recon"), c).cast("double").alias(C.PREDICTION)
        ),
    )
    # Inner join: the broadcast side must be the one not preserved. Test cells whose row has no
    # reconstruction produce no prediction here and are counted as missing when scored.
    return (
        recon.join(cells, row_idx)
        .select(row_idx, F.inline(picked))
        .select(C.USER_IDX, C.ITEM_IDX, C.PREDICTION)
    )


def format_summary(rows: Sequence[dict]) -> str:
    """A fixed-width table of summary rows for logs and terminals."""
    header = (
        f"{'model':<16} {'segment':<20} {'n':>11} {'rmse':>8} {'mae':>8} {'nonfinite':>9} {'missing':>9}"
    )
    lines = [header]
    for r in rows:
        fmt = lambda v: "     n/a" if v is None else f"{v:8.4f}"  # noqa: E731
        lines.append(
            f"{r['model']:<16} {r['segment']:<20} {r['n']:>11,} {fmt(r['rmse'])} {fmt(r['mae'])} "
            f"{r['n_nonfinite']:>9,} {r['n_missing']:>9,}"
        )
    return "\n".join(lines)


def write_summary(
    spark: SparkSession, stage, output: str, summary: DataFrame, models: str | Sequence[str]
) -> None:
    """Stage ``metrics/summary``: the rows already there for other models, plus ``summary``
    (rows of ``models`` are replaced); see :func:`replace_model_rows`."""
    replace_model_rows(spark, stage, output, C.METRICS_SUMMARY, C.SUMMARY_SCHEMA, summary, models)


def write_history(spark: SparkSession, stage, output: str, history: DataFrame, model: str) -> None:
    """Stage ``metrics/history``: other models' rows kept, ``model``'s replaced by ``history``."""
    replace_model_rows(spark, stage, output, C.METRICS_HISTORY, C.HISTORY_SCHEMA, history, model)


def replace_model_rows(
    spark: SparkSession,
    stage,
    output: str,
    name: str,
    schema: T.StructType,
    rows: DataFrame,
    models: str | Sequence[str],
) -> None:
    """Stage dataset ``name`` (a table with a ``model`` column, e.g. ``metrics/summary``):
    the rows already there for other models, plus ``rows``. Rows of ``models`` are replaced.

    The old dataset is read before the stage commits, so the write is atomic with the rest
    of the stage.
    """
    from mfspark.io import HadoopFS, join

    models = [models] if isinstance(models, str) else list(models)
    final = join(output, name)
    combined = rows.select(*schema.names)
    if HadoopFS(spark).exists(final):
        old = spark.read.parquet(final).where(~F.col(C.MODEL).isin(models))
        combined = old.unionByName(combined, allowMissingColumns=True).select(
            *[F.col(f.name).cast(f.dataType) for f in schema.fields]
        )
    stage.write(combined.coalesce(1), name)


def present_models(spark: SparkSession, output: str) -> list[str]:
    """Models with a ``predictions/model=<name>`` partition: registered models first (in
    pipeline order), then any others by name."""
    from mfspark.io import HadoopFS, join
    from mfspark.models.registry import MODELS

    prefix = f"{C.MODEL}="
    found = {
        os.path.basename(p.rstrip("/"))[len(prefix) :]
        for p in HadoopFS(spark).glob(join(output, C.PREDICTIONS, f"{prefix}*"))
    }
    return [m for m in MODELS if m in found] + sorted(found - set(MODELS))


def run_evaluate(cfg, spark: SparkSession) -> dict:
    """The ``evaluate`` stage: score every model's predictions (or one model's, or a
    reconstruction) and replace their rows of ``metrics/summary``."""
    from mfspark.io import (
        HadoopFS,
        join,
        read_manifest,
        require_committed,
        staged_outputs,
        update_manifest,
    )
    from mfspark.prepare import Prepared

    started = time.time()
    out = cfg.output.path
    ev = cfg.evaluate
    activity_segments(ev.activity_buckets)  # fail on a bad config before any Spark work
    prepared = Prepared.load(spark, out)
    fs = HadoopFS(spark)
    sources: dict[str, tuple[str, DataFrame]] = {}
    if ev.reconstruction_path:
        source = ev.reconstruction_path
        if not fs.exists(source):
            raise InputError(f"no reconstructions at {source}; check evaluate.reconstruction_path")
        predictions = reconstructions_to_predictions(
            spark.read.parquet(source),
            prepared.test,
            ev.reconstruction_orientation,
            ev.reconstruction_column,
        )
        sources[ev.model_name or os.path.basename(source.rstrip("/"))] = (source, predictions)
    elif ev.predictions_path:
        source = ev.predictions_path
        if not fs.exists(source):
            raise InputError(f"no predictions at {source}; check evaluate.predictions_path")
        name = ev.model_name or os.path.basename(source.rstrip("/"))
        sources[name] = (source, spark.read.parquet(source))
    else:
        models = present_models(spark, out)
        where = join(out, C.PREDICTIONS)
        if ev.model_name:
            if ev.model_name not in models:
                raise InputError(
                    f"no predictions of model {ev.model_name!r} under {where} (models there: "
                    f"{', '.join(models) or 'none'}); run its train stage or fix evaluate.model_name"
                )
            models = [ev.model_name]
        if not models:
            raise InputError(
                f"no predictions under {where}; run a training job (e.g. jobs/train_als.py) with "
                "the same output.path, or set evaluate.predictions_path / evaluate.reconstruction_path"
            )
        for name in models:
            # Written by a training stage: read only what that stage committed.
            require_committed(spark, out, [C.predictions_dir(name)])
            source = join(out, C.predictions_dir(name))
            sources[name] = (source, spark.read.parquet(source))
    results, frames = {}, []
    for name, (source, predictions) in sources.items():
        log.info("scoring %s as model %r against %s", source, name, join(out, C.PREPARED_TEST))
        scores = score_predictions(predictions, prepared.test, prepared.users, name, ev.activity_buckets)
        log.info("test metrics of %s:\n%s", name, format_summary(scores.rows))
        frames.append(scores.to_frame(spark))
        results[name] = {
            "source": source,
            "n_test": scores.n_test,
            "n_extra_predictions": scores.n_extra_predictions,
            "segments": scores.rows,
        }
    summary = frames[0]
    for frame in frames[1:]:
        summary = summary.unionByName(frame)
    with staged_outputs(spark, out) as stage:
        write_summary(spark, stage, out, summary, list(sources))
    previous = read_manifest(spark, out).get("stages", {}).get("evaluate", {}).get("models", {})
    entry = {"models": {**previous, **results}, "seconds": round(time.time() - started, 3)}
    update_manifest(spark, out, "evaluate", entry, cfg)
    return {"models": results, "seconds": entry["seconds"]}
