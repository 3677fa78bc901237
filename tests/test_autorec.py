"""AutoRec: the network's gradient against finite differences and a dense oracle, the masked
loss, training on a planted low-rank matrix, the Spark evaluator against the in-process one,
the train_autorec stage end to end, and its configuration errors."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import scipy.sparse as sp

from mfspark import columns as C
from mfspark.config import load_config
from mfspark.errors import ConfigError, InputError
from mfspark.models.autorec.network import (
    ACTIVATIONS,
    RowBlock,
    Shape,
    init_params,
    keyed_uniform,
    predict_cells,
)
from mfspark.models.autorec.train import (
    AutoRecParams,
    LocalEvaluator,
    blocks_from_table,
    fit,
    objective_function,
)


def block_from_dense(values: np.ndarray, mask: np.ndarray, test_mask=None, row_idx=None) -> RowBlock:
    """A RowBlock whose training cells are ``values`` where ``mask`` (no validation share)."""
    n, width = values.shape
    test_mask = np.zeros_like(mask) if test_mask is None else test_mask

    def lists(m):
        rows, cols = np.nonzero(m)  # row-major: ascending columns within a row
        offsets = np.r_[0, np.cumsum(np.bincount(rows, minlength=n))]
        return offsets, cols, values[rows, cols]

    return RowBlock.from_lists(
        np.arange(n) if row_idx is None else row_idx,
        *lists(mask),
        *lists(test_mask),
        width,
        0.0,
        0,
        np.float64,
    )


def dense_oracle(theta, shape, values, mask, l2, activation):
    """J from the textbook dense formulas: every cell reconstructed, loss masked afterwards."""
    enc, dec, hb, ob = shape.unpack(theta)
    z = (values * mask) @ enc + hb
    a = {"sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh, "relu": lambda v: np.maximum(v, 0)}[
        activation
    ](z)
    recon = a @ dec.T + ob
    return float((((recon - values) * mask) ** 2).sum()) + 0.5 * l2 * float(
        (enc**2).sum() + (dec**2).sum()
    )


def small_problem(seed=0, n=6, width=8, hidden=4):
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 6, (n, width)).astype(float)
    mask = rng.random((n, width)) < 0.5
    mask[:, 0] = True  # every row has a cell
    shape = Shape(width, hidden)
    theta = init_params(shape, seed, 0.4, 3.0, np.float64) + rng.normal(0, 0.1, shape.size)
    return values, mask, shape, theta


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradient_equals_finite_differences(activation, dropout):
    values, mask, shape, theta = small_problem()
    params = AutoRecParams(
        hidden=shape.hidden,
        activation=activation,
        l2=0.7,
        input_dropout=dropout,
        validation_fraction=0.0,
        dtype=np.float64,
    )
    evaluate = objective_function(
        LocalEvaluator([block_from_dense(values, mask)], shape, params), params
    )
    got = evaluate(theta, 3)
    eps = 1e-6
    numeric = np.empty(shape.size)
    for k in range(shape.size):
        step = np.zeros(shape.size)
        step[k] = eps
        numeric[k] = (evaluate(theta + step, 3).objective - evaluate(theta - step, 3).objective) / (
            2 * eps
        )
    scale = np.abs(numeric).max()
    assert np.abs(got.gradient - numeric).max() <= 1e-6 * scale
    if dropout == 0:  # the sparse gather agrees with the dense textbook formula
        assert got.objective == pytest.approx(
            dense_oracle(theta, shape, values, mask, 0.7, activation), rel=1e-12
        )


def test_masked_loss_ignores_unobserved_cells():
    values, mask, shape, theta = small_problem(seed=1)
    params = AutoRecParams(hidden=shape.hidden, l2=0.5, validation_fraction=0.0, dtype=np.float64)

    def loss_and_grad(v):
        ev = objective_function(LocalEvaluator([block_from_dense(v, mask)], shape, params), params)
        e = ev(theta, 1)
        return e.objective, e.gradient

    base_j, base_g = loss_and_grad(values)
    changed = values.copy()
    changed[~mask] = 1000.0  # every unobserved target (and input) changed
    j, g = loss_and_grad(changed)
    assert j == base_j
    np.testing.assert_array_equal(g, base_g)
    # ... while changing one observed cell changes the loss (the test can fail).
    r, c = np.argwhere(mask)[3]
    changed[r, c] += 1.0
    assert loss_and_grad(changed)[0] != base_j


def test_block_boundaries_change_only_summation_order():
    values, mask, shape, theta = small_problem(seed=2, n=9)
    params = AutoRecParams(hidden=shape.hidden, l2=0.5, validation_fraction=0.0, dtype=np.float64)
    whole = block_from_dense(values, mask)
    parts = [
        block_from_dense(values[a:b], mask[a:b], row_idx=np.arange(a, b))
        for a, b in ((0, 2), (2, 7), (7, 9))
    ]
    one = objective_function(LocalEvaluator([whole], shape, params), params)(theta, 0)
    three = objective_function(LocalEvaluator(parts, shape, params), params)(theta, 0)
    assert three.objective == pytest.approx(one.objective, rel=1e-13)
    np.testing.assert_allclose(three.gradient, one.gradient, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("score_test", [True, False])
def test_test_rmse_is_scored_only_when_the_test_cells_hold_ratings(score_test):
    """One iteration: the recorded test RMSE is the kept weights' error at the test cells
    (computed here from ``predict_cells``); a blend member's placeholder cells get none."""
    values, mask, shape, _ = small_problem(seed=3, n=8)
    test_mask = ~mask
    test_mask[:, 1] = False  # some unobserved cells are neither train nor test
    params = AutoRecParams(
        hidden=shape.hidden, l2=0.5, validation_fraction=0.0, dtype=np.float64, epochs=1
    )
    block = block_from_dense(values, mask, test_mask)
    result = fit(LocalEvaluator([block], shape, params), params, 3.0, score_test=score_test)
    (epoch,) = result.history
    if not score_test:
        assert epoch.test_rmse is None
        return
    pred = predict_cells(result.theta, shape, block.inputs, block.test, "sigmoid", None)
    want = float(np.sqrt(np.mean((pred - values[test_mask]) ** 2)))
    assert epoch.test_rmse == pytest.approx(want, rel=1e-10)


def test_validation_and_dropout_draws_are_keyed_not_ordered():
    rows, cols = np.array([5, 9, 5, 2]), np.array([1, 1, 3, 0])
    u = keyed_uniform(7, 1, rows, cols)
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_array_equal(keyed_uniform(7, 1, rows[perm], cols[perm]), u[perm])
    assert not np.array_equal(keyed_uniform(8, 1, rows, cols), u)
    assert not np.array_equal(keyed_uniform(7, 2, rows, cols), u)
    big = keyed_uniform(3, 1, np.arange(20000), np.zeros(20000))
    assert 0.48 < big.mean() < 0.52 and big.min() >= 0 and big.max() < 1


# ---------------------------------------------------------------------------------------------
# Planted low-rank data (shared by the numpy and Spark tests)
# ---------------------------------------------------------------------------------------------

N_USERS, N_ITEMS = 90, 60


def planted_ratings(seed=3, n_users=N_USERS, n_items=N_ITEMS, rank=3, density=0.35, noise=0.1):
    """Rank-3 ratings on ~1–5 plus small noise; train/test cells; user 0 and item 0 are cold
    (test ratings only)."""
    rng = np.random.default_rng(seed)
    w, u = rng.normal(0, 1, (n_users, rank)), rng.normal(0, 1, (n_items, rank))
    truth = 3.0 + 0.6 * (w @ u.T) / np.sqrt(rank)
    observed = rng.random((n_users, n_items)) < density
    rows, cols = np.nonzero(observed)
    r = np.clip(truth[rows, cols] + rng.normal(0, noise, len(rows)), 1, 5)
    frame = pd.DataFrame({C.USER_IDX: rows, C.ITEM_IDX: cols, C.RATING: r})
    is_test = (rng.random(len(frame)) < 0.15) | (frame[C.USER_IDX] == 0) | (frame[C.ITEM_IDX] == 0)
    return frame[~is_test].reset_index(drop=True), frame[is_test].reset_index(drop=True)


def rows_table(train: pd.DataFrame, test: pd.DataFrame, orientation="by_item"):
    """The ae_inputs rows as an Arrow table, built with pandas (independently of Spark)."""
    import pyarrow as pa

    row_col, col_col = (C.ITEM_IDX, C.USER_IDX) if orientation == "by_item" else (C.USER_IDX, C.ITEM_IDX)
    n = N_ITEMS if orientation == "by_item" else N_USERS

    def lists(frame):
        f = frame.sort_values([row_col, col_col])
        counts = np.bincount(f[row_col], minlength=n)
        offsets = pa.array(np.r_[0, np.cumsum(counts)].astype(np.int32))
        return (
            pa.ListArray.from_arrays(offsets, pa.array(f[col_col].to_numpy(np.int32))),
            pa.ListArray.from_arrays(offsets, pa.array(f[C.RATING].to_numpy(np.float32))),
        )

    ti, tv = lists(train)
    si, sv = lists(test)
    return pa.table(
        {
            row_col: pa.array(np.arange(n, dtype=np.int32)),
            C.TRAIN_INDICES: ti,
            C.TRAIN_VALUES: tv,
            C.TEST_INDICES: si,
            C.TEST_VALUES: sv,
        }
    )


@pytest.mark.parametrize("optimizer, patience", [("lbfgs", 15), ("rprop", 40)])
def test_planted_low_rank_beats_global_mean(optimizer, patience):
    train, test = planted_ratings()
    params = AutoRecParams(
        hidden=20,
        l2=1.0,
        epochs=150,
        validation_fraction=0.1,
        patience=patience,  # Rprop's validation error first rises while it leaves the mean
        init_std=0.05,
        dtype=np.float64,
        clip=(1.0, 5.0),
        optimizer=optimizer,
    )
    blocks = blocks_from_table(rows_table(train, test), "by_item", N_USERS, params)
    result = fit(
        LocalEvaluator(blocks, Shape(N_USERS, 20), params), params, float(train[C.RATING].mean())
    )
    warm = test[(test[C.USER_IDX] > 0) & (test[C.ITEM_IDX] > 0)]
    baseline = float(np.sqrt(((warm[C.RATING] - train[C.RATING].mean()) ** 2).mean()))
    # Score the kept weights on the warm test cells with an independent lookup.
    enc_in = sp.csr_matrix(
        (train[C.RATING], (train[C.ITEM_IDX], train[C.USER_IDX])), shape=(N_ITEMS, N_USERS)
    )
    # The network was fitted without the validation cells: predict from the same inputs.
    val = keyed_uniform(params.seed, 1, train[C.ITEM_IDX].to_numpy(), train[C.USER_IDX].to_numpy()) < 0.1
    kept = train[~val]
    inputs = sp.csr_matrix((kept[C.RATING], (kept[C.ITEM_IDX], kept[C.USER_IDX])), shape=enc_in.shape)
    cells = sp.csr_matrix((np.ones(len(warm)), (warm[C.ITEM_IDX], warm[C.USER_IDX])), shape=enc_in.shape)
    cells.sort_indices()
    pred = predict_cells(result.theta, result.shape, inputs, cells, "sigmoid", (1.0, 5.0))
    truth = sp.csr_matrix((warm[C.RATING], (warm[C.ITEM_IDX], warm[C.USER_IDX])), shape=enc_in.shape)
    truth.sort_indices()
    got = float(np.sqrt(((pred - truth.data) ** 2).mean()))
    assert result.best_iteration > 1
    assert got < 0.6 * baseline, (got, baseline)


# ---------------------------------------------------------------------------------------------
# Spark: distributed evaluator, stage, configuration errors
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ae_out(spark, tmp_path_factory):
    """prepared/* of the planted data and ae_inputs built by the real stage."""
    from prepared_data import prepared_frames, write_prepared

    from mfspark.autoencoder import run_build_autoencoder_inputs

    out = str(tmp_path_factory.mktemp("autorec"))
    train, test = planted_ratings()
    frames = prepared_frames(spark, train, test, N_USERS, N_ITEMS, 100, 7000)
    write_prepared(spark, out, frames)
    run_build_autoencoder_inputs(load_config(None, [f"output.path={out}", "data.rating_min=0.5"]), spark)
    return out, train, test


@pytest.mark.parametrize(
    "orientation,chunk_bytes", [("by_item", 64 << 20), ("by_user", 64 << 20), ("by_item", 1000)]
)
def test_distributed_gradient_equals_single_process(
    spark, ae_out, orientation, chunk_bytes, monkeypatch
):
    from mfspark.models.autorec import spark as autorec_spark
    from mfspark.models.autorec.spark import SparkEvaluator, gradient_chunks

    # 1000-byte slices: the gradient is summed by many reducers and put back together.
    monkeypatch.setattr(autorec_spark, "CHUNK_BYTES", chunk_bytes)

    out, _, _ = ae_out
    width = N_USERS if orientation == "by_item" else N_ITEMS
    params = AutoRecParams(
        orientation=orientation,
        hidden=8,
        l2=2.0,
        input_dropout=0.2,
        validation_fraction=0.1,
        dtype=np.float64,
        block_cells=150,
    )
    shape = Shape(width, 8)
    theta = init_params(shape, 5, 0.1, 3.0, np.float64)
    table = ds.dataset(f"{out}/{C.AE_PATHS[orientation]}").to_table()
    local = LocalEvaluator(blocks_from_table(table, orientation, width, params), shape, params)
    want = local.totals(theta, 4, True)
    rows = spark.read.parquet(f"{out}/{C.AE_PATHS[orientation]}")
    evaluator = SparkEvaluator(spark, rows, orientation, width, params, num_partitions=3)
    try:
        got = evaluator.totals(theta, 4, True)
    finally:
        evaluator.close()
    assert evaluator.n_blocks > 3  # several blocks per partition: sums across both levels
    slices = len(gradient_chunks(shape.size, 8)) - 1
    assert slices == (1 if chunk_bytes > 1e6 else -(-shape.size * 8 // 1000)) and slices < shape.size
    assert (got.train_n, got.validation_n, got.test_n) == (want.train_n, want.validation_n, want.test_n)
    assert got.validation_n > 0 and got.test_n > 0
    for name in ("loss", "train_sse", "validation_sse", "test_sse"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-9)
    scale = np.abs(want.gradient).max()
    assert np.abs(got.gradient - want.gradient).max() <= 1e-6 * scale


def stage_config(out, *extra):
    return load_config(
        None,
        [
            f"output.path={out}",
            "autorec.hidden=16",
            "autorec.epochs=25",
            "autorec.l2=1.0",
            "autorec.init_std=0.05",
            "autorec.patience=10",
            "autorec.num_partitions=3",
            *extra,
        ],
    )


def test_stage_end_to_end(spark, ae_out, tmp_path):
    import shutil

    from mfspark.models.autorec.job import load_weights, run_train_autorec
    from mfspark.models.factor_model import FactorModel
    from mfspark.models.factors import BiasedMF

    src, train, test = ae_out
    out = str(tmp_path / "out")
    shutil.copytree(src, out)
    # An ALS model with known biases, for the cold-start fallback.
    rng = np.random.default_rng(0)
    ub, ib = rng.normal(0, 0.3, N_USERS), rng.normal(0, 0.3, N_ITEMS)
    ub[0], ib[0] = 0.0, 0.0  # cold: ALS leaves them at 0
    prepared_users = spark.read.parquet(f"{out}/{C.PREPARED_USERS}")
    prepared_items = spark.read.parquet(f"{out}/{C.PREPARED_ITEMS}")
    als = FactorModel(
        BiasedMF(3.2, np.zeros((N_USERS, 2), np.float32), ub, np.zeros((N_ITEMS, 2), np.float32), ib),
        prepared_users.select(C.USER_ID, C.USER_IDX),
        prepared_items.select(C.ITEM_ID, C.ITEM_IDX),
        {},
    )
    als.save(f"{out}/models/als")

    entry = run_train_autorec(stage_config(out), spark)
    pred = spark.read.parquet(f"{out}/{C.PREDICTIONS}/model=autorec").toPandas()
    assert len(pred) == len(test) and np.isfinite(pred[C.PREDICTION]).all()
    cold = pred[pred[C.COLD_USER] | pred[C.COLD_ITEM]]
    assert len(cold) == entry["cold_fallback"]["rows"] > 0
    expected = np.clip(
        3.2 + ub[cold[C.USER_IDX]] + ib[cold[C.ITEM_IDX]], train[C.RATING].min(), train[C.RATING].max()
    )
    np.testing.assert_allclose(cold[C.PREDICTION], expected, rtol=1e-12)

    # Warm predictions are the saved network's output at those cells (weights round-trip).
    theta, shape, meta = load_weights(spark, f"{out}/models/autorec")
    assert meta["orientation"] == "by_item" and meta["best_iteration"] == entry["best_iteration"]
    table = ds.dataset(f"{out}/{C.AE_BY_ITEM}").to_table()
    params = AutoRecParams.from_config(
        stage_config(out).autorec, clip=(float(train[C.RATING].min()), float(train[C.RATING].max()))
    )
    blocks = blocks_from_table(table, "by_item", N_USERS, params)
    warm = pred[~(pred[C.COLD_USER] | pred[C.COLD_ITEM])].set_index([C.ITEM_IDX, C.USER_IDX])[
        C.PREDICTION
    ]
    for b in blocks:
        p = predict_cells(theta, shape, b.inputs, b.test, "sigmoid", params.clip)
        keys = list(zip(np.repeat(b.row_idx, np.diff(b.test.indptr)), b.test.indices, strict=True))
        mine = [k for k in range(len(keys)) if keys[k] in warm.index]
        np.testing.assert_allclose(warm.loc[[keys[k] for k in mine]].to_numpy(), p[mine], rtol=1e-5)

    # The summary is the masked evaluation of exactly these predictions.
    summary = spark.read.parquet(f"{out}/{C.METRICS_SUMMARY}").toPandas()
    row = summary[(summary["model"] == "autorec") & (summary["segment"] == "all")].iloc[0]
    assert row["rmse"] == pytest.approx(
        float(np.sqrt(((pred[C.PREDICTION] - pred[C.RATING]) ** 2).mean()))
    )
    assert row["n"] == len(test) and row["n_missing"] == 0 and row["n_nonfinite"] == 0
    history = spark.read.parquet(f"{out}/{C.METRICS_HISTORY}").toPandas()
    mine = history[history["model"] == "autorec"].sort_values("iteration")
    assert mine["iteration"].tolist() == list(range(1, entry["iterations"] + 1))
    warm_rows = pred[~(pred[C.COLD_USER] | pred[C.COLD_ITEM])]
    warm_rmse = float(np.sqrt(((warm_rows[C.PREDICTION] - warm_rows[C.RATING]) ** 2).mean()))
    baseline = float(np.sqrt(((warm_rows[C.RATING] - train[C.RATING].mean()) ** 2).mean()))
    assert warm_rmse < 0.75 * baseline, (warm_rmse, baseline)

    # Same seed and partitions: identical; other partitioning: the same up to summation order
    # (shorter runs than the one above: the property does not depend on their length).
    short = ("autorec.epochs=4",)
    first = run_train_autorec(stage_config(out, *short), spark)
    again = run_train_autorec(stage_config(out, *short), spark)
    assert again["test_rmse"] == first["test_rmse"] != entry["test_rmse"]
    other = run_train_autorec(
        stage_config(out, *short, "autorec.num_partitions=2", "autorec.block_cells=97"), spark
    )
    assert abs(other["test_rmse"] - first["test_rmse"]) <= 1e-4

    # U-AutoRec writes beside it; reading predictions whole gives both models.
    run_train_autorec(stage_config(out, "autorec.orientation=by_user", "autorec.epochs=5"), spark)
    models = {
        r["model"]
        for r in spark.read.parquet(f"{out}/{C.PREDICTIONS}").select("model").distinct().collect()
    }
    assert models == {"autorec", "autorec_user"}
    summary = spark.read.parquet(f"{out}/{C.METRICS_SUMMARY}").toPandas()
    assert {"autorec", "autorec_user"} <= set(summary["model"])


@pytest.mark.parametrize(
    "setting, key",
    [
        ("autorec.hidden=0", "autorec.hidden"),
        ("autorec.hidden=-5", "autorec.hidden"),
        ("autorec.input_dropout=1.0", "autorec.input_dropout"),
        ("autorec.input_dropout=-0.1", "autorec.input_dropout"),
        ("autorec.orientation=sideways", "autorec.orientation"),
    ],
)
def test_bad_config_names_the_key(setting, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [setting])
    message = str(err.value)
    assert key in message and "\n" not in message


def test_missing_inputs_fail_before_spark(tmp_path, run_job):
    from mfspark.models.autorec.job import preflight_train_autorec

    out = str(tmp_path / "empty")
    os.makedirs(out)
    with pytest.raises(InputError, match="build_autoencoder_inputs"):
        preflight_train_autorec(load_config(None, [f"output.path={out}"]))
    result = run_job("train_autorec", "--set", f"output.path={out}", timeout=120)
    assert result.returncode == 3
    lines = [ln for ln in result.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "ae_inputs/by_item" in lines[0] and "build_autoencoder_inputs" in lines[0]
    assert "Spark" not in result.stderr  # failed before the JVM started


def test_a_gradient_over_the_driver_result_limit_is_refused_with_the_remedy():
    from mfspark.models.autorec.job import check_result_size

    params = AutoRecParams(hidden=500, dtype=np.float32)
    w = 138_493  # MovieLens-20M users: |θ| = 138.6 M float32 values, 554 MB
    check_result_size(w, params, "1g")  # one gradient per iteration reaches the driver
    check_result_size(w, params, "0")  # 0: unlimited
    with pytest.raises(ConfigError) as err:
        check_result_size(w, params, "512m")
    message = str(err.value)
    assert "\n" not in message and "spark.driver.maxResultSize=512m" in message
    assert f"{(2 * w * 500 + 500 + w) * 4 * 1.05 / 2**20 + 1:,.0f} MB" in message
    assert "--set spark.conf.spark.driver.maxResultSize=2g" in message


def test_optimizer_state_over_the_machine_memory_is_refused_with_the_remedies():
    import os

    from mfspark.models.autorec.job import check_driver_memory, optimizer_bytes

    params = AutoRecParams(hidden=500, lbfgs_history=5, dtype=np.float32)
    # By hand: (5 + 2·5) vectors of |θ| = 2·w·h + h + w float32 values.
    w = 138_493
    assert optimizer_bytes(w, params) == 15 * (2 * w * 500 + 500 + w) * 4
    rprop = AutoRecParams(hidden=500, optimizer="rprop", dtype=np.float64)
    assert optimizer_bytes(w, rprop) == 5 * (2 * w * 500 + 500 + w) * 8
    check_driver_memory(1_000, params, "autorec")  # 60 MB: fine anywhere
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    too_wide = int(total / (15 * 4 * 2 * 500)) + 1  # |θ| alone puts the state over the memory
    with pytest.raises(ConfigError) as err:
        check_driver_memory(too_wide, params, "autorec")
    message = str(err.value)
    assert "\n" not in message and "autorec.hidden=500" in message
    assert "autorec.optimizer=rprop" in message and "pipeline.stages" in message
    assert "precision" not in message  # float32 already
