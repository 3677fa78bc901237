"""Masked test metrics: a hand-worked example, a numpy oracle on random data, reconstructions,
non-finite and missing predictions, and merging ``metrics/summary`` across models."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from prepared_data import prepared_frames as shared_prepared_frames
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.config import load_config
from mfspark.errors import ConfigError, InputError, MfsparkError
from mfspark.evaluation import (
    activity_segments,
    format_summary,
    reconstructions_to_predictions,
    run_evaluate,
    score_predictions,
    summarize_predictions,
    write_summary,
)
from mfspark.io import read_manifest, staged_outputs

USER_ID0, ITEM_ID0 = 100, 10  # original ids differ from idx, so an id join is really tested


def prepared_frames(spark, train: pd.DataFrame, test: pd.DataFrame, n_users: int, n_items: int):
    return shared_prepared_frames(spark, train, test, n_users, n_items, USER_ID0, ITEM_ID0)


def long_predictions(spark, cells: pd.DataFrame, by_ids: bool = False):
    """(user_idx, item_idx, prediction) — or with original ids — as a Spark DataFrame.

    Built from tuples: Arrow's pandas conversion would turn NaN into null.
    """
    offset, key = (USER_ID0, ITEM_ID0), (C.USER_IDX, C.ITEM_IDX)
    if by_ids:
        key, key_type = (C.USER_ID, C.ITEM_ID), T.LongType()
    else:
        offset, key_type = (0, 0), T.IntegerType()
    rows = [
        (int(u) + offset[0], int(i) + offset[1], float(p))
        for u, i, p in cells[[C.USER_IDX, C.ITEM_IDX, C.PREDICTION]].itertuples(index=False)
    ]
    schema = T.StructType(
        [T.StructField(key[0], key_type), T.StructField(key[1], key_type)]
        + [T.StructField(C.PREDICTION, T.DoubleType())]
    )
    return spark.createDataFrame(rows, schema)


# ---------------------------------------------------------------------------------------------
# The hand-worked 4 users × 5 items example
# ---------------------------------------------------------------------------------------------
#
# Train: u0 rated i0 i1 i2 (n_train 3), u1 rated i0 i3 (2), u2 rated i1 (1), u3 nothing (cold
# user); nobody rated i4 (cold item).
#
#  row  cell      r   r̂     e = r̂ − r   segments besides `all`
#   1   (u0,i3)   4   3.5   −0.5        warm, activity_3_plus
#   2   (u0,i4)   2   3.0   +1.0        cold_item, activity_3_plus
#   3   (u1,i1)   5   4.0   −1.0        warm, activity_1_2
#   4   (u1,i2)   3   3.0    0.0        warm, activity_1_2
#   5   (u2,i0)   1   3.0   +2.0        warm, activity_1_2
#   6   (u3,i2)   4   3.5   −0.5        cold_user
#   7   (u3,i4)   3   NaN    —          cold_user, cold_item        → n_nonfinite
#   8   (u2,i3)   2   none   —          warm, activity_1_2          → n_missing
# plus a prediction for (u3,i0), which is not a test cell: ignored.
#
# all:       n 8, scored rows 1–6: Σe² = .25+1+1+0+4+.25 = 6.5, Σ|e| = 5
#            rmse = √(6.5/6) = 1.0408330, mae = 5/6 = 0.8333333, nonfinite 1, missing 1
# warm:      n 5, scored 1,3,4,5: Σe² = .25+1+0+4 = 5.25, Σ|e| = 3.5 → rmse √1.3125, mae .875
# cold_user: n 2, scored 6: rmse .5, mae .5, nonfinite 1
# cold_item: n 2, scored 2: rmse 1, mae 1, nonfinite 1
# edges [1, 3]: activity_1_2 (u1, u2): n 4, scored 3,4,5: Σe² = 5, Σ|e| = 3 → √(5/3), 1.0, missing 1
#               activity_3_plus (u0): n 2, scored 1,2: Σe² = 1.25, Σ|e| = 1.5 → √.625, .75
# u3 (n_train 0) is below the first edge: in no activity bucket.

HAND_TRAIN = pd.DataFrame(
    [(0, 0, 5.0), (0, 1, 3.0), (0, 2, 4.0), (1, 0, 2.0), (1, 3, 4.0), (2, 1, 3.0)],
    columns=[C.USER_IDX, C.ITEM_IDX, C.RATING],
)
HAND_TEST = pd.DataFrame(
    [
        (0, 3, 4.0, 3.5),
        (0, 4, 2.0, 3.0),
        (1, 1, 5.0, 4.0),
        (1, 2, 3.0, 3.0),
        (2, 0, 1.0, 3.0),
        (3, 2, 4.0, 3.5),
        (3, 4, 3.0, np.nan),
        (2, 3, 2.0, None),
    ],
    columns=[C.USER_IDX, C.ITEM_IDX, C.RATING, C.PREDICTION],
)
HAND_EXPECTED = {  # segment: (n, rmse, mae, n_nonfinite, n_missing)
    "all": (8, math.sqrt(6.5 / 6), 5 / 6, 1, 1),
    "warm": (5, math.sqrt(5.25 / 4), 3.5 / 4, 0, 1),
    "cold_user": (2, 0.5, 0.5, 1, 0),
    "cold_item": (2, 1.0, 1.0, 1, 0),
    "activity_1_2": (4, math.sqrt(5 / 3), 1.0, 0, 1),
    "activity_3_plus": (2, math.sqrt(0.625), 0.75, 0, 0),
}


@pytest.fixture(scope="module")
def hand(spark):
    return prepared_frames(spark, HAND_TRAIN, HAND_TEST[[C.USER_IDX, C.ITEM_IDX, C.RATING]], 4, 5)


def hand_predictions(spark, by_ids=False):
    # Row 8 has no prediction row at all; (u3, i0) is an extra, non-test prediction.
    cells = pd.concat([HAND_TEST.iloc[:7], pd.DataFrame([(3, 0, 9.0, 2.5)], columns=HAND_TEST.columns)])
    return long_predictions(spark, cells, by_ids)


def assert_summary(rows: list[dict], expected: dict, model: str) -> None:
    got = {r["segment"]: r for r in rows}
    assert list(got) == list(expected)
    for segment, (n, rmse, mae, bad, absent) in expected.items():
        r = got[segment]
        assert r["model"] == model
        assert (r["n"], r["n_nonfinite"], r["n_missing"]) == (n, bad, absent), segment
        assert r["rmse"] == pytest.approx(rmse, abs=1e-12), segment
        assert r["mae"] == pytest.approx(mae, abs=1e-12), segment


@pytest.mark.parametrize("by_ids", [False, True], ids=["idx_join", "id_join"])
def test_hand_worked_example(spark, hand, by_ids, caplog):
    train, test, users, _ = hand
    scores = score_predictions(hand_predictions(spark, by_ids), test, users, "hand", [1, 3])
    assert_summary(scores.rows, HAND_EXPECTED, "hand")
    assert scores.n_test == 8 and scores.n_extra_predictions == 1
    assert "1 are missing" in caplog.text and "not in the test set" in caplog.text


def test_summarize_predictions_frame_has_summary_schema(spark, hand):
    _, test, users, _ = hand
    frame = summarize_predictions(hand_predictions(spark), test, users, "hand", [1, 3])
    assert frame.schema == C.SUMMARY_SCHEMA
    assert_summary([r.asDict() for r in frame.collect()], HAND_EXPECTED, "hand")
    table = format_summary([r.asDict() for r in frame.collect()])
    assert "activity_3_plus" in table and "1.0408" in table


def test_duplicate_predictions_are_an_error(spark, hand):
    _, test, users, _ = hand
    twice = hand_predictions(spark).unionByName(hand_predictions(spark).limit(1))
    with pytest.raises(MfsparkError, match="more than one prediction"):
        score_predictions(twice, test, users, "dup", [1])


def test_activity_segment_names_and_bad_edges():
    assert [s[0] for s in activity_segments([1, 20, 50, 200, 1000])] == [
        "activity_1_19",
        "activity_20_49",
        "activity_50_199",
        "activity_200_999",
        "activity_1000_plus",
    ]
    assert activity_segments([]) == []
    for bad in ([5, 5], [20, 1], [-1, 3], [1.5]):
        with pytest.raises(ConfigError, match="activity_buckets"):
            activity_segments(bad)


def test_reconstruction_exact_on_test_cells_scores_zero(spark, hand):
    """By-item reconstructions equal to the truth at test cells, garbage elsewhere → 0."""
    _, test, users, _ = hand
    rng = np.random.default_rng(0)
    recon = rng.uniform(-50, 50, (5, 4)).astype(np.float32)  # items × users
    t = HAND_TEST
    recon[t[C.ITEM_IDX], t[C.USER_IDX]] = t[C.RATING]
    frame = spark.createDataFrame(
        [(j, recon[j].tolist()) for j in range(5)],
        T.StructType(
            [
                T.StructField(C.ITEM_IDX, T.IntegerType()),
                T.StructField(C.RECONSTRUCTION, T.ArrayType(T.FloatType())),
            ]
        ),
    )
    predictions = reconstructions_to_predictions(frame, test, "by_item")
    assert predictions.count() == len(HAND_TEST)  # the test cells only, never the dense matrix
    scores = score_predictions(predictions, test, users, "recon", [1, 3])
    for r in scores.rows:
        assert r["n_nonfinite"] == r["n_missing"] == 0
        assert r["rmse"] == 0.0 and r["mae"] == 0.0, r


# ---------------------------------------------------------------------------------------------
# Random data against a numpy oracle
# ---------------------------------------------------------------------------------------------

N_USERS, N_ITEMS, EDGES = 120, 70, [1, 5, 15, 40]


@pytest.fixture(scope="module")
def random_case(spark):
    """Random train/test cells with cold users/items, non-finite and missing predictions."""
    rng = np.random.default_rng(7)
    cells = rng.choice(N_USERS * N_ITEMS, 3000, replace=False)
    u, i = cells // N_ITEMS, cells % N_ITEMS
    r = rng.integers(1, 11, len(cells)) / 2.0
    is_test = (rng.random(len(cells)) < 0.3) | (u >= 110) | (i >= 65)  # cold users and items
    train = pd.DataFrame({C.USER_IDX: u[~is_test], C.ITEM_IDX: i[~is_test], C.RATING: r[~is_test]})
    test = pd.DataFrame({C.USER_IDX: u[is_test], C.ITEM_IDX: i[is_test], C.RATING: r[is_test]})
    test = test.reset_index(drop=True)
    pred = test[C.RATING].to_numpy() + rng.normal(0, 0.9, len(test))
    special = rng.choice(len(test), 40, replace=False)
    pred[special[:10]] = np.nan
    pred[special[10:15]] = np.inf
    pred[special[15:20]] = -np.inf
    keep = np.ones(len(test), bool)
    keep[special[20:30]] = False  # no prediction row
    pred[special[30:]] = np.nan  # (null below)
    test[C.PREDICTION] = pred
    frames = prepared_frames(spark, train, test[[C.USER_IDX, C.ITEM_IDX, C.RATING]], N_USERS, N_ITEMS)
    return train, test, keep, special[30:], frames


def numpy_summary(train, test, pred, present, edges) -> dict:
    """Per segment (n, rmse, mae, n_nonfinite, n_missing) computed directly with numpy."""
    user_n = np.bincount(train[C.USER_IDX], minlength=N_USERS)
    item_n = np.bincount(train[C.ITEM_IDX], minlength=N_ITEMS)
    nu = user_n[test[C.USER_IDX]]
    cold_u, cold_i = nu == 0, item_n[test[C.ITEM_IDX]] == 0
    segments = {
        "all": np.ones(len(test), bool),
        "warm": ~cold_u & ~cold_i,
        "cold_user": cold_u,
        "cold_item": cold_i,
    }
    bounds = [*edges, np.inf]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        name = f"activity_{lo}_plus" if hi == np.inf else f"activity_{lo}_{hi - 1}"
        segments[name] = (nu >= lo) & (nu < hi)
    err = pred - test[C.RATING].to_numpy()
    finite = present & np.isfinite(pred)
    out = {}
    for name, s in segments.items():
        e = err[s & finite]
        out[name] = (
            int(s.sum()),
            float(np.sqrt(np.mean(e**2))) if len(e) else None,
            float(np.mean(np.abs(e))) if len(e) else None,
            int((s & present & ~np.isfinite(pred)).sum()),
            int((s & ~present).sum()),
        )
    return out


def assert_close_to_numpy(rows, expected):
    got = {r["segment"]: r for r in rows}
    assert list(got) == list(expected)
    for segment, (n, rmse, mae, bad, absent) in expected.items():
        r = got[segment]
        assert (r["n"], r["n_nonfinite"], r["n_missing"]) == (n, bad, absent), segment
        if rmse is None:
            assert r["rmse"] is None and r["mae"] is None
        else:
            assert abs(r["rmse"] - rmse) < 1e-9 and abs(r["mae"] - mae) < 1e-9, segment


def test_random_long_predictions_equal_numpy(spark, random_case):
    train, test, keep, null_rows, (_, test_df, users_df, _) = random_case
    frame = test[keep].copy()
    frame[C.PREDICTION] = frame[C.PREDICTION].astype(object)
    frame.loc[frame.index.isin(null_rows), C.PREDICTION] = None  # null predictions: missing too
    predictions = spark.createDataFrame(
        [
            (int(a), int(b), None if p is None else float(p))
            for a, b, p in frame[[C.USER_IDX, C.ITEM_IDX, C.PREDICTION]].itertuples(index=False)
        ],
        T.StructType(
            [
                T.StructField(C.USER_IDX, T.IntegerType()),
                T.StructField(C.ITEM_IDX, T.IntegerType()),
                T.StructField(C.PREDICTION, T.DoubleType()),
            ]
        ),
    )
    present = keep.copy()
    present[null_rows] = False
    expected = numpy_summary(train, test, test[C.PREDICTION].to_numpy(), present, EDGES)
    assert expected["all"][3] == 20 and expected["all"][4] == 20  # the planted specials
    scores = score_predictions(predictions, test_df, users_df, "random", EDGES)
    assert_close_to_numpy(scores.rows, expected)


def test_random_by_user_reconstructions_equal_numpy(spark, random_case):
    """Row-vector reconstructions (users × items), some rows absent, some arrays too short."""
    train, test, _, _, (_, test_df, users_df, _) = random_case
    rng = np.random.default_rng(3)
    recon = rng.normal(3, 1.5, (N_USERS, N_ITEMS)).astype(np.float32)
    recon[rng.random(recon.shape) < 0.02] = np.nan
    absent_users = {3, 50, 111}
    short = {7: 30}  # user 7's array covers items 0..29 only
    rows = [
        (uu, recon[uu, : short.get(uu, N_ITEMS)].tolist())
        for uu in range(N_USERS)
        if uu not in absent_users
    ]
    frame = spark.createDataFrame(rows, ["row_idx", "scores"])  # the generic row_idx key
    predictions = reconstructions_to_predictions(frame, test_df, "by_user", column="scores")
    u, i = test[C.USER_IDX].to_numpy(), test[C.ITEM_IDX].to_numpy()
    pred = recon[u, i].astype(np.float64)
    present = ~np.isin(u, list(absent_users)) & ~((u == 7) & (i >= 30))
    expected = numpy_summary(train, test, pred, present, EDGES)
    assert expected["all"][4] > 0 and expected["all"][3] > 0
    assert_close_to_numpy(score_predictions(predictions, test_df, users_df, "ae", EDGES).rows, expected)


def test_bad_inputs_name_the_problem(spark, hand):
    _, test, users, _ = hand
    with pytest.raises(InputError, match="prediction"):
        score_predictions(test.select(C.USER_IDX, C.ITEM_IDX), test, users, "x")
    frame = spark.createDataFrame([(0, 1.0)], [C.ITEM_IDX, C.RECONSTRUCTION])
    with pytest.raises(InputError, match="array of numbers"):
        reconstructions_to_predictions(frame, test, "by_item")


# ---------------------------------------------------------------------------------------------
# metrics/summary across models, and the job
# ---------------------------------------------------------------------------------------------


def test_write_summary_replaces_only_this_models_rows(spark, hand, tmp_path):
    _, test, users, _ = hand
    out = str(tmp_path)
    scores = score_predictions(hand_predictions(spark), test, users, "a", [1, 3])

    def frame(model, n):
        scores.model = model
        scores.rows = [{**r, "model": model, "n": n} for r in scores.rows]
        return scores.to_frame(spark)

    frame("a", 1).unionByName(frame("b", 2)).write.parquet(f"{out}/{C.METRICS_SUMMARY}")
    with staged_outputs(spark, out) as stage:
        write_summary(spark, stage, out, frame("a", 3), "a")  # replaces a's rows, keeps b's
    rows = spark.read.parquet(f"{out}/{C.METRICS_SUMMARY}").collect()
    assert sorted((r.model, r.n) for r in rows) == [("a", 3)] * 6 + [("b", 2)] * 6


def test_evaluate_job_scores_predictions_and_reconstructions(spark, hand, tmp_path, run_job):
    """The job file end to end (one subprocess), then in-process for the reconstruction path."""
    train, test, users, items = hand
    out = str(tmp_path / "out")
    # Committed as the stages commit them: the job reads only committed inputs.
    with staged_outputs(spark, out, stage="prepare") as stage:
        for df, name in (
            (train, C.PREPARED_TRAIN),
            (test, C.PREPARED_TEST),
            (users, C.PREPARED_USERS),
            (items, C.PREPARED_ITEMS),
        ):
            stage.write(df, name)
    # two models' partitions of predictions/: the job scores both
    with staged_outputs(spark, out, stage="train_als") as stage:
        stage.write(hand_predictions(spark), C.predictions_dir("als"))
    with staged_outputs(spark, out, stage="train_zero") as stage:
        zero = hand_predictions(spark).withColumn(C.PREDICTION, F.lit(0.0))
        stage.write(zero, C.predictions_dir("zero"))
    overrides = [
        f"output.path={out}",
        "spark.master=local[1]",
        "spark.conf.spark.ui.enabled=false",
        "evaluate.activity_buckets=[1, 3]",
    ]
    result = run_job("evaluate", *[arg for kv in overrides for arg in ("--set", kv)])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = [r.asDict() for r in spark.read.parquet(f"{out}/{C.METRICS_SUMMARY}").collect()]
    assert_summary([r for r in summary if r["model"] == "als"], HAND_EXPECTED, "als")
    ratings = HAND_TEST[C.RATING].to_numpy()
    zero_all = next(r for r in summary if r["model"] == "zero" and r["segment"] == "all")
    # the hand predictions cover the first 7 test rows (row 8 has none)
    assert zero_all["rmse"] == pytest.approx(math.sqrt(np.mean(ratings[:7] ** 2)), abs=1e-12)

    # In-process: one named model is rescored (the other's rows are kept), and a model that
    # has no predictions is an error naming the models there.
    cfg = load_config(None, [*overrides[:1], "evaluate.model_name=als", overrides[-1]])
    assert list(run_evaluate(cfg, spark)["models"]) == ["als"]
    assert {r.model for r in spark.read.parquet(f"{out}/{C.METRICS_SUMMARY}").collect()} == {
        "als",
        "zero",
    }
    with pytest.raises(InputError, match="no predictions of model 'bpmf'.*models there: als, zero"):
        run_evaluate(load_config(None, [overrides[0], "evaluate.model_name=bpmf"]), spark)

    # In-process, a reconstruction dataset: the rows of both models are kept beside it.
    recon = np.zeros((4, 5), np.float32)  # users × items: predicts 0 everywhere
    spark.createDataFrame(
        [(uu, recon[uu].tolist()) for uu in range(4)], [C.USER_IDX, C.RECONSTRUCTION]
    ).write.parquet(f"{out}/recon_zero")
    cfg = load_config(
        None,
        [
            f"output.path={out}",
            f"evaluate.reconstruction_path={out}/recon_zero",
            "evaluate.reconstruction_orientation=by_user",
            "evaluate.activity_buckets=[1, 3]",
        ],
    )
    result = run_evaluate(cfg, spark)["models"]["recon_zero"]
    all_row = next(r for r in result["segments"] if r["segment"] == "all")
    assert all_row["rmse"] == pytest.approx(math.sqrt(np.mean(ratings**2)), abs=1e-12)
    summary = spark.read.parquet(f"{out}/{C.METRICS_SUMMARY}").collect()
    assert sorted({r.model for r in summary}) == ["als", "recon_zero", "zero"]
    assert set(read_manifest(spark, out)["stages"]["evaluate"]["models"]) == {
        "als",
        "recon_zero",
        "zero",
    }

    missing = load_config(None, [f"output.path={tmp_path}/nowhere"])
    with pytest.raises(InputError, match="prepared"):
        run_evaluate(missing, spark)
