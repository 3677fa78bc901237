"""Validation: each rejection reason with exact counts, the rows as read, and what is kept."""

from __future__ import annotations

import math
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mfspark import columns as C
from mfspark import validation
from mfspark.config import load_config
from mfspark.readers import read_ratings
from mfspark.validation import check_rows, count_reasons, rejected_rows, valid_rows

# (line, reason or None for a kept rating); the reason is worked out by hand.
LINES = [
    ("1\t10\t4\t100", None),
    ("1\t11\t5\t101", None),
    ("2\t10\t3\t102", None),
    ("1\t10\t2\t50", C.REASON_DUPLICATE),  # older than (1, 10) at 100
    ("1\t10\t1\t20", C.REASON_DUPLICATE),
    ("3\t10\t5\t200", None),  # same time: the higher rating is kept
    ("3\t10\t2\t200", C.REASON_DUPLICATE),
    ("4\t10\t2\t5", None),  # a rating with a time beats one without
    ("4\t10\t3\t", C.REASON_DUPLICATE),
    ("5\t10\t1\t", None),  # no timestamp is fine for a single rating
    ("2\t10\t9\t300", C.REASON_OUT_OF_RANGE),  # newer but invalid: no duplicate of (2, 10)
    ("1\t12\t3", C.REASON_WRONG_FIELD_COUNT),
    ("1\t12\t3\t100\textra", C.REASON_WRONG_FIELD_COUNT),
    ("1::12::3::100", C.REASON_WRONG_FIELD_COUNT),
    ("x\t12\t3\t100", C.REASON_BAD_NUMBER),
    ("1.5\t12\t3\t100", C.REASON_BAD_NUMBER),
    ("1\t12\tfive\t100", C.REASON_BAD_NUMBER),
    ("1\t12\t3\tyesterday", C.REASON_BAD_NUMBER),
    ("99999999999999999999\t12\t3\t100", C.REASON_BAD_NUMBER),  # does not fit a long
    ("\t12\t3\t100", C.REASON_NULL_USER),
    ("1\t \t3\t100", C.REASON_NULL_ITEM),
    ("1\t12\t\t100", C.REASON_NULL_RATING),
    ("1\t13\tNaN\t100", C.REASON_NAN_RATING),
    ("2\t13\tnan\t100", C.REASON_NAN_RATING),
    ("1\t14\t6\t100", C.REASON_OUT_OF_RANGE),
    ("1\t15\t0\t100", C.REASON_OUT_OF_RANGE),  # below data.rating_min = 0.5
    ("1\t16\t-Infinity\t100", C.REASON_OUT_OF_RANGE),
    ("", None),  # blank lines: counted, neither kept nor rejected
    ("   ", None),
]
BLANK = sum(1 for line, _ in LINES if not line.strip())


def _raw_fields(line: str) -> list[str | None]:
    """The four fields as read, by hand: split on tabs, trimmed, empty means missing."""
    parts = line.split("\t") + [None] * 4
    return [p.strip() or None if p is not None else None for p in parts[:4]]


def _parsed_lines(spark, folder):
    """LINES written as a u.data file and parsed; (parsed ratings, its config)."""
    path = folder / "u.data"
    path.write_text("\n".join(line for line, _ in LINES) + "\n")
    cfg = load_config(None, [f"data.path={path}"])
    return read_ratings(spark, cfg.data, str(path), cfg.resolved_format), cfg


@pytest.fixture(scope="module")
def checked_u_data(spark, tmp_path_factory):
    parsed, cfg = _parsed_lines(spark, tmp_path_factory.mktemp("validation"))
    checked = check_rows(parsed.df, cfg.data)  # persisted
    yield parsed, checked
    checked.unpersist()


def test_counts_per_reason_are_exact(checked_u_data):
    _, checked = checked_u_data
    counts = count_reasons(checked)
    assert counts.rejected == dict(Counter(reason for _, reason in LINES if reason))
    assert counts.valid == sum(1 for line, reason in LINES if reason is None and line.strip())
    assert counts.blank_lines == BLANK == 2
    assert counts.total == len(LINES) - BLANK
    assert counts.valid_without_timestamp == 1  # "5\t10\t1\t"


def test_a_source_of_distinct_pairs_skips_only_the_duplicate_check(spark, tmp_path):
    """``distinct_pairs=True`` (the synthetic source) keeps every per-row reason of the hand
    list and marks no duplicate: the repeated pairs' rows all stay valid."""
    parsed, cfg = _parsed_lines(spark, tmp_path)
    checked = check_rows(parsed.df, cfg.data, distinct_pairs=True)
    try:
        counts = count_reasons(checked)
    finally:
        checked.unpersist()
    per_row = Counter(r for _, r in LINES if r and r != C.REASON_DUPLICATE)
    assert counts.rejected == dict(per_row)
    assert counts.valid == sum(
        1 for line, r in LINES if line.strip() and r in (None, C.REASON_DUPLICATE)
    )


def test_rejected_rows_hold_the_line_as_read_and_the_reason(checked_u_data):
    parsed, checked = checked_u_data
    got = rejected_rows(checked, parsed.raw).toPandas()
    assert list(got.columns) == C.REJECTED_SCHEMA.names
    assert all(src.endswith("/u.data") for src in got["source"])
    got_rows = sorted(
        (r.line, r.reason, [r.user_id, r.item_id, r.rating, r.timestamp]) for r in got.itertuples()
    )
    expected = sorted((line, reason, _raw_fields(line)) for line, reason in LINES if reason)
    assert got_rows == expected


def test_valid_rows_keep_the_latest_of_each_pair(checked_u_data):
    _, checked = checked_u_data
    got = sorted(tuple(r) for r in valid_rows(checked).collect())
    expected = sorted(
        (int(u), int(i), float(r), int(t) if t else None)
        for line, reason in LINES
        if reason is None and line.strip()
        for u, i, r, t in [line.split("\t")]
    )
    assert got == expected
    # One rating per pair.
    assert len({(u, i) for u, i, _, _ in got}) == len(got)


def test_typed_source_reasons_and_raw_strings(spark, tmp_path):
    rows = {
        "user_id": ["a", None, "b", "b", "c", "c", "d", "d"],
        "item_id": ["x", "x", None, "y", "y", "z", "z", "z"],
        "rating": [1.0, 2.0, 3.0, None, math.nan, 5.5, 4.0, 3.0],
        "timestamp": [1, 2, 3, 4, 5, 6, 7, 8],
    }
    reasons = [
        None,
        C.REASON_NULL_USER,
        C.REASON_NULL_ITEM,
        C.REASON_NULL_RATING,
        C.REASON_NAN_RATING,
        C.REASON_OUT_OF_RANGE,
        C.REASON_DUPLICATE,  # (d, z) at 7 is older than (d, z) at 8
        None,
    ]
    folder = tmp_path / "r.parquet"
    folder.mkdir()
    pq.write_table(pa.table(rows), folder / "part-0.parquet")
    cfg = load_config(None, [f"data.path={folder}"])
    parsed = read_ratings(spark, cfg.data, str(folder), "parquet")
    checked = check_rows(parsed.df, cfg.data)
    counts = count_reasons(checked)
    assert counts.rejected == {r: 1 for r in reasons if r}
    assert counts.valid == 2 and counts.blank_lines == 0

    def as_read(v):
        if v is None:
            return None
        return "NaN" if isinstance(v, float) and math.isnan(v) else str(v)

    got = sorted(
        (r.reason, r.user_id, r.item_id, r.rating, r.timestamp)
        for r in rejected_rows(checked, parsed.raw).collect()
    )
    expected = sorted(
        (reason, as_read(u), as_read(i), as_read(r), str(t))
        for reason, u, i, r, t in zip(reasons, *rows.values(), strict=True)
        if reason
    )
    assert got == expected
    checked.unpersist()


def test_repeated_pairs_joined_without_broadcast_give_the_same_reasons(
    spark, checked_u_data, monkeypatch
):
    parsed, broadcast = checked_u_data
    monkeypatch.setattr(validation, "BROADCAST_PAIRS", 0)  # the shuffle join instead
    checked = check_rows(parsed.df, load_config(None, []).data)
    key = [C.LINE, C.REASON]
    assert sorted(checked.select(*key).collect()) == sorted(broadcast.select(*key).collect())
    checked.unpersist()


def test_identical_rows_keep_exactly_one_and_the_choice_does_not_depend_on_order(spark, tmp_path):
    # (e, w) three times with equal time and rating: twice in part-0, once in part-1. The
    # tie goes to the larger source, so both copies in part-0 are duplicates.
    folder = tmp_path / "same.parquet"
    folder.mkdir()
    part0 = {"user_id": ["e", "f", "e"], "item_id": ["w", "w", "w"], "rating": [4.0, 2.0, 4.0]}
    part1 = {"user_id": ["e"], "item_id": ["w"], "rating": [4.0]}
    for name, rows in (("part-0.parquet", part0), ("part-1.parquet", part1)):
        rows["timestamp"] = [9] * len(rows["user_id"])
        pq.write_table(pa.table(rows), folder / name)
    cfg = load_config(None, [f"data.path={folder}"])
    parsed = read_ratings(spark, cfg.data, str(folder), "parquet")
    checked = check_rows(parsed.df, cfg.data)
    assert count_reasons(checked).rejected == {C.REASON_DUPLICATE: 2}
    assert sorted(tuple(r) for r in valid_rows(checked).collect()) == [
        ("e", "w", 4.0, 9),
        ("f", "w", 2.0, 9),
    ]
    sources = [r.source.rsplit("/", 1)[-1] for r in rejected_rows(checked, parsed.raw).collect()]
    assert sources == ["part-0.parquet", "part-0.parquet"]
    checked.unpersist()


@pytest.mark.parametrize("before", [None, "true", "false"])
def test_uncompressed_persist_restores_the_session_setting(spark, before):
    key = "spark.sql.inMemoryColumnarStorage.compressed"
    if before is None:
        spark.conf.unset(key)
    else:
        spark.conf.set(key, before)
    default = spark.conf.get(key)
    df = validation.persist_uncompressed(spark.range(10))
    try:
        assert df.count() == 10 and df.is_cached
        assert spark.conf.get(key) == default  # restored, whatever it was
    finally:
        df.unpersist()
        spark.conf.unset(key)
