"""``jobs/pipeline.py``: every stage in order, one Spark session, a short summary at the end.

Stages (``pipeline.stages``): prepare → train_als → evaluate → build_autoencoder_inputs → report.
Each stage is the same function its own job runs, so ``pipeline`` and the separate jobs
give identical outputs.
"""

from __future__ import annotations

import importlib
import logging
import time

from pyspark.sql import SparkSession

from mfspark import columns as C
from mfspark.config import Config
from mfspark.io import join

log = logging.getLogger(__name__)

STAGE_FUNCTIONS = {
    "prepare": ("mfspark.prepare", "run_prepare"),
    "train_als": ("mfspark.models.als.job", "run_train_als"),
    "evaluate": ("mfspark.evaluation", "run_evaluate"),
    "build_autoencoder_inputs": ("mfspark.autoencoder", "run_build_autoencoder_inputs"),
    "report": ("mfspark.report", "run_report"),
}


def stage_function(name: str):
    module, fn = STAGE_FUNCTIONS[name]
    return getattr(importlib.import_module(module), fn)


def preflight_pipeline(cfg: Config) -> None:
    """Checks that need no Spark (a missing input path fails before the JVM starts)."""
    if "prepare" in cfg.pipeline.stages:
        from mfspark.prepare import preflight_prepare

        preflight_prepare(cfg)
    if "report" in cfg.pipeline.stages:
        from mfspark.report import preflight_report

        preflight_report(cfg)


def run_pipeline(cfg: Config, spark: SparkSession) -> dict:
    started = time.time()
    results = {}
    for name in cfg.pipeline.stages:
        t = time.time()
        log.info("stage %s: starting", name)
        results[name] = stage_function(name)(cfg, spark)
        log.info("stage %s: done in %.1f s", name, time.time() - t)
    print(summary_text(cfg, spark, results, time.time() - started))
    return results


def summary_text(cfg: Config, spark: SparkSession, results: dict, seconds: float) -> str:
    """The human-readable end of a pipeline run."""
    out = cfg.output.path
    lines = ["", f"mfspark pipeline finished in {seconds:.1f} s; outputs under {out}/"]
    prep = results.get("prepare")
    if prep:
        c = prep["counts"]
        lines.append(
            f"  data     {c['valid']:,} ratings, {c['users']:,} users x {c['items']:,} items "
            f"({prep['format']}); train {c['train']:,}, test {c['test']:,} "
            f"(cold user {c['test_cold_user']:,}, cold item {c['test_cold_item']:,}); "
            f"rejected {c['rejected']:,}"
        )
    train = results.get("train_als")
    if train:
        t = train["timings"]
        lines.append(
            f"  ALS      rank {cfg.als.rank}, {train['iterations']} iterations, "
            f"{t['median_seconds_per_iteration']:.2f} s/iteration, fit {t['fit_seconds']:.1f} s; "
            f"train RMSE {train['train_rmse']:.4f}"
        )
    if "train_als" in results or "evaluate" in results:
        from mfspark.evaluation import BASE_SEGMENTS, activity_segments, format_summary

        order = [
            *BASE_SEGMENTS,
            *(name for name, _, _ in activity_segments(cfg.evaluate.activity_buckets)),
        ]
        rank = {name: i for i, name in enumerate(order)}
        rows = [r.asDict() for r in spark.read.parquet(join(out, C.METRICS_SUMMARY)).collect()]
        rows.sort(key=lambda r: (r["model"], rank.get(r["segment"], len(rank)), r["segment"]))
        lines += ["  test metrics (held-out ratings only):"]
        lines += ["    " + line for line in format_summary(rows).splitlines()]
    ae = results.get("build_autoencoder_inputs")
    if ae:
        built = ", ".join(cfg.autoencoder.orientations)
        lines.append(f"  AE       inputs under {join(out, 'ae_inputs')}/ ({built})")
    report = results.get("report")
    if report:
        lines.append(f"  report   {report['html']} (and {report['markdown']})")
    return "\n".join(lines)
