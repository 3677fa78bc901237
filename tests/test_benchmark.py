"""jobs/benchmark.py end to end on a small planted problem: all four systems, one table."""

from __future__ import annotations

import os

import numpy as np
import pytest
from leaks import new_persistent_rdds

from mfspark import columns as C
from mfspark.benchmark import run_benchmark
from mfspark.config import load_config
from mfspark.session import persisted_rdds


def test_benchmark_runs_every_system_on_one_split(spark, tmp_path, capsys):
    out = str(tmp_path / "bench")
    cfg = load_config(
        None,
        [
            "data.format=synthetic",
            "synthetic.n_users=400",
            "synthetic.n_items=150",
            "synthetic.n_ratings=12000",
            "synthetic.rank=3",
            "synthetic.noise=0.5",
            "als.rank=3",
            "als.max_iter=4",
            "als.reg=4.0",
            "benchmark.tune=false",  # tune() has its own test; this one keeps the suite short
            "benchmark.mllib_reg=0.1",
            'benchmark.systems=["mllib", "mfspark", "numpy", "bpmf"]',
            "bpmf.burn_in=1",
            "bpmf.samples=4",
            f"output.path={out}",
        ],
    )
    entry = run_benchmark(cfg, spark)
    table = spark.read.parquet(f"{out}/{C.BENCHMARK}").toPandas().set_index("system")
    assert sorted(table.index) == ["bpmf", "mfspark", "mllib", "numpy"]
    assert (table["rank"] == 3).all() and (table["iterations"] == 4).all()
    # numpy runs mfspark's arithmetic in one process: the same model, the same test error
    assert table.loc["numpy", "test_rmse"] == pytest.approx(table.loc["mfspark", "test_rmse"], abs=1e-6)
    assert table.loc["numpy", "reg"] == table.loc["mfspark", "reg"] == 4.0
    assert table.loc["mllib", "reg"] == 0.1
    # the planted truth and the oracle floor bound every system from below
    truth, floor = entry["planted_truth_test_rmse"], entry["oracle_floor_test_rmse"]
    assert truth < floor < table["test_rmse"].min()
    timed = table.loc[
        ["mfspark", "numpy", "bpmf"], ["setup_seconds", "seconds_per_iteration", "fit_seconds"]
    ]
    assert np.isfinite(timed.to_numpy(dtype=float)).all()
    # without the Spark UI (as in tests) MLlib's set-up cannot be separated from its fit
    assert table.loc["mllib", "fit_seconds"] > 0 and table.loc["mllib", "seconds_per_iteration"] > 0
    assert (table["n_train"] + table["n_test"] == 12000).all()
    printed = capsys.readouterr().out
    assert "vs MLlib" in printed and "oracle floor" in printed


def test_tune_extends_the_grid_past_an_edge():
    from mfspark.benchmark import tune

    calls = []

    def score(v):  # minimum at 100, far outside the grid
        calls.append(v)
        return (np.log(v) - np.log(100.0)) ** 2

    best, scores = tune([4.0, 8.0, 15.0, 30.0], score, "test", "grid")
    assert calls == [4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 240.0]
    assert best == 120.0 and len(scores) == 7
    best, _ = tune([50.0, 100.0, 200.0], score, "test", "grid")  # interior: no extension
    assert best == 100.0 and calls[-1] == 200.0 and len(calls) == 10


def test_benchmark_times_top_k_for_all_users_against_mllib(spark, tmp_path, capsys):
    out = str(tmp_path / "bench")
    cfg = load_config(
        None,
        [
            "data.format=synthetic",
            "synthetic.n_users=120",
            "synthetic.n_items=60",
            "synthetic.n_ratings=2000",
            "synthetic.rank=2",
            "als.rank=2",
            "als.max_iter=2",
            'benchmark.systems=["mllib", "mfspark"]',
            "benchmark.tune=false",
            "benchmark.recommend=true",
            "recommend.k=5",
            "recommend.num_blocks=3",
            f"output.path={out}",
        ],
    )
    before = persisted_rdds(spark)
    entry = run_benchmark(cfg, spark)
    # MLlib's model keeps its factors cached until garbage collection: the run releases them
    assert not new_persistent_rdds(spark, before)
    table = spark.read.parquet(f"{out}/benchmark_recommend").toPandas()
    assert list(zip(table["system"], table["exclude_seen"], strict=True)) == [
        ("mllib", False),
        ("mfspark", False),
        ("mfspark", True),
    ]
    n_train_users = spark.read.parquet(f"{out}/{C.PREPARED_TRAIN}").select(C.USER_IDX).distinct().count()
    assert (table["n_users"] == n_train_users).all() and (table["k"] == 5).all()
    assert (table["seconds"] > 0).all() and len(entry["recommend"]) == 3
    assert "top-5 lists for every user" in capsys.readouterr().out


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux smaps_rollup")
def test_memory_counts_pages_shared_by_a_forked_child_once():
    """Summed resident sets count a forked worker's inherited pages twice; the benchmark's
    measure (proportional set size) must count them once, as a real machine holds them."""
    import signal

    from mfspark.benchmark import _memory_mb

    shared = np.ones(64 * 2**20 // 8)  # 64 MB, touched
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only touches the inherited pages and waits
        os.close(read)
        float(shared.sum())
        os.write(write, b"x")
        signal.pause()
    try:
        os.close(write)
        assert os.read(read, 1) == b"x"
        pids = (os.getpid(), child)
        both_rss = sum(_memory_mb(p, proportional=False) for p in pids)
        both_pss = sum(_memory_mb(p) for p in pids)
        mine = _memory_mb(os.getpid(), proportional=False)
        assert both_rss > mine + 60  # the child's resident set holds the 64 MB again
        assert both_pss < mine + 40  # the proportional sizes hold it once
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
