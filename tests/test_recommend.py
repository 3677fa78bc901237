"""Top-K recommendations, similar items and ranking metrics against independent oracles:
a brute-force numpy ranking of the saved model, Spark's RankingEvaluator, numpy metrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mfspark import columns as C
from mfspark.config import load_config
from mfspark.errors import ConfigError
from mfspark.topk import seen_csr, top_k
from tests.prepared_data import prepared_frames, write_prepared

N_USERS, N_ITEMS, USER_ID0, ITEM_ID0 = 70, 90, 1000, 5000


# -- oracles ------------------------------------------------------------------------------
def brute_force_lists(key: np.ndarray, seen_rows, seen_cols, candidates: np.ndarray, k: int):
    """{row: [(col, key), ...]}: every row's k largest keys over the unseen candidates, ties
    by column index — a full sort of every row."""
    key = key.copy()
    mask = np.ones(key.shape, bool)
    mask[:, candidates] = False
    key[mask] = -np.inf
    key[seen_rows, seen_cols] = -np.inf
    out = {}
    for i in range(key.shape[0]):
        order = np.lexsort((np.arange(key.shape[1]), -key[i]))
        out[i] = [(int(j), key[i, j]) for j in order[:k] if key[i, j] != -np.inf]
    return out


def numpy_metrics(lists: dict, relevant: dict, k: int, n_catalogue: int) -> dict:
    """Ranking metrics computed user by user from their textbook definitions."""
    users = [u for u in lists if relevant.get(u)]
    per = {m: [] for m in ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")}
    for u in users:
        rel, ranked = relevant[u], lists[u][:k]
        flags = [item in rel for item in ranked]
        n_hit = sum(flags)
        per["precision"].append(n_hit / k)
        per["recall"].append(n_hit / len(rel))
        dcg = sum(1 / math.log2(r + 2) for r, f in enumerate(flags) if f)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), k)))
        per["ndcg"].append(dcg / idcg)
        precisions = [sum(flags[: r + 1]) / (r + 1) for r, f in enumerate(flags) if f]
        per["map"].append(sum(precisions) / min(len(rel), k))
        first = next((r for r, f in enumerate(flags) if f), None)
        per["mrr"].append(0.0 if first is None else 1 / (first + 1))
        per["hit_rate"].append(float(n_hit > 0))
    out = {m: float(np.mean(v)) for m, v in per.items()}
    out["coverage"] = len({i for u in lists for i in lists[u][:k]}) / n_catalogue
    out["n_users"] = len(users)
    return out


# -- numpy kernel -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "m",
    [700, 640, 150],
    ids=["strided-groups-and-tail", "strided-groups-only", "fewer-groups-than-k"],
)
def test_top_k_is_the_brute_force_ranking_with_ties_and_masks(m):
    rng = np.random.default_rng(3)
    n, r, k = 120, 4, 10
    rows_v, cols_v, offset = rng.normal(size=(n, r)), rng.normal(size=(m, r)), rng.normal(size=m)
    cols_v[100:160], offset[100:160] = cols_v[7], offset[7]  # up to 61 exactly tied columns
    rows_v[:5] = 0.0  # rows scoring by offset alone
    seen_r, seen_c = rng.integers(0, n, 4000), rng.integers(0, m, 4000)
    seen_r = np.r_[seen_r, np.full(m - 3, 9)]  # row 9 may get only 3 columns
    seen_c = np.r_[seen_c, np.arange(3, m)]
    indptr, seen = seen_csr(n, seen_r, seen_c)
    for chunk in (m, 2 * m, 7 * m, 1 << 23):  # one row per chunk, two, seven, all at once
        got = top_k(rows_v, cols_v, offset, k, indptr, seen, chunk_elements=chunk)
        expected = brute_force_lists(offset + rows_v @ cols_v.T, seen_r, seen_c, np.arange(m), k)
        for i in range(n):
            at = got.row == i
            assert got.col[at].tolist() == [j for j, _ in expected[i]], i
            assert np.array_equal(got.key[at], [v for _, v in expected[i]])
            assert got.rank[at].tolist() == list(range(1, at.sum() + 1))
    assert (got.row == 9).sum() == 3


# -- Spark: the stage -----------------------------------------------------------------------------
def _planted(seed: int = 5):
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(N_USERS, 3)), rng.normal(size=(N_ITEMS, 3))
    popularity = rng.zipf(1.6, N_ITEMS).astype(float)
    cells = []
    for i in range(N_USERS):
        n = int(rng.integers(8, 40))
        items = rng.choice(N_ITEMS - 4, n, replace=False, p=popularity[:-4] / popularity[:-4].sum())
        cells += [(i, j) for j in items]  # the last 4 items get no ratings at all
    cells = np.array(cells)
    raw = (u[cells[:, 0]] * v[cells[:, 1]]).sum(1) + rng.normal(0, 0.5, len(cells))
    ratings = np.clip(np.round(3.2 + raw), 1, 5)
    df = pd.DataFrame({C.USER_IDX: cells[:, 0], C.ITEM_IDX: cells[:, 1], C.RATING: ratings})
    is_test = rng.random(len(df)) < 0.25
    test = df[is_test]
    test = test[np.isin(test[C.ITEM_IDX], df[~is_test][C.ITEM_IDX])]  # keep it simple: warm items
    return df[~is_test].reset_index(drop=True), test.reset_index(drop=True)


@pytest.fixture(scope="module")
def trained_output(spark, tmp_path_factory):
    """<out>/prepared/* and <out>/models/als (ALS fitted on 7 x 5 blocks)."""
    from mfspark.models.als.job import fit_prepared

    out = str(tmp_path_factory.mktemp("recommend") / "out")
    train_pd, test_pd = _planted()
    frames = prepared_frames(spark, train_pd, test_pd, N_USERS, N_ITEMS, USER_ID0, ITEM_ID0)
    write_prepared(spark, out, frames)
    cfg = _cfg(out, ["als.rank=3", "als.max_iter=5", "als.num_user_blocks=7", "als.num_item_blocks=5"])
    train, test, users, items = (
        spark.read.parquet(f"{out}/{n}")
        for n in (C.PREPARED_TRAIN, C.PREPARED_TEST, C.PREPARED_USERS, C.PREPARED_ITEMS)
    )
    model, _, _ = fit_prepared(spark, train, test, users, items, cfg)
    model.save(f"{out}/models/als")
    return out, train_pd, test_pd


def _cfg(out, sets=()):
    return load_config(None, [f"output.path={out}", *sets])


def _lists(spark, path, row_col=C.USER_ID, col_col=C.ITEM_ID, value=C.SCORE):
    pdf = spark.read.parquet(path).toPandas().sort_values([row_col, C.RANK])
    return {
        int(r): (g[col_col].astype(int).tolist(), g[value].to_numpy(), g[C.RANK].tolist())
        for r, g in pdf.groupby(row_col)
    }


@pytest.mark.parametrize("num_blocks", [1, 7])
def test_every_list_is_the_brute_force_top_k_of_the_saved_model(spark, trained_output, num_blocks):
    from mfspark.models.factor_model import FactorModel
    from mfspark.recommend import run_recommend

    out, train_pd, _ = trained_output
    k = 10
    entry = run_recommend(_cfg(out, [f"recommend.num_blocks={num_blocks}"]), spark)
    assert set(entry["models"]) == {"als", "popularity"}
    p = FactorModel.load(spark, f"{out}/models/als").params
    counts = np.bincount(train_pd[C.ITEM_IDX], minlength=N_ITEMS)
    catalogue = np.flatnonzero(counts > 0)
    assert len(catalogue) < N_ITEMS  # items without ratings exist and must never be listed
    seen = (train_pd[C.USER_IDX].to_numpy(), train_pd[C.ITEM_IDX].to_numpy())
    oracles = {
        "als": p.item_bias[None, :]
        + p.user_factors.astype(np.float64) @ p.item_factors.astype(np.float64).T,
        "popularity": np.tile(counts.astype(float), (N_USERS, 1)),
    }
    offsets = {"als": p.global_mean + p.user_bias, "popularity": np.zeros(N_USERS)}
    for name, key in oracles.items():
        lists = _lists(spark, f"{out}/{C.RECOMMENDATIONS}/model={name}")
        expected = brute_force_lists(key, *seen, catalogue, k)
        assert sorted(lists) == [USER_ID0 + i for i in range(N_USERS)]
        for i in range(N_USERS):
            items, scores, ranks = lists[USER_ID0 + i]
            assert items == [ITEM_ID0 + j for j, _ in expected[i]], (name, i)
            np.testing.assert_allclose(
                scores, [v + offsets[name][i] for _, v in expected[i]], rtol=1e-12
            )
            assert ranks == list(range(1, k + 1))
        rated = set(zip(train_pd[C.USER_IDX] + USER_ID0, train_pd[C.ITEM_IDX] + ITEM_ID0, strict=True))
        assert not any((u, j) in rated for u, (items, _, _) in lists.items() for j in items)
    schema = spark.read.parquet(f"{out}/{C.RECOMMENDATIONS}/model=als").schema
    assert [(f.name, f.dataType) for f in schema] == [
        (f.name, f.dataType) for f in C.recommendations_schema(schema[C.USER_ID].dataType)
    ]
    both = spark.read.parquet(f"{out}/{C.RECOMMENDATIONS}")
    assert {r.model for r in both.select("model").distinct().collect()} == {"als", "popularity"}


def test_ranking_metrics_equal_ranking_evaluator_and_numpy(spark, trained_output):
    from pyspark.ml.evaluation import RankingEvaluator

    from mfspark.recommend import run_recommend

    out, train_pd, test_pd = trained_output
    k, threshold = 10, 4.0
    run_recommend(_cfg(out, ["recommend.num_blocks=3"]), spark)
    table = spark.read.parquet(f"{out}/{C.METRICS_RANKING}").toPandas()
    assert set(table["metric"]) == set(C.RANKING_METRICS) and set(table["model"]) == {
        "als",
        "popularity",
    }
    relevant = {
        USER_ID0 + u: {ITEM_ID0 + j for j in g[C.ITEM_IDX]}
        for u, g in test_pd[test_pd[C.RATING] >= threshold].groupby(C.USER_IDX)
    }
    n_catalogue = int((np.bincount(train_pd[C.ITEM_IDX], minlength=N_ITEMS) > 0).sum())
    for name in ("als", "popularity"):
        got = table[table["model"] == name].set_index("metric")
        lists = {u: v[0] for u, v in _lists(spark, f"{out}/{C.RECOMMENDATIONS}/model={name}").items()}
        expected = numpy_metrics(lists, relevant, k, n_catalogue)
        assert got.loc["precision", "n_users"] == expected["n_users"] > 10
        for metric in C.RANKING_METRICS:
            assert got.loc[metric, "value"] == pytest.approx(expected[metric], abs=1e-9), (name, metric)
        evaluated = [u for u in lists if relevant.get(u)]
        rows = [
            ([float(i) for i in lists[u]], [float(i) for i in sorted(relevant[u])]) for u in evaluated
        ]
        df = spark.createDataFrame(rows, "prediction array<double>, label array<double>")
        for metric, spark_name in (
            ("precision", "precisionAtK"),
            ("recall", "recallAtK"),
            ("ndcg", "ndcgAtK"),
            ("map", "meanAveragePrecisionAtK"),
        ):
            ev = RankingEvaluator(
                metricName=spark_name, k=k, predictionCol="prediction", labelCol="label"
            )
            assert got.loc[metric, "value"] == pytest.approx(ev.evaluate(df), abs=1e-9), (name, metric)
    # the metrics are not trivially equal across models (the comparison means something)
    assert table.pivot(index="metric", columns="model", values="value").nunique(axis=1).max() == 2


def test_similar_items_are_the_cosine_top_k(spark, trained_output):
    from mfspark.models.factor_model import FactorModel
    from mfspark.recommend import run_recommend

    out, train_pd, _ = trained_output
    k = 5
    run_recommend(
        _cfg(
            out,
            [
                'recommend.models=["als"]',
                "recommend.similar_items=true",
                f"recommend.k={k}",
                "recommend.num_blocks=2",
            ],
        ),
        spark,
    )
    p = FactorModel.load(spark, f"{out}/models/als").params
    f = p.item_factors.astype(np.float64)
    unit = f / np.linalg.norm(f, axis=1, keepdims=True)
    catalogue = np.flatnonzero(np.bincount(train_pd[C.ITEM_IDX], minlength=N_ITEMS) > 0)
    expected = brute_force_lists(unit @ unit.T, np.arange(N_ITEMS), np.arange(N_ITEMS), catalogue, k)
    lists = _lists(
        spark, f"{out}/{C.SIMILAR_ITEMS}/model=als", C.ITEM_ID, C.SIMILAR_ITEM_ID, C.SIMILARITY
    )
    assert sorted(lists) == [ITEM_ID0 + j for j in catalogue]
    for j in catalogue:
        items, sims, _ = lists[ITEM_ID0 + j]
        assert items == [ITEM_ID0 + c for c, _ in expected[j]]
        np.testing.assert_allclose(sims, [v for _, v in expected[j]], rtol=1e-12)


def test_unknown_users_are_reported_and_the_rest_recommended(spark, trained_output, tmp_path):
    from mfspark.recommend import run_recommend

    out, train_pd, _ = trained_output
    ids = tmp_path / "users.txt"
    ids.write_text(f"{USER_ID0 + 3}\n{USER_ID0 + 8}\n\n77\n{USER_ID0 + 3}\nnobody\n")
    entry = run_recommend(
        _cfg(out, [f"recommend.users_path={ids}", 'recommend.models=["als"]', "recommend.k=4"]), spark
    )
    assert entry["users"] == {"requested": 4, "unknown": 2}
    lists = _lists(spark, f"{out}/{C.RECOMMENDATIONS}/model=als")
    assert sorted(lists) == [USER_ID0 + 3, USER_ID0 + 8] and all(len(v[0]) == 4 for v in lists.values())
    unknown = sorted(
        r[C.USER_ID] for r in spark.read.parquet(f"{out}/{C.RECOMMENDATIONS_UNKNOWN_USERS}").collect()
    )
    assert unknown == ["77", "nobody"]


def test_k_larger_than_the_catalogue_fails_in_one_line(spark, trained_output, tmp_path):
    from mfspark.recommend import run_recommend

    out, train_pd, _ = trained_output
    n_catalogue = train_pd[C.ITEM_IDX].nunique()
    with pytest.raises(
        ConfigError, match=rf"recommend.k \({n_catalogue + 1}\) is larger than the catalogue"
    ):
        run_recommend(_cfg(out, [f"recommend.k={n_catalogue + 1}"]), spark)
    with pytest.raises(ConfigError, match="recommend.k"):
        _cfg(out, ["recommend.k=0"])
    with pytest.raises(ConfigError, match="larger than the 2 distinct recommend.candidate_items"):
        _cfg(out, ["recommend.k=3", "recommend.candidate_items=[1, 2, 2]"])


def test_job_rejects_k_zero_before_spark(run_job, tmp_path):
    done = run_job(
        "recommend", "--set", "recommend.k=0", "--set", f"output.path={tmp_path}", timeout=120
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == ["mfspark recommend: error: config key recommend.k must be >= 1, got 0"]


def test_estimator_recommend_methods_match_the_oracle(spark, tmp_path):
    from pyspark.sql import types as T

    from mfspark.ml import BiasedALS, BiasedALSModel

    train_pd, _ = _planted(seed=9)
    df = pd.DataFrame(
        {
            "user": "u" + train_pd[C.USER_IDX].astype(str),
            "item": (train_pd[C.ITEM_IDX] + 100).astype(np.int64),
            "rating": train_pd[C.RATING],
        }
    )
    ratings = spark.createDataFrame(df)
    model = BiasedALS(rank=3, maxIter=4, regParam=5.0, excludeSeen=True, numUserBlocks=3).fit(ratings)
    p = model.als_model.params
    users = {r[C.USER_ID]: r[C.USER_IDX] for r in model.als_model.users.collect()}
    items = {r[C.ITEM_ID]: r[C.ITEM_IDX] for r in model.als_model.items.collect()}
    item_of = {v: k for k, v in items.items()}
    user_of = {v: k for k, v in users.items()}
    seen = ([users[u] for u in df["user"]], [items[i] for i in df["item"]])
    k = 6
    key = p.item_bias[None, :] + p.user_factors.astype(np.float64) @ p.item_factors.astype(np.float64).T
    expected = brute_force_lists(key, *seen, np.arange(len(items)), k)

    recs = model.recommendForAllUsers(k)
    # Spark ALS's output schema: user column, array of (item column, rating float) structs
    assert [f.name for f in recs.schema] == ["user", "recommendations"]
    assert recs.schema["user"].dataType == T.StringType()
    entry = recs.schema["recommendations"].dataType.elementType
    assert [(f.name, f.dataType) for f in entry.fields] == [
        ("item", T.LongType()),
        ("rating", T.FloatType()),
    ]
    got = {r["user"]: r["recommendations"] for r in recs.collect()}
    assert len(got) == len(users)
    for u, lst in got.items():
        i = users[u]
        assert [e["item"] for e in lst] == [item_of[j] for j, _ in expected[i]]
        np.testing.assert_allclose(
            [e["rating"] for e in lst],
            [np.float32(v + p.global_mean + p.user_bias[i]) for _, v in expected[i]],
        )
    subset = model.recommendForUserSubset(
        spark.createDataFrame([("u3",), ("u3",), ("zz",)], "user string"), k
    )
    assert [r["user"] for r in subset.collect()] == ["u3"]

    # items ranking users: the same kernel with the sides swapped
    key_t = (
        p.user_bias[None, :] + p.item_factors.astype(np.float64) @ p.user_factors.astype(np.float64).T
    )
    expected_t = brute_force_lists(key_t, seen[1], seen[0], np.arange(len(users)), 4)
    got_t = {
        r["item"]: [e["user"] for e in r["recommendations"]]
        for r in model.recommendForAllItems(4).collect()
    }
    assert got_t == {item_of[j]: [user_of[u] for u, _ in expected_t[j]] for j in range(len(items))}

    # without exclusion the seen items come back (the dataset is dense enough for that)
    plain = {
        r["user"]: [e["item"] for e in r["recommendations"]]
        for r in model.setExcludeSeen(False).recommendForAllUsers(k).collect()
    }
    rated = set(zip(df["user"], df["item"], strict=True))
    assert any((u, i) in rated for u, lst in plain.items() for i in lst)

    model.write().overwrite().save(str(tmp_path / "m"))
    loaded = BiasedALSModel.load(str(tmp_path / "m"))
    with pytest.raises(Exception, match="setSeenRatings"):
        loaded.setExcludeSeen(True).recommendForAllUsers(k)
    again = {
        r["user"]: r["recommendations"]
        for r in loaded.setSeenRatings(ratings).recommendForAllUsers(k).collect()
    }
    assert {u: [e["item"] for e in v] for u, v in again.items()} == {
        u: [e["item"] for e in v] for u, v in got.items()
    }
