"""``pyspark.ml`` API: :class:`BiasedALS` (Estimator) and :class:`BiasedALSModel` (Model).

Params reuse the names of :class:`pyspark.ml.recommendation.ALS` where they mean the same
(``rank``, ``maxIter``, ``regParam``, ``userCol``, ``itemCol``, ``ratingCol``,
``predictionCol``, ``coldStartStrategy``, ``seed``, ``numUserBlocks``, ``numItemBlocks``) and
add ``biasRegParam`` (λ_b), ``regScaling`` (``"none"`` plain L2 | ``"count"`` ALS-WR, Spark's
scaling), ``tol`` and ``clipPredictions``. Ids may be integers or strings: they are indexed
internally. It works inside ``Pipeline`` and ``CrossValidator`` and persists with
``write().save(path)`` / ``BiasedALSModel.load(path)``::

    from mfspark import BiasedALS
    als = BiasedALS(rank=20, regParam=15.0, userCol="user", itemCol="item", ratingCol="rating")
    model = als.fit(ratings)
    model.transform(test).show()

Differences from Spark's ALS worth knowing: the model has user and item biases and a global
mean; ``regParam`` defaults to plain L2 (``regScaling="none"``), so its useful values are
larger than Spark's (about 5–30 rather than 0.01–0.1 on MovieLens-like data — use
``regScaling="count"`` for Spark-like values); and ``coldStartStrategy`` defaults to
``"fallback"``: an unknown user or item is predicted as μ plus the known bias, never NaN
(``"nan"`` and ``"drop"`` behave as in Spark).

Top-K lists: ``recommendForAllUsers``, ``recommendForUserSubset``, ``recommendForAllItems`` and
``recommendForItemSubset`` return Spark's schema (``recommendations``: array of (item, rating)
structs, best first), computed block by block by :mod:`mfspark.recommend`; ``excludeSeen=True``
leaves out the pairs rated in training, which Spark cannot do.
"""

from __future__ import annotations

import os

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasMaxIter, HasPredictionCol, HasRegParam, HasSeed, HasTol
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
from mfspark.blocks.rows import ITEM, USER
from mfspark.errors import MfsparkError
from mfspark.indexing import dense_index
from mfspark.models.als.kernels import Regularization
from mfspark.models.als.spark import SparkBlockSolver, choose_exchange
from mfspark.models.als.train import ALSParams, run_als
from mfspark.models.factor_model import COLD_START_STRATEGIES, FactorModel
from mfspark.recommend import COL, ROW, factor_scorer, rank_frame, with_ids


def index_ratings(ratings: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Index the ids of a (user_id, item_id, rating) frame for an estimator's fit.

    Returns ``(train, users, items)``: ``users`` and ``items`` are driver-side copies of the
    id tables (as small as the factors; a model keeps them) and ``train`` adds ``user_idx``
    and ``item_idx`` from those copies. The cached tables they are ranked in are released
    before returning, on every path, so nothing stays cached, and a later recomputation of
    ``train`` (a model's seen pairs) gives the indices the factors were fitted with.
    """
    spark = ratings.sparkSession
    parts = spark.sparkContext.defaultParallelism
    ranked = []
    try:
        for id_col, idx_col in ((C.USER_ID, C.USER_IDX), (C.ITEM_ID, C.ITEM_IDX)):
            ranked.append(dense_index(ratings, id_col, idx_col, parts))
        users, items = (spark.createDataFrame(table.toArrow()) for table in ranked)
    finally:
        for table in ranked:
            table.unpersist()
    train = ratings.join(F.broadcast(users), C.USER_ID).join(F.broadcast(items), C.ITEM_ID)
    return train, users, items


class _BiasedALSParams(HasMaxIter, HasRegParam, HasPredictionCol, HasSeed, HasTol):
    rank = Param(Params._dummy(), "rank", "rank of the factorization", TypeConverters.toInt)
    userCol = Param(
        Params._dummy(), "userCol", "column of user ids (integer or string)", TypeConverters.toString
    )
    itemCol = Param(
        Params._dummy(), "itemCol", "column of item ids (integer or string)", TypeConverters.toString
    )
    ratingCol = Param(Params._dummy(), "ratingCol", "column of ratings", TypeConverters.toString)
    coldStartStrategy = Param(
        Params._dummy(),
        "coldStartStrategy",
        "unknown users/items: 'fallback' (μ + known bias), 'nan' or 'drop'",
        TypeConverters.toString,
    )
    numUserBlocks = Param(
        Params._dummy(), "numUserBlocks", "user blocks (0: default parallelism)", TypeConverters.toInt
    )
    numItemBlocks = Param(
        Params._dummy(), "numItemBlocks", "item blocks (0: default parallelism)", TypeConverters.toInt
    )
    biasRegParam = Param(
        Params._dummy(), "biasRegParam", "λ_b, penalty on biases", TypeConverters.toFloat
    )
    regScaling = Param(
        Params._dummy(),
        "regScaling",
        "'none' (plain L2) or 'count' (λ times the row's rating count)",
        TypeConverters.toString,
    )
    clipPredictions = Param(
        Params._dummy(),
        "clipPredictions",
        "clip predictions to the training ratings' range",
        TypeConverters.toBoolean,
    )
    exchange = Param(
        Params._dummy(),
        "exchange",
        "'auto', 'broadcast' or 'partitioned': how a half-step gets the fixed side's factors "
        "(partitioned: shipped executor to executor, never through the driver)",
        TypeConverters.toString,
    )
    maxBroadcastMb = Param(
        Params._dummy(),
        "maxBroadcastMb",
        "largest side broadcast (MB); above it 'auto' exchanges partitioned",
        TypeConverters.toFloat,
    )
    excludeSeen = Param(
        Params._dummy(),
        "excludeSeen",
        "recommendForAll*/recommendForUserSubset never return a pair rated in training",
        TypeConverters.toBoolean,
    )

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(
            rank=10,
            maxIter=15,
            regParam=15.0,
            biasRegParam=3.0,
            regScaling="none",
            userCol="user",
            itemCol="item",
            ratingCol="rating",
            predictionCol="prediction",
            coldStartStrategy="fallback",
            seed=42,
            numUserBlocks=0,
            numItemBlocks=0,
            tol=1e-4,
            clipPredictions=True,
            exchange="auto",
            maxBroadcastMb=2048.0,
            excludeSeen=False,
        )

    def getRank(self) -> int:
        return self.getOrDefault(self.rank)

    def getUserCol(self) -> str:
        return self.getOrDefault(self.userCol)

    def getItemCol(self) -> str:
        return self.getOrDefault(self.itemCol)

    def getRatingCol(self) -> str:
        return self.getOrDefault(self.ratingCol)

    def getColdStartStrategy(self) -> str:
        return self.getOrDefault(self.coldStartStrategy)

    def getBiasRegParam(self) -> float:
        return self.getOrDefault(self.biasRegParam)

    def getRegScaling(self) -> str:
        return self.getOrDefault(self.regScaling)


class BiasedALS(Estimator, _BiasedALSParams, MLReadable, MLWritable):
    """Biased matrix factorisation by blocked ALS (see :mod:`mfspark.ml`)."""

    @keyword_only
    def __init__(
        self,
        *,
        rank: int = 10,
        maxIter: int = 15,
        regParam: float = 15.0,
        biasRegParam: float = 3.0,
        regScaling: str = "none",
        userCol: str = "user",
        itemCol: str = "item",
        ratingCol: str = "rating",
        predictionCol: str = "prediction",
        coldStartStrategy: str = "fallback",
        seed: int = 42,
        numUserBlocks: int = 0,
        numItemBlocks: int = 0,
        tol: float = 1e-4,
        clipPredictions: bool = True,
        exchange: str = "auto",
        maxBroadcastMb: float = 2048.0,
        excludeSeen: bool = False,
    ):
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs) -> BiasedALS:
        return self._set(**kwargs)

    def _fit(self, dataset: DataFrame) -> BiasedALSModel:
        spark = dataset.sparkSession
        user_col, item_col, rating_col = self.getUserCol(), self.getItemCol(), self.getRatingCol()
        if self.getColdStartStrategy() not in COLD_START_STRATEGIES:
            raise MfsparkError(
                f"coldStartStrategy must be one of {', '.join(COLD_START_STRATEGIES)}, "
                f"got {self.getColdStartStrategy()!r}"
            )
        for col in (user_col, item_col, rating_col):
            if col not in dataset.columns:
                raise MfsparkError(
                    f"column {col!r} is not in the dataset (columns: {', '.join(dataset.columns)})"
                )
        ratings = dataset.select(
            F.col(user_col).alias(C.USER_ID),
            F.col(item_col).alias(C.ITEM_ID),
            F.col(rating_col).cast("double").alias(C.RATING),
        )
        bounds = check_ratings(ratings)
        clip = bounds if self.getOrDefault(self.clipPredictions) else None
        params = ALSParams(
            rank=self.getRank(),
            max_iter=self.getMaxIter(),
            reg=Regularization(self.getRegParam(), self.getBiasRegParam(), self.getRegScaling()),
            seed=self.getSeed(),
            tol=self.getTol(),
            clip=clip,
        )
        train, users, items = index_ratings(ratings)
        n_users, n_items = users.count(), items.count()
        exchange = choose_exchange(
            n_users,
            n_items,
            params.rank,
            self.getOrDefault(self.exchange),
            self.getOrDefault(self.maxBroadcastMb),
            spark.conf.get("spark.driver.maxResultSize", "1g"),
        )
        with SparkBlockSolver(
            spark,
            train,
            None,
            n_users,
            n_items,
            params,
            self.getOrDefault(self.numUserBlocks),
            self.getOrDefault(self.numItemBlocks),
            exchange,
        ) as solver:
            result = run_als(solver, params, name=f"BiasedALS[{self.uid}]")
        metadata = {
            "reg": params.reg.reg,
            "reg_bias": params.reg.reg_bias,
            "reg_scaling": params.reg.scaling,
            "iterations": result.iterations,
            "clip_min": clip[0] if clip else None,
            "clip_max": clip[1] if clip else None,
            "converged": result.converged,
            "seed": params.seed,
            "n_users": n_users,
            "n_items": n_items,
            "n_train": solver.n_train,
        }
        model = BiasedALSModel(
            FactorModel(result.model, users, items, metadata),
            train.select(C.USER_IDX, C.ITEM_IDX),
        )
        self._copyValues(model)
        return model

    def write(self) -> MLWriter:
        return DefaultParamsWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return DefaultParamsReader(cls)


#: Largest |rating| the estimator accepts. Ratings travel as float32 and squared errors are
#: summed: with |r| <= 1e9 a square is <= 1e18, and even 10^20 of them sum to far below
#: float32's largest finite value (3.4e38), so no error, objective or prediction overflows.
MAX_ABS_RATING = 1e9


def check_ratings(ratings: DataFrame) -> tuple[float, float]:
    """Refuse what the blocks cannot fit, with one line; the (min, max) rating otherwise.

    ``ratings`` has ``user_id``, ``item_id``, ``rating`` (double). Refused: a null id, a
    null, NaN or infinite rating, |rating| > :data:`MAX_ABS_RATING`, an empty frame, and a
    (user, item) pair given more than once (the blocks assume one rating per pair; without
    timestamps there is no "latest" to keep as ``prepare`` does, so the caller must choose).
    """
    rating = F.col(C.RATING)
    invalid = F.col(C.USER_ID).isNull() | F.col(C.ITEM_ID).isNull() | rating.isNull() | F.isnan(rating)
    stats = ratings.agg(
        F.count_if(invalid).alias("bad"),
        F.count_if(~invalid & (F.abs(rating) > F.lit(MAX_ABS_RATING))).alias("huge"),
        F.min(rating).alias("lo"),
        F.max(rating).alias("hi"),
    ).first()
    if stats["bad"]:
        raise MfsparkError(
            f"{stats['bad']} training rows have a null id or a null/NaN rating; filter them out "
            "(or use jobs/prepare.py, which quarantines them with a reason)"
        )
    if stats["huge"]:
        raise MfsparkError(
            f"{stats['huge']} training ratings are infinite or beyond ±{MAX_ABS_RATING:g} "
            f"(largest |rating| allowed, so float32 sums stay finite; seen min {stats['lo']}, "
            f"max {stats['hi']}); filter or rescale them"
        )
    if stats["lo"] is None:
        raise MfsparkError("the training DataFrame is empty; nothing to fit")
    dup = (
        ratings.groupBy(C.USER_ID, C.ITEM_ID)
        .count()
        .where(F.col("count") > 1)
        .agg(F.count(F.lit(1)).alias("pairs"), F.sum("count").alias("rows"))
        .first()
    )
    if dup["pairs"]:
        raise MfsparkError(
            f"{dup['pairs']} (user, item) pairs occur more than once ({dup['rows']} rows); keep "
            "one rating per pair (e.g. the latest, as jobs/prepare.py does, or the mean) and fit again"
        )
    return float(stats["lo"]), float(stats["hi"])


class BiasedALSModel(Model, _BiasedALSParams, MLReadable, MLWritable):
    """A fitted :class:`BiasedALS`: ``transform`` adds ``predictionCol``; ``recommendFor*``
    give top-K lists in Spark ALS's output schema.

    Lists rank by the unclipped predicted rating (``rating``, float), ties by the lower
    internal index; candidates are the entities with training ratings. With
    ``excludeSeen=True`` a pair rated in training is never recommended: the model keeps a
    reference to its (lazily evaluated) training DataFrame for that. A model loaded from disk
    does not have it: give it with :meth:`setSeenRatings`.
    """

    def __init__(self, als_model: FactorModel | None = None, seen: DataFrame | None = None):
        super().__init__()
        self.als_model = als_model
        self._seen = seen  # user_idx, item_idx of the training ratings

    def setExcludeSeen(self, value: bool) -> BiasedALSModel:
        return self._set(excludeSeen=value)

    def getExcludeSeen(self) -> bool:
        return self.getOrDefault(self.excludeSeen)

    def setSeenRatings(self, dataset: DataFrame) -> BiasedALSModel:
        """Use the (userCol, itemCol) pairs of ``dataset`` as the rated pairs ``excludeSeen``
        removes (ids the model does not know are ignored)."""
        m = self.als_model
        users = m.users.select(F.col(C.USER_ID).cast("string").alias("_u"), C.USER_IDX)
        items = m.items.select(F.col(C.ITEM_ID).cast("string").alias("_i"), C.ITEM_IDX)
        pairs = dataset.select(
            F.col(self.getUserCol()).cast("string").alias("_u"),
            F.col(self.getItemCol()).cast("string").alias("_i"),
        )
        self._seen = pairs.join(users, "_u").join(items, "_i").select(C.USER_IDX, C.ITEM_IDX)
        return self

    def recommendForAllUsers(self, numItems: int) -> DataFrame:
        """``userCol``, ``recommendations`` array<struct<itemCol, rating: float>> (best first)."""
        return self._recommend(USER, self.als_model.users.select(F.col(C.USER_IDX).alias(ROW)), numItems)

    def recommendForAllItems(self, numUsers: int) -> DataFrame:
        """``itemCol``, ``recommendations`` array<struct<userCol, rating: float>> (best first)."""
        return self._recommend(ITEM, self.als_model.items.select(F.col(C.ITEM_IDX).alias(ROW)), numUsers)

    def recommendForUserSubset(self, dataset: DataFrame, numItems: int) -> DataFrame:
        """As :meth:`recommendForAllUsers`, for the distinct users of ``dataset[userCol]``
        the model knows (others are left out, as in Spark)."""
        users = self.als_model.users.select(F.col(C.USER_ID).cast("string").alias("_u"), C.USER_IDX)
        wanted = dataset.select(F.col(self.getUserCol()).cast("string").alias("_u")).distinct()
        return self._recommend(
            USER, wanted.join(users, "_u").select(F.col(C.USER_IDX).alias(ROW)), numItems
        )

    def recommendForItemSubset(self, dataset: DataFrame, numUsers: int) -> DataFrame:
        """As :meth:`recommendForAllItems`, for the distinct items of ``dataset[itemCol]``."""
        items = self.als_model.items.select(F.col(C.ITEM_ID).cast("string").alias("_i"), C.ITEM_IDX)
        wanted = dataset.select(F.col(self.getItemCol()).cast("string").alias("_i")).distinct()
        return self._recommend(
            ITEM, wanted.join(items, "_i").select(F.col(C.ITEM_IDX).alias(ROW)), numUsers
        )

    def _recommend(self, side: str, rows: DataFrame, k: int) -> DataFrame:
        if not isinstance(k, int) or k < 1:
            raise MfsparkError(f"the number of recommendations must be a positive integer, got {k!r}")
        m = self.als_model
        spark = m.users.sparkSession
        seen = None
        if self.getExcludeSeen():
            if self._seen is None:
                raise MfsparkError(
                    "excludeSeen needs the training ratings, which a loaded model does not keep; "
                    "call model.setSeenRatings(training_df) first"
                )
            row_idx, col_idx = (C.USER_IDX, C.ITEM_IDX) if side == USER else (C.ITEM_IDX, C.USER_IDX)
            seen = self._seen.select(F.col(row_idx).alias(ROW), F.col(col_idx).alias(COL))
        ranked = rank_frame(spark, rows, seen, factor_scorer(m.params, side), k)
        users = m.users.select(C.USER_ID, C.USER_IDX)
        items = m.items.select(C.ITEM_ID, C.ITEM_IDX)
        (row_ids, row_col), (col_ids, col_col) = (
            ((users, self.getUserCol()), (items, self.getItemCol()))
            if side == USER
            else ((items, self.getItemCol()), (users, self.getUserCol()))
        )
        lists = with_ids(ranked.frame, row_ids, col_ids, (row_col, C.RANK, col_col, "rating"))
        entries = F.sort_array(
            F.collect_list(F.struct(C.RANK, col_col, F.col("rating").cast("float").alias("rating")))
        )
        return lists.groupBy(row_col).agg(
            F.transform(
                entries, lambda e: F.struct(e[col_col].alias(col_col), e["rating"].alias("rating"))
            ).alias("recommendations")
        )

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return self.als_model.transform(
            dataset,
            self.getUserCol(),
            self.getItemCol(),
            self.getOrDefault(self.predictionCol),
            self.getColdStartStrategy(),
        )

    def release(self) -> None:
        """Destroy the prediction broadcast once the transformed DataFrames have been computed
        (see :meth:`mfspark.models.factor_model.FactorModel.release`)."""
        self.als_model.release()

    @property
    def globalMean(self) -> float:
        return float(self.als_model.params.global_mean)

    def _factors(self, side: str) -> DataFrame:
        spark = self.als_model.users.sparkSession
        users, items = self.als_model.factor_frames(spark)
        df, id_col = (users, C.USER_ID) if side == "user" else (items, C.ITEM_ID)
        return df.select(F.col(id_col).alias("id"), F.col(C.FACTORS).alias("features"), C.BIAS)

    @property
    def userFactors(self) -> DataFrame:
        """``id`` (original user id), ``features`` (array<float>), ``bias``."""
        return self._factors("user")

    @property
    def itemFactors(self) -> DataFrame:
        """``id`` (original item id), ``features`` (array<float>), ``bias``."""
        return self._factors("item")

    def write(self) -> MLWriter:
        return ModelWriter(self, self.als_model)

    @classmethod
    def read(cls) -> MLReader:
        return ModelReader(cls, FactorModel.load)


class ModelWriter(MLWriter):
    """Params as Spark ML metadata, the fitted model (anything with ``save(path, overwrite)``,
    e.g. a :class:`FactorModel`) under ``<path>/model`` in mfspark's Parquet layout."""

    def __init__(self, instance, fitted):
        super().__init__()
        self.instance, self.fitted = instance, fitted

    def saveImpl(self, path: str) -> None:
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession)
        self.fitted.save(os.path.join(path, "model"), overwrite=self.shouldOverwrite)


class ModelReader(MLReader):
    """Reads what :class:`ModelWriter` wrote: ``cls(load_fitted(spark, <path>/model))``."""

    def __init__(self, cls, load_fitted):
        super().__init__()
        self.cls, self.load_fitted = cls, load_fitted

    def load(self, path: str):
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        model = self.cls(self.load_fitted(self.sparkSession, os.path.join(path, "model")))
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model
