"""The whole pipeline on MovieLens 100K's canonical folds u1–u5: the figures the README quotes.

Each fold is one run of ``python -m mfspark pipeline`` (the installed job, default config unless
``--set`` says otherwise) with ``split.method = "predefined"`` on ``uN.base`` / ``uN.test``, into
``OUT/uN``. Afterwards the script reads what the runs wrote — ``metrics/summary`` (test RMSE of
every model over all test rows, cold ones included), ``metrics/ranking`` (top-K metrics of every
model and of the popularity baseline), the Bayesian-MF predictive intervals — and prints one table
per figure, plus each stage's time from the job's log. Usage::

    python benchmarks/folds.py /path/to/ml-100k OUT [--folds u1 u3] [--set key=value ...]
        [--json figures.json]

An existing ``OUT/uN`` holding a finished run is read, not re-run (``--rerun`` re-runs it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from ml100k import FOLDS, require_folds, write_json

STAGE_DONE = re.compile(r"stage (\w+): done in ([0-9.]+) s")


def run_fold(root: str, fold: str, out: str, settings: list[str]) -> dict:
    """Run the pipeline on one fold (unless ``out`` already holds a finished run)."""
    log_path = os.path.join(out + ".log")
    if not os.path.exists(os.path.join(out, "metrics", "summary")):
        cmd = [
            sys.executable, "-m", "mfspark", "pipeline",
            "--set", f"data.path={root}/{fold}.base",
            "--set", f"data.test_path={root}/{fold}.test",
            "--set", "split.method=predefined",
            "--set", f"output.path={out}",
        ]  # fmt: skip
        for s in settings:
            cmd += ["--set", s]
        env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        wall = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"error: the pipeline failed on {fold} (exit {rc}); see {log_path}")
        with open(out + ".wall", "w") as f:
            f.write(f"{wall:.1f}\n")
    return read_fold(out)


def read_fold(out: str) -> dict:
    summary = pd.read_parquet(os.path.join(out, "metrics", "summary"))
    rmse = summary[summary.segment == "all"].set_index("model")
    fold = {
        "rmse": {m: float(r.rmse) for m, r in rmse.iterrows()},
        "n_test": {m: int(r.n) for m, r in rmse.iterrows()},
    }
    ranking_path = os.path.join(out, "metrics", "ranking")
    if os.path.exists(ranking_path):
        ranking = pd.read_parquet(ranking_path)
        fold["ranking"] = {f"{r.model}/{r.metric}@{r.k}": float(r.value) for r in ranking.itertuples()}
    bpmf = os.path.join(out, "predictions", "model=bpmf")
    if os.path.exists(bpmf):
        p = pd.read_parquet(bpmf, columns=["rating", "prediction", "prediction_sd"])
        inside = np.abs(p.rating - p.prediction) <= 1.96 * p.prediction_sd
        fold["bpmf_coverage_95"] = float(inside.mean())
    stages: dict[str, float] = {}
    if os.path.exists(out + ".log"):
        with open(out + ".log") as f:
            for name, seconds in STAGE_DONE.findall(f.read()):
                stages[name] = float(seconds)
    fold["stage_seconds"] = stages
    if os.path.exists(out + ".wall"):
        with open(out + ".wall") as f:
            fold["wall_seconds"] = float(f.read())
    return fold


def table(figures: dict[str, dict], key: str, fmt: str = "{:.5f}") -> str:
    folds = list(figures)
    columns = sorted({c for f in figures.values() for c in f.get(key, {})})
    lines = ["| fold | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for fold in folds:
        row = [figures[fold].get(key, {}).get(c) for c in columns]
        lines.append(f"| {fold} | " + " | ".join("" if v is None else fmt.format(v) for v in row) + " |")
    means = [
        np.mean([figures[f][key][c] for f in folds if c in figures[f].get(key, {})]) for c in columns
    ]
    lines.append("| **mean** | " + " | ".join(fmt.format(v) for v in means) + " |")
    return "\n".join(lines)


def transposed(markdown: str, corner: str) -> str:
    """A Markdown table with rows and columns swapped (wide tables read better tall)."""
    rows = [line.strip("|").split("|") for line in markdown.splitlines()]
    rows = [r for r in rows if not set("".join(r)) <= set("-: ")]
    cols = [[c.strip() for c in col] for col in zip(*rows, strict=True)]
    cols[0][0] = corner
    lines = ["| " + " | ".join(cols[0]) + " |", "|---" * len(cols[0]) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cols[1:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ml100k", help="directory holding u1.base … u5.test")
    parser.add_argument("out", help="one output directory per fold goes here")
    parser.add_argument("--folds", nargs="+", default=FOLDS, choices=FOLDS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--rerun", action="store_true", help="re-run folds already finished")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args(argv)
    require_folds(args.ml100k, args.folds)
    os.makedirs(args.out, exist_ok=True)
    figures = {}
    for fold in args.folds:
        out = os.path.join(args.out, fold)
        if args.rerun and os.path.exists(out):
            import shutil

            shutil.rmtree(out)
        figures[fold] = run_fold(args.ml100k, fold, out, args.set)
        print(f"{fold}: " + ", ".join(f"{m} {v:.5f}" for m, v in figures[fold]["rmse"].items()),
              flush=True)  # fmt: skip
    print("\nTest RMSE (all test rows)\n" + table(figures, "rmse"))
    if any("bpmf_coverage_95" in f for f in figures.values()):
        cov = {
            k: {"coverage": {"bpmf": v["bpmf_coverage_95"]}}
            for k, v in figures.items()
            if "bpmf_coverage_95" in v
        }
        print(
            "\nBayesian MF: share of test ratings inside prediction ± 1.96 sd\n"
            + table(cov, "coverage", "{:.4f}")
        )
    if any("ranking" in f for f in figures.values()):
        print("\nRanking metrics\n" + transposed(table(figures, "ranking", "{:.4f}"), "model/metric@k"))
    print("\nStage seconds\n" + table(figures, "stage_seconds", "{:.1f}"))
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
