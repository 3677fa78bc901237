"""The ``report`` stage: one self-contained HTML page and a Markdown summary of a run.

Reads whatever an output directory holds — ``prepared/*``, ``metrics/history``,
``metrics/summary``, ``predictions``, ``metrics/ranking``, ``recommendations``, ``benchmark``,
``manifest.json`` — as small aggregates (:mod:`mfspark.report.collect`), and writes
``report/index.html`` and ``report/summary.md``. Models are whatever the metrics name; nothing
here knows a model by name. A stage whose results are missing is named in the report ("train_bpmf
did not run: no metrics for bpmf"); it is never an error. Without matplotlib the report has
its tables and a note saying how to get the plots.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import time
from typing import Any

from pyspark.sql import SparkSession

from mfspark import columns as C
from mfspark.config import Config
from mfspark.errors import InputError
from mfspark.io import HadoopFS, join, read_manifest, staged_outputs, update_manifest
from mfspark.report import collect, plots
from mfspark.report.document import (
    Details,
    Figure,
    Note,
    Row,
    Section,
    Table,
    fmt_float,
    fmt_int,
    fmt_pct,
    render_html,
    render_markdown,
)

log = logging.getLogger(__name__)

REPORT_DIR = "report"
INDEX_HTML = "index.html"
SUMMARY_MD = "summary.md"
TRAIN_PREFIX = "train_"
# What each stage leaves behind, for "<stage> did not run: <what is missing>".
STAGE_OUTPUTS = {
    "prepare": f"no {C.PREPARED_TRAIN}",
    "evaluate": f"no {C.METRICS_SUMMARY}",
    "build_autoencoder_inputs": "no ae_inputs/",
    "recommend": f"no {collect.RECOMMENDATIONS}/ or {collect.METRICS_RANKING}",
    "benchmark": f"no {C.BENCHMARK}/",
}


# ---------------------------------------------------------------------------------------------
# Stages: which ran, which did not


def train_stage_model(stage: str, manifest: dict) -> str:
    """The model a ``train_<model>`` stage writes: as its manifest entry records, else its name."""
    entry = manifest.get("stages", {}).get(stage, {})
    model = entry.get("model") if isinstance(entry, dict) else None
    return model if isinstance(model, str) else stage[len(TRAIN_PREFIX) :]


def stage_status(
    cfg: Config, manifest: dict, models_with_metrics: set[str], outputs: dict[str, bool]
) -> list[tuple[str, bool, str]]:
    """(stage, ran, why not) for the configured stages and every stage the manifest records."""
    recorded = manifest.get("stages", {})
    stages = [s for s in cfg.pipeline.stages if s != "report"]
    stages += [s for s in recorded if s not in stages and s != "report"]
    out = []
    for stage in stages:
        if stage.startswith(TRAIN_PREFIX):
            model = train_stage_model(stage, manifest)
            ran = model in models_with_metrics
            why = f"no metrics for {model}"
        else:
            ran = stage in recorded and outputs.get(stage, True)
            why = STAGE_OUTPUTS.get(stage, "not recorded in manifest.json")
        out.append((stage, ran, "" if ran else why))
    return out


# ---------------------------------------------------------------------------------------------
# Segment order


def segment_order(segments: set[str]) -> list[str]:
    """all, warm, cold_user, cold_item, then activity buckets by their lower edge, then the rest."""
    from mfspark.evaluation import BASE_SEGMENTS

    def key(s: str):
        if s in BASE_SEGMENTS:
            return (0, BASE_SEGMENTS.index(s), s)
        m = re.fullmatch(r"activity_(\d+)_.*", s)
        if m:
            return (1, int(m.group(1)), s)
        return (2, 0, s)

    return sorted(segments, key=key)


# ---------------------------------------------------------------------------------------------
# Sections


class Builder:
    """Collects the aggregates and assembles the report's sections."""

    def __init__(self, spark: SparkSession, cfg: Config, out: str, with_plots: bool):
        self.spark, self.cfg, self.out, self.with_plots = spark, cfg, out, with_plots
        self.fs = HadoopFS(spark)
        self.manifest = read_manifest(spark, out)
        self.history = collect.small_table(spark, out, C.METRICS_HISTORY)
        self.summary = collect.small_table(spark, out, C.METRICS_SUMMARY)
        self.ranking = collect.small_table(spark, out, collect.METRICS_RANKING)
        self.benchmark = collect.small_table(spark, out, C.BENCHMARK)
        self.predictions = collect.prediction_sets(spark, out)
        models = {r["model"] for r in (self.history or []) + (self.summary or []) + (self.ranking or [])}
        self.models = sorted(models | set(self.predictions))
        self.colors = plots.model_colors(self.models) if with_plots else {}
        outputs = {
            "prepare": self.fs.exists(join(out, C.PREPARED_TRAIN)),
            "evaluate": self.summary is not None,
            "build_autoencoder_inputs": self.fs.exists(join(out, "ae_inputs")),
            "recommend": self.ranking is not None
            or bool(collect.partitions(spark, out, collect.RECOMMENDATIONS)),
            "benchmark": self.benchmark is not None,
        }
        with_metrics = {r["model"] for r in (self.history or []) + (self.summary or [])}
        self.stages = stage_status(cfg, self.manifest, with_metrics, outputs)
        self.expected = {s for s, _, _ in self.stages}
        self.not_run = {s: why for s, ran, why in self.stages if not ran}
        self.facts: collect.DataFacts | None = None

    # -- helpers ----------------------------------------------------------------------------

    def figure(self, fig_id: str, caption: str, draw, *args) -> list:
        if not self.with_plots:
            return []
        return [Figure(fig_id, caption, draw(*args))]

    def missing(self, stage: str, fallback: str) -> Note:
        """A "<stage> did not run: <why>" note when the stage was expected, else ``fallback``."""
        if stage in self.not_run:
            return Note(f"{stage} did not run: {self.not_run[stage]} under {self.out}.", "missing")
        return Note(fallback)

    # -- data -------------------------------------------------------------------------------

    def data_section(self) -> Section:
        s = Section("data", "Data")
        facts = self.facts = collect.data_facts(self.spark, self.out)
        if facts is None:
            s.blocks.append(
                Note(
                    f"prepare did not run: no prepared dataset ({C.PREPARED_TRAIN}) under {self.out}.",
                    "missing",
                )
            )
            return s
        rejected_total = sum(n for _, n in facts.rejected or [])
        rows = [
            ["ratings (valid)", fmt_int(facts.n_ratings)],
            ["train ratings", fmt_int(facts.n_train)],
            ["test ratings (held out)", fmt_int(facts.n_test)],
            ["users", fmt_int(facts.n_users)],
            ["items", fmt_int(facts.n_items)],
            ["density (ratings / users·items)", fmt_pct(facts.density, 3)],
            ["sparsity", fmt_pct(1 - facts.density, 3)],
            ["test ratings of cold users (no train rating)", fmt_int(facts.test_cold_user)],
            ["test ratings of cold items (no train rating)", fmt_int(facts.test_cold_item)],
            ["rejected input rows", fmt_int(rejected_total) if facts.rejected is not None else "n/a"],
        ]
        s.blocks.append(Table("tbl-data-counts", "Dataset", ["quantity", "value"], rows, ("value",)))
        if facts.rejected:
            total_in = facts.n_ratings + rejected_total
            s.blocks.append(
                Table(
                    "tbl-rejected",
                    "Rejected input rows by reason (quarantined in prepared/rejected)",
                    ["reason", "rows", "share of input"],
                    [[r, fmt_int(n), fmt_pct(n / total_in, 3)] for r, n in facts.rejected],
                    ("rows", "share of input"),
                )
            )
        elif facts.rejected is not None:
            s.blocks.append(Note("No input row was rejected."))
        exact = all(lo == hi for lo, hi, _, _ in facts.rating_hist)
        s.blocks += self.figure(
            "fig-ratings",
            "Number of ratings per rating value, train (blue) and test (orange) stacked.",
            plots.rating_histogram,
            facts.rating_hist,
        )
        label = (lambda lo, hi: f"{lo:g}") if exact else (lambda lo, hi: f"{lo:.3g}–{hi:.3g}")
        s.blocks.append(
            Table(
                "tbl-ratings",
                "Ratings by value",
                ["rating", "train", "test", "share"],
                [
                    [
                        label(lo, hi),
                        fmt_int(tr),
                        fmt_int(te),
                        fmt_pct((tr + te) / max(1, facts.n_ratings)),
                    ]
                    for lo, hi, tr, te in facts.rating_hist
                ],
                ("train", "test", "share"),
            )
        )
        s.blocks += self.figure(
            "fig-activity",
            "How many train ratings each user gives and each item receives, log–log: the height is "
            "the number of users (items) with a given count, averaged over log-spaced bins; dashed: "
            "median. A long tail to the right means a few heavy users / blockbuster items.",
            plots.activity,
            facts.users,
            facts.items,
        )
        act_rows = []
        for act in (facts.users, facts.items):
            act_rows.append(
                [
                    act.side,
                    fmt_int(act.n_active),
                    fmt_int(act.n_zero),
                    fmt_int(act.levels[0][0] if act.levels else None),
                    fmt_int(act.quantile(0.5)),
                    fmt_int(act.quantile(0.9)),
                    fmt_int(act.quantile(0.99)),
                    fmt_int(act.levels[-1][0] if act.levels else None),
                    fmt_float(act.mean, 1),
                ]
            )
        cols = ["side", "with train ratings", "test only", "min", "median", "p90", "p99", "max", "mean"]
        s.blocks.append(
            Table("tbl-activity", "Train ratings per user / per item", cols, act_rows, tuple(cols[1:]))
        )
        return s

    # -- training ---------------------------------------------------------------------------

    def training_section(self) -> Section:
        s = Section("training", "Training")
        train_notes = [
            Note(f"{stage} did not run: {why} under {self.out}.", "missing")
            for stage, why in self.not_run.items()
            if stage.startswith(TRAIN_PREFIX)
        ]
        if not self.history:
            s.blocks.append(
                Note(
                    f"No iterative model recorded its training: no {C.METRICS_HISTORY} "
                    f"under {self.out}.",
                    "missing",
                )
            )
            s.blocks += train_notes
            return s
        s.blocks += self.figure(
            "fig-history",
            "RMSE after each iteration (ALS) or sweep (samplers), on train and on the held-out "
            "test ratings. A sampler's test RMSE is that of one draw during burn-in and of the "
            "running posterior mean after it, hence the drop where burn-in ends.",
            plots.history,
            self.history,
            self.colors,
        )
        rows = []
        for m in sorted({h["model"] for h in self.history}):
            hs = sorted((h for h in self.history if h["model"] == m), key=lambda h: h["iteration"])
            tests = [(h["test_rmse"], h["iteration"]) for h in hs if h["test_rmse"] is not None]
            best = min(tests) if tests else (None, None)
            secs = sorted(h["seconds"] for h in hs if h["seconds"] is not None)
            rows.append(
                [
                    m,
                    fmt_int(len(hs)),
                    fmt_float(hs[-1]["train_rmse"]),
                    fmt_float(hs[-1]["test_rmse"]),
                    fmt_float(best[0]),
                    fmt_int(best[1]),
                    fmt_float(secs[len(secs) // 2] if secs else None, 2),
                    fmt_float(sum(secs), 1),
                ]
            )
        cols = [
            "model",
            "iterations",
            "final train RMSE",
            "final test RMSE",
            "best test RMSE",
            "at iteration",
            "median s / iteration",
            "total s",
        ]
        s.blocks.append(
            Table("tbl-history", "Training per model (metrics/history)", cols, rows, tuple(cols[1:]))
        )
        s.blocks += train_notes
        return s

    # -- evaluation -------------------------------------------------------------------------

    def evaluation_section(self) -> Section:
        s = Section("evaluation", "Evaluation")
        if not self.summary:
            why = self.not_run.get("evaluate", f"no {C.METRICS_SUMMARY}")
            s.blocks.append(Note(f"evaluate did not run: {why} under {self.out}.", "missing"))
            return s
        order = segment_order({r["segment"] for r in self.summary})
        n_by_segment = {}
        for r in self.summary:
            n_by_segment[r["segment"]] = max(n_by_segment.get(r["segment"], 0), int(r["n"]))
        shown = [seg for seg in order if n_by_segment.get(seg, 0) > 0]
        empty = [seg for seg in order if seg not in shown]
        s.blocks += self.figure(
            "fig-segments",
            "Test RMSE and MAE of every model per segment: warm = user and item both seen in training; "
            "cold_user / cold_item = no train rating; activity_a_b = users with a to b train ratings.",
            plots.segments,
            self.summary,
            shown,
            n_by_segment,
            self.colors,
        )
        if empty:
            s.blocks.append(
                Note("Segments without test ratings (not plotted): " + ", ".join(empty) + ".")
            )
        rank = {seg: i for i, seg in enumerate(order)}
        rows = sorted(self.summary, key=lambda r: (r["model"], rank[r["segment"]]))
        cols = ["model", "segment", "n", "rmse", "mae", "n_nonfinite", "n_missing"]
        s.blocks.append(
            Table(
                "tbl-summary",
                "Test metrics per model and segment (metrics/summary)",
                cols,
                [
                    [
                        r["model"],
                        r["segment"],
                        fmt_int(r["n"]),
                        fmt_float(r["rmse"]),
                        fmt_float(r["mae"]),
                        fmt_int(r.get("n_nonfinite")),
                        fmt_int(r.get("n_missing")),
                    ]
                    for r in rows
                ],
                ("n", "rmse", "mae", "n_nonfinite", "n_missing"),
            )
        )
        return s

    def calibration_section(self) -> Section | None:
        calibs = [
            c
            for m, path in sorted(self.predictions.items())
            if (c := collect.calibration(self.spark, m, path)) is not None
        ]
        if not calibs:
            return None
        s = Section("calibration", "Predictive intervals")
        s.blocks.append(
            Note(
                "For models that predict a standard deviation (prediction_sd), the share of held-out "
                "ratings inside prediction ± z·sd, against the share a normal predictive distribution "
                "promises. Points below the diagonal: intervals too narrow (over-confident); "
                "above: too wide."
            )
        )
        s.blocks += self.figure(
            "fig-calibration",
            "Coverage of predictive intervals.",
            plots.calibration,
            calibs,
            self.colors,
        )
        rows = [
            [c.model, f"±{z:g} sd", fmt_pct(nom), fmt_pct(obs), fmt_int(c.n), fmt_float(c.mean_sd, 3)]
            for c in calibs
            for z, nom, obs in c.coverage
        ]
        cols = ["model", "interval", "nominal", "observed", "test ratings", "mean sd"]
        s.blocks.append(Table("tbl-calibration", "Interval coverage", cols, rows, tuple(cols[2:])))
        for c in calibs:
            if c.n < c.n_total:
                s.blocks.append(
                    Note(
                        f"{c.model}: {c.n_total - c.n:,} of {c.n_total:,} predictions have no "
                        "usable sd.",
                        "warning",
                    )
                )
        return s

    # -- ranking, recommendations, benchmark ------------------------------------------------

    def ranking_section(self) -> Section:
        s = Section("ranking", "Ranking")
        if not self.ranking:
            s.blocks.append(
                self.missing(
                    "recommend", "No ranking metrics in this output (metrics/ranking is absent)."
                )
            )
            return s
        s.blocks += self.figure(
            "fig-ranking",
            "Top-k ranking metrics per model (higher is better): one bar per model and metric "
            "when one list length k was scored, else each metric against k.",
            plots.ranking,
            self.ranking,
            self.colors,
        )
        rows = sorted(self.ranking, key=lambda r: (r["metric"], r["model"], r["k"]))
        cols = ["model", "metric", "k", "value", "users"]
        s.blocks.append(
            Table(
                "tbl-ranking",
                "Ranking metrics (metrics/ranking)",
                cols,
                [
                    [
                        r["model"],
                        r["metric"],
                        fmt_int(r["k"]),
                        fmt_float(r["value"]),
                        fmt_int(r.get("n_users")),
                    ]
                    for r in rows
                ],
                ("k", "value", "users"),
            )
        )
        return s

    def items_path(self) -> str:
        """``data.items_path`` of this run, else the one the prepare stage recorded."""
        if self.cfg.data.items_path:
            return self.cfg.data.items_path
        recorded = self.manifest.get("stages", {}).get("prepare", {}).get("config", {})
        return recorded.get("data", {}).get("items_path", "") or ""

    def recommendations_section(self) -> Section:
        from mfspark.report.items import item_titles

        s = Section("recommendations", "Sample recommendations")
        recs = collect.recommendations(self.spark, self.out)
        if recs is None:
            s.blocks.append(
                self.missing(
                    "recommend", "No recommendations in this output (recommendations/ is absent)."
                )
            )
            return s
        path = self.items_path()
        ids = [r[C.ITEM_ID] for r in recs.rows] + [r[C.ITEM_ID] for r in recs.liked]
        titles = item_titles(self.spark, path, ids) if path else {}
        if not path:
            s.blocks.append(
                Note(
                    "Set data.items_path (a MovieLens u.item, movies.dat or movies.csv) to see "
                    "item titles."
                )
            )
        elif not titles:
            s.blocks.append(
                Note(f"No item of these lists was found in {path}; titles are not shown.", "warning")
            )
        title = lambda item: titles.get(str(item), "")  # noqa: E731
        with_titles = bool(titles)
        tables = []
        if recs.liked:
            cols = ["user_id", "item_id", *(["title"] if with_titles else []), "rating"]
            rows = [
                [
                    str(r[C.USER_ID]),
                    str(r[C.ITEM_ID]),
                    *([title(r[C.ITEM_ID])] if with_titles else []),
                    f"{r[C.RATING]:g}",
                ]
                for r in recs.liked
            ]
            tables.append(
                Table(
                    "tbl-liked",
                    "What these users rated highest in training (top 5)",
                    cols,
                    rows,
                    ("rating",),
                )
            )
        for model in sorted({r["model"] for r in recs.rows}):
            picked = [r for r in recs.rows if r["model"] == model]
            # Popularity scores are counts: shown as integers, model scores as predicted ratings.
            counts = all(float(r["score"]).is_integer() for r in picked)
            cols = ["user_id", "rank", "item_id", *(["title"] if with_titles else []), "score"]
            rows = [
                [
                    str(r[C.USER_ID]),
                    fmt_int(r["rank"]),
                    str(r[C.ITEM_ID]),
                    *([title(r[C.ITEM_ID])] if with_titles else []),
                    fmt_int(r["score"]) if counts else fmt_float(r["score"], 3),
                ]
                for r in picked
            ]
            tables.append(
                Table(
                    f"tbl-recs-{_slug(model)}",
                    f"Top recommendations of {model}",
                    cols,
                    rows,
                    ("rank", "score"),
                )
            )
        s.blocks.append(Row(tables))  # side by side: one user's lists line up across models
        return s

    def benchmark_section(self) -> Section:
        s = Section("benchmark", "Benchmark")
        if not self.benchmark:
            s.blocks.append(
                Note(
                    f"No benchmark results under {self.out} (jobs/benchmark.py with this "
                    "output.path adds them)."
                )
            )
            return s
        rows = self.benchmark
        first = rows[0]
        s.blocks.append(
            Note(
                f"Every system trained on the same split: {first['n_train']:,} train and "
                f"{first['n_test']:,} test "
                f"ratings, rank {first['rank']}, Spark master {first['master']}."
            )
        )
        s.blocks += self.figure(
            "fig-benchmark",
            "Seconds per iteration (median) and test RMSE of each system on the same data.",
            plots.benchmark,
            rows,
        )
        cols = [
            "system",
            "reg",
            "scaling",
            "iterations",
            "setup s",
            "s / iteration",
            "fit s",
            "peak MB",
            "test RMSE",
        ]
        table_rows = [
            [
                r["system"],
                fmt_float(r.get("reg"), 4),
                r.get("reg_scaling") or "",
                fmt_int(r.get("iterations")),
                fmt_float(r.get("setup_seconds"), 2),
                fmt_float(r.get("seconds_per_iteration"), 3),
                fmt_float(r.get("fit_seconds"), 1),
                fmt_float(r.get("peak_memory_mb"), 0),
                fmt_float(r.get("test_rmse")),
            ]
            for r in rows
        ]
        s.blocks.append(
            Table("tbl-benchmark", "Benchmark (benchmark/)", cols, table_rows, tuple(cols[3:]))
        )
        refs = [
            (name, first.get(key))
            for key, name in (
                ("planted_truth_test_rmse", "planted truth"),
                ("oracle_floor_test_rmse", "oracle floor"),
            )
            if first.get(key) is not None
        ]
        if refs:
            s.blocks.append(
                Note("Reference test RMSE: " + "; ".join(f"{n} {v:.4f}" for n, v in refs) + ".")
            )
        return s

    # -- run --------------------------------------------------------------------------------

    def run_section(self) -> Section:
        s = Section("run", "Run configuration")
        recorded = self.manifest.get("stages", {})
        rows = []
        for stage, ran, why in self.stages:
            entry = recorded.get(stage, {}) if isinstance(recorded.get(stage), dict) else {}
            timings = entry.get("timings", {}) if isinstance(entry.get("timings"), dict) else {}
            secs = timings.get("total_seconds", entry.get("seconds"))
            rows.append(
                [
                    stage,
                    "ran" if ran else f"did not run: {why}",
                    entry.get("finished_at", ""),
                    fmt_float(secs, 1) if isinstance(secs, (int, float)) else "",
                ]
            )
        s.blocks.append(
            Table(
                "tbl-stages", "Stages", ["stage", "status", "finished at", "seconds"], rows, ("seconds",)
            )
        )
        versions = self.manifest.get("versions", {})
        if versions:
            s.blocks.append(
                Table(
                    "tbl-versions",
                    "Versions",
                    ["package", "version"],
                    [[k, str(v)] for k, v in versions.items()],
                )
            )
        changed = non_default_settings(recorded)
        if changed:
            s.blocks.append(
                Table(
                    "tbl-config",
                    "Settings that differ from the defaults (as each stage ran)",
                    ["key", "value", "stages"],
                    [[k, v, ", ".join(st)] for k, v, st in changed],
                )
            )
        elif recorded:
            s.blocks.append(Note("Every stage ran with the default settings."))
        if not recorded:
            s.blocks.append(
                Note(
                    f"No manifest.json under {self.out}: no stage recorded its configuration.", "missing"
                )
            )
        s.blocks.append(
            Details(
                "Full configuration of this report run",
                [
                    Table(
                        "tbl-config-full",
                        "Configuration",
                        ["key", "value"],
                        [[k, v] for k, v in flat_config(self.cfg.to_dict())],
                    )
                ],
            )
        )
        return s

    # -- all --------------------------------------------------------------------------------

    def sections(self) -> list[Section]:
        out = []
        for build in (
            self.data_section,
            self.training_section,
            self.evaluation_section,
            self.calibration_section,
            self.ranking_section,
            self.recommendations_section,
            self.benchmark_section,
            self.run_section,
        ):
            t = time.time()
            section = build()
            log.info("report: %s in %.1f s", build.__name__, time.time() - t)
            if section is not None:
                out.append(section)
        if not self.with_plots:
            out[0].blocks.insert(
                0,
                Note(
                    f"Plots are left out: matplotlib is not installed. Install it with "
                    f"{plots.INSTALL_HINT}.",
                    "warning",
                ),
            )
        return out

    def header(self) -> tuple[list[str], list[tuple[str, str]]]:
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        version = self.manifest.get("versions", {}).get("mfspark", "")
        meta = [f"Output {self.out} · generated {now}" + (f" · mfspark {version}" if version else "")]
        ran = [s for s, ok, _ in self.stages if ok]
        if ran:
            meta.append("Stages run: " + ", ".join(ran))
        if self.not_run:
            meta.append("Did not run: " + "; ".join(f"{s} ({why})" for s, why in self.not_run.items()))
        glance = []
        f = self.facts
        if f is not None:
            glance += [
                (fmt_int(f.n_ratings), "ratings"),
                (f"{f.n_users:,} × {f.n_items:,}", "users × items"),
                (fmt_pct(f.density, 2), "density"),
            ]
        overall = [r for r in self.summary or [] if r["segment"] == "all" and r["rmse"] is not None]
        if overall:
            best = min(overall, key=lambda r: r["rmse"])
            glance.append((fmt_float(best["rmse"]), f"best test RMSE ({best['model']})"))
        if self.models:
            noun = "model" if len(self.models) == 1 else "models"
            glance.append((str(len(self.models)), f"{noun}: " + ", ".join(self.models)))
        return meta, glance


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name)


def flat_config(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not (prefix == "spark." and k == "conf"):
            out += flat_config(v, f"{key}.")
        else:
            out.append((key, _literal(v)))
    return out


def _literal(value: Any) -> str:
    from mfspark.config import _toml_literal

    return _toml_literal(value)


def non_default_settings(stages: dict) -> list[tuple[str, str, list[str]]]:
    """(key, value, stages) for every setting a recorded stage ran with that is not the default."""
    defaults = dict(flat_config(Config().to_dict()))
    found: dict[tuple[str, str], list[str]] = {}
    for stage, entry in stages.items():
        cfg = entry.get("config") if isinstance(entry, dict) else None
        if not isinstance(cfg, dict):
            continue
        for key, value in flat_config(cfg):
            if defaults.get(key) != value:
                found.setdefault((key, value), []).append(stage)
    return [(k, v, st) for (k, v), st in sorted(found.items())]


# ---------------------------------------------------------------------------------------------
# The stage


def preflight_report(cfg: Config, earlier_stages: tuple = ()) -> None:
    """Checks before Spark starts: the item file, when one is given."""
    from mfspark.report.items import preflight_items

    preflight_items(cfg.data.items_path)


def build_report(
    spark: SparkSession, cfg: Config, out: str, with_plots: bool
) -> tuple[str, str, list[Section]]:
    """(index.html text, summary.md text, sections) of the output directory ``out``."""
    t = time.time()
    b = Builder(spark, cfg, out, with_plots)
    log.info("report: metric tables read in %.1f s", time.time() - t)
    sections = b.sections()
    meta, glance = b.header()
    title = "mfspark run report"
    return (
        render_html(title, meta, glance, sections),
        render_markdown(title, meta, glance, sections),
        sections,
    )


def run_report(cfg: Config, spark: SparkSession) -> dict:
    """The ``report`` stage: write ``report/index.html`` and ``report/summary.md`` under output.path."""
    started = time.time()
    out = cfg.output.path
    fs = HadoopFS(spark)
    if not fs.exists(out):
        raise InputError(f"no output directory at {out}; run jobs/pipeline.py first or set output.path")
    with_plots = plots.available()
    if not with_plots:
        log.warning(
            "matplotlib is not installed: the report has tables only; install it with %s",
            plots.INSTALL_HINT,
        )
    page, markdown, sections = build_report(spark, cfg, out, with_plots)
    with staged_outputs(spark, out, stage="report") as stage:
        folder = stage.path(REPORT_DIR)
        fs.write_text(join(folder, INDEX_HTML), page)
        fs.write_text(join(folder, SUMMARY_MD), markdown)
        fs.create_text(join(folder, "_SUCCESS"), "")  # complete, as Spark marks its datasets
    seconds = time.time() - started
    entry = {
        "html": join(out, REPORT_DIR, INDEX_HTML),
        "markdown": join(out, REPORT_DIR, SUMMARY_MD),
        "sections": [s.id for s in sections],
        "plots": with_plots,
        "html_bytes": len(page.encode("utf-8")),
        "seconds": round(seconds, 3),
    }
    update_manifest(spark, out, "report", entry, cfg)
    log.info("report written to %s (%.1f s)", entry["html"], seconds)
    return entry
