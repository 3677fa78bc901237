"""Column names and output schemas, defined once (the README's "Outputs" lists them).

Every module refers to these constants instead of spelling column names, and the tests
assert the written datasets against the schemas below.
"""

from __future__ import annotations

from pyspark.sql import types as T

USER_ID = "user_id"
ITEM_ID = "item_id"
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
RATING = "rating"
TIMESTAMP = "timestamp"
PREDICTION = "prediction"
COLD_USER = "cold_user"
COLD_ITEM = "cold_item"
N_TRAIN = "n_train"
REASON = "reason"
LINE = "line"
BIAS = "bias"
FACTORS = "factors"
# Autoencoder inputs (ae_inputs/by_item, ae_inputs/by_user) and reconstructions.
N_TEST = "n_test"
TRAIN_INDICES = "train_indices"
TRAIN_VALUES = "train_values"
TEST_INDICES = "test_indices"
TEST_VALUES = "test_values"
RECONSTRUCTION = "reconstruction"
ROW_IDX = "row_idx"

# Rejection reasons, in the order checks are applied (a row gets the first that matches).
REASON_WRONG_FIELD_COUNT = "wrong_field_count"
REASON_BAD_NUMBER = "unparseable_number"
REASON_NULL_USER = "null_user_id"
REASON_NULL_ITEM = "null_item_id"
REASON_NULL_RATING = "null_rating"
REASON_NAN_RATING = "nan_rating"
REASON_OUT_OF_RANGE = "rating_out_of_range"
REASON_DUPLICATE = "duplicate"
REASON_TEST_PAIR_IN_TRAIN = "test_pair_in_train"
REJECTION_REASONS = (
    REASON_WRONG_FIELD_COUNT,
    REASON_BAD_NUMBER,
    REASON_NULL_USER,
    REASON_NULL_ITEM,
    REASON_NULL_RATING,
    REASON_NAN_RATING,
    REASON_OUT_OF_RANGE,
    REASON_DUPLICATE,
    REASON_TEST_PAIR_IN_TRAIN,
)

# Output dataset paths, relative to output.path.
PREPARED_TRAIN = "prepared/train"
PREPARED_TEST = "prepared/test"
PREPARED_USERS = "prepared/users"
PREPARED_ITEMS = "prepared/items"
PREPARED_REJECTED = "prepared/rejected"
SYNTHETIC_TRUTH = "synthetic_truth"
MODELS = "models"
METRICS_HISTORY = "metrics/history"
METRICS_SUMMARY = "metrics/summary"
PREDICTIONS = "predictions"
AE_BY_ITEM = "ae_inputs/by_item"
AE_BY_USER = "ae_inputs/by_user"
AE_METADATA = "ae_inputs/metadata"
BENCHMARK = "benchmark"
MANIFEST = "manifest.json"
#: Partition column of ``predictions`` (and ``recommendations``): the model's name.
MODEL = "model"
PREDICTION_SD = "prediction_sd"


def model_dir(model: str) -> str:
    """``models/<model>``: a model's parameters (a factor model: user_factors, item_factors,
    metadata)."""
    return f"{MODELS}/{model}"


def predictions_dir(model: str) -> str:
    """``predictions/model=<model>``: one Hive partition of ``predictions`` per model."""
    return f"{PREDICTIONS}/{MODEL}={model}"


# Top-K recommendations (the recommend stage); per-model datasets are Hive partitions
# `<dataset>/model=<name>/`, so reading the dataset whole gives a `model` column.
RECOMMENDATIONS = "recommendations"
RECOMMENDATIONS_UNKNOWN_USERS = "recommendations_unknown_users"
SIMILAR_ITEMS = "similar_items"
METRICS_RANKING = "metrics/ranking"
RANK = "rank"
SCORE = "score"
SIMILAR_ITEM_ID = "similar_item_id"
SIMILARITY = "similarity"


def ratings_schema(id_type: T.DataType) -> T.StructType:
    """Schema of `prepared/train` (and, with the cold flags, `prepared/test`)."""
    return T.StructType(
        [
            T.StructField(USER_ID, id_type, False),
            T.StructField(ITEM_ID, id_type, False),
            T.StructField(USER_IDX, T.IntegerType(), False),
            T.StructField(ITEM_IDX, T.IntegerType(), False),
            T.StructField(RATING, T.DoubleType(), False),
            T.StructField(TIMESTAMP, T.LongType(), True),
        ]
    )


def test_schema(id_type: T.DataType) -> T.StructType:
    return T.StructType(
        ratings_schema(id_type).fields
        + [
            T.StructField(COLD_USER, T.BooleanType(), False),
            T.StructField(COLD_ITEM, T.BooleanType(), False),
        ]
    )


REJECTED_SCHEMA = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), True),
        T.StructField(ITEM_ID, T.StringType(), True),
        T.StructField(RATING, T.StringType(), True),
        T.StructField(TIMESTAMP, T.StringType(), True),
        T.StructField(LINE, T.StringType(), True),
        T.StructField("source", T.StringType(), True),
        T.StructField(REASON, T.StringType(), False),
    ]
)

FACTOR_SCHEMA_FIELDS = (BIAS, FACTORS)

HISTORY_SCHEMA = T.StructType(
    [
        T.StructField("model", T.StringType(), False),
        T.StructField("iteration", T.IntegerType(), False),
        T.StructField("train_rmse", T.DoubleType(), True),
        T.StructField("test_rmse", T.DoubleType(), True),
        T.StructField("objective", T.DoubleType(), True),
        T.StructField("seconds", T.DoubleType(), False),
    ]
)

SUMMARY_SCHEMA = T.StructType(
    [
        T.StructField("model", T.StringType(), False),
        T.StructField("segment", T.StringType(), False),
        T.StructField("n", T.LongType(), False),
        T.StructField("rmse", T.DoubleType(), True),
        T.StructField("mae", T.DoubleType(), True),
        T.StructField("n_nonfinite", T.LongType(), False),
        # Test rows without any prediction (no row, or a null); like n_nonfinite they are in
        # n but not in rmse/mae, which average over n - n_nonfinite - n_missing rows.
        T.StructField("n_missing", T.LongType(), False),
    ]
)

# Autoencoder orientations: a row of `by_item` is one item's ratings by all users.
AE_ROW_KEYS = {"by_item": (ITEM_ID, ITEM_IDX), "by_user": (USER_ID, USER_IDX)}
AE_COLUMN_IDX = {"by_item": USER_IDX, "by_user": ITEM_IDX}
AE_PATHS = {"by_item": AE_BY_ITEM, "by_user": AE_BY_USER}


def ae_schema(orientation: str, id_type: T.DataType) -> T.StructType:
    """Schema of `ae_inputs/by_item` / `ae_inputs/by_user`.

    Indices are the other side's dense idx, strictly ascending within a row; values are the
    ratings as float32 (exact for ratings on a 0.5 grid). Empty arrays, never null.
    """
    row_id, row_idx = AE_ROW_KEYS[orientation]
    return T.StructType(
        [
            T.StructField(row_id, id_type, False),
            T.StructField(row_idx, T.IntegerType(), False),
            T.StructField(N_TRAIN, T.LongType(), False),
            T.StructField(N_TEST, T.LongType(), False),
            T.StructField(TRAIN_INDICES, T.ArrayType(T.IntegerType(), False), False),
            T.StructField(TRAIN_VALUES, T.ArrayType(T.FloatType(), False), False),
            T.StructField(TEST_INDICES, T.ArrayType(T.IntegerType(), False), False),
            T.StructField(TEST_VALUES, T.ArrayType(T.FloatType(), False), False),
        ]
    )


AE_METADATA_SCHEMA = T.StructType(
    [
        T.StructField("n_users", T.LongType(), False),
        T.StructField("n_items", T.LongType(), False),
        T.StructField("rating_min", T.DoubleType(), False),
        T.StructField("rating_max", T.DoubleType(), False),
        T.StructField("train_rating_min", T.DoubleType(), True),
        T.StructField("train_rating_max", T.DoubleType(), True),
        T.StructField("global_mean", T.DoubleType(), True),
        T.StructField("nnz_train", T.LongType(), False),
        T.StructField("nnz_test", T.LongType(), False),
        T.StructField("orientations", T.ArrayType(T.StringType(), False), False),
    ]
)


def recommendations_schema(id_type: T.DataType) -> T.StructType:
    """Schema of `recommendations/model=<name>` (one row per user and rank)."""
    return T.StructType(
        [
            T.StructField(USER_ID, id_type, False),
            T.StructField(RANK, T.IntegerType(), False),
            T.StructField(ITEM_ID, id_type, False),
            T.StructField(SCORE, T.DoubleType(), False),
        ]
    )


def similar_items_schema(id_type: T.DataType) -> T.StructType:
    """Schema of `similar_items/model=<name>` (one row per item and rank)."""
    return T.StructType(
        [
            T.StructField(ITEM_ID, id_type, False),
            T.StructField(RANK, T.IntegerType(), False),
            T.StructField(SIMILAR_ITEM_ID, id_type, False),
            T.StructField(SIMILARITY, T.DoubleType(), False),
        ]
    )


RANKING_METRICS = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate", "coverage")
RANKING_SCHEMA = T.StructType(
    [
        T.StructField("model", T.StringType(), False),
        T.StructField("k", T.IntegerType(), False),
        T.StructField("metric", T.StringType(), False),
        T.StructField("value", T.DoubleType(), True),
        # users averaged over: with >= 1 relevant test rating and a list (coverage: users listed)
        T.StructField("n_users", T.LongType(), False),
    ]
)
