"""The models: one package per model, each holding only its own math and stage.

Shared machinery lives elsewhere: rating blocks and their Spark store in :mod:`mfspark.blocks`,
the prediction formula and parameter container of every biased factor model in
:mod:`mfspark.models.factors`, its Parquet form in :mod:`mfspark.models.factor_model`.
Each model plugs into the pipeline, the evaluation and later jobs through
:mod:`mfspark.models.registry`; every training stage writes the same layout through
:mod:`mfspark.models.outputs`.
"""
