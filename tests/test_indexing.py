"""Dense indices: 0..n-1 in id order, a lossless round trip, the same for any partitioning."""

from __future__ import annotations

import pytest

from mfspark.indexing import dense_index, rank_ids, rank_ids_by_group

LONG_IDS = [7, -3, 2**40, 7, 0, 12, 12, 5, -3, 99]
STRING_IDS = ["tt10", "tt2", "b", "tt10", "A", "a", "", "Z", "b", "tt1"]


@pytest.mark.parametrize(("ids", "ddl"), [(LONG_IDS, "id long"), (STRING_IDS, "id string")])
def test_round_trip_and_partition_independence(spark, ids, ddl):
    rows = spark.createDataFrame([(i,) for i in ids], ddl)
    distinct_sorted = sorted(set(ids))  # Python and Spark order longs and (ASCII) strings alike
    expected = {v: k for k, v in enumerate(distinct_sorted)}
    results = []
    # 16 partitions for 7-8 ids: some partitions are empty.
    for parts in (1, 16):
        index = dense_index(rows.repartition(parts), "id", "idx", parts)
        got = {r["id"]: r["idx"] for r in index.collect()}
        assert got == expected
        assert sorted(got.values()) == list(range(len(distinct_sorted)))
        results.append(got)
        if parts == 16:
            # Round trip: every original row maps to an idx and back to its own id.
            back = rows.join(index, "id").join(index.withColumnRenamed("id", "id_back"), "idx")
            assert sorted((r["id"], r["id_back"]) for r in back.collect()) == sorted((i, i) for i in ids)
        index.unpersist()
    assert results[0] == results[1]


def test_rank_ids_keeps_other_columns_and_reports_size(spark):
    entities = spark.createDataFrame([(30, 1), (10, 0), (20, 5)], "id long, n_train long")
    index, n = rank_ids(entities, "id", "idx", 4)
    assert n == 3
    assert sorted(tuple(r) for r in index.collect()) == [(10, 0, 0), (20, 1, 5), (30, 2, 1)]
    assert index.schema["idx"].dataType.simpleString() == "int"
    index.unpersist()


def test_groups_are_ranked_separately(spark):
    """Users and items in one pass: each group numbered from 0, across partition boundaries."""
    rows = [("items", i) for i in (5, 3, 9, 1)] + [("users", u) for u in (40, 10, 30, 20, 50, 60)]
    entities = spark.createDataFrame(rows, "side string, id long")
    for parts in (1, 3):
        index, counts = rank_ids_by_group(entities, "side", "id", "idx", parts)
        got = sorted(tuple(r) for r in index.collect())
        index.unpersist()
        expected = [("items", i, k) for k, i in enumerate(sorted((1, 3, 5, 9)))] + [
            ("users", u, k) for k, u in enumerate(sorted((10, 20, 30, 40, 50, 60)))
        ]
        assert got == sorted(expected)
        assert counts == {"items": 4, "users": 6}
