"""Every reader on small files written here: typed values, id types, sources, headers."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.config import load_config
from mfspark.errors import InputError
from mfspark.readers import PARSE_ERROR, SOURCE, check_local_input, read_ratings

RATING_COLS = [C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP]


def _schema(id_type: T.DataType) -> T.StructType:
    return T.StructType(
        [
            T.StructField(C.USER_ID, id_type),
            T.StructField(C.ITEM_ID, id_type),
            T.StructField(C.RATING, T.DoubleType()),
            T.StructField(C.TIMESTAMP, T.LongType()),
        ]
    )


def _read(spark, path, *overrides):
    cfg = load_config(None, [f"data.path={path}", *overrides])
    return read_ratings(spark, cfg.data, str(path), cfg.resolved_format)


def _assert_parsed(parsed, rows, id_type):
    """The parsed ratings are exactly ``rows`` (in any order), all without a parse error."""
    assert parsed.id_type == id_type
    assert [parsed.df.schema[c].dataType for c in RATING_COLS] == [
        f.dataType for f in _schema(id_type).fields
    ]
    got = parsed.df.select(*RATING_COLS, PARSE_ERROR).toPandas()  # one Spark job per check
    assert got[PARSE_ERROR].isna().all(), got[got[PARSE_ERROR].notna()]
    expected = pd.DataFrame(rows, columns=RATING_COLS)

    def canonical(df):
        df = df[RATING_COLS].astype({C.TIMESTAMP: "Int64", C.RATING: "float64"})
        return df.sort_values(RATING_COLS, ignore_index=True)

    pd.testing.assert_frame_equal(canonical(got), canonical(expected))


ML_ROWS = [(196, 242, 3.0, 881250949), (186, 302, 3.0, 891717742), (22, 377, 1.0, 878887116)]


def test_movielens_100k_tab_format(spark, tmp_path):
    path = tmp_path / "u.data"
    path.write_text("".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in ML_ROWS))
    parsed = _read(spark, path)
    _assert_parsed(parsed, ML_ROWS, T.LongType())
    sources = {r[0] for r in parsed.df.select(SOURCE).distinct().collect()}
    assert len(sources) == 1 and sources.pop().endswith("/u.data")


def test_movielens_dat_double_colon_format(spark, tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("".join(f"{u}::{i}::{int(r)}::{t}\n" for u, i, r, t in ML_ROWS))
    _assert_parsed(_read(spark, path), ML_ROWS, T.LongType())


def test_movielens_csv_with_header_and_half_stars(spark, tmp_path):
    rows = [(1, 296, 5.0, 1147880044), (1, 306, 3.5, 1147868817), (2, 1, 0.5, 1147868828)]
    path = tmp_path / "ratings.csv"
    path.write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)
    )
    parsed = _read(spark, path)
    _assert_parsed(parsed, rows, T.LongType())
    assert parsed.df.count() == 3  # the header is not a row


def test_bundled_movielens_sample(spark):
    import pyspark

    path = f"{pyspark.__path__[0]}/data/mllib/als/sample_movielens_ratings.txt"
    with open(path) as f:
        lines = [ln.split("::") for ln in f.read().splitlines() if ln.strip()]
    rows = [(int(u), int(i), float(r), int(t)) for u, i, r, t in lines]
    parsed = _read(spark, path, "data.format=movielens-dat")
    _assert_parsed(parsed, rows, T.LongType())


def test_csv_custom_delimiter_header_and_column_names(spark, tmp_path):
    path = tmp_path / "export.csv"
    path.write_text('"item";"who";"stars";"when"\n10;7;4.5;100\n11;7;2;101\n10;"8";1;102\n')
    parsed = _read(
        spark,
        path,
        "data.delimiter=;",
        "data.user_col=who",
        "data.item_col=item",
        "data.rating_col=stars",
        "data.timestamp_col=when",
    )
    _assert_parsed(parsed, [(7, 10, 4.5, 100), (7, 11, 2.0, 101), (8, 10, 1.0, 102)], T.LongType())


def test_csv_without_header_uses_data_columns_and_no_timestamp(spark, tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("3|5|1\n4|6|2\n")
    parsed = _read(
        spark,
        path,
        "data.delimiter=|",
        "data.header=false",
        'data.columns=["rating", "user_id", "item_id"]',
        'data.timestamp_col=""',
    )
    _assert_parsed(parsed, [(5, 1, 3.0, None), (6, 2, 4.0, None)], T.LongType())


def test_csv_string_ids_are_detected(spark, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("user_id,item_id,rating,timestamp\nalice,tt0111161,5,10\nbob,42,3,11\n")
    parsed = _read(spark, path)
    _assert_parsed(parsed, [("alice", "tt0111161", 5.0, 10), ("bob", "42", 3.0, 11)], T.StringType())


def test_csv_integer_ids_are_long_and_id_type_can_be_forced(spark, tmp_path):
    path = tmp_path / "n.csv"
    path.write_text("user_id,item_id,rating,timestamp\n1,20,5,10\n2,007,3,11\n")
    _assert_parsed(_read(spark, path), [(1, 20, 5.0, 10), (2, 7, 3.0, 11)], T.LongType())
    _assert_parsed(
        _read(spark, path, "data.id_type=string"),
        [("1", "20", 5.0, 10), ("2", "007", 3.0, 11)],
        T.StringType(),
    )


def test_csv_directory_drops_every_header(spark, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.csv").write_text("user_id,item_id,rating,timestamp\n1,1,1,1\n")
    (folder / "b.csv").write_text("user_id,item_id,rating,timestamp\n2,2,2,2\n")
    (folder / "_SUCCESS").write_text("")
    parsed = _read(spark, folder, "data.format=csv")
    _assert_parsed(parsed, [(1, 1, 1.0, 1), (2, 2, 2.0, 2)], T.LongType())
    sources = sorted(r[0].rsplit("/", 1)[1] for r in parsed.df.select(SOURCE).distinct().collect())
    assert sources == ["a.csv", "b.csv"]
    _assert_parsed(_read(spark, folder / "b*.csv"), [(2, 2, 2.0, 2)], T.LongType())


def test_csv_missing_column_names_the_column(spark, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("u,i,r\n1,2,3\n")
    with pytest.raises(InputError, match="'user_id' is not in the header") as err:
        _read(spark, path)
    assert "u, i, r" in str(err.value)


def _write_parquet(folder, table: pa.Table):
    folder.mkdir()
    pq.write_table(table, folder / "part-0.parquet")
    return folder


def test_parquet_integer_ids(spark, tmp_path):
    table = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int32()),
            "item_id": pa.array([10, 20], pa.int64()),
            "rating": pa.array([4.0, 2.5], pa.float32()),
            "timestamp": pa.array([100, 200], pa.int64()),
        }
    )
    parsed = _read(spark, _write_parquet(tmp_path / "r.parquet", table))
    _assert_parsed(parsed, [(1, 10, 4.0, 100), (2, 20, 2.5, 200)], T.LongType())


def test_parquet_string_ids_and_other_column_names(spark, tmp_path):
    table = pa.table({"who": ["a", "b"], "what": ["x", "y"], "score": [1, 5]})
    parsed = _read(
        spark,
        _write_parquet(tmp_path / "s.parquet", table),
        "data.user_col=who",
        "data.item_col=what",
        "data.rating_col=score",
        'data.timestamp_col=""',
    )
    _assert_parsed(parsed, [("a", "x", 1.0, None), ("b", "y", 5.0, None)], T.StringType())


def test_parquet_timestamp_columns_are_epoch_seconds_in_any_session_zone(spark, tmp_path):
    when = [dt.datetime(2001, 2, 3, 4, 5, 6), dt.datetime(2015, 12, 31, 23, 59, 59)]
    epoch = [int(w.replace(tzinfo=dt.timezone.utc).timestamp()) for w in when]
    table = pa.table(
        {
            "user_id": [1, 2],
            "item_id": [3, 4],
            "rating": [1.0, 2.0],
            "timestamp": pa.array(when, pa.timestamp("us", tz="UTC")),
            "naive": pa.array(when, pa.timestamp("us")),
            "day": pa.array([w.date() for w in when], pa.date32()),
        }
    )
    path = _write_parquet(tmp_path / "t.parquet", table)
    days = [int(dt.datetime(w.year, w.month, w.day, tzinfo=dt.timezone.utc).timestamp()) for w in when]
    previous = spark.conf.get("spark.sql.session.timeZone")
    try:
        for zone in ("UTC", "America/New_York"):
            spark.conf.set("spark.sql.session.timeZone", zone)
            rows = [(1, 3, 1.0, epoch[0]), (2, 4, 2.0, epoch[1])]
            _assert_parsed(_read(spark, path), rows, T.LongType())
            _assert_parsed(_read(spark, path, "data.timestamp_col=naive"), rows, T.LongType())
            rows = [(1, 3, 1.0, days[0]), (2, 4, 2.0, days[1])]
            _assert_parsed(_read(spark, path, "data.timestamp_col=day"), rows, T.LongType())
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)


def test_parquet_bad_columns_fail_with_the_name(spark, tmp_path):
    path = _write_parquet(
        tmp_path / "b.parquet", pa.table({"user_id": [1], "item_id": ["x"], "rating": [1.0]})
    )
    with pytest.raises(InputError, match="integers or strings"):
        _read(spark, path, 'data.timestamp_col=""')
    with pytest.raises(InputError, match="'timestamp'"):
        _read(spark, path)


def test_missing_and_empty_inputs(spark, tmp_path):
    with pytest.raises(InputError, match="input not found") as err:
        _read(spark, tmp_path / "u.data")
    assert str(tmp_path / "u.data") in str(err.value)
    (tmp_path / "u1.base").write_text("")
    with pytest.raises(InputError, match="input is empty"):
        _read(spark, tmp_path / "u1.base")


def test_local_input_checks_without_spark(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        check_local_input(str(tmp_path / "missing.csv"))
    with pytest.raises(InputError, match="input not found"):
        check_local_input(str(tmp_path / "*.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="input is empty") as err:
        check_local_input(f"file://{tmp_path / 'empty.csv'}", "data.test_path")
    assert "data.test_path" in str(err.value)
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "_SUCCESS").write_text("x")
    with pytest.raises(InputError, match="no data files"):
        check_local_input(str(hidden))
    (hidden / "part-0.csv").write_text("1,2,3,4\n")
    check_local_input(str(hidden))
    check_local_input(str(tmp_path / "hid*"))
