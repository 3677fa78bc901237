"""The one place a model plugs into the pipeline, the evaluation and later jobs.

A model is a :class:`ModelSpec`: its name (the ``model`` column of ``metrics/*`` and the
partition of ``predictions/model=<name>/``), its stage (``train_<name>``, a job of
:data:`mfspark.jobs.JOBS`, which says what function runs it), whether it writes a biased
factor model (``user_factors``, ``item_factors``,
``metadata`` under ``models/<name>/``, loadable with
:meth:`mfspark.models.factor_model.FactorModel.load`), and how to load it for predictions
(an object with ``transform(df, user_col, item_col, prediction)`` over original ids).
Functions are named as ``"module:function"`` and imported only when used, so listing the
models imports no model code.

Every training stage writes (atomically, as one stage) ``models/<name>/``,
``predictions/model=<name>/`` (one row per test rating) and its own rows of
``metrics/history`` and ``metrics/summary`` (other models' rows are kept).
"""

from __future__ import annotations

from dataclasses import dataclass

from mfspark import columns as C
from mfspark.errors import ConfigError
from mfspark.io import join


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    factor_model: bool  # models/<name>/ holds the FactorModel layout
    job: str = ""  # its training job; default train_<name>
    # "module:function": load(spark, model_dir) -> object with transform(...); "" when the
    # model scores only the pairs it was trained to predict (its predictions/ partition)
    load: str = ""

    @property
    def stage(self) -> str:
        """Its job (``mfspark.jobs``); the stage's function returns the manifest entry, a
        dict with at least ``model`` and ``summary`` (one line for the pipeline's summary)."""
        return self.job or f"train_{self.name}"

    def _load_function(self):
        from mfspark.jobs import resolve

        return resolve(self.load)

    def load_model(self, spark, output: str):
        """The fitted model under ``<output>/models/<name>``, ready to ``transform``."""
        if not self.load:
            raise ConfigError(f"model {self.name!r} cannot score new pairs; use its predictions")
        return self._load_function()(spark, join(output, C.model_dir(self.name)))


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "als",
            "blocked biased ALS",
            factor_model=True,
            load="mfspark.models.factor_model:FactorModel.load",
        ),
        ModelSpec(
            "bpmf",
            "Bayesian MF by Gibbs sampling (posterior mean, predictive sd)",
            factor_model=True,
            load="mfspark.models.bpmf.posterior:BayesianPosterior.load",
        ),
        ModelSpec(
            "autorec",
            "item-based AutoRec (I-AutoRec)",
            factor_model=False,
            job="train_autorec",
        ),
        ModelSpec(
            "autorec_user",
            "user-based AutoRec (U-AutoRec; train_autorec with autorec.orientation = by_user)",
            factor_model=False,
            job="train_autorec",
        ),
        ModelSpec(
            "svd",
            "truncated SVD of the bias-removed ratings",
            factor_model=True,
            load="mfspark.models.factor_model:FactorModel.load",
        ),
        ModelSpec(
            "residual",
            "a base factor model plus a network trained on its out-of-fold errors",
            factor_model=False,
        ),
        ModelSpec(
            "blend",
            "ridge blend of trained models",
            factor_model=False,
        ),
    )
}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; models are: {', '.join(MODELS)}") from None


def spec_for_stage(stage: str) -> ModelSpec | None:
    return next((s for s in MODELS.values() if s.stage == stage), None)
