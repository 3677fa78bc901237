"""Where a model's outputs live under ``output.path``, and the shared writes of a model stage.

* ``models/<model>/`` — the model's parameters (factor models: ``user_factors``,
  ``item_factors``, ``metadata``, which :class:`~mfspark.models.factor_model.FactorModel`
  loads);
* ``predictions/model=<model>/`` — its test predictions (reading ``predictions`` whole gives a
  ``model`` column);
* ``metrics/history`` and ``metrics/summary`` — one dataset each, with a ``model`` column; a
  stage replaces its own model's rows and keeps the others'.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mfspark import columns as C
from mfspark.io import HadoopFS, join, read_manifest

#: Columns of a model's test predictions.
PREDICTION_COLUMNS = (
    C.USER_ID,
    C.ITEM_ID,
    C.USER_IDX,
    C.ITEM_IDX,
    C.RATING,
    C.PREDICTION,
    C.COLD_USER,
    C.COLD_ITEM,
)


def model_dir(model: str) -> str:
    return f"models/{model}"


def predictions_dir(model: str) -> str:
    return f"{C.PREDICTIONS}/model={model}"


def write_history(spark: SparkSession, stage, output: str, history: DataFrame, model: str) -> None:
    """Stage ``metrics/history``: other models' rows as they are, this model's replaced."""
    final = join(output, C.METRICS_HISTORY)
    names = C.HISTORY_SCHEMA.names
    combined = history.select(*names)
    if HadoopFS(spark).exists(final):
        old = spark.read.parquet(final).where(F.col("model") != model)
        combined = old.unionByName(combined, allowMissingColumns=True).select(
            *[F.col(f.name).cast(f.dataType) for f in C.HISTORY_SCHEMA.fields]
        )
    stage.write(combined.coalesce(1), C.METRICS_HISTORY)


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
