"""Readers for every ``data.format``; each returns a :class:`ParsedRatings`.

Text formats are read line by line (``spark.read.text``) and split on their delimiter, so a
line with the wrong number of fields or an unparseable number is caught and kept with its
raw text instead of being dropped or mangled by a permissive CSV parser. Parquet and
synthetic sources are already typed. Every reader yields the same columns:

* ``user_id``, ``item_id`` (long or string), ``rating`` (double), ``timestamp`` (long) —
  null where the field could not be parsed;
* ``line`` (the whole input line, text formats only) and ``source`` (the file);
* ``parse_error``: the rejection reason found while parsing (or null); a blank line is kept
  with :data:`BLANK_LINE` so that it is counted (and reported) in the same pass as the
  rejections, but it is not a rejected rating.

The fields as read (``raw_user``, ``raw_item``, ``raw_rating``, ``raw_timestamp``) are not
carried along: :attr:`ParsedRatings.raw` holds expressions that recompute them from ``line``
(text) or from the typed columns (parquet, synthetic), applied to the few rejected rows only.
That keeps the rows that are shuffled and cached during validation small.

Validation (:mod:`mfspark.validation`) then applies the checks common to all formats.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.config import DataConfig
from mfspark.errors import ConfigError, InputError
from mfspark.io import local_path

log = logging.getLogger(__name__)

RAW_COLS = ("raw_user", "raw_item", "raw_rating", "raw_timestamp")
PARSE_ERROR = "parse_error"
SOURCE = "source"
# parse_error of a blank line: counted and logged, never a rejected rating.
BLANK_LINE = "blank_line"
PARSED_COLS = (C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP, C.LINE, SOURCE, PARSE_ERROR)
TEXT_FORMATS = ("movielens-100k", "movielens-dat", "movielens-csv", "csv")


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
    # A line matching this (case-insensitive) is a header line, not a rating.
    header_pattern: str | None = None
    # Fields may be "quoted" (CSV).
    quoted: bool = False


MOVIELENS_100K = TextFormat("\t", ("user_id", "item_id", "rating", "timestamp"), False, True)
MOVIELENS_DAT = TextFormat("::", ("user_id", "item_id", "rating", "timestamp"), False, True)
MOVIELENS_CSV = TextFormat(
    ",",
    ("userId", "movieId", "rating", "timestamp"),
    True,
    True,
    user="userId",
    item="movieId",
    # Recognised without reading the file first: every ratings.csv starts with this header.
    header_pattern=r"(?i)^\W*userId\W*,\W*movieId\W*,",
)
_INTEGER = r"^[+-]?\d+$"


def _typed_raw() -> dict[str, Column]:
    """Fields "as read" of an already typed source: its values as strings."""
    return {
        "raw_user": F.col(C.USER_ID).cast("string"),
        "raw_item": F.col(C.ITEM_ID).cast("string"),
        "raw_rating": F.col(C.RATING).cast("string"),
        "raw_timestamp": F.col(C.TIMESTAMP).cast("string"),
    }


@dataclass
class ParsedRatings:
    """Parsed input rows (:data:`PARSED_COLS`) and how to recompute the raw fields."""

    df: DataFrame
    id_type: T.DataType
    raw: dict[str, Column] = field(default_factory=_typed_raw)


COMPRESSION_SUFFIXES = (".gz", ".bz2")


def _strip_compression(name: str) -> str:
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _format_from_name(name: str) -> str | None:
    """The format a file name tells (``u.data``, ``ratings.dat.bz2``, ``x.csv.gz``), or None."""
    name = name.lower()
    if name.endswith((".parquet", ".pq")):  # Spark's parts: part-00000-….snappy.parquet
        return "parquet"
    name = _strip_compression(name)
    if name == "u.data" or re.fullmatch(r"u\w*\.(base|test)", name):
        return "movielens-100k"
    if name.endswith(".dat"):
        return "movielens-dat"
    if name.endswith(".csv"):
        return "movielens-csv" if name == "ratings.csv" else "csv"
    return None


def _format_from_parts(path: str) -> str | None:
    """The format of a local directory of part files, when all its data files tell the same."""
    local = local_path(path)
    if local is None or not os.path.isdir(local):
        return None
    # Names that tell nothing (notes.txt) do not decide; the checks of the input then name them.
    found = {_format_from_name(os.path.basename(f)) for f in _local_data_files(local)} - {None}
    found = {"csv" if fmt == "movielens-csv" else fmt for fmt in found}  # parts are not ratings.csv
    return found.pop() if len(found) == 1 else None


def detect_format(data: DataConfig) -> str:
    """Resolve ``data.format = "auto"``: synthetic without a path, else by file name.

    A ``.gz``/``.bz2`` suffix is looked through (``u.data.gz``); a local directory of part
    files (Spark's own output) has the format its data files' names tell.
    """
    if data.format != "auto":
        return data.format
    if not data.path:
        return "synthetic"
    fmt = _format_from_name(os.path.basename(data.path.rstrip("/"))) or _format_from_parts(data.path)
    if fmt is not None:
        return fmt
    raise ConfigError(
        f"cannot tell the format of {data.path} from its name; set data.format to one of "
        "movielens-100k, movielens-dat, movielens-csv, csv, parquet"
    )


def _is_hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _local_data_files(directory: str) -> list[str]:
    """Data files under a local directory: hidden names (``_SUCCESS``, ``.crc``) skipped."""
    files = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        files += [os.path.join(root, n) for n in sorted(names) if not _is_hidden(n)]
    return files


GZIP_MAGIC, BZIP2_MAGIC, PARQUET_MAGIC = b"\x1f\x8b", b"BZh", b"PAR1"


def content_problem(name: str, fmt: str | None, head: bytes, tail: bytes, size: int) -> str | None:
    """What is wrong with a data file, judged from its first and last bytes; None if nothing.

    Parquet files start and end with ``PAR1``; gzip and bzip2 files start with their magic
    numbers. (A compressed file cut short is only seen when it is read: :func:`read_error`.)
    """
    if size == 0:
        return None
    if fmt == "parquet":
        if size < 12 or head[:4] != PARQUET_MAGIC or tail[-4:] != PARQUET_MAGIC:
            return (
                f"{name} is not a Parquet file; a Parquet input may hold only Parquet files "
                "(besides _SUCCESS, .crc and hidden files): move it out of the directory"
            )
        return None
    lower = name.lower()
    if lower.endswith(".gz") and head[:2] != GZIP_MAGIC:
        return (
            f"{name} is not a gzip file (no gzip header); replace it with a complete copy, or "
            "rename it without .gz if it is plain text"
        )
    if lower.endswith(".bz2") and head[:3] != BZIP2_MAGIC:
        return (
            f"{name} is not a bzip2 file (no bzip2 header); replace it with a complete copy, or "
            "rename it without .bz2 if it is plain text"
        )
    return None


def _gzip_start_problem(name: str, head: bytes) -> str | None:
    """The first bytes of a gzip file must decompress (garbage after a valid header does not)."""
    import zlib

    try:
        zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
    except zlib.error as exc:
        return f"{name} is a corrupt gzip file ({exc}); replace it with a complete copy"
    return None


def check_local_input(path: str, key: str = "data.path", fmt: str | None = None) -> None:
    """The checks of :func:`check_input_path` on the local file system, without Spark.

    Jobs run them before starting Spark so that a wrong path fails at once, in one line.
    """
    if not path:
        raise InputError(f"{key} is empty; set it to a ratings file or directory")
    local = local_path(path) or path
    matches = sorted(glob.glob(local)) if glob.has_magic(local) else [local]
    matches = [m for m in matches if os.path.exists(m)]
    if not matches:
        raise InputError(f"input not found: {path} ({key}); check the path")
    files = []
    for m in matches:
        files += _local_data_files(m) if os.path.isdir(m) else [m]
    if not files:
        raise InputError(f"input has no data files: {path} ({key})")
    unreadable = [f for f in files if not os.access(f, os.R_OK)]
    if unreadable:
        raise InputError(f"input is not readable: {unreadable[0]} ({key}); check its permissions")
    if all(os.path.getsize(f) == 0 for f in files):
        raise InputError(f"input is empty: {path} ({key})")
    for f in files:
        size = os.path.getsize(f)
        with open(f, "rb") as handle:
            head = handle.read(1 << 16)
            handle.seek(max(0, size - 4))
            tail = handle.read(4)
        problem = content_problem(f, fmt, head, tail, size)
        if problem is None and fmt != "parquet" and f.lower().endswith(".gz") and size:
            problem = _gzip_start_problem(f, head)
        if problem is not None:
            raise InputError(f"{problem} ({key})")


# Files whose magic numbers are checked through Hadoop before reading (more are left to the
# read itself, whose errors :func:`read_error` turns into the same one line).
MAX_CHECKED_FILES = 1000


def check_input_path(
    spark: SparkSession, path: str, key: str = "data.path", fmt: str | None = None
) -> None:
    """Fail in one line when ``path`` is missing, holds no data files, or a file of the wrong kind."""
    from mfspark.io import HadoopFS

    if not path:
        raise InputError(f"{key} is empty; set it to a ratings file or directory")
    fs = HadoopFS(spark)
    problem = fs.scheme_supported(path)
    if problem is not None:
        raise InputError(
            f"cannot open {key}={path}: {problem}; fix the URI, or add the file system's "
            "connector (e.g. --packages org.apache.hadoop:hadoop-aws for s3a://)"
        )
    matches = fs.glob(path) if glob.has_magic(path) else [path] if fs.exists(path) else []
    if not matches:
        raise InputError(f"input not found: {path} ({key}); check the path")
    files = [f for m in matches for f in fs.file_status(m)]
    if not files:
        raise InputError(f"input has no data files: {path} ({key})")
    if all(size == 0 for _, size, _ in files):
        raise InputError(f"input is empty: {path} ({key})")
    for name, size, _ in files[:MAX_CHECKED_FILES]:
        if size == 0 or (fmt != "parquet" and not name.lower().endswith(COMPRESSION_SUFFIXES)):
            continue
        head = fs.read_bytes(name, 0, 4)
        tail = fs.read_bytes(name, max(0, size - 4), 4) if fmt == "parquet" else b""
        problem = content_problem(name, fmt, head, tail, size)
        if problem is not None:
            raise InputError(f"{problem} ({key})")


_FAILED_READ = (
    re.compile(r"FAILED_READ_FILE\.(\w+)\] Encountered error while reading file (\S+?)\.?\s"),
    re.compile(r"(CANNOT_READ_FILE_FOOTER)\] Could not read footer for file: (\S+?)\.?\s"),
)


def read_error(exc: BaseException) -> InputError | None:
    """The one-line :class:`InputError` for a Spark failure to read an input file, else None.

    Spark reports a file it cannot read (a truncated ``.gz``, a corrupt Parquet part) as
    ``FAILED_READ_FILE`` naming the file; the deepest cause says what was wrong.
    """
    java = getattr(exc, "java_exception", None)
    text = str(java.toString()) if java is not None else str(exc)
    m = next((m for m in (p.search(text + " ") for p in _FAILED_READ) if m is not None), None)
    if m is None:
        return None
    kind, name = m.group(1), m.group(2)
    cause = text.splitlines()[0]
    while java is not None:
        cause = str(java.toString()).splitlines()[0]
        java = java.getCause()
    cause = re.sub(r"^[\w.$]+(Exception|Error): ", "", cause).strip()
    lower = name.lower()
    if lower.endswith(COMPRESSION_SUFFIXES):
        fix = "the compressed file is cut short or corrupt; replace it with a complete copy"
    elif kind == "CANNOT_READ_FILE_FOOTER" or lower.endswith(".parquet") or "Parquet" in cause:
        fix = (
            "it is not a readable Parquet file; move it out of the input directory or replace "
            "it with a complete copy"
        )
    else:
        fix = "replace it with a complete copy or move it out of the input"
    return InputError(f"cannot read {name} ({cause}): {fix}")


def _split_header(text: str, delimiter: str) -> tuple[str, ...]:
    return tuple(f.strip().strip('"') for f in text.lstrip("\ufeff").split(delimiter))


def _text_format(data: DataConfig, fmt: str, header_text: str | None, path: str) -> TextFormat:
    if fmt == "movielens-100k":
        return MOVIELENS_100K
    if fmt == "movielens-dat":
        return MOVIELENS_DAT
    if fmt == "movielens-csv":
        return MOVIELENS_CSV
    # generic csv
    fields = _split_header(header_text, data.delimiter) if data.header else tuple(data.columns)
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
        quoted=True,
    )


def _clean(value: Column, fmt: TextFormat) -> Column:
    """A field as read: trimmed, unquoted (CSV formats), null when empty."""
    value = F.trim(value)
    if fmt.quoted:
        quoted = value.startswith('"') & value.endswith('"') & (F.length(value) >= 2)
        value = F.when(quoted, value.substr(F.lit(2), F.length(value) - 2)).otherwise(value)
    return F.nullif(value, F.lit(""))


def _field(fields_col: Column, fmt: TextFormat, name: str | None) -> Column:
    if name is None:
        return F.lit(None).cast("string")
    return _clean(F.get(fields_col, fmt.fields.index(name)), fmt)


def read_text_ratings(spark: SparkSession, data: DataConfig, fmt_name: str, path: str) -> ParsedRatings:
    """Parse a delimited text input line by line (see the module docstring)."""
    lines = spark.read.text(path).select(
        F.col("value").alias(C.LINE), F.col("_metadata.file_path").alias(SOURCE)
    )
    header_text = None
    if fmt_name == "csv" and data.header:
        first = lines.select(C.LINE).first()  # one small job: the field names are needed now
        if first is None:
            raise InputError(f"input is empty: {path}")
        header_text = first[C.LINE]
    fmt = _text_format(data, fmt_name, header_text, path)
    if header_text is not None:
        # Every file of a directory starts with the same header.
        lines = lines.where(F.col(C.LINE) != F.lit(header_text))
    elif fmt.header_pattern is not None:
        lines = lines.where(~F.col(C.LINE).rlike(fmt.header_pattern))

    split_line = F.split(F.col(C.LINE), re.escape(fmt.delimiter), -1)
    # Recomputed from `line` for the rejected rows only (prepared/rejected).
    raw = {
        "raw_user": _field(split_line, fmt, fmt.user),
        "raw_item": _field(split_line, fmt, fmt.item),
        "raw_rating": _field(split_line, fmt, fmt.rating),
        "raw_timestamp": _field(split_line, fmt, fmt.timestamp),
    }
    # The parse proper, one step per select so that each value is computed once per line
    # (Spark keeps a select separate when inlining it would repeat a costly expression).
    df = lines.select(C.LINE, SOURCE, split_line.alias("_parts"))
    positions = {
        name: fmt.fields.index(field) if field is not None else None
        for name, field in zip(RAW_COLS, (fmt.user, fmt.item, fmt.rating, fmt.timestamp), strict=True)
    }
    df = df.select(
        C.LINE,
        SOURCE,
        (F.trim(F.col(C.LINE)) == "").alias("_blank"),
        F.size("_parts").alias("_n_fields"),
        *[
            (F.get(F.col("_parts"), pos) if pos is not None else F.lit(None).cast("string")).alias(name)
            for name, pos in positions.items()
        ],
    )
    df = df.select(
        C.LINE, SOURCE, "_blank", "_n_fields", *[_clean(F.col(c), fmt).alias(c) for c in RAW_COLS]
    )
    if fmt.integer_ids:
        id_type: T.DataType = T.LongType()
    elif fmt_name == "csv" and data.id_type == "auto":
        # Long ids when every well-formed line has integer ids: one scan, stopped at the first
        # non-integer id.
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

    typed = {
        C.USER_ID: parse_id("raw_user"),
        C.ITEM_ID: parse_id("raw_item"),
        C.RATING: F.col("raw_rating").try_cast("double"),
        C.TIMESTAMP: F.when(
            F.col("raw_timestamp").rlike(_INTEGER), F.col("raw_timestamp").try_cast("long")
        ),
    }
    df = df.select("*", *[expr.alias(name) for name, expr in typed.items()])
    # A field that is there but did not parse.
    bad_number = F.lit(False)
    for raw_col, col in zip(RAW_COLS, typed, strict=True):
        bad_number = bad_number | (F.col(raw_col).isNotNull() & F.col(col).isNull())
    parse_error = (
        F.when(F.col("_blank"), F.lit(BLANK_LINE))
        .when(F.col("_n_fields") != len(fmt.fields), F.lit(C.REASON_WRONG_FIELD_COUNT))
        .when(bad_number, F.lit(C.REASON_BAD_NUMBER))
    )
    df = df.select(*typed, C.LINE, SOURCE, parse_error.alias(PARSE_ERROR))
    return ParsedRatings(df, id_type, raw)


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
    elif isinstance(fields[ts_col], T.TimestampType):
        timestamp = F.unix_seconds(F.col(ts_col))
    elif isinstance(fields[ts_col], (T.TimestampNTZType, T.DateType)):
        # A time without zone is read as UTC, whatever the session time zone.
        epoch = F.lit("1970-01-01 00:00:00").cast("timestamp_ntz")
        timestamp = F.timestamp_diff("SECOND", epoch, F.col(ts_col).cast("timestamp_ntz"))
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
    return ParsedRatings(from_typed(typed), id_type)


def from_typed(df: DataFrame) -> DataFrame:
    """The parsed layout (:data:`PARSED_COLS`) of an already typed source."""
    return df.select(
        C.USER_ID,
        C.ITEM_ID,
        C.RATING,
        C.TIMESTAMP,
        F.lit(None).cast("string").alias(C.LINE),
        (F.col(SOURCE) if SOURCE in df.columns else F.lit(None).cast("string")).alias(SOURCE),
        F.lit(None).cast("string").alias(PARSE_ERROR),
    )


def read_ratings(
    spark: SparkSession, data: DataConfig, path: str, fmt: str, check: bool = True
) -> ParsedRatings:
    """Read one ratings input of format ``fmt`` (not synthetic); ``check`` its path first."""
    if check:
        key = "data.test_path" if path == data.test_path else "data.path"
        check_input_path(spark, path, key, fmt)
    if fmt == "parquet":
        return read_parquet_ratings(spark, data, path)
    if fmt in TEXT_FORMATS:
        return read_text_ratings(spark, data, fmt, path)
    raise ConfigError(f"data.format {fmt!r} has no file reader")  # pragma: no cover
