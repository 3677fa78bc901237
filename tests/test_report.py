"""The report stage: every section present in the outputs has its plot and table, the numbers in
the tables equal the datasets they come from (checked against pandas/numpy reads of the Parquet
files), the page is self-contained, and missing stages are named, not errors.

The outputs are a real pipeline run (prepare → train_als → evaluate → report) on small synthetic
data, plus datasets of the multi-model layout written here: a second model ``bpmf`` with
predictive standard deviations, ranking metrics, recommendations, benchmark results and a
MovieLens-style item file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from mfspark import columns as C
from mfspark.config import PipelineConfig, load_config
from mfspark.report import collect
from mfspark.report.job import run_report, stage_status

SMALL = [
    "spark.master=local[2]",
    "synthetic.n_users=120",
    "synthetic.n_items=80",
    "synthetic.n_ratings=3000",
    "synthetic.min_user_ratings=5",
    "split.test_fraction=0.2",
    "als.max_iter=3",
    "als.num_user_blocks=2",
    "als.num_item_blocks=2",
]


class Page(HTMLParser):
    """Sections of the page: for each <section id>, its figures (with an <svg>) and tables (cells)."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.section = None
        self.figure = None
        self.tables: dict[str, list[list[str]]] = {}
        self.table = None
        self.row = None
        self.cell = None
        self.notes: list[tuple[str, str]] = []
        self.note = None
        self.attrs: list[tuple[str, str, str]] = []  # (tag, name, value) of every attribute

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag == "section":
            self.section = a["id"]
            self.sections[self.section] = {"figures": [], "tables": []}
        elif tag == "figure":
            self.figure = a["id"]
        elif tag == "svg" and self.figure is not None:
            self.sections[self.section]["figures"].append(self.figure)
        elif tag == "table":
            self.table = a["id"]
            self.tables[self.table] = []
            if self.section is not None:
                self.sections[self.section]["tables"].append(self.table)
        elif tag == "tr" and self.table is not None:
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.cell = ""
        elif tag == "p":
            self.note = [a.get("class", ""), ""]

    def handle_endtag(self, tag):
        if tag == "figure":
            self.figure = None
        elif tag in ("td", "th") and self.cell is not None:
            self.row.append(self.cell.strip())
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.tables[self.table].append(self.row)
            self.row = None
        elif tag == "table":
            self.table = None
        elif tag == "p" and self.note is not None:
            self.notes.append(tuple(self.note))
            self.note = None
        elif tag == "section":
            self.section = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data
        if self.note is not None:
            self.note[1] += data

    def rows(self, table_id: str) -> list[dict]:
        header, *body = self.tables[table_id]
        return [dict(zip(header, r, strict=True)) for r in body]


def parse(path: str) -> Page:
    page = Page()
    with open(path, encoding="utf-8") as f:
        page.feed(f.read())
    return page


def num(text: str) -> float:
    return float(text.replace(",", "").rstrip("%"))


def _cfg(out, *extra):
    return load_config(None, [f"output.path={out}", *SMALL, *extra])


def _write_extras(spark, out: str, items_file: str) -> dict:
    """Datasets of the multi-model layout that no stage of this checkout writes yet."""
    from mfspark.benchmark import BENCHMARK_SCHEMA
    from mfspark.evaluation import score_predictions

    test = pd.read_parquet(os.path.join(out, C.PREPARED_TEST))
    # predictions/ as the per-model layout: ALS's set moves under model=<name>.
    als_name = pd.read_parquet(os.path.join(out, C.METRICS_SUMMARY))["model"].iloc[0]
    flat = os.path.join(out, C.PREDICTIONS)
    moved = os.path.join(out, "_als_predictions")
    shutil.move(flat, moved)
    os.makedirs(flat)
    shutil.move(moved, os.path.join(flat, f"model={als_name}"))

    rng = np.random.default_rng(7)
    sd = np.full(len(test), 0.8)
    sd[:5] = np.nan  # no usable sd: left out of the coverage and counted in a warning
    bpmf = test[
        [C.USER_ID, C.ITEM_ID, C.USER_IDX, C.ITEM_IDX, C.RATING, C.COLD_USER, C.COLD_ITEM]
    ].copy()
    bpmf[C.PREDICTION] = bpmf[C.RATING] + rng.normal(0, 0.8, len(bpmf))
    bpmf[collect.PREDICTION_SD] = sd
    os.makedirs(os.path.join(flat, "model=bpmf"))
    bpmf.to_parquet(os.path.join(flat, "model=bpmf", "part-0.parquet"), index=False)

    # bpmf's rows of metrics/summary (scored as the evaluate stage scores) and its history.
    scores = score_predictions(
        spark.createDataFrame(bpmf.drop(columns=[collect.PREDICTION_SD])),
        spark.read.parquet(os.path.join(out, C.PREPARED_TEST)),
        spark.read.parquet(os.path.join(out, C.PREPARED_USERS)),
        "bpmf",
    )
    summary = pd.concat(
        [pd.read_parquet(os.path.join(out, C.METRICS_SUMMARY)), pd.DataFrame(scores.rows)],
        ignore_index=True,
    )
    shutil.rmtree(os.path.join(out, C.METRICS_SUMMARY))
    os.makedirs(os.path.join(out, C.METRICS_SUMMARY))
    summary.to_parquet(os.path.join(out, C.METRICS_SUMMARY, "part-0.parquet"), index=False)
    history = pd.read_parquet(os.path.join(out, C.METRICS_HISTORY))
    sweeps = pd.DataFrame(
        {
            "model": "bpmf",
            "iteration": np.arange(1, 6, dtype=np.int32),
            "train_rmse": [1.2, 1.0, 0.9, 0.85, 0.84],
            "test_rmse": [1.3, 1.1, 1.0, 0.97, 0.96],
            "objective": np.nan,
            "seconds": 0.5,
        }
    )
    history = pd.concat([history, sweeps], ignore_index=True)
    shutil.rmtree(os.path.join(out, C.METRICS_HISTORY))
    os.makedirs(os.path.join(out, C.METRICS_HISTORY))
    history.to_parquet(os.path.join(out, C.METRICS_HISTORY, "part-0.parquet"), index=False)

    ranking = pd.DataFrame(
        [
            {"model": m, "k": k, "metric": metric, "value": float(v), "n_users": 100}
            for m in (als_name, "bpmf")
            for k in (5, 10, 20)
            for metric, v in (("precision", rng.uniform(0, 0.3)), ("ndcg", rng.uniform(0, 0.5)))
        ]
    )
    os.makedirs(os.path.join(out, collect.METRICS_RANKING))
    ranking.to_parquet(os.path.join(out, collect.METRICS_RANKING, "part-0.parquet"), index=False)

    items = pd.read_parquet(os.path.join(out, C.PREPARED_ITEMS))[C.ITEM_ID].to_numpy()
    users = np.sort(pd.read_parquet(os.path.join(out, C.PREPARED_USERS))[C.USER_ID].to_numpy())
    for m in (als_name, "bpmf"):
        recs = pd.DataFrame(
            [
                {C.USER_ID: int(u), "rank": r + 1, C.ITEM_ID: int(i), "score": 5.0 - 0.1 * r}
                for u in users[:6]
                for r, i in enumerate(rng.choice(items, 12, replace=False))
            ]
        )
        folder = os.path.join(out, collect.RECOMMENDATIONS, f"model={m}")
        os.makedirs(folder)
        recs.to_parquet(os.path.join(folder, "part-0.parquet"), index=False)
    # A u.item in latin-1: "Café n (1995)|01-Jan-1995|..." for every item.
    with open(items_file, "w", encoding="latin-1") as f:
        for i in sorted(items):
            f.write(f"{i}|Café {i} (1995)|01-Jan-1995||http://example.invalid/{i}|0|1|0\n")

    bench = [
        (
            s,
            10,
            3,
            1.0,
            t,
            3 * t,
            900.0,
            rmse,
            0.1,
            "count",
            rmse,
            "stages",
            None,
            0.80,
            0.82,
            2400,
            600,
            "local[2]",
        )
        for s, t, rmse in (("mllib", 2.0, 0.95), ("mfspark", 0.5, 0.91), ("numpy", 1.5, 0.91))
    ]
    spark.createDataFrame(bench, BENCHMARK_SCHEMA).coalesce(1).write.parquet(
        os.path.join(out, C.BENCHMARK)
    )
    return {"als": als_name, "bpmf": bpmf, "ranking": ranking}


@pytest.fixture(scope="module")
def full_run(spark, tmp_path_factory):
    from mfspark.pipeline import run_pipeline

    base = tmp_path_factory.mktemp("report")
    out = str(base / "out")
    items_file = str(base / "u.item")
    cfg = _cfg(out, f"data.items_path={items_file}")
    # The pipeline with its report stage, on outputs of ALS only (no item file yet: no titles).
    first = run_pipeline(
        cfg.replace("pipeline", stages=["prepare", "train_als", "evaluate", "report"]), spark
    )
    extras = _write_extras(spark, out, items_file)
    # The stages whose outputs this run holds (AutoRec and the blend are not among them).
    stages = ["prepare", "train_als", "train_bpmf", "build_autoencoder_inputs", "evaluate"]
    entry = run_report(cfg.replace("pipeline", stages=[*stages, "recommend", "report"]), spark)
    return out, cfg, extras, first["report"], entry


def test_pipeline_runs_the_report_stage(full_run):
    out, _, _, first, _ = full_run
    assert os.path.isfile(os.path.join(out, "report", "index.html"))
    assert os.path.isfile(os.path.join(out, "report", "summary.md"))
    assert first["plots"] is True
    manifest = json.load(open(os.path.join(out, C.MANIFEST)))
    assert manifest["stages"]["report"]["sections"][:3] == ["data", "training", "evaluation"]


def test_every_section_has_its_plot_and_table(full_run):
    out = full_run[0]
    page = parse(os.path.join(out, "report", "index.html"))
    for section in ("data", "training", "evaluation", "calibration", "ranking", "benchmark"):
        assert page.sections[section]["figures"], f"{section} has no plot"
        assert page.sections[section]["tables"], f"{section} has no table"
    assert page.sections["recommendations"]["tables"]
    assert page.sections["run"]["tables"]
    assert set(page.sections["data"]["figures"]) == {"fig-ratings", "fig-activity"}
    assert not [n for n in page.notes if "missing" in n[0]], page.notes


def test_summary_table_equals_metrics_summary(full_run):
    out = full_run[0]
    page = parse(os.path.join(out, "report", "index.html"))
    expected = pd.read_parquet(os.path.join(out, C.METRICS_SUMMARY))
    shown = page.rows("tbl-summary")
    assert len(shown) == len(expected) and {r["model"] for r in shown} == set(expected["model"])
    by_key = {(r["model"], r["segment"]): r for r in shown}
    for r in expected.itertuples():
        cell = by_key[(r.model, r.segment)]
        assert num(cell["n"]) == r.n
        for key in ("rmse", "mae"):
            value = getattr(r, key)
            if value is None or np.isnan(value):
                assert cell[key] == "n/a"
            else:
                assert abs(num(cell[key]) - value) <= 5e-5
    # summary.md carries the same table.
    md = open(os.path.join(out, "report", "summary.md"), encoding="utf-8").read()
    overall = expected[(expected["model"] == "bpmf") & (expected["segment"] == "all")].iloc[0]
    assert f"| bpmf | all | {overall.n:,} | {overall.rmse:.4f} | {overall.mae:.4f} |" in md


def test_data_tables_equal_the_prepared_datasets(full_run):
    out = full_run[0]
    page = parse(os.path.join(out, "report", "index.html"))
    train = pd.read_parquet(os.path.join(out, C.PREPARED_TRAIN))
    test = pd.read_parquet(os.path.join(out, C.PREPARED_TEST))
    users = pd.read_parquet(os.path.join(out, C.PREPARED_USERS))
    items = pd.read_parquet(os.path.join(out, C.PREPARED_ITEMS))
    counts = {r["quantity"]: r["value"] for r in page.rows("tbl-data-counts")}
    assert num(counts["ratings (valid)"]) == len(train) + len(test) == 3000
    assert num(counts["users"]) == len(users) and num(counts["items"]) == len(items)
    density = 100 * 3000 / (len(users) * len(items))
    assert abs(num(counts["density (ratings / users·items)"]) - density) < 1e-3
    assert num(counts["test ratings of cold items (no train rating)"]) == test[C.COLD_ITEM].sum()
    hist = {num(r["rating"]): (num(r["train"]), num(r["test"])) for r in page.rows("tbl-ratings")}
    assert hist == {
        v: (float((train[C.RATING] == v).sum()), float((test[C.RATING] == v).sum()))
        for v in sorted(set(train[C.RATING]) | set(test[C.RATING]))
    }
    activity = {r["side"]: r for r in page.rows("tbl-activity")}
    for side, table in (("users", users), ("items", items)):
        n = table[C.N_TRAIN].to_numpy()
        active = n[n > 0]
        row = activity[side]
        assert num(row["with train ratings"]) == len(active) and num(row["test only"]) == (n == 0).sum()
        assert num(row["median"]) == np.quantile(active, 0.5, method="inverted_cdf")
        assert num(row["p90"]) == np.quantile(active, 0.9, method="inverted_cdf")
        assert num(row["max"]) == active.max() and abs(num(row["mean"]) - active.mean()) <= 0.05


def test_history_ranking_benchmark_tables_equal_their_datasets(full_run):
    out, _, extras, _, _ = full_run
    page = parse(os.path.join(out, "report", "index.html"))
    history = pd.read_parquet(os.path.join(out, C.METRICS_HISTORY))
    shown = {r["model"]: r for r in page.rows("tbl-history")}
    assert set(shown) == set(history["model"])
    for model, h in history.sort_values("iteration").groupby("model"):
        assert num(shown[model]["iterations"]) == len(h)
        assert abs(num(shown[model]["final test RMSE"]) - h["test_rmse"].iloc[-1]) <= 5e-5
        assert abs(num(shown[model]["best test RMSE"]) - h["test_rmse"].min()) <= 5e-5
    ranking = {
        (r["model"], r["metric"], int(num(r["k"]))): num(r["value"]) for r in page.rows("tbl-ranking")
    }
    for r in extras["ranking"].itertuples():
        assert abs(ranking[(r.model, r.metric, r.k)] - r.value) <= 5e-5
    bench = {r["system"]: r for r in page.rows("tbl-benchmark")}
    assert set(bench) == {"mllib", "mfspark", "numpy"}
    assert num(bench["mllib"]["s / iteration"]) == 2.0 and num(bench["mfspark"]["test RMSE"]) == 0.91


def test_calibration_coverage_equals_numpy(full_run):
    out, _, extras, _, _ = full_run
    page = parse(os.path.join(out, "report", "index.html"))
    bpmf = extras["bpmf"]
    ok = bpmf[collect.PREDICTION_SD].notna()
    err = (bpmf[C.RATING] - bpmf[C.PREDICTION]).abs()[ok]
    sd = bpmf[collect.PREDICTION_SD][ok]
    rows = [r for r in page.rows("tbl-calibration") if r["model"] == "bpmf"]
    assert len(rows) == len(collect.CALIBRATION_Z)
    for r, z in zip(rows, collect.CALIBRATION_Z, strict=True):
        assert r["interval"] == f"±{z:g} sd"
        assert abs(num(r["observed"]) - 100 * (err <= z * sd).mean()) <= 0.051
        assert abs(num(r["nominal"]) - 100 * collect.nominal_coverage(z)) <= 0.051
        assert num(r["test ratings"]) == ok.sum()
    assert any("5 of" in text and "usable sd" in text for kind, text in page.notes if "warning" in kind)
    # Only bpmf wrote prediction_sd: the ALS predictions get no calibration rows.
    assert {r["model"] for r in page.rows("tbl-calibration")} == {"bpmf"}


def test_recommendations_show_latin1_titles(full_run):
    out, _, extras, _, _ = full_run
    page = parse(os.path.join(out, "report", "index.html"))
    recs = pd.read_parquet(os.path.join(out, collect.RECOMMENDATIONS, "model=bpmf"))
    sample = sorted(recs[C.USER_ID].unique())[:3]
    shown = page.rows("tbl-recs-bpmf")
    expected = recs[recs[C.USER_ID].isin(sample) & (recs["rank"] <= 10)].sort_values([C.USER_ID, "rank"])
    assert [(int(r["user_id"]), int(r["rank"]), int(r["item_id"])) for r in shown] == list(
        zip(expected[C.USER_ID], expected["rank"], expected[C.ITEM_ID], strict=True)
    )
    assert all(r["title"] == f"Café {r['item_id']} (1995)" for r in shown)
    liked = page.rows("tbl-liked")
    train = pd.read_parquet(os.path.join(out, C.PREPARED_TRAIN))
    for u in sample:
        top = train[train[C.USER_ID] == u][C.RATING].sort_values(ascending=False).head(5)
        assert [num(r["rating"]) for r in liked if int(r["user_id"]) == u] == list(top)


def test_page_is_self_contained(full_run):
    out = full_run[0]
    path = os.path.join(out, "report", "index.html")
    text = open(path, encoding="utf-8").read()
    page = parse(path)
    for tag, name, value in page.attrs:
        if name in ("src", "href", "xlink:href"):
            assert value.startswith("#"), (tag, name, value)
    assert "<script" not in text and "<link" not in text and "@import" not in text
    # The only "http" left are XML namespace names of the inline SVGs (identifiers, not fetched).
    outside_ns = re.sub(r'xmlns(:\w+)?="http[^"]*"', "", text)
    assert "http" not in outside_ns
    assert not re.search(r"url\((?!#)", text)


def test_missing_stages_are_named_not_errors(spark, tmp_path):
    out = str(tmp_path / "out")
    from mfspark.prepare import run_prepare

    cfg = _cfg(out)
    run_prepare(cfg, spark)
    entry = run_report(cfg, spark)
    page = parse(entry["html"])
    missing = [text for kind, text in page.notes if "missing" in kind]
    assert any(t.startswith("train_als did not run: no metrics for als") for t in missing), missing
    assert any(t.startswith("evaluate did not run") for t in missing), missing
    assert page.sections["data"]["figures"] and page.sections["data"]["tables"]
    status = {r["stage"]: r["status"] for r in page.rows("tbl-stages")}
    assert status["prepare"] == "ran" and status["train_als"].startswith("did not run")
    md = open(entry["markdown"], encoding="utf-8").read()
    assert "> **Not run:** train_als did not run: no metrics for als" in md

    # An empty output directory: every section says what did not run.
    empty = tmp_path / "empty"
    empty.mkdir()
    page = parse(run_report(_cfg(str(empty)), spark)["html"])
    missing = [text for kind, text in page.notes if "missing" in kind]
    assert any(t.startswith("prepare did not run") for t in missing), missing


def test_stage_status_names_the_model_of_a_train_stage():
    cfg = load_config(None, [])
    stages = ["prepare", "train_als", "train_bpmf", "evaluate", "report"]
    cfg = dataclasses.replace(cfg, pipeline=PipelineConfig(stages=stages))
    manifest = {"stages": {"prepare": {}, "train_als": {"model": "mfspark_als"}, "evaluate": {}}}
    status = stage_status(cfg, manifest, {"mfspark_als"}, {"prepare": True, "evaluate": True})
    assert status == [
        ("prepare", True, ""),
        ("train_als", True, ""),
        ("train_bpmf", False, "no metrics for bpmf"),
        ("evaluate", True, ""),
    ]


def test_without_matplotlib_the_report_has_tables_and_says_how_to_get_plots(
    full_run, spark, monkeypatch
):
    out, cfg, _, _, _ = full_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    entry = run_report(cfg, spark)
    text = open(entry["html"], encoding="utf-8").read()
    page = parse(entry["html"])
    assert entry["plots"] is False and "<svg" not in text
    assert page.sections["evaluation"]["tables"] == ["tbl-summary"]
    assert any("pip install 'mfspark[report]'" in t for kind, t in page.notes if "warning" in kind)


def test_item_files_of_each_movielens_format(spark, tmp_path):
    from mfspark.report.items import item_titles

    files = {
        "u.item": (
            '1|Toy Story (1995)|01-Jan-1995||http://x|0|1\n2|Señor "X", The (1996)|||x|0|0\n',
            "latin-1",
        ),
        "movies.dat": (
            '1::Toy Story (1995)::Animation|Comedy\n2::Señor "X", The (1996)::Drama\n',
            "latin-1",
        ),
        "movies.csv": (
            "movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n"
            '2,"Señor ""X"", The (1996)",Drama\n',
            "utf-8",
        ),
    }
    for name, (content, encoding) in files.items():
        path = tmp_path / name
        path.write_text(content, encoding=encoding)
        titles = item_titles(spark, str(path), [2, 7])
        assert set(titles) == {"2"}, name
        assert titles["2"].startswith('Señor "X", The (1996)'), (name, titles)
        if name != "u.item":
            assert titles["2"].endswith("[Drama]")


def test_bad_items_path_fails_before_spark(run_job, tmp_path):
    result = run_job(
        "report", "--set", f"output.path={tmp_path}", "--set", "data.items_path=/nowhere/u.item"
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mfspark report: error: item file not found: data.items_path=/nowhere/u.item; check the path"
    )
    result = run_job(
        "report", "--set", f"output.path={tmp_path}", "--set", f"data.items_path={tmp_path}"
    )
    assert (
        result.returncode == 2
        and "u.item (pipe-separated), movies.dat (::) or movies.csv" in result.stderr
    )
