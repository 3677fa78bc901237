"""Residual model: the numpy network learns a planted non-linear function and switches itself
off on noise; folds and rotations; on a planted bilinear model the out-of-fold scheme does
not make its base worse; the train_residual stage writes a model that reproduces its
predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfspark import columns as C
from mfspark.config import load_config
from mfspark.models.als.kernels import Regularization
from mfspark.models.als.train import ALSParams, LocalSolver, run_als
from mfspark.models.factor_model import FactorModel
from mfspark.models.factors import BiasedMF
from mfspark.models.residual.net import MLP, NetParams, train_mlp
from mfspark.models.residual.train import (
    ResidualModel,
    ResidualParams,
    align,
    fit_local,
    fold_of,
    is_validation,
)
from tests.prepared_data import prepared_frames, write_prepared


def test_network_learns_a_planted_nonlinear_function():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 4)).astype(np.float32)
    y = np.maximum(x[:, 0], 0) * x[:, 1] + 0.5 * np.abs(x[:, 2]) - 0.4 + rng.normal(0, 0.05, 6000)
    val = np.arange(6000) % 10 == 0
    res = train_mlp(x, y, val, NetParams(hidden=(32, 16), learning_rate=3e-3, epochs=40, patience=5))
    assert res.net.enabled
    err = np.sqrt(np.mean((res.net.predict(x[val]) - y[val]) ** 2))
    assert err < 0.25 * res.baseline_validation_rmse  # a linear fit cannot get below ~0.6 of it
    assert res.history[res.best_epoch - 1].validation_rmse == pytest.approx(err, rel=1e-6)


def test_network_switches_off_when_it_cannot_beat_zero_on_validation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 5)).astype(np.float32)
    y = rng.normal(0, 1, 3000)  # nothing to learn
    res = train_mlp(x, y, np.arange(3000) % 5 == 0, NetParams(learning_rate=1e-2, epochs=20))
    assert not res.net.enabled
    assert np.all(res.net.predict(x) == 0.0)


def test_gradients_match_finite_differences():
    """One Adam step is driven by backprop; check the gradient it uses numerically."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 3)), rng.normal(size=50)
    net = MLP.initial(x, (5, 4), seed=3)
    net.weights[-1] *= 10

    def loss(n):
        return float(np.mean((n.forward(x)[1] - y) ** 2))

    acts, out = net.forward(x)
    grad = (2.0 / len(y)) * (out - y)[:, None]
    analytic = []
    for layer in range(len(net.weights) - 1, -1, -1):
        analytic.append(acts[layer].T @ grad)
        if layer:
            grad = (grad @ net.weights[layer].T) * (acts[layer] > 0)
    analytic = analytic[::-1]
    for layer, g in enumerate(analytic):
        for a, b in [(0, 0), (1, 2), (2, 1)]:
            if a >= g.shape[0] or b >= g.shape[1]:
                continue
            plus, minus = net.copy(), net.copy()
            plus.weights[layer][a, b] += 1e-6
            minus.weights[layer][a, b] -= 1e-6
            assert g[a, b] == pytest.approx((loss(plus) - loss(minus)) / 2e-6, rel=1e-4, abs=1e-8)


def test_folds_are_hash_based_and_balanced_and_alignment_undoes_a_rotation():
    u, i = np.repeat(np.arange(400), 50), np.tile(np.arange(50), 400)
    f = fold_of(u, i, 42, 5)
    assert np.array_equal(f, fold_of(u[::-1], i[::-1], 42, 5)[::-1])  # order does not matter
    assert np.all(np.abs(np.bincount(f, minlength=5) / len(f) - 0.2) < 0.01)
    assert 0.08 < is_validation(u, i, 42, 0.1).mean() < 0.12
    rng = np.random.default_rng(4)
    ref = BiasedMF(3.0, rng.normal(size=(30, 4)), np.zeros(30), rng.normal(size=(20, 4)), np.zeros(20))
    rot, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    turned = BiasedMF(3.0, ref.user_factors @ rot, ref.user_bias, ref.item_factors @ rot, ref.item_bias)
    back = align(turned, ref)
    np.testing.assert_allclose(back.item_factors, ref.item_factors, atol=1e-10)
    np.testing.assert_allclose(back.user_factors, ref.user_factors, atol=1e-10)


def planted_bilinear(seed=5, n_users=400, n_items=250, nnz=24_000):
    rng = np.random.default_rng(seed)
    cells = rng.choice(n_users * n_items, nnz, replace=False)
    u, i = cells // n_items, cells % n_items
    w, v = rng.normal(0, 0.6, (n_users, 3)), rng.normal(0, 0.6, (n_items, 3))
    r = (
        3.5
        + rng.normal(0, 0.3, n_users)[u]
        + rng.normal(0, 0.3, n_items)[i]
        + np.einsum("ij,ij->i", w[u], v[i])
        + rng.normal(0, 0.5, nnz)
    )
    return u, i, r, rng.random(nnz) < 0.2, n_users, n_items


def test_no_nonlinear_structure_costs_the_base_at_most_0002():
    u, i, r, is_test, n_users, n_items = planted_bilinear()
    params = ALSParams(rank=3, max_iter=8, reg=Regularization(5.0, 3.0, "none"), tol=0.0)

    def fit(train):
        return run_als(LocalSolver(train, n_users, n_items, params), params).model

    model, res = fit_local(
        (u[~is_test], i[~is_test], r[~is_test]), n_users, n_items, fit, ResidualParams(folds=3)
    )
    te_u, te_i, te_r = u[is_test], i[is_test], r[is_test]
    base = np.sqrt(np.mean((model.base.predict(te_u, te_i) - te_r) ** 2))
    corrected = np.sqrt(np.mean((model.predict(te_u, te_i) - te_r) ** 2))
    assert corrected <= base + 0.002
    # the final base is the full-train fit, not a fold model
    np.testing.assert_allclose(
        model.base.item_factors, fit((u[~is_test], i[~is_test], r[~is_test])).item_factors
    )


def test_train_residual_stage_outputs(spark, tmp_path):
    from mfspark.models.residual.job import run_train_residual

    u, i, r, is_test, n_users, n_items = planted_bilinear(6, 80, 50, 2400)
    r = np.clip(np.round(r), 1, 5)
    frame = pd.DataFrame({C.USER_IDX: u, C.ITEM_IDX: i, C.RATING: r})
    frames = prepared_frames(spark, frame[~is_test], frame[is_test], n_users, n_items, 10, 20)
    out = str(tmp_path / "out")
    write_prepared(spark, out, frames)
    cfg = load_config(
        None,
        [
            f"output.path={out}",
            "als.rank=3",
            "als.max_iter=3",
            "residual.folds=2",
            "residual.epochs=3",
            "residual.validation_fraction=0.2",
        ],
    )
    entry = run_train_residual(cfg, spark)
    base = FactorModel.load(spark, f"{out}/models/residual/base")
    layers = spark.read.parquet(f"{out}/models/residual/network").orderBy("layer").collect()
    meta = spark.read.parquet(f"{out}/models/residual/metadata").first()
    assert [(row["inputs"], row["outputs"]) for row in layers] == [(13, 32), (32, 16), (16, 1)]
    net = MLP(
        np.array(meta["input_mean"]),
        np.array(meta["input_scale"]),
        [np.array(row["weights"]).reshape(row["inputs"], row["outputs"]) for row in layers],
        [np.array(row["bias"]) for row in layers],
        meta["enabled"],
    )
    model = ResidualModel(base.params, net, base.params.user_counts, base.params.item_counts, base.clip)
    preds = spark.read.parquet(f"{out}/predictions/model=residual").toPandas()
    assert len(preds) == int(is_test.sum())
    expect = model.predict(preds[C.USER_IDX].to_numpy(), preds[C.ITEM_IDX].to_numpy(), None)
    np.testing.assert_allclose(preds[C.PREDICTION], expect, rtol=1e-6)
    rmse = float(np.sqrt(np.mean((preds[C.PREDICTION] - preds[C.RATING]) ** 2)))
    assert entry["test_rmse"] == pytest.approx(rmse, rel=1e-9)
    hist = spark.read.parquet(f"{out}/metrics/history").where("model = 'residual'").count()
    assert 1 <= hist <= 3
