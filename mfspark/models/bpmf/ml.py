"""``pyspark.ml`` API of Bayesian MF: :class:`BayesianMF` (Estimator), :class:`BayesianMFModel`.

The conventions of :class:`mfspark.ml.BiasedALS` (keyword-only constructor, ``rank``,
``userCol``, ``itemCol``, ``ratingCol``, ``predictionCol``, ``seed``, ``numUserBlocks``,
``numItemBlocks``, ``clipPredictions``, ``exchange``; ids may be integers or strings) plus the sampler's
``burnIn``, ``samples`` (sweeps in total), ``thin``, ``savedSamples``, ``noisePrecision``,
``sampleNoise`` and ``predictionSdCol``. The model's ``transform`` adds ``prediction`` (the
mean of r̂ over the saved samples) and ``prediction_sd`` (the predictive sd); an unknown user
or item falls back to μ plus the known bias. It persists with ``write().save(path)`` /
``BayesianMFModel.load(path)``::

    from mfspark.models.bpmf.ml import BayesianMF
    model = BayesianMF(rank=10, samples=200, burnIn=40, userCol="user", itemCol="item").fit(ratings)
    model.transform(test).select("prediction", "prediction_sd").show()
"""

from __future__ import annotations

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasPredictionCol, HasSeed
from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mfspark import columns as C
from mfspark.errors import MfsparkError
from mfspark.ml import ModelReader, ModelWriter, check_ratings, index_ratings
from mfspark.models.bpmf.posterior import BayesianPosterior
from mfspark.models.bpmf.sampler import BPMFParams


def _param(name: str, doc: str, converter) -> Param:
    return Param(Params._dummy(), name, doc, converter)


class _BayesianMFParams(HasPredictionCol, HasSeed):
    rank = _param("rank", "rank of the factorization", TypeConverters.toInt)
    burnIn = _param("burnIn", "Gibbs sweeps discarded at the start", TypeConverters.toInt)
    samples = _param("samples", "Gibbs sweeps in total, burn-in included", TypeConverters.toInt)
    thin = _param("thin", "keep every thin-th sweep after burn-in", TypeConverters.toInt)
    savedSamples = _param(
        "savedSamples", "kept samples the model keeps for transform", TypeConverters.toInt
    )
    noisePrecision = _param(
        "noisePrecision", "noise precision α (start, or fixed)", TypeConverters.toFloat
    )
    sampleNoise = _param("sampleNoise", "draw α from its Gamma posterior", TypeConverters.toBoolean)
    userCol = _param("userCol", "column of user ids (integer or string)", TypeConverters.toString)
    itemCol = _param("itemCol", "column of item ids (integer or string)", TypeConverters.toString)
    ratingCol = _param("ratingCol", "column of ratings", TypeConverters.toString)
    predictionSdCol = _param("predictionSdCol", "column of the predictive sd", TypeConverters.toString)
    numUserBlocks = _param("numUserBlocks", "user blocks (0: default parallelism)", TypeConverters.toInt)
    numItemBlocks = _param("numItemBlocks", "item blocks (0: default parallelism)", TypeConverters.toInt)
    clipPredictions = _param(
        "clipPredictions", "clip predictions to the training ratings' range", TypeConverters.toBoolean
    )
    exchange = _param(
        "exchange",
        "how a pass gets the fixed side: 'broadcast', 'partitioned' (the chain stays on the "
        "executors) or 'auto' (broadcast while a side fits)",
        TypeConverters.toString,
    )

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(
            rank=10,
            burnIn=40,
            samples=200,
            thin=1,
            savedSamples=20,
            noisePrecision=1.0,
            sampleNoise=True,
            userCol="user",
            itemCol="item",
            ratingCol="rating",
            predictionCol="prediction",
            predictionSdCol="prediction_sd",
            seed=42,
            numUserBlocks=0,
            numItemBlocks=0,
            clipPredictions=True,
            exchange="auto",
        )

    def get(self, name: str):
        return self.getOrDefault(getattr(self, name))


class BayesianMF(Estimator, _BayesianMFParams, MLReadable, MLWritable):
    """Bayesian MF by Gibbs sampling on blocked ratings (see :mod:`mfspark.models.bpmf.ml`)."""

    @keyword_only
    def __init__(
        self,
        *,
        rank: int = 10,
        burnIn: int = 40,
        samples: int = 200,
        thin: int = 1,
        savedSamples: int = 20,
        noisePrecision: float = 1.0,
        sampleNoise: bool = True,
        userCol: str = "user",
        itemCol: str = "item",
        ratingCol: str = "rating",
        predictionCol: str = "prediction",
        predictionSdCol: str = "prediction_sd",
        seed: int = 42,
        numUserBlocks: int = 0,
        numItemBlocks: int = 0,
        clipPredictions: bool = True,
        exchange: str = "auto",
    ):
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs) -> BayesianMF:
        return self._set(**kwargs)

    def _fit(self, dataset: DataFrame) -> BayesianMFModel:
        from mfspark.models.bpmf.job import fit_bpmf, training_clip

        g = self.get
        if g("rank") < 1 or g("burnIn") < 0 or g("burnIn") >= g("samples") or g("thin") < 1:
            raise MfsparkError(
                f"BayesianMF needs rank >= 1, 0 <= burnIn < samples and thin >= 1; got rank="
                f"{g('rank')}, burnIn={g('burnIn')}, samples={g('samples')}, thin={g('thin')}"
            )
        if g("noisePrecision") <= 0:
            raise MfsparkError(f"BayesianMF noisePrecision must be > 0, got {g('noisePrecision')}")
        for col in (g("userCol"), g("itemCol"), g("ratingCol")):
            if col not in dataset.columns:
                raise MfsparkError(
                    f"column {col!r} is not in the dataset (columns: {', '.join(dataset.columns)})"
                )
        ratings = dataset.select(
            F.col(g("userCol")).alias(C.USER_ID),
            F.col(g("itemCol")).alias(C.ITEM_ID),
            F.col(g("ratingCol")).cast("double").alias(C.RATING),
        )
        check_ratings(ratings)  # the same guards as BiasedALS
        params = BPMFParams(
            rank=g("rank"),
            burn_in=g("burnIn"),
            samples=g("samples"),
            thin=g("thin"),
            noise_precision=g("noisePrecision"),
            sample_noise=g("sampleNoise"),
            seed=g("seed"),
            saved_samples=max(1, g("savedSamples")),
            clip=training_clip(ratings, g("clipPredictions")),
        )
        train, users, items = index_ratings(ratings)
        posterior, _, _ = fit_bpmf(
            dataset.sparkSession,
            train.select(C.USER_IDX, C.ITEM_IDX, C.RATING),
            None,
            users,
            items,
            params,
            g("numUserBlocks"),
            g("numItemBlocks"),
            name=f"BayesianMF[{self.uid}]",
            exchange=g("exchange"),
        )
        model = BayesianMFModel(posterior)
        self._copyValues(model)
        return model

    def write(self) -> MLWriter:
        return DefaultParamsWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return DefaultParamsReader(cls)


class BayesianMFModel(Model, _BayesianMFParams, MLReadable, MLWritable):
    """A fitted :class:`BayesianMF`: ``transform`` adds ``predictionCol`` and ``predictionSdCol``."""

    def __init__(self, posterior: BayesianPosterior | None = None):
        super().__init__()
        self.posterior = posterior

    def _transform(self, dataset: DataFrame) -> DataFrame:
        g = self.get
        return self.posterior.transform(
            dataset, g("userCol"), g("itemCol"), g("predictionCol"), g("predictionSdCol")
        )

    def write(self) -> MLWriter:
        return ModelWriter(self, self.posterior)

    @classmethod
    def read(cls) -> MLReader:
        return ModelReader(cls, BayesianPosterior.load)
