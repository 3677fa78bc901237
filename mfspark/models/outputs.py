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
from mfspark.io import staged_outputs
from mfspark.prepare import Prepared

#: Columns of a model's predictions, before and after its own (e.g. ``prediction_sd``).
PREDICTION_KEYS = (C.USER_ID, C.ITEM_ID, C.USER_IDX, C.ITEM_IDX, C.RATING, C.PREDICTION)
PREDICTION_FLAGS = (C.COLD_USER, C.COLD_ITEM)


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
