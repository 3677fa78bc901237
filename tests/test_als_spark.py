"""Blocked ALS on Spark: equal to the single-process solver, independent of blocking,
model persistence and prediction, and the pyspark.ml estimator in Pipeline/CrossValidator."""

from __future__ import annotations

import os

import leaks
import numpy as np
import pandas as pd
import pytest
from leaks import leftover_dirs, new_persistent_rdds

from mfspark.errors import MfsparkError
from mfspark.models.als.spark import SparkBlockSolver, check_broadcast_size
from mfspark.models.als.train import ALSParams, LocalSolver, run_als
from mfspark.models.factor_model import FactorModel
from mfspark.session import persisted_rdds

stores = leaks.stores  # the fixture recording every BlockStore a test creates


@pytest.fixture(scope="module")
def ratings(spark):
    """A planted low-rank problem with test rows for cold users and cold items."""
    rng = np.random.default_rng(11)
    n_users, n_items, nnz = 300, 150, 9000
    cells = rng.choice(n_users * n_items, nnz, replace=False)
    u, i = cells // n_items, cells % n_items
    w, v = rng.normal(0, 0.5, (n_users, 3)), rng.normal(0, 0.5, (n_items, 3))
    r = np.clip(
        np.round(
            3.5
            + rng.normal(0, 0.3, n_users)[u]
            + np.einsum("ij,ij->i", w[u], v[i])
            + rng.normal(0, 0.5, nnz)
        ),
        1,
        5,
    )
    is_test = rng.random(nnz) < 0.15
    # users 290.. and items 145.. only appear in test: cold rows
    is_test |= (u >= 290) | (i >= 145)
    frame = pd.DataFrame({"user_idx": u.astype(np.int32), "item_idx": i.astype(np.int32), "rating": r})
    train, test = frame[~is_test], frame[is_test]
    return spark.createDataFrame(train), spark.createDataFrame(test), train, test, n_users, n_items


def fit_spark(spark, ratings, params, user_blocks, item_blocks, exchange="broadcast"):
    train_df, test_df, _, _, n_users, n_items = ratings
    solver = SparkBlockSolver(
        spark, train_df, test_df, n_users, n_items, params, user_blocks, item_blocks, exchange
    )
    try:
        return run_als(solver, params), solver
    finally:
        solver.close()


PARAMS = ALSParams(rank=4, max_iter=6, tol=0.0, clip=(1.0, 5.0))


@pytest.mark.parametrize(
    "kernel",
    [
        {},  # the defaults: the compiled kernel, one column tile
        # several column tiles, chunks and (dense) batches per block: the paths large data takes
        {"gram": "compiled", "tile": 64},
        {"gram": "sparse", "tile": 64, "chunk_rows": 16},
        {"gram": "dense", "chunk_rows": 16, "batch_cells": 64},
    ],
    ids=["default", "compiled-tiled", "sparse-tiled", "dense-batched"],
)
def test_spark_solver_equals_local_solver_and_ignores_blocking(spark, ratings, kernel):
    import dataclasses

    _, _, train, test, n_users, n_items = ratings
    params = dataclasses.replace(PARAMS, **kernel)
    # the oracle: the single-process solver with the same kernel (float32 products summed
    # in another order differ by rounding, which six iterations amplify past 1e-6)
    local = run_als(
        LocalSolver(
            (train.user_idx.values, train.item_idx.values, train.rating.values),
            n_users,
            n_items,
            params,
            test=(test.user_idx.values, test.item_idx.values, test.rating.values),
        ),
        params,
    )
    one, solver = fit_spark(spark, ratings, params, 1, 1)
    many, _ = fit_spark(spark, ratings, params, 7, 5)
    assert solver.n_train == len(train) and solver.n_test == len(test)
    for got in (one, many):
        np.testing.assert_allclose(got.model.user_factors, local.model.user_factors, atol=1e-6)
        np.testing.assert_allclose(got.model.item_factors, local.model.item_factors, atol=1e-6)
        np.testing.assert_allclose(got.model.user_bias, local.model.user_bias, atol=1e-6)
        assert [h.test_rmse for h in got.history] == pytest.approx(
            [h.test_rmse for h in local.history], rel=1e-9
        )
    # blocking changes nothing: the same kernel gives bit-identical factors for 1x1 and 7x5
    np.testing.assert_array_equal(one.model.user_factors, many.model.user_factors)
    np.testing.assert_array_equal(one.model.item_factors, many.model.item_factors)
    # cold entities: never trained, factor 0 and bias 0
    assert not one.model.user_factors[290:].any() and not one.model.item_bias[145:].any()


@pytest.mark.parametrize("blocks", [(7, 5)])
def test_partitioned_exchange_equals_broadcast(spark, ratings, blocks):
    """Shipping each block only the rows it rates gives the broadcast's factors bit for bit
    (the same kernels see the same numbers), and the same per-iteration figures. (1x1 blocks
    and real data: benchmarks/exchange.py.)"""
    params = ALSParams(rank=4, max_iter=3, tol=0.0, clip=(1.0, 5.0), gram="sparse", tile=64)
    want, _ = fit_spark(spark, ratings, params, *blocks)
    before = persisted_rdds(spark)
    got, solver = fit_spark(spark, ratings, params, *blocks, exchange="partitioned")
    assert not new_persistent_rdds(spark, before)  # states, routes and tokens released by close()
    assert leftover_dirs(spark, [solver.store]) == []
    assert solver.store.counts is None  # nothing per entity was collected at set-up
    for name in ("user_factors", "user_bias", "item_factors", "item_bias", "user_counts", "item_counts"):
        np.testing.assert_array_equal(getattr(got.model, name), getattr(want.model, name))
    assert np.abs(got.model.user_factors).max() > 0.05  # trained, not zeros
    assert [h.test_rmse for h in got.history] == [h.test_rmse for h in want.history]
    assert got.half_step_objectives == pytest.approx(want.half_step_objectives, rel=1e-12)


def test_lost_block_files_are_rebuilt_from_the_shuffle(spark, ratings, caplog):
    """A block whose stored files are gone (e.g. its executor was lost) is rebuilt from the
    shuffle output and solved in memory, with the same result."""
    import shutil

    from mfspark.blocks.rows import USER

    params = ALSParams(rank=4, max_iter=3, tol=0.0, clip=(1.0, 5.0))
    want, _ = fit_spark(spark, ratings, params, 3, 2)
    train_df, test_df, _, _, n_users, n_items = ratings
    solver = SparkBlockSolver(spark, train_df, test_df, n_users, n_items, params, 3, 2)
    try:
        tokens = solver.store.tokens.collect()
        lost = [t for t in tokens if t["side"] == USER and t["block"] == 1]
        assert len(lost) == 1 and os.path.isdir(lost[0]["dir"])
        shutil.rmtree(lost[0]["dir"])
        with caplog.at_level("WARNING", logger="mfspark.blocks.spark"):
            got = run_als(solver, params)
    finally:
        solver.close()
    assert "ran away from their stored files" in caplog.text
    np.testing.assert_array_equal(got.model.user_factors, want.model.user_factors)
    np.testing.assert_array_equal(got.model.item_bias, want.model.item_bias)
    assert not any(os.path.exists(t["dir"]) for t in tokens)  # close() removed the rest


def test_model_roundtrip_and_cold_fallback(spark, ratings, tmp_path):
    train_df, test_df, train, test, n_users, n_items = ratings
    result, _ = fit_spark(spark, ratings, PARAMS, 2, 2)
    ids = lambda n, col, idx: spark.createDataFrame(  # noqa: E731
        pd.DataFrame({col: np.arange(n) * 10, idx: np.arange(n, dtype=np.int32)})
    )
    model = FactorModel(
        result.model,
        ids(n_users, "user_id", "user_idx"),
        ids(n_items, "item_id", "item_idx"),
        {"clip_min": 1.0, "clip_max": 5.0, "iterations": result.iterations},
    )
    path = str(tmp_path / "model")
    model.save(path)
    loaded = FactorModel.load(spark, path)
    np.testing.assert_array_equal(loaded.params.user_factors, model.params.user_factors)
    np.testing.assert_array_equal(loaded.params.item_bias, model.params.item_bias.astype(np.float64))
    # transform by original id, including ids the model never saw
    query = pd.DataFrame(
        {"user_id": [0, 10, 2900, 99999, 99999], "item_id": [0, 99999, 10, 1450, 99998]}
    )
    got = loaded.transform(spark.createDataFrame(query)).toPandas().sort_values(["user_id", "item_id"])
    p = model.params
    mu = p.global_mean
    want = {
        (0, 0): np.clip(
            mu + p.user_bias[0] + p.item_bias[0] + p.user_factors[0] @ p.item_factors[0], 1, 5
        ),
        (10, 99999): np.clip(mu + p.user_bias[1], 1, 5),
        (2900, 10): np.clip(mu + p.item_bias[1], 1, 5),  # user 290 only in test: bias 0
        (99999, 1450): np.clip(mu + p.item_bias[145], 1, 5),  # item 145 only in test: bias 0
        (99999, 99998): np.clip(mu, 1, 5),
    }
    for row in got.itertuples():
        assert row.prediction == pytest.approx(want[(row.user_id, row.item_id)], abs=1e-6)
    nan = loaded.transform(spark.createDataFrame(query), cold_start="nan").toPandas()
    assert nan.prediction.isna().sum() == 4  # only (0, 0) is fully known
    assert loaded.transform(spark.createDataFrame(query), cold_start="drop").count() == 1


def test_broadcast_guard_names_size_and_remedy():
    with pytest.raises(
        MfsparkError, match=r"user side's factors are 100,000,000 x 64 .* als.max_broadcast_mb"
    ):
        check_broadcast_size(100_000_000, 1000, 64, 2048)
    check_broadcast_size(138_493, 26_744, 10, 2048)


def test_estimator_in_pipeline_crossvalidator_with_string_ids(spark, tmp_path, stores):
    import pyspark
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.ml.tuning import CrossValidator, CrossValidatorModel, ParamGridBuilder
    from pyspark.sql import functions as F

    from mfspark import BiasedALS

    path = os.path.join(os.path.dirname(pyspark.__file__), "data/mllib/als/sample_movielens_ratings.txt")
    raw = spark.read.text(path).select(F.split("value", "::").alias("f"))
    data = raw.select(
        F.concat(F.lit("u"), F.col("f")[0]).alias("user"),
        F.concat(F.lit("m"), F.col("f")[1]).alias("item"),
        F.col("f")[2].cast("double").alias("rating"),
    )
    assert data.count() == 1501
    als = BiasedALS(maxIter=3, regScaling="count", numUserBlocks=2, numItemBlocks=3)
    grid = ParamGridBuilder().addGrid(als.regParam, [0.05, 0.3]).build()
    evaluator = RegressionEvaluator(metricName="rmse", labelCol="rating", predictionCol="prediction")
    cv = CrossValidator(
        estimator=Pipeline(stages=[als]),
        estimatorParamMaps=grid,
        evaluator=evaluator,
        numFolds=2,
        seed=3,
    )
    before = persisted_rdds(spark)
    cv_model = cv.fit(data)
    # 2 grid points x 2 folds + the refit: nothing stays cached, no block files stay behind.
    assert len(stores) == 5 and leftover_dirs(spark, stores) == []
    assert not new_persistent_rdds(spark, before)
    assert len(cv_model.avgMetrics) == 2 and all(np.isfinite(cv_model.avgMetrics))
    best = cv_model.bestModel
    predictions = best.transform(data).toPandas()
    assert predictions.prediction.notna().all()
    rmse = float(np.sqrt(np.mean((predictions.rating - predictions.prediction) ** 2)))
    assert rmse < predictions.rating.std()  # beats predicting the mean on its own training data
    best.write().overwrite().save(str(tmp_path / "best"))
    reloaded = PipelineModel.load(str(tmp_path / "best"))
    again = reloaded.transform(data).toPandas()
    key = ["user", "item"]
    merged = predictions.merge(again, on=key, suffixes=("", "_again"))
    assert len(merged) == 1501
    np.testing.assert_array_equal(merged.prediction.values, merged.prediction_again.values)
    assert reloaded.stages[0].getRank() == best.stages[0].getRank()
    cv_model.write().overwrite().save(str(tmp_path / "cv"))
    assert CrossValidatorModel.load(str(tmp_path / "cv")).bestModel.transform(data).count() == 1501
    # factors are exposed like Spark's ALS: id, features (+ bias)
    user_factors = best.stages[0].userFactors
    assert user_factors.columns == ["id", "features", "bias"] and user_factors.count() == 30


def test_python_workers_run_blas_on_one_thread_and_numpy_without_huge_pages(spark):
    """The worker environment applies before numpy is imported in the workers."""
    from mfspark.session import WORKER_ENV

    def report(_):
        import os

        import numpy

        core = getattr(numpy, "_core", None) or numpy.core  # numpy 2 / numpy 1.26
        yield (
            {var: os.environ.get(var) for var in WORKER_ENV},
            bool(core.multiarray._get_madvise_hugepage()),
        )

    for env, huge_pages in spark.sparkContext.parallelize([0, 1], 2).mapPartitions(report).collect():
        assert env == {
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "NUMPY_MADVISE_HUGEPAGE": "0",
        }
        assert huge_pages is False


def test_blocks_sent_as_many_small_pieces_hold_every_rating_once(monkeypatch, tmp_path):
    """A block whose ratings arrive as many pieces, in any order and interleaved with other
    blocks' pieces, is the block of one piece and holds exactly its ratings: the map side caps
    a piece at PIECE_RATINGS ratings, the reduce side spools pieces to disk by block."""
    import pyarrow as pa

    from mfspark.blocks import spark as blocks

    rng = np.random.default_rng(5)
    n = 5000
    users = rng.integers(0, 97, n).astype(np.int32)
    items = rng.integers(0, 41, n).astype(np.int32)
    values = rng.integers(1, 6, n).astype(np.float32)
    is_test = rng.random(n) < 0.2
    cells = np.unique(users.astype(np.int64) * 41 + items, return_index=True)[1]
    users, items, values, is_test = users[cells], items[cells], values[cells], is_test[cells]
    batch = pa.RecordBatch.from_pydict(
        {"user_idx": users, "item_idx": items, "rating": values, "is_test": is_test}
    )

    def blocks_of(piece_ratings, shuffled):
        monkeypatch.setattr(blocks, "PIECE_RATINGS", piece_ratings)
        records = []
        for piece in blocks._split_fn(3, 2)(iter([batch])):
            arrays = piece.to_pylist()[0]
            assert len(arrays["rows"]) <= 4 * piece_ratings  # int32: 4 bytes per rating
            records.append((arrays["part"], tuple(arrays[name] for name, _ in blocks.PIECE_ARRAYS)))
        counts = {key: sum(k == key for k, _ in records) for key, _ in records}
        spool = tmp_path / f"spool-{piece_ratings}"
        spool.mkdir()
        built = {
            key: (counts[key], blocks._assemble(*arrays, 1 << 20))
            for key, arrays in blocks._spooled_blocks(
                [records[i] for i in rng.permutation(len(records))] if shuffled else records, str(spool)
            )
        }
        assert not any(spool.iterdir())  # the spool directory is removed
        return built

    whole, small = blocks_of(1 << 18, False), blocks_of(7, True)
    assert sorted(whole) == sorted(small) == [0, 1, 2, 3, 4]  # user blocks 0, 2, 4; item blocks 1, 3
    assert all(count == 1 for count, _ in whole.values())
    assert all(count > 1 for count, _ in small.values())
    for key, (_, (train, test)) in small.items():
        side, block = blocks.key_block(key)
        for got, want, mask in ((train, whole[key][1][0], ~is_test), (test, whole[key][1][1], is_test)):
            for name in ("rows", "indptr", "cols", "values", "col_ids"):
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
            # the oracle: exactly the input's ratings of this block, each once
            rows, cols = (users, items) if side == "user" else (items, users)
            keep = mask & (rows % (3 if side == "user" else 2) == block)
            expected = sorted(
                zip(rows[keep].tolist(), cols[keep].tolist(), values[keep].tolist(), strict=True)
            )
            stored = sorted(
                zip(
                    np.asarray(got.rows)[got.row_positions()].tolist(),
                    got.global_cols().tolist(),
                    np.asarray(got.values).tolist(),
                    strict=True,
                )
            )
            if side == "user" and got is test:
                expected = []  # user blocks carry train ratings only
            assert stored == expected
