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
                          lexicographically larger line, so the choice never depends on
                          partitioning)
``test_pair_in_train``    (predefined splits) a test row whose pair is also in the train
                          file: scoring it would leak the answer
========================  ==========================================================
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from mfspark import columns as C
from mfspark.config import DataConfig
from mfspark.readers import PARSE_ERROR, SOURCE

VALID_COLS = (C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP)


def row_reason(data: DataConfig) -> Column:
    """The first per-row rejection reason, or null for a row that passes."""
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


def check_rows(parsed: DataFrame, data: DataConfig) -> DataFrame:
    """Add ``reason`` (null when valid) to every parsed row, duplicates included."""
    with_reason = parsed.withColumn(C.REASON, row_reason(data))
    # One window pass: valid rows of the same pair are ranked newest first. Invalid rows sit
    # in groups of their own (the reason is part of the key) and are never ranked.
    latest_first = Window.partitionBy(C.USER_ID, C.ITEM_ID, C.REASON).orderBy(
        F.col(C.TIMESTAMP).desc_nulls_last(), F.col(C.RATING).desc(), F.col(C.LINE).desc()
    )
    is_older = F.col(C.REASON).isNull() & (F.row_number().over(latest_first) > 1)
    return with_reason.withColumn(
        C.REASON, F.when(is_older, F.lit(C.REASON_DUPLICATE)).otherwise(F.col(C.REASON))
    )


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


def rejected_rows(checked: DataFrame) -> DataFrame:
    """Rejected rows as read (strings) with their reason: the ``prepared/rejected`` layout."""
    return checked.where(F.col(C.REASON).isNotNull()).select(
        F.col("raw_user").alias(C.USER_ID),
        F.col("raw_item").alias(C.ITEM_ID),
        F.col("raw_rating").alias(C.RATING),
        F.col("raw_timestamp").alias(C.TIMESTAMP),
        F.col(C.LINE),
        F.col(SOURCE).alias("source"),
        F.col(C.REASON),
    )


def count_reasons(checked: DataFrame) -> tuple[int, dict[str, int]]:
    """(valid rows, {reason: rejected rows}) in one aggregation."""
    counts = {r[C.REASON]: int(r["count"]) for r in checked.groupBy(C.REASON).count().collect()}
    valid = counts.pop(None, 0)
    return valid, dict(sorted(counts.items()))
