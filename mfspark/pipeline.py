"""The ``pipeline`` job: every stage in order, one Spark session, a short summary at the end.

Stages (``pipeline.stages``; by default prepare → train_als → train_bpmf →
build_autoencoder_inputs → evaluate → recommend → report) are the jobs of
:data:`mfspark.jobs.JOBS` marked as stages (``train_autorec`` may be added after
``build_autoencoder_inputs``), and each stage is the same function its own job runs, so
``pipeline`` and the separate jobs give identical outputs. Models report through
:mod:`mfspark.models.registry`: a new model adds no code here.
"""

from __future__ import annotations

import logging
import time

from pyspark.sql import SparkSession

from mfspark import columns as C
from mfspark import jobs
from mfspark.config import Config
from mfspark.io import join

log = logging.getLogger(__name__)


def stage_function(name: str):
    """The function the stage ``name`` runs: the same one as its own job (``mfspark.jobs``)."""
    return jobs.run_function(name)


def preflight_pipeline(cfg: Config) -> None:
    """Checks that need no Spark (a missing input path fails before the JVM starts)."""
    stages = list(cfg.pipeline.stages)
    for i, name in enumerate(stages):
        check = jobs.preflight_function(name)
        if check is not None:
            check(cfg, earlier_stages=tuple(stages[:i]))


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
    trained = [e for e in results.values() if isinstance(e, dict) and "summary" in e and "model" in e]
    for entry in trained:
        lines.append(f"  {entry['model']:<8} {entry['summary']}")
    if trained or "evaluate" in results:
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
    rec = results.get("recommend")
    if rec:
        from mfspark.recommend import format_ranking

        rows = [
            {"model": name, "k": rec["k"], "metric": metric, "value": value}
            for name, info in rec["models"].items()
            for metric, value in info.get("metrics", {}).items()
        ]
        listed = ", ".join(rec["models"])
        lines.append(f"  top-{rec['k']}  lists for {listed} under {join(out, C.RECOMMENDATIONS)}/")
        if rows:
            lines += ["    " + line for line in format_ranking(rows).splitlines()]
    ae = results.get("build_autoencoder_inputs")
    if ae:
        built = ", ".join(cfg.autoencoder.orientations)
        lines.append(f"  AE       inputs under {join(out, 'ae_inputs')}/ ({built})")
    report = results.get("report")
    if report:
        lines.append(f"  report   {report['html']} (and {report['markdown']})")
    return "\n".join(lines)
