"""Nothing leaks on any path (stored blocks, cached RDDs/DataFrames, broadcasts), the
driver-result guard, and the estimator's input guards."""

from __future__ import annotations

import os

import leaks
import numpy as np
import pandas as pd
import pytest
from leaks import leftover_dirs, new_persistent_rdds, worker_root

from mfspark.blocks import spark as blocks
from mfspark.errors import MfsparkError
from mfspark.models.als.spark import SparkBlockSolver, check_result_size
from mfspark.models.als.train import ALSParams, run_als
from mfspark.session import parse_size, persisted_rdds

stores = leaks.stores  # the fixture recording every BlockStore a test creates


@pytest.fixture(scope="module")
def small(spark):
    rng = np.random.default_rng(3)
    n_users, n_items, nnz = 60, 30, 900
    cells = rng.choice(n_users * n_items, nnz, replace=False)
    frame = pd.DataFrame(
        {
            "user_idx": (cells // n_items).astype(np.int32),
            "item_idx": (cells % n_items).astype(np.int32),
            "rating": np.clip(np.round(3 + rng.normal(0, 1, nnz)), 1, 5),
        }
    )
    test = frame.sample(frac=0.1, random_state=1)
    train = frame.drop(test.index)
    return spark.createDataFrame(train), spark.createDataFrame(test), n_users, n_items


PARAMS = ALSParams(rank=3, max_iter=3, tol=0.0)


def test_failure_after_blocks_are_stored_leaves_nothing(spark, small, stores, monkeypatch):
    train, test, n_users, n_items = small
    before = persisted_rdds(spark)
    seen = {}
    original = blocks.BlockStore._set_up

    def failing_set_up(self, *args):
        seen["stored"] = os.path.isdir(os.path.join(worker_root(spark), self.store_dir))
        seen["persisted"] = len(new_persistent_rdds(spark, before))
        original(self, *args)
        raise RuntimeError("injected after set-up")

    monkeypatch.setattr(blocks.BlockStore, "_set_up", failing_set_up)
    with pytest.raises(RuntimeError, match="injected"):
        with SparkBlockSolver(spark, train, test, n_users, n_items, PARAMS, 2, 2) as solver:
            run_als(solver, PARAMS)
    assert seen == {"stored": True, "persisted": 1}  # there was something to clean
    assert len(stores) == 1 and leftover_dirs(spark, stores) == []
    assert not new_persistent_rdds(spark, before)


def test_empty_training_set_and_failing_iteration_leave_nothing(spark, small, stores, monkeypatch):
    train, test, n_users, n_items = small
    before = persisted_rdds(spark)
    # Only test ratings: item blocks are stored, then set-up finds no training rating.
    with pytest.raises(MfsparkError, match="training set is empty"):
        SparkBlockSolver(spark, train.limit(0), test, n_users, n_items, PARAMS, 2, 2)
    assert not new_persistent_rdds(spark, before)

    # A failure inside an iteration, through the estimator (its index tables are cached too).
    from mfspark import BiasedALS, ml

    def boom(solver, params, **_):
        solver.solve("user", (np.zeros((solver.n_items, params.rank)), np.zeros(solver.n_items)))
        raise RuntimeError("injected in training")

    monkeypatch.setattr(ml, "run_als", boom)
    ratings = train.selectExpr("user_idx AS user", "item_idx AS item", "rating")
    with pytest.raises(RuntimeError, match="injected in training"):
        BiasedALS(rank=3, maxIter=2).fit(ratings)
    assert len(stores) == 2 and leftover_dirs(spark, stores) == []
    assert not new_persistent_rdds(spark, before)


def test_half_step_returns_only_what_changes(spark, small):
    from mfspark.models.als.spark import _broadcast_solve_fn

    train, test, n_users, n_items = small
    with SparkBlockSolver(spark, train, test, n_users, n_items, PARAMS, 2, 3) as solver:
        k = PARAMS.rank
        parts = solver.store.run(
            "item",
            (np.ones((n_users, k), np.float32), np.zeros(n_users, np.float32)),
            _broadcast_solve_fn(solver.global_mean, PARAMS),
        )
        assert {key for p in parts for key in p} == {
            "factors",
            "bias",
            "sse",
            "penalty",
            "test_sse",
            "test_abs",
            "test_n",
            "seconds",
            "block",
        }
        rows = solver.store.rows_of("item", parts)
        assert sorted(rows) == sorted(set(train.toPandas().item_idx) | set(test.toPandas().item_idx))
        assert sum(len(p["bias"]) for p in parts) == len(rows)


def test_result_size_guard_parses_spark_sizes_and_names_the_remedy():
    assert parse_size("1g") == 2**30 and parse_size("512m") == 512 * 2**20
    assert parse_size("2048k") == parse_size("2mb") == 2 * 2**20 and parse_size("1024") == 1024
    with pytest.raises(MfsparkError, match="cannot read"):
        parse_size("lots")
    # 5M users x (50 + 1) floats x 4 bytes = 973 MB, plus framing: over 1g? no; over 512m: yes
    check_result_size(5_000_000, 1000, 50, "1g")
    with pytest.raises(MfsparkError, match=r"user half-step .* spark.driver.maxResultSize=512m"):
        check_result_size(5_000_000, 1000, 50, "512m")
    check_result_size(5_000_000, 1000, 50, "0")  # 0: unlimited


# -- the estimator's input guards -----------------------------------------------------------
SEVEN = [
    (1, 10, 4.0),
    (1, 11, 3.0),
    (2, 10, 5.0),
    (2, 12, 2.0),
    (3, 11, 1.0),
    (3, 12, 4.0),
    (4, 10, 3.0),
]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (float("inf"), r"1 training ratings are infinite or beyond ±1e\+09"),
        (-float("inf"), r"1 training ratings are infinite or beyond ±1e\+09"),
        (1e30, r"1 training ratings are infinite or beyond ±1e\+09"),
        (float("nan"), r"1 training rows have a null id or a null/NaN rating"),
    ],
)
def test_estimator_refuses_non_finite_and_huge_ratings(spark, bad, message):
    from mfspark import BiasedALS

    rows = SEVEN[:-1] + [(4, 10, bad)]
    df = spark.createDataFrame(rows, "user long, item long, rating double")
    with pytest.raises(MfsparkError, match=message) as err:
        BiasedALS(rank=1, maxIter=2).fit(df)
    assert "\n" not in str(err.value)


def test_estimator_refuses_duplicate_pairs_and_fits_the_clean_frame(spark):
    from mfspark import BiasedALS

    before = persisted_rdds(spark)
    dup = spark.createDataFrame(
        SEVEN + [(2, 12, 5.0), (2, 12, 1.0)], "user long, item long, rating double"
    )
    with pytest.raises(MfsparkError, match=r"1 \(user, item\) pairs occur more than once \(3 rows\)"):
        BiasedALS(rank=1, maxIter=2).fit(dup.repartition(3))
    clean = spark.createDataFrame(SEVEN, "user long, item long, rating double")
    model = BiasedALS(rank=1, maxIter=2, regParam=1.0).fit(clean)
    pred = model.transform(clean).toPandas()
    assert np.isfinite(pred.prediction).all() and pred.prediction.between(1, 5).all()
    assert not new_persistent_rdds(spark, before)  # the index tables are not left cached

    # One prediction broadcast per model, shared by its DataFrames, destroyed by release().
    fm = model.als_model
    first = fm.__dict__["_prediction_broadcast"]
    model.transform(clean).count()
    assert fm.__dict__["_prediction_broadcast"] is first and os.path.exists(first._path)
    model.release()
    assert not os.path.exists(first._path) and "_prediction_broadcast" not in fm.__dict__
    assert model.transform(clean).count() == 7  # a later prediction gets a fresh broadcast
    model.release()


def test_exchange_choice_auto_switches_and_forced_broadcast_refuses(caplog):
    from mfspark.models.als.spark import choose_exchange

    # 40,000 users x 11 floats = 1.7 MB: fits a 2 MB broadcast, not a 1 MB one
    with caplog.at_level("INFO", logger="mfspark.models.als.spark"):
        assert choose_exchange(40_000, 500, 10, "auto", 2.0, "1g") == "broadcast"
        assert choose_exchange(40_000, 500, 10, "auto", 1.0, "1g") == "partitioned"
    assert "partitioned, because broadcast would not fit" in caplog.text
    assert "als.max_broadcast_mb=1" in caplog.text
    assert choose_exchange(40_000, 500, 10, "auto", 2.0, "1m") == "partitioned"  # result size
    assert choose_exchange(40_000, 500, 10, "partitioned", 2.0, "1g") == "partitioned"
    with pytest.raises(MfsparkError, match="over als.max_broadcast_mb=1"):
        choose_exchange(40_000, 500, 10, "broadcast", 1.0, "1g")
    with pytest.raises(MfsparkError, match="spark.driver.maxResultSize=1m"):
        choose_exchange(40_000, 500, 10, "broadcast", 2.0, "1m")
    with pytest.raises(MfsparkError, match="als.exchange must be one of"):
        choose_exchange(40_000, 500, 10, "shuffle", 2.0, "1g")


def test_partitioned_fit_completes_with_a_result_limit_below_one_side(run_job, tmp_path):
    """spark.driver.maxResultSize below one side's factors: the default (auto) exchange goes
    partitioned, says so, and the whole train_als stage completes; no job collects a side."""
    out = str(tmp_path / "out")
    settings = [
        f"output.path={out}",
        'pipeline.stages=["prepare","train_als"]',
        "synthetic.n_users=30000",  # one user side: 30,000 x 11 float32 = 1.3 MB
        "synthetic.n_items=300",
        "synthetic.n_ratings=60000",
        "als.max_iter=2",
        "als.num_user_blocks=8",
        "spark.master=local[2]",
        "spark.conf.spark.driver.maxResultSize=1m",
    ]
    result = run_job("pipeline", *[a for s in settings for a in ("--set", s)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ALS factor exchange: partitioned, because broadcast would not fit" in result.stderr
    assert "Total size of serialized results" not in result.stderr
    import pyarrow.parquet as pq

    factors = pq.read_table(f"{out}/models/als/user_factors").to_pandas()
    train_users = pq.read_table(f"{out}/prepared/train", columns=["user_idx"]).column(0).to_numpy()
    trained = factors[factors["n_train"] > 0]
    # every user with train ratings came back from its block, with its count and real factors
    assert len(trained) == len(np.unique(train_users)) > 25_000
    assert trained["n_train"].sum() == len(train_users)
    assert np.abs(np.stack(trained["factors"])).max(axis=1).min() > 0


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_memory_returns_freed_heap_to_the_os():
    """Workers call release_memory() after a block: memory freed inside glibc's heap (under a
    live allocation, so free() cannot trim it) leaves the resident set only through it."""
    import subprocess
    import sys

    script = """
import numpy as np
from mfspark.session import release_memory
def rss():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')) / 1024
arrays = [np.ones(8000) for _ in range(3000)]  # 64 KB each: below the mmap threshold
keep = np.ones(8000)  # above them in the heap
del arrays
before = rss()
release_memory()
print(before, rss())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, after = map(float, out.stdout.split())
    assert before - after > 150  # MB: 3,000 × 64 KB were freed
