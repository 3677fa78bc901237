"""Blend: ridge weights from sufficient statistics equal a direct least-squares fit; bad
member lists fail with the key named; the train_blend stage applies its weights to the
members' test predictions and beats its members on a problem where they err differently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfspark import columns as C
from mfspark.config import load_config
from mfspark.errors import ConfigError
from mfspark.models.blend.ridge import RidgeStats
from tests.prepared_data import prepared_frames, write_prepared


def test_ridge_from_statistics_equals_direct_solution():
    rng = np.random.default_rng(0)
    y = rng.normal(3.5, 1.0, 500)
    p = np.column_stack([y + rng.normal(0, s, 500) for s in (0.6, 0.9, 1.2)])
    stats = RidgeStats.from_arrays(p[:200], y[:200])
    for part in (slice(200, 350), slice(350, 500)):  # statistics add up like Spark's sums
        more = RidgeStats.from_arrays(p[part], y[part])
        stats = RidgeStats(stats.gram + more.gram, stats.rhs + more.rhs, stats.y_sq + more.y_sq, 500)
    lam = 5.0
    a, w = stats.solve(lam)
    # direct: augmented least squares with sqrt(λ) rows penalising the weights only
    design = np.vstack(
        [np.column_stack([np.ones(500), p]), np.c_[np.zeros(3), np.sqrt(lam) * np.eye(3)]]
    )
    theta = np.linalg.lstsq(design, np.r_[y, np.zeros(3)], rcond=None)[0]
    np.testing.assert_allclose(np.r_[a, w], theta, rtol=1e-9)
    assert stats.rmse(a, w) == pytest.approx(np.sqrt(np.mean((a + p @ w - y) ** 2)), rel=1e-9)
    for m in range(3):
        assert stats.member_rmse(m) == pytest.approx(np.sqrt(np.mean((p[:, m] - y) ** 2)), rel=1e-9)
    assert stats.rmse(a, w) < min(stats.member_rmse(m) for m in range(3))


def test_every_member_the_config_accepts_has_a_fit_and_predict_function():
    from mfspark.config import BLEND_MEMBERS
    from mfspark.models.members import MEMBERS

    assert list(MEMBERS) == list(BLEND_MEMBERS)


def test_config_rejects_a_single_or_repeated_member():
    with pytest.raises(ConfigError, match="blend.models"):
        load_config(None, ['blend.models=["als"]'])
    with pytest.raises(ConfigError, match="blend.models"):
        load_config(None, ['blend.models=["als", "als"]'])
    with pytest.raises(ConfigError, match="blend.models"):
        load_config(None, ['blend.models=["als", "knn"]'])


@pytest.fixture(scope="module")
def prepared_out(spark, tmp_path_factory):
    rng = np.random.default_rng(3)
    n_users, n_items, nnz = 120, 80, 4000
    cells = rng.choice(n_users * n_items, nnz, replace=False)
    u, i = cells // n_items, cells % n_items
    w, v = rng.normal(0, 0.7, (n_users, 2)), rng.normal(0, 0.7, (n_items, 2))
    r = np.clip(np.round(3.4 + rng.normal(0, 0.4, n_users)[u] + np.einsum("ij,ij->i", w[u], v[i])), 1, 5)
    is_test = rng.random(nnz) < 0.2
    frame = pd.DataFrame({C.USER_IDX: u, C.ITEM_IDX: i, C.RATING: r})
    frames = prepared_frames(spark, frame[~is_test], frame[is_test], n_users, n_items, 100, 200)
    out = str(tmp_path_factory.mktemp("blend") / "out")
    write_prepared(spark, out, frames)
    return out, frames


SETTINGS = ["als.rank=2", "als.max_iter=4", "svd.rank=2", "svd.power_iterations=2"]


def test_bad_members_fail_before_fitting(spark, prepared_out):
    from mfspark.models.blend.job import run_train_blend

    out, _ = prepared_out
    cfg = lambda *s: load_config(None, [f"output.path={out}", *SETTINGS, *s])  # noqa: E731
    with pytest.raises(ConfigError, match=r"blend.models: member 'als' was not trained"):
        run_train_blend(cfg('blend.models=["als", "svd"]'), spark)
    with pytest.raises(ConfigError, match=r"blend.models: member 'autorec_user' was not trained"):
        run_train_blend(cfg('blend.models=["autorec_user", "bpmf"]'), spark)
    with pytest.raises(ConfigError, match="blend.validation_fraction"):
        run_train_blend(cfg("blend.validation_fraction=0.0"), spark)
    with pytest.raises(ConfigError, match="blend.models is empty"):
        run_train_blend(cfg(), spark)


def test_train_blend_stage(spark, prepared_out):
    from mfspark.io import staged_outputs
    from mfspark.models.blend.job import run_train_blend
    from mfspark.models.members import fit_predict
    from mfspark.models.outputs import PREDICTION_COLUMNS
    from mfspark.models.svd.job import run_train_svd

    out, (train, test, users, items) = prepared_out
    cfg = load_config(None, [f"output.path={out}", *SETTINGS])
    run_train_svd(cfg, spark)
    # ALS's full-train test predictions in the shared layout, through its member function
    als = fit_predict("als", spark, train, test.select(C.USER_IDX, C.ITEM_IDX), users, items, cfg)
    keyed = test.join(als, [C.USER_IDX, C.ITEM_IDX]).select(*PREDICTION_COLUMNS)
    with staged_outputs(spark, out) as stage:
        stage.write(keyed, "predictions/model=als")
    entry = run_train_blend(cfg, spark)
    assert entry["members"] == ["als", "svd"]

    weights = dict(spark.read.parquet(f"{out}/models/blend/weights").rdd.map(tuple).collect())
    assert set(weights) == {"intercept", "als", "svd"}
    preds = spark.read.parquet(f"{out}/predictions").toPandas()
    wide = preds.pivot_table(index=[C.USER_IDX, C.ITEM_IDX], columns="model", values=C.PREDICTION)
    rating = preds[preds.model == "blend"].set_index([C.USER_IDX, C.ITEM_IDX])[C.RATING]
    assert len(wide) == test.count()
    expect = np.clip(
        weights["intercept"] + weights["als"] * wide["als"] + weights["svd"] * wide["svd"], 1, 5
    )
    np.testing.assert_allclose(wide["blend"], expect, rtol=1e-9)
    rmse = lambda m: float(np.sqrt(np.mean((wide[m] - rating.loc[wide.index]) ** 2)))  # noqa: E731
    summary = spark.read.parquet(f"{out}/metrics/summary").where("segment = 'all'").toPandas()
    assert summary.set_index("model").loc["blend", "rmse"] == pytest.approx(rmse("blend"), rel=1e-9)
    validation = spark.read.parquet(f"{out}/models/blend/validation").toPandas().set_index("model")
    assert set(validation.index) == {"als", "svd", "blend"}
    assert validation.loc["blend", "rmse"] <= validation.loc[["als", "svd"], "rmse"].min()


def test_bpmf_member_predicts_the_pairs_as_the_single_process_sampler(spark, prepared_out):
    """The bpmf member (fit on train, predict given pairs) against the single-process
    sampler run on the same ratings with the pairs as its test rows."""
    from mfspark.models.bpmf.sampler import BPMFParams, LocalSampler, run_gibbs
    from mfspark.models.members import fit_predict

    out, (train, test, users, items) = prepared_out
    cfg = load_config(None, [f"output.path={out}", "bpmf.rank=2", "bpmf.samples=6", "bpmf.burn_in=2"])
    pairs = test.select(C.USER_IDX, C.ITEM_IDX, C.RATING)
    got = fit_predict("bpmf", spark, train, pairs, users, items, cfg).toPandas()
    assert list(got.columns) == [C.USER_IDX, C.ITEM_IDX, C.PREDICTION] and len(got) == test.count()

    tr, te = (df.toPandas() for df in (train, pairs))
    arrays = lambda df: tuple(df[c].to_numpy() for c in (C.USER_IDX, C.ITEM_IDX, C.RATING))  # noqa: E731
    lo, hi = float(tr[C.RATING].min()), float(tr[C.RATING].max())
    params = BPMFParams.from_config(cfg.bpmf, clip=(lo, hi))
    local = run_gibbs(LocalSampler(arrays(tr), users.count(), items.count(), params, arrays(te)), params)
    want = pd.DataFrame(
        {C.USER_IDX: local.test_users, C.ITEM_IDX: local.test_items, "want": local.test_mean}
    )
    both = got.merge(want, on=[C.USER_IDX, C.ITEM_IDX])
    assert len(both) == len(got)
    np.testing.assert_allclose(both[C.PREDICTION], both["want"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("member,orientation", [("autorec", "by_item"), ("autorec_user", "by_user")])
def test_autorec_member_predicts_the_pairs_as_the_single_process_network(
    spark, prepared_out, member, orientation
):
    """The AutoRec members (train on train, predict given pairs) against the same network
    trained in one process (``LocalEvaluator``) on vectors built from the same train ratings,
    scored at the pairs from those vectors."""
    import dataclasses

    import pyarrow as pa
    from pyspark.sql import functions as F

    from mfspark.autoencoder import build_rows
    from mfspark.models.autorec.network import Shape, predict_cells
    from mfspark.models.autorec.train import AutoRecParams, LocalEvaluator, blocks_from_table, fit
    from mfspark.models.members import fit_predict

    out, (train, test, users, items) = prepared_out
    cfg = load_config(
        None,
        [f"output.path={out}", "autorec.hidden=4", "autorec.epochs=6", "autorec.precision=float64"],
    )
    pairs = test.select(C.USER_IDX, C.ITEM_IDX)
    got = fit_predict(member, spark, train, pairs, users, items, cfg).toPandas()
    assert list(got.columns) == [C.USER_IDX, C.ITEM_IDX, C.PREDICTION] and len(got) == test.count()

    tr = train.toPandas()
    params = AutoRecParams.from_config(
        dataclasses.replace(cfg.autorec, orientation=orientation),
        clip=(float(tr[C.RATING].min()), float(tr[C.RATING].max())),
    )
    width = (users if orientation == "by_item" else items).count()
    scored = pairs.withColumn(C.RATING, F.lit(0.0).cast("float"))
    entities = items if orientation == "by_item" else users
    table = pa.Table.from_pandas(build_rows(train, scored, entities, orientation, 1).toPandas())
    blocks = blocks_from_table(table, orientation, width, params)
    shape = Shape(width, params.hidden)
    result = fit(LocalEvaluator(blocks, shape, params), params, float(tr[C.RATING].mean()))
    want = {}
    for b in blocks:
        p = predict_cells(result.theta, shape, b.inputs, b.test, params.activation, params.clip)
        rows = np.repeat(b.row_idx, np.diff(b.test.indptr))
        for r, c, v in zip(rows, b.test.indices, p, strict=True):
            want[(c, r) if orientation == "by_item" else (r, c)] = v
    mine = [want[(u, i)] for u, i in zip(got[C.USER_IDX], got[C.ITEM_IDX], strict=True)]
    np.testing.assert_allclose(got[C.PREDICTION], mine, rtol=0, atol=1e-6)
