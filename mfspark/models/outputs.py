"""What every training stage writes, in one place (the multi-model layout).

Under ``output.path``, atomically as one stage: the model's parameters under
``models/<model>/``, its test predictions as the Hive partition ``predictions/model=<model>/``
(one row per test rating: ``user_id``, ``item_id``, ``user_idx``, ``item_idx``, ``rating``,
``prediction``, model-specific columns such as ``prediction_sd``, ``cold_user``,
``cold_item``), and its rows of ``metrics/history`` and ``metrics/summary`` (other models'
rows are kept).
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession

from mfspark import columns as C
from mfspark.io import read_manifest, staged_outputs
from mfspark.prepare import Prepared

#: Columns of a model's predictions, before and after its own (e.g. ``prediction_sd``).
PREDICTION_KEYS = (C.USER_ID, C.ITEM_ID, C.USER_IDX, C.ITEM_IDX, C.RATING, C.PREDICTION)
PREDICTION_FLAGS = (C.COLD_USER, C.COLD_ITEM)
#: Columns of a model's test predictions (without model-specific extras).
PREDICTION_COLUMNS = (*PREDICTION_KEYS, *PREDICTION_FLAGS)


def write_model_stage(
    spark: SparkSession,
    output: str,
    prepared: Prepared,
    model: str,
    write_model: Callable[[object, str], None],
    predictions: DataFrame,
    history: DataFrame,
    activity_buckets,
) -> None:
    """Stage and commit one model's outputs; ``write_model(stage, "models/<model>")`` writes
    the parameters through the stage's writer. The summary is scored from the predictions as
    written, so ``metrics/summary`` matches ``predictions`` exactly."""
    from mfspark.evaluation import summarize_predictions, write_history, write_summary

    extra = [c for c in predictions.columns if c not in (*PREDICTION_KEYS, *PREDICTION_FLAGS)]
    with staged_outputs(spark, output, stage=f"train_{model}") as stage:
        write_model(stage, C.model_dir(model))
        path = stage.write(
            predictions.select(*PREDICTION_KEYS, *extra, *PREDICTION_FLAGS), C.predictions_dir(model)
        )
        write_history(spark, stage, output, history.coalesce(1), model)
        summary = summarize_predictions(
            spark.read.parquet(path), prepared.test, prepared.users, model, activity_buckets
        )
        write_summary(spark, stage, output, summary, model)


def prepared_sizes(
    spark: SparkSession, output: str, users: DataFrame, items: DataFrame
) -> tuple[int, int]:
    """(n_users, n_items) of the prepared dataset: from the manifest when the prepare stage
    recorded them (no Spark job), else counted."""
    counts = read_manifest(spark, output).get("stages", {}).get("prepare", {}).get("counts", {})
    if isinstance(counts.get("users"), int) and isinstance(counts.get("items"), int):
        return counts["users"], counts["items"]
    return users.count(), items.count()


def test_predictions(model, test: DataFrame) -> DataFrame:
    """A factor model's predictions for ``prepared/test`` in the predictions layout."""
    rows = test.select(C.USER_ID, C.ITEM_ID, C.USER_IDX, C.ITEM_IDX, C.RATING, C.COLD_USER, C.COLD_ITEM)
    return model.predict_indexed(rows).select(*PREDICTION_COLUMNS)


def with_pair_column(df: DataFrame, name: str, spark_type, fn) -> DataFrame:
    """``df`` plus column ``name`` = ``fn(user_idx, item_idx)`` (numpy arrays → array), computed
    per Arrow batch: a hash-based split that does not depend on the partitioning."""
    import numpy as np
    import pyarrow as pa
    from pyspark.sql import types as T

    schema = T.StructType(df.schema.fields + [T.StructField(name, spark_type, False)])

    def add(batches):
        for b in batches:
            u = b.column(C.USER_IDX).to_numpy(zero_copy_only=False).astype(np.int64)
            i = b.column(C.ITEM_IDX).to_numpy(zero_copy_only=False).astype(np.int64)
            yield pa.RecordBatch.from_arrays(
                [*b.columns, pa.array(fn(u, i))], names=[*b.schema.names, name]
            )

    return df.mapInArrow(add, schema)
