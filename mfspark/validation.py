"""Validation: every input row is either valid or rejected with a reason, never dropped.

Checks, in order (a row gets the first reason that applies):

========================  ==========================================================
``wrong_field_count``     the line does not have the format's number of fields
``unparseable_number``    an id (integer formats), rating or timestamp is not a number
``null_user_id``          the user field is empty
``null_item_id``          the item field is empty
``null_rating``           the rating field is empty
``nan_rating``            the rating is NaN
``rating_out_of_range``   outside ``[data.rating_min, data.rating_max]``
``duplicate``             an older rating of a (user, item) pair that occurs again: the
                          latest by timestamp is kept (ties: the higher rating, then the
                          lexicographically larger line, then source file, so the choice
                          never depends on partitioning; of rows equal in all of these,
                          one is kept)
``test_pair_in_train``    (predefined splits) a test row whose pair is also in the train
                          file: scoring it would leak the answer
========================  ==========================================================

Blank lines are neither valid nor rejected: they are counted (``blank_lines_skipped``) and
logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from mfspark import columns as C
from mfspark.config import DataConfig
from mfspark.readers import BLANK_LINE, PARSE_ERROR, RAW_COLS, SOURCE

VALID_COLS = (C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP)


def row_reason(data: DataConfig) -> Column:
    """The first per-row rejection reason (or :data:`BLANK_LINE`), null for a row that passes."""
    rating = F.col(C.RATING)
    return (
        F.when(F.col(PARSE_ERROR).isNotNull(), F.col(PARSE_ERROR))
        .when(F.col(C.USER_ID).isNull(), F.lit(C.REASON_NULL_USER))
        .when(F.col(C.ITEM_ID).isNull(), F.lit(C.REASON_NULL_ITEM))
        .when(rating.isNull(), F.lit(C.REASON_NULL_RATING))
        .when(F.isnan(rating), F.lit(C.REASON_NAN_RATING))
        .when(
            (rating < F.lit(data.rating_min)) | (rating > F.lit(data.rating_max)),
            F.lit(C.REASON_OUT_OF_RANGE),
        )
    )


def check_rows(parsed: DataFrame, data: DataConfig, distinct_pairs: bool = False) -> DataFrame:
    """Add ``reason`` (null when valid) to every parsed row, duplicates included.

    The result is persisted (memory and disk); the caller unpersists it. Duplicates cost one
    aggregation, which also materialises the cache: the valid rows' (user, item) pairs are
    counted, and only the rows of a pair that occurs more than once are ranked, newest first.
    Most inputs have no such pair, and none of their rows is sorted. ``distinct_pairs=True``
    is for a source that cannot repeat a pair (the synthetic generator samples items without
    replacement): the aggregation is skipped, only the per-row checks run, and the first
    scan of the result materialises it.
    """
    checked = persist_uncompressed(parsed.withColumn(C.REASON, row_reason(data)).drop(PARSE_ERROR))
    if distinct_pairs:
        return checked
    try:
        result = _mark_duplicates(checked)
    except BaseException:
        checked.unpersist()  # a failed check leaves nothing cached
        raise
    if result is not checked:
        checked.unpersist()
    return result


def _mark_duplicates(checked: DataFrame) -> DataFrame:
    """``checked`` itself when no valid (user, item) pair repeats, else a persisted,
    materialised copy whose older ratings of repeated pairs are marked ``duplicate``."""
    pair = [C.USER_ID, C.ITEM_ID]
    repeated = (
        checked.where(F.col(C.REASON).isNull())
        .groupBy(*pair)
        .count()
        .where(F.col("count") > 1)
        .select(*pair, F.lit(True).alias(_REPEATED))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        n_repeated = repeated.count()  # also materialises ``checked``
        if not n_repeated:
            return checked
        flagged = checked.join(
            F.broadcast(repeated) if n_repeated <= BROADCAST_PAIRS else repeated, pair, "left"
        )
        # Valid rows of a repeated pair are ranked newest first. Invalid rows sit in groups of
        # their own (the reason is part of the key) and are never ranked.
        latest_first = Window.partitionBy(*pair, C.REASON).orderBy(
            F.col(C.TIMESTAMP).desc_nulls_last(),
            F.col(C.RATING).desc(),
            F.col(C.LINE).desc(),
            F.col(SOURCE).desc(),
        )
        is_older = F.col(C.REASON).isNull() & (F.row_number().over(latest_first) > 1)
        ranked = flagged.where(F.col(_REPEATED).isNotNull()).withColumn(
            C.REASON, F.when(is_older, F.lit(C.REASON_DUPLICATE)).otherwise(F.col(C.REASON))
        )
        result = persist_uncompressed(
            flagged.where(F.col(_REPEATED).isNull()).unionByName(ranked).drop(_REPEATED)
        )
        try:
            result.count()
        except BaseException:
            result.unpersist()
            raise
        return result
    finally:
        repeated.unpersist()


def persist_uncompressed(df: DataFrame) -> DataFrame:
    """``df`` persisted (memory and disk) without the columnar cache's compression.

    For rows scanned a few times and then dropped, compressing costs more than it saves:
    caching 20M parsed ratings took 15 s compressed and 10 s not, the scans that follow
    equally fast. The session's setting is restored at once (a cache takes it when declared).
    """
    conf = df.sparkSession.conf
    before = conf.get(_COMPRESSED, None)
    conf.set(_COMPRESSED, "false")
    try:
        return df.persist(StorageLevel.MEMORY_AND_DISK)
    finally:
        if before is None:
            conf.unset(_COMPRESSED)
        else:
            conf.set(_COMPRESSED, before)


_COMPRESSED = "spark.sql.inMemoryColumnarStorage.compressed"
_REPEATED = "_repeated"
#: Repeated pairs shipped to every task instead of shuffling the rows to meet them.
BROADCAST_PAIRS = 1_000_000


def reject_test_pairs_in_train(test_checked: DataFrame, train_valid: DataFrame) -> DataFrame:
    """Mark valid test rows whose (user, item) pair is also a valid train rating."""
    pairs = train_valid.select(C.USER_ID, C.ITEM_ID).distinct().withColumn("_in_train", F.lit(True))
    joined = test_checked.join(pairs, [C.USER_ID, C.ITEM_ID], "left")
    leak = F.col(C.REASON).isNull() & F.col("_in_train").isNotNull()
    return joined.withColumn(
        C.REASON, F.when(leak, F.lit(C.REASON_TEST_PAIR_IN_TRAIN)).otherwise(F.col(C.REASON))
    ).drop("_in_train")


def valid_rows(checked: DataFrame) -> DataFrame:
    return checked.where(F.col(C.REASON).isNull()).select(*VALID_COLS)


def rejected_rows(checked: DataFrame, raw: Mapping[str, Column]) -> DataFrame:
    """Rejected rows as read (strings) with their reason: the ``prepared/rejected`` layout.

    ``raw`` are the reader's expressions for the fields as read
    (:attr:`mfspark.readers.ParsedRatings.raw`); they run on the rejected rows only.
    """
    return checked.where(F.col(C.REASON).isNotNull() & (F.col(C.REASON) != BLANK_LINE)).select(
        *[raw[name].alias(col) for name, col in zip(RAW_COLS, VALID_COLS, strict=True)],
        F.col(C.LINE),
        F.col(SOURCE).alias("source"),
        F.col(C.REASON),
    )


@dataclass(frozen=True)
class ReasonCounts:
    """What validation found, from one aggregation over the checked rows."""

    valid: int
    rejected: dict[str, int]
    blank_lines: int = 0
    valid_without_timestamp: int = 0

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def total(self) -> int:
        """Input rows that hold a rating or were rejected (blank lines excluded)."""
        return self.valid + self.n_rejected

    def __add__(self, other: ReasonCounts) -> ReasonCounts:
        keys = sorted(set(self.rejected) | set(other.rejected))
        return ReasonCounts(
            self.valid + other.valid,
            {k: self.rejected.get(k, 0) + other.rejected.get(k, 0) for k in keys},
            self.blank_lines + other.blank_lines,
            self.valid_without_timestamp + other.valid_without_timestamp,
        )


def count_reasons(checked: DataFrame) -> ReasonCounts:
    """Valid rows, rejected rows per reason and blank lines, in one aggregation."""
    rows = (
        checked.groupBy(C.REASON)
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.count_if(F.col(C.TIMESTAMP).isNull()).alias("n_without_timestamp"),
        )
        .collect()
    )
    counts = {r[C.REASON]: int(r["n"]) for r in rows}
    without_ts = {r[C.REASON]: int(r["n_without_timestamp"]) for r in rows}
    valid = counts.pop(None, 0)
    blank = counts.pop(BLANK_LINE, 0)
    return ReasonCounts(valid, dict(sorted(counts.items())), blank, without_ts.get(None, 0))
