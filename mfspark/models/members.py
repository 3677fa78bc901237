"""Models other models build on, behind one small interface each.

* **Factor bases** (:func:`fit_factor_model`): ``als`` and ``svd`` — fit on indexed train
  ratings, return a :class:`~mfspark.models.factor_model.FactorModel`. The residual model
  refits its base through this.
* **Blend members** (:data:`MEMBERS`, :func:`fit_predict`): one function per model, "fit on
  this train, predict these pairs":

      fit_predict(spark, train, pairs, users, items, cfg) -> DataFrame

  ``train`` has the ``prepared/train`` columns, ``pairs`` at least ``user_idx``,
  ``item_idx`` (and ``timestamp`` when the model uses it); the result has ``user_idx``,
  ``item_idx``, ``prediction`` for every pair. The model's own config section applies.

A new model joins the blend by adding one entry to :data:`MEMBERS` — its name (the name of its
``predictions/model=<name>/``) and ``"module:function"`` of its fit_predict — and its name to
``BLEND_MEMBERS`` in :mod:`mfspark.config`. Entries are imported only when used.
"""

from __future__ import annotations

import importlib

from pyspark.sql import DataFrame, SparkSession

from mfspark import columns as C
from mfspark.config import Config
from mfspark.models.factor_model import FactorModel

FACTOR_BASES = {
    "als": "mfspark.models.als.job:fit_prepared",
    "svd": "mfspark.models.svd.job:fit_prepared",
}

MEMBERS = {
    "als": "mfspark.models.members:fit_predict_als",
    "svd": "mfspark.models.members:fit_predict_svd",
    "residual": "mfspark.models.residual.job:fit_predict",
    "bpmf": "mfspark.models.bpmf.job:fit_predict",
    "autorec": "mfspark.models.autorec.job:fit_predict",
    "autorec_user": "mfspark.models.autorec.job:fit_predict_user",
}


def _resolve(target: str):
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def fit_factor_model(
    name: str,
    spark: SparkSession,
    train: DataFrame,
    test: DataFrame | None,
    users: DataFrame,
    items: DataFrame,
    cfg: Config,
) -> FactorModel:
    """Fit the factor model ``name`` (``als`` or ``svd``) with its config section."""
    model, _, _ = _resolve(FACTOR_BASES[name])(spark, train, test, users, items, cfg)
    return model


def fit_predict(
    name: str,
    spark: SparkSession,
    train: DataFrame,
    pairs: DataFrame,
    users: DataFrame,
    items: DataFrame,
    cfg: Config,
) -> DataFrame:
    """Blend member ``name``: fit on ``train``, return predictions for ``pairs``."""
    return _resolve(MEMBERS[name])(spark, train, pairs, users, items, cfg)


def _factor_member(name: str):
    def fit_predict_factor(spark, train, pairs, users, items, cfg) -> DataFrame:
        model = fit_factor_model(name, spark, train, None, users, items, cfg)
        return model.predict_indexed(pairs.select(C.USER_IDX, C.ITEM_IDX))

    return fit_predict_factor


fit_predict_als = _factor_member("als")
fit_predict_svd = _factor_member("svd")
