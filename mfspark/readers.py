"""Readers for every ``data.format``; each returns a :class:`ParsedRatings`.

Text formats are read line by line (``spark.read.text``) and split on their delimiter, so a
line with the wrong number of fields or an unparseable number is caught and kept with its
raw text instead of being dropped or mangled by a permissive CSV parser. Parquet and
synthetic sources are already typed. Every reader yields the same columns:

* ``user_id``, ``item_id`` (long or string), ``rating`` (double), ``timestamp`` (long) —
  null where the field could not be parsed;
* ``raw_user``, ``raw_item``, ``raw_rating``, ``raw_timestamp`` (string, as read), ``line``
  (the whole input line, text formats only) and ``source`` (the file);
* ``parse_error``: the rejection reason found while parsing (or null).

Validation (:mod:`mfspark.validation`) then applies the checks common to all formats.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.config import DataConfig
from mfspark.errors import ConfigError, InputError

log = logging.getLogger(__name__)

RAW_COLS = ("raw_user", "raw_item", "raw_rating", "raw_timestamp")
PARSE_ERROR = "parse_error"
SOURCE = "source"


@dataclass(frozen=True)
class TextFormat:
    """A delimited text format: its delimiter and the field names in file order."""

    delimiter: str
    fields: tuple[str, ...]
    header: bool
    integer_ids: bool
    user: str = "user_id"
    item: str = "item_id"
    rating: str = "rating"
    timestamp: str | None = "timestamp"


MOVIELENS_100K = TextFormat("\t", ("user_id", "item_id", "rating", "timestamp"), False, True)
MOVIELENS_DAT = TextFormat("::", ("user_id", "item_id", "rating", "timestamp"), False, True)
MOVIELENS_CSV = TextFormat(
    ",",
    ("userId", "movieId", "rating", "timestamp"),
    True,
    True,
    user="userId",
    item="movieId",
)
_INTEGER = r"^[+-]?\d+$"


@dataclass
class ParsedRatings:
    df: DataFrame
    id_type: T.DataType
    n_blank_lines: int = 0


def detect_format(data: DataConfig) -> str:
    """Resolve ``data.format = "auto"``: synthetic without a path, else by file name."""
    if data.format != "auto":
        return data.format
    if not data.path:
        return "synthetic"
    name = os.path.basename(data.path.rstrip("/")).lower()
    if name == "u.data" or re.fullmatch(r"u\w*\.(base|test)", name):
        return "movielens-100k"
    if name.endswith(".dat"):
        return "movielens-dat"
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith(".csv"):
        return "movielens-csv" if name == "ratings.csv" else "csv"
    raise ConfigError(
        f"cannot tell the format of {data.path} from its name; set data.format to one of "
        "movielens-100k, movielens-dat, movielens-csv, csv, parquet"
    )


def check_input_path(spark: SparkSession, path: str, key: str = "data.path") -> None:
    """Fail in one line when ``path`` is missing or holds no data files."""
    from mfspark.io import HadoopFS

    if not path:
        raise InputError(f"{key} is empty; set it to a ratings file or directory")
    fs = HadoopFS(spark)
    if not fs.exists(path):
        raise InputError(f"input not found: {path} ({key}); check the path")
    files = fs.file_status(path)
    if not files:
        raise InputError(f"input has no data files: {path} ({key})")
    if all(size == 0 for _, size, _ in files):
        raise InputError(f"input is empty: {path} ({key})")


def _text_format(data: DataConfig, fmt: str, spark: SparkSession, path: str) -> TextFormat:
    if fmt == "movielens-100k":
        return MOVIELENS_100K
    if fmt == "movielens-dat":
        return MOVIELENS_DAT
    if fmt == "movielens-csv":
        return MOVIELENS_CSV
    # generic csv
    if data.header:
        first = spark.read.text(path).first()
        if first is None:
            raise InputError(f"input is empty: {path}")
        fields = tuple(f.strip().strip('"') for f in first[0].split(data.delimiter))
    else:
        fields = tuple(data.columns)
    wanted = [data.user_col, data.item_col, data.rating_col] + (
        [data.timestamp_col] if data.timestamp_col else []
    )
    missing = [c for c in wanted if c not in fields]
    if missing:
        where = "header" if data.header else "data.columns"
        raise InputError(
            f"column {missing[0]!r} is not in the {where} of {path} (found: {', '.join(fields)}); "
            f"set data.user_col/item_col/rating_col/timestamp_col to the file's names"
        )
    return TextFormat(
        data.delimiter,
        fields,
        data.header,
        data.id_type == "long",
        user=data.user_col,
        item=data.item_col,
        rating=data.rating_col,
        timestamp=data.timestamp_col or None,
    )


def _field(fields_col: Column, fmt: TextFormat, name: str | None) -> Column:
    if name is None:
        return F.lit(None).cast("string")
    value = F.trim(F.get(fields_col, fmt.fields.index(name)))
    value = F.regexp_replace(value, r'^"(.*)"$', "$1")  # "quoted" fields
    return F.when(value == "", None).otherwise(value)


def read_text_ratings(spark: SparkSession, data: DataConfig, fmt_name: str, path: str) -> ParsedRatings:
    fmt = _text_format(data, fmt_name, spark, path)
    lines = spark.read.text(path).select(
        F.col("value").alias(C.LINE), F.col("_metadata.file_path").alias(SOURCE)
    )
    if fmt.header:
        header_line = lines.first()
        header_text = header_line[C.LINE] if header_line else None
        lines = lines.where(F.col(C.LINE) != F.lit(header_text))
    is_blank = F.trim(F.col(C.LINE)) == ""
    n_blank = lines.where(is_blank).count()
    if n_blank:
        log.warning("%d blank lines in %s skipped (they hold no rating)", n_blank, path)
    lines = lines.where(~is_blank)
    pattern = re.escape(fmt.delimiter)
    parts = F.split(F.col(C.LINE), pattern, -1)
    df = lines.select(
        C.LINE,
        SOURCE,
        F.size(parts).alias("_n_fields"),
        _field(parts, fmt, fmt.user).alias("raw_user"),
        _field(parts, fmt, fmt.item).alias("raw_item"),
        _field(parts, fmt, fmt.rating).alias("raw_rating"),
        _field(parts, fmt, fmt.timestamp).alias("raw_timestamp"),
    )
    if fmt.integer_ids or data.id_type == "long" and fmt_name == "csv":
        id_type: T.DataType = T.LongType()
    elif fmt_name == "csv" and data.id_type == "auto":
        non_integer = (
            df.where(
                (F.col("_n_fields") == len(fmt.fields))
                & (~F.col("raw_user").rlike(_INTEGER) | ~F.col("raw_item").rlike(_INTEGER))
            )
            .limit(1)
            .count()
        )
        id_type = T.StringType() if non_integer else T.LongType()
        log.info("ids in %s are %s", path, "strings" if non_integer else "integers")
    else:
        id_type = T.StringType()

    def parse_id(col: str) -> Column:
        if isinstance(id_type, T.LongType):
            return F.when(F.col(col).rlike(_INTEGER), F.col(col).try_cast("long"))
        return F.col(col)

    rating = F.col("raw_rating").try_cast("double")
    timestamp = F.when(F.col("raw_timestamp").rlike(_INTEGER), F.col("raw_timestamp").try_cast("long"))
    bad_number = (
        (F.col("raw_user").isNotNull() & parse_id("raw_user").isNull())
        | (F.col("raw_item").isNotNull() & parse_id("raw_item").isNull())
        | (F.col("raw_rating").isNotNull() & rating.isNull())
        | (F.col("raw_timestamp").isNotNull() & timestamp.isNull())
    )
    parse_error = F.when(F.col("_n_fields") != len(fmt.fields), F.lit(C.REASON_WRONG_FIELD_COUNT)).when(
        bad_number, F.lit(C.REASON_BAD_NUMBER)
    )
    df = df.select(
        parse_id("raw_user").alias(C.USER_ID),
        parse_id("raw_item").alias(C.ITEM_ID),
        rating.alias(C.RATING),
        timestamp.alias(C.TIMESTAMP),
        *RAW_COLS,
        C.LINE,
        SOURCE,
        parse_error.alias(PARSE_ERROR),
    )
    return ParsedRatings(df, id_type, n_blank)


def read_parquet_ratings(spark: SparkSession, data: DataConfig, path: str) -> ParsedRatings:
    df = spark.read.parquet(path)
    names = {
        "user": data.user_col,
        "item": data.item_col,
        "rating": data.rating_col,
        "timestamp": data.timestamp_col or None,
    }
    fields = {f.name: f.dataType for f in df.schema.fields}
    for role, col in names.items():
        if col is not None and col not in fields:
            raise InputError(
                f"column {col!r} ({role}) is not in {path} (found: {', '.join(fields)}); "
                f"set data.{role}_col to the file's name"
            )
    id_types = {fields[names["user"]], fields[names["item"]]}
    integral = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
    if all(isinstance(t, integral) for t in id_types):
        id_type: T.DataType = T.LongType()
    elif all(isinstance(t, T.StringType) for t in id_types):
        id_type = T.StringType()
    else:
        raise InputError(
            f"ids in {path} must be integers or strings, found "
            f"{', '.join(sorted(t.simpleString() for t in id_types))}; cast them before reading"
        )
    if not isinstance(fields[names["rating"]], T.NumericType):
        raise InputError(
            f"rating column {names['rating']!r} in {path} is "
            f"{fields[names['rating']].simpleString()}, not a number"
        )
    ts_col = names["timestamp"]
    if ts_col is None:
        timestamp = F.lit(None).cast("long")
    elif isinstance(fields[ts_col], (T.TimestampType, T.TimestampNTZType, T.DateType)):
        timestamp = F.unix_timestamp(F.col(ts_col).cast("timestamp"))
    elif isinstance(fields[ts_col], integral):
        timestamp = F.col(ts_col).cast("long")
    else:
        raise InputError(
            f"timestamp column {ts_col!r} in {path} is {fields[ts_col].simpleString()}; "
            "it must be an integer (epoch seconds) or a timestamp"
        )
    typed = df.select(
        F.col(names["user"]).cast(id_type).alias(C.USER_ID),
        F.col(names["item"]).cast(id_type).alias(C.ITEM_ID),
        F.col(names["rating"]).cast("double").alias(C.RATING),
        timestamp.alias(C.TIMESTAMP),
        F.col("_metadata.file_path").alias(SOURCE),
    )
    return ParsedRatings(with_raw_from_typed(typed), id_type)


def with_raw_from_typed(df: DataFrame) -> DataFrame:
    """Add the raw/line/parse_error columns to an already typed source."""
    return df.select(
        C.USER_ID,
        C.ITEM_ID,
        C.RATING,
        C.TIMESTAMP,
        F.col(C.USER_ID).cast("string").alias("raw_user"),
        F.col(C.ITEM_ID).cast("string").alias("raw_item"),
        F.col(C.RATING).cast("string").alias("raw_rating"),
        F.col(C.TIMESTAMP).cast("string").alias("raw_timestamp"),
        F.lit(None).cast("string").alias(C.LINE),
        (F.col(SOURCE) if SOURCE in df.columns else F.lit(None).cast("string")).alias(SOURCE),
        F.lit(None).cast("string").alias(PARSE_ERROR),
    )


def read_ratings(spark: SparkSession, data: DataConfig, path: str, fmt: str) -> ParsedRatings:
    """Read one ratings input of format ``fmt`` (not synthetic)."""
    check_input_path(spark, path, "data.test_path" if path == data.test_path else "data.path")
    if fmt == "parquet":
        return read_parquet_ratings(spark, data, path)
    if fmt in ("movielens-100k", "movielens-dat", "movielens-csv", "csv"):
        return read_text_ratings(spark, data, fmt, path)
    raise ConfigError(f"data.format {fmt!r} has no file reader")  # pragma: no cover
