"""Bayesian MF on Spark: the same numbers as the single-process sampler for any blocking, and
the train_bpmf stage's outputs (small data: the machine is shared)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from prepared_data import prepared_frames, write_prepared

from mfspark import columns as C
from mfspark.config import load_config
from mfspark.models.bpmf.posterior import BayesianPosterior
from mfspark.models.bpmf.sampler import BPMFParams, LocalSampler, run_gibbs
from mfspark.models.bpmf.spark import SparkBlockSampler
from mfspark.models.factor_model import FactorModel


@pytest.fixture(scope="module")
def ratings():
    """A planted low-rank problem with test rows for cold users and cold items."""
    rng = np.random.default_rng(21)
    n_users, n_items, nnz = 120, 70, 2600
    cells = rng.choice(n_users * n_items, nnz, replace=False)
    u, i = cells // n_items, cells % n_items
    w, v = rng.normal(0, 0.5, (n_users, 2)), rng.normal(0, 0.5, (n_items, 2))
    r = np.clip(np.round(3.5 + np.einsum("ij,ij->i", w[u], v[i]) + rng.normal(0, 0.5, nnz)), 1, 5)
    is_test = (rng.random(nnz) < 0.15) | (u >= 115) | (i >= 66)  # users 115.., items 66..: cold
    frame = pd.DataFrame({C.USER_IDX: u.astype(np.int32), C.ITEM_IDX: i.astype(np.int32), C.RATING: r})
    return frame[~is_test], frame[is_test], n_users, n_items


PARAMS = BPMFParams(rank=3, burn_in=2, samples=5, seed=9, saved_samples=2, clip=(1.0, 5.0))


def by_cell(res):
    order = np.lexsort((res.test_users, res.test_items))
    return res.test_items[order], res.test_users[order], res.test_mean[order], res.test_sd[order]


def local_chain(ratings, params):
    """The single-process sampler's result: the reference."""
    train, test, n_users, n_items = ratings
    arrays = lambda df: tuple(df[c].to_numpy() for c in (C.USER_IDX, C.ITEM_IDX, C.RATING))  # noqa: E731
    return run_gibbs(LocalSampler(arrays(train), n_users, n_items, params, arrays(test)), params)


def spark_chain(spark, ratings, params, user_blocks, item_blocks, exchange="broadcast"):
    """(result, sampler) of the Spark sampler on the given blocks; the sampler is closed."""
    train, test, n_users, n_items = ratings
    sampler = SparkBlockSampler(
        spark,
        spark.createDataFrame(train),
        spark.createDataFrame(test),
        n_users,
        n_items,
        params,
        user_blocks,
        item_blocks,
        exchange,
    )
    try:
        return run_gibbs(sampler, params), sampler
    finally:
        sampler.close()


def test_spark_sampler_equals_local_sampler_for_any_blocking(spark, ratings):
    """7x5 blocks give the one-block (single-process) chain; the partitioned test below runs
    3x2 blocks with the chain on the executors."""
    local = local_chain(ratings, PARAMS)
    want = by_cell(local)
    got, _ = spark_chain(spark, ratings, PARAMS, 7, 5)
    for a, b in zip(by_cell(got), want, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got.posterior_mean.item_factors, local.posterior_mean.item_factors)
    assert [h.train_rmse for h in got.history] == [h.train_rmse for h in local.history]
    # every test row is predicted, cold users and items from μ + known bias (never NaN)
    assert len(want[2]) == len(ratings[1]) and np.isfinite(want[2]).all()
    assert (
        not local.posterior_mean.item_factors[66:].any()
        and not local.posterior_mean.user_bias[115:].any()
    )


def test_partitioned_chain_equals_the_driver_chain(spark, ratings):
    """With the chain's state on the executors (partitioned exchange) every number is the
    single-process sampler's, bit for bit: the exact sums give the same hyper-parameter and
    noise draws, and the keyed row draws do not depend on where they run. Thinning (kept
    sweeps 3 and 5 of 5) exercises a sweep that is averaged over but not kept; the 11th step
    runs after the first lineage checkpoint (every 10 steps)."""
    from leaks import leftover_dirs, new_persistent_rdds

    from mfspark.session import persisted_rdds

    params = BPMFParams(rank=3, burn_in=1, samples=5, thin=2, seed=9, saved_samples=2, clip=(1.0, 5.0))
    want = local_chain(ratings, params)
    before = persisted_rdds(spark)
    got, sampler = spark_chain(spark, ratings, params, 3, 2, exchange="partitioned")
    assert not new_persistent_rdds(spark, before) and leftover_dirs(spark, [sampler.store]) == []
    assert sampler.store.counts is None  # nothing per entity was collected at set-up
    for name in ("user_factors", "user_bias", "item_factors", "item_bias", "user_counts", "item_counts"):
        np.testing.assert_array_equal(
            getattr(got.posterior_mean, name), getattr(want.posterior_mean, name)
        )
    assert [(h.train_rmse, h.test_rmse, h.alpha) for h in got.history] == [
        (h.train_rmse, h.test_rmse, h.alpha) for h in want.history
    ]
    assert got.n_kept == want.n_kept == 2 and got.noise_variance == want.noise_variance
    assert [s.sweep for s in got.samples] == [3, 5] and sampler.store._steps == 11
    for a, b in zip(got.samples, want.samples, strict=True):
        np.testing.assert_array_equal(a.user_factors, b.user_factors)
        np.testing.assert_array_equal(a.item_bias, b.item_bias)
    for a, b in zip(by_cell(got), by_cell(want), strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.abs(got.posterior_mean.user_factors).max() > 0.05  # sampled, not zeros


def test_train_bpmf_stage_writes_model_predictions_with_sd_and_metrics(spark, ratings, tmp_path):
    from mfspark.models.bpmf.job import run_train_bpmf

    train, test, n_users, n_items = ratings
    out = str(tmp_path / "out")
    write_prepared(spark, out, prepared_frames(spark, train, test, n_users, n_items, 1000, 5000))
    cfg = load_config(
        None,
        [
            f"output.path={out}",
            "bpmf.rank=3",
            "bpmf.burn_in=2",
            "bpmf.samples=5",
            "bpmf.saved_samples=3",
            "bpmf.num_user_blocks=3",
            "bpmf.num_item_blocks=2",
            "bpmf.exchange=partitioned",  # the chain on the executors (the same draws as broadcast)
        ],
    )
    entry = run_train_bpmf(cfg, spark)
    pred = spark.read.parquet(f"{out}/{C.PREDICTIONS}").toPandas()
    assert set(pred[C.MODEL]) == {"bpmf"} and len(pred) == len(test)
    assert np.isfinite(pred[C.PREDICTION]).all() and (pred[C.PREDICTION_SD] > 0).all()
    assert pred[C.PREDICTION].between(1, 5).all()
    rmse = np.sqrt(np.mean((pred[C.PREDICTION] - pred[C.RATING]) ** 2))
    summary = spark.read.parquet(f"{out}/{C.METRICS_SUMMARY}").toPandas().set_index("segment")
    assert summary.loc["all", "rmse"] == pytest.approx(rmse, rel=1e-12)
    history = spark.read.parquet(f"{out}/{C.METRICS_HISTORY}").toPandas()
    assert list(history.iteration) == [1, 2, 3, 4, 5] and set(history.model) == {"bpmf"}
    assert history.test_rmse.iloc[-1] == pytest.approx(rmse, rel=1e-9)  # the running average
    inside = np.abs(pred[C.RATING] - pred[C.PREDICTION]) <= 1.96 * pred[C.PREDICTION_SD]
    assert entry["interval_coverage_95"] == pytest.approx(inside.mean(), abs=1e-12)
    # the posterior mean loads as a factor model; the saved samples give prediction_sd
    mean = FactorModel.load(spark, f"{out}/models/bpmf")
    posterior = BayesianPosterior.load(spark, f"{out}/models/bpmf")
    assert len(posterior.sweeps) == 3 and posterior.sweeps[-1] == 5
    # all 3 kept samples are saved here, so their average is the posterior mean
    np.testing.assert_allclose(posterior.user_factors.mean(axis=0), mean.params.user_factors, atol=1e-6)
    np.testing.assert_allclose(posterior.item_bias.mean(axis=0), mean.params.item_bias, atol=1e-6)
    query = spark.createDataFrame(
        pd.DataFrame({"user_id": [1000, 1119, 99], "item_id": [5000, 5001, 5069]})
    )
    scored = posterior.transform(query).toPandas().sort_values("user_id")
    s = posterior
    uidx, iidx = np.array([0, 119, -1]), np.array([0, 1, 69])
    draws = np.array(
        [
            [
                s.mean.params.global_mean
                + (s.user_bias[j, u] if u >= 0 else 0)
                + s.item_bias[j, i]
                + (s.user_factors[j, u] @ s.item_factors[j, i] if u >= 0 else 0)
                for u, i in zip(uidx, iidx, strict=True)
            ]
            for j in range(3)
        ]
    )
    want_sd = np.sqrt(draws.var(axis=0) + np.mean(1 / s.alpha))
    got = scored.set_index("user_id").loc[[1000, 1119, 99]]
    np.testing.assert_allclose(got[C.PREDICTION], np.clip(draws.mean(axis=0), 1, 5), atol=1e-6)
    np.testing.assert_allclose(got[C.PREDICTION_SD], want_sd, atol=1e-6)


def test_estimator_fit_transform_save_load_with_string_ids(spark, tmp_path):
    import os

    import pyspark
    from leaks import new_persistent_rdds
    from pyspark.sql import functions as F

    from mfspark.models.bpmf.ml import BayesianMF, BayesianMFModel
    from mfspark.session import persisted_rdds

    path = os.path.join(os.path.dirname(pyspark.__file__), "data/mllib/als/sample_movielens_ratings.txt")
    raw = spark.read.text(path).select(F.split("value", "::").alias("f"))
    data = raw.select(
        F.concat(F.lit("u"), F.col("f")[0]).alias("user"),
        F.concat(F.lit("m"), F.col("f")[1]).alias("item"),
        F.col("f")[2].cast("double").alias("rating"),
    )
    before = persisted_rdds(spark)
    model = BayesianMF(rank=3, burnIn=2, samples=6, savedSamples=3, numUserBlocks=2).fit(data)
    assert not new_persistent_rdds(spark, before)  # the id tables are not left cached
    got = model.transform(data).toPandas()
    assert len(got) == 1501 and got.prediction.notna().all() and (got.prediction_sd > 0).all()
    rmse = float(np.sqrt(np.mean((got.rating - got.prediction) ** 2)))
    assert rmse < got.rating.std()  # beats predicting the mean on its own training data
    model.write().overwrite().save(str(tmp_path / "bpmf"))
    again = BayesianMFModel.load(str(tmp_path / "bpmf")).transform(data).toPandas()
    merged = got.merge(again, on=["user", "item"], suffixes=("", "_again"))
    np.testing.assert_allclose(merged.prediction, merged.prediction_again, rtol=1e-12)
    np.testing.assert_allclose(merged.prediction_sd, merged.prediction_sd_again, rtol=1e-12)
