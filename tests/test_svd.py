"""Truncated SVD: singular values equal numpy's SVD of the same bias-removed matrix, biases
equal an independent ridge fit, results independent of blocking, and the train_svd stage's
outputs (factor model, singular values, predictions, metrics)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfspark import columns as C
from mfspark.blocks.rows import RatingRows
from mfspark.config import load_config
from mfspark.errors import ConfigError
from mfspark.models.factor_model import FactorModel
from mfspark.models.svd.kernels import residual_product
from mfspark.models.svd.spark import SparkOperator
from mfspark.models.svd.train import LocalOperator, SVDParams, run_svd
from tests.prepared_data import prepared_frames, write_prepared

N_USERS, N_ITEMS = 200, 150
# The spectrum of a uniform random matrix is flat (σ_6/σ_5 ≈ 0.99), the hardest case for
# subspace iteration: wide oversampling and many iterations reach 1e-6.
ACCURATE = SVDParams(rank=5, oversampling=30, power_iterations=12, seed=7, reg_bias=2.0)


def random_ratings(seed=0, density=0.2):
    rng = np.random.default_rng(seed)
    u, i = np.nonzero(rng.random((N_USERS, N_ITEMS)) < density)
    r = rng.integers(1, 11, len(u)) / 2.0  # 0.5 .. 5.0, exact in float32
    return u, i, r


def ridge_biases(u, i, r, reg, sweeps):
    """Alternating exact bias-only ridge steps, written out with bincount (the oracle)."""
    mu = r.mean()
    b, c = np.zeros(N_USERS), np.zeros(N_ITEMS)
    nu, ni = np.bincount(u, minlength=N_USERS), np.bincount(i, minlength=N_ITEMS)
    for _ in range(sweeps):
        b = np.bincount(u, r - mu - c[i], N_USERS) / (nu + reg)
        c = np.bincount(i, r - mu - b[u], N_ITEMS) / (ni + reg)
    return mu, b, c


def dense_residual(u, i, r, mu, b, c):
    x = np.zeros((N_USERS, N_ITEMS))
    x[u, i] = r - mu - b[u] - c[i]
    return x


def test_residual_product_equals_dense_product():
    u, i, r = random_ratings(1)
    rng = np.random.default_rng(2)
    b, c, d = rng.normal(size=N_USERS), rng.normal(size=N_ITEMS), rng.normal(size=(N_ITEMS, 7))
    x = dense_residual(u, i, r, 3.0, b, c)
    block = RatingRows.from_coo(u, i, r, np.arange(N_USERS), width=64)  # three column tiles
    np.testing.assert_allclose(residual_product(block, b, c, 3.0, d), x @ d, rtol=1e-12, atol=1e-12)
    items = RatingRows.from_coo(i, u, r, np.arange(N_ITEMS), width=64)
    e = rng.normal(size=(N_USERS, 3))
    np.testing.assert_allclose(residual_product(items, c, b, 3.0, e), x.T @ e, rtol=1e-12, atol=1e-12)


def test_local_singular_values_and_biases_match_numpy():
    u, i, r = random_ratings()
    res = run_svd(LocalOperator((u, i, r), N_USERS, N_ITEMS, width=64), ACCURATE)
    m = res.model
    mu, b, c = ridge_biases(u, i, r, ACCURATE.reg_bias, ACCURATE.bias_iterations)
    assert m.global_mean == pytest.approx(mu, rel=1e-12)
    np.testing.assert_allclose(m.user_bias, b, atol=1e-10)
    np.testing.assert_allclose(m.item_bias, c, atol=1e-10)
    x = dense_residual(u, i, r, mu, b, c)
    u_np, s_np, vt_np = np.linalg.svd(x)
    k = ACCURATE.rank
    np.testing.assert_allclose(res.singular_values, s_np[:k], rtol=1e-6)
    # the factors reproduce the best rank-k approximation U_k S_k V_kᵀ (singular vectors
    # converge at half the rate of the values: a looser bound)
    approx = m.user_factors @ m.item_factors.T
    best = (u_np[:, :k] * s_np[:k]) @ vt_np[:k]
    assert np.abs(approx - best).max() < 2e-3 * np.abs(best).max()
    assert res.residual_norm_sq == pytest.approx(float((x * x).sum()), rel=1e-9)
    np.testing.assert_allclose(res.explained_share, s_np[:k] ** 2 / (x * x).sum(), rtol=1e-6)
    # Rayleigh–Ritz estimates improve (never get worse) with each power iteration
    first = [h.singular_values[0] for h in res.history]
    assert all(b2 >= a - 1e-9 for a, b2 in zip(first, first[1:], strict=False))
    # the recorded objective is ‖X − U S Vᵀ‖² over the observed cells
    pred = m.predict(u, i) - mu - b[u] - c[i]
    assert res.history[-1].objective == pytest.approx(float(((x[u, i] - pred) ** 2).sum()), rel=1e-9)


def test_few_iterations_are_not_exact():
    """The test above can fail: one pass of a narrow sketch misses the flat spectrum."""
    u, i, r = random_ratings()
    res = run_svd(
        LocalOperator((u, i, r), N_USERS, N_ITEMS),
        SVDParams(rank=5, oversampling=0, power_iterations=0, reg_bias=2.0),
    )
    m = res.model
    s_np = np.linalg.svd(
        dense_residual(u, i, r, m.global_mean, m.user_bias, m.item_bias), compute_uv=False
    )
    assert np.abs(res.singular_values / s_np[:5] - 1).max() > 1e-3


@pytest.fixture(scope="module")
def spark_ratings(spark):
    u, i, r = random_ratings()
    frame = pd.DataFrame({C.USER_IDX: u.astype(np.int32), C.ITEM_IDX: i.astype(np.int32), C.RATING: r})
    return spark.createDataFrame(frame), (u, i, r)


def fit_spark(spark, df, params, user_blocks, item_blocks):
    op = SparkOperator(spark, df, None, N_USERS, N_ITEMS, 35, user_blocks, item_blocks)
    try:
        return run_svd(op, params)
    finally:
        op.close()


def test_spark_singular_values_match_numpy_whatever_the_blocking(spark, spark_ratings):
    df, (u, i, r) = spark_ratings
    one = fit_spark(spark, df, ACCURATE, 1, 1)
    many = fit_spark(spark, df, ACCURATE, 3, 2)
    m = one.model
    s_np = np.linalg.svd(
        dense_residual(u, i, r, m.global_mean, m.user_bias, m.item_bias), compute_uv=False
    )
    np.testing.assert_allclose(one.singular_values, s_np[:5], rtol=1e-6)
    np.testing.assert_allclose(many.singular_values, one.singular_values, rtol=1e-12)
    np.testing.assert_allclose(many.model.user_factors, one.model.user_factors, atol=1e-10)
    np.testing.assert_allclose(many.model.item_bias, one.model.item_bias, atol=1e-12)


def test_train_svd_stage_outputs(spark, tmp_path):
    from mfspark.models.svd.job import run_train_svd

    rng = np.random.default_rng(5)
    n_users, n_items = 60, 40
    u, i = np.nonzero(rng.random((n_users, n_items)) < 0.4)
    w, v = rng.normal(0, 0.8, (n_users, 2)), rng.normal(0, 0.8, (n_items, 2))
    r = np.clip(np.round(3.2 + np.einsum("ij,ij->i", w[u], v[i]) + rng.normal(0, 0.3, len(u))), 1, 5)
    is_test = rng.random(len(u)) < 0.2
    frame = pd.DataFrame({C.USER_IDX: u, C.ITEM_IDX: i, C.RATING: r})
    frames = prepared_frames(spark, frame[~is_test], frame[is_test], n_users, n_items, 1000, 5000)
    out = str(tmp_path / "out")
    write_prepared(spark, out, frames)
    overrides = [f"output.path={out}", "svd.rank=2", "svd.power_iterations=3", "svd.num_user_blocks=2"]
    cfg = load_config(None, overrides)
    entry = run_train_svd(cfg, spark)

    model = FactorModel.load(spark, f"{out}/models/svd")
    assert model.params.rank == 2
    sv = spark.read.parquet(f"{out}/models/svd/singular_values").orderBy("index").toPandas()
    assert list(sv["index"]) == [1, 2]
    # independent check: numpy SVD of the bias-removed train matrix the model describes
    tr = frame[~is_test]
    p = model.params
    x = np.zeros((n_users, n_items))
    x[tr[C.USER_IDX], tr[C.ITEM_IDX]] = (
        tr[C.RATING] - p.global_mean - p.user_bias[tr[C.USER_IDX]] - p.item_bias[tr[C.ITEM_IDX]]
    )
    s_np = np.linalg.svd(x, compute_uv=False)
    np.testing.assert_allclose(sv["value"], s_np[:2], rtol=1e-4)
    np.testing.assert_allclose(sv["explained_share"], s_np[:2] ** 2 / (x * x).sum(), rtol=1e-3)

    preds = spark.read.parquet(f"{out}/predictions/model=svd").toPandas()
    te = frame[is_test]
    assert len(preds) == len(te)
    mine = preds.sort_values([C.USER_IDX, C.ITEM_IDX])
    expect = np.clip(p.predict(mine[C.USER_IDX].to_numpy(), mine[C.ITEM_IDX].to_numpy()), 1, 5)
    np.testing.assert_allclose(mine[C.PREDICTION], expect, rtol=1e-6)
    rmse = float(np.sqrt(np.mean((mine[C.PREDICTION] - mine[C.RATING]) ** 2)))
    summary = (
        spark.read.parquet(f"{out}/metrics/summary").where("model = 'svd' and segment = 'all'").first()
    )
    assert summary["rmse"] == pytest.approx(rmse, rel=1e-9)
    # the history's figure is computed in the blocks from the float64 factors, the written
    # predictions from the stored float32 factors
    assert entry["test_rmse"] == pytest.approx(rmse, rel=1e-6)
    history = spark.read.parquet(f"{out}/metrics/history").where("model = 'svd'").orderBy("iteration")
    assert [h["iteration"] for h in history.collect()] == [0, 1, 2, 3]
    # the planted rank-2 structure is found: better than the bias baseline alone
    base = np.clip(p.global_mean + p.user_bias[te[C.USER_IDX]] + p.item_bias[te[C.ITEM_IDX]], 1, 5)
    assert rmse < float(np.sqrt(np.mean((base - te[C.RATING]) ** 2))) - 0.05

    with pytest.raises(ConfigError, match="svd.rank"):
        run_train_svd(load_config(None, [f"output.path={out}", "svd.rank=41"]), spark)
