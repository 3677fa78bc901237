"""A fitted biased-MF model as Parquet, and predictions for any (user, item) DataFrame.

Layout, under a model directory (``<output>/models/<model>`` for the jobs):

* ``user_factors`` — ``user_id``, ``user_idx``, ``bias`` (double), ``factors`` (array<float>),
  ``n_train`` (training ratings; 0 for an entity indexed from test rows only)
* ``item_factors`` — ``item_id``, ``item_idx``, ``bias``, ``factors``, ``n_train``
* ``metadata`` — one row: ``global_mean``, ``rank``, ``reg``, ``reg_bias``, ``reg_scaling``,
  ``iterations``, ``clip_min``, ``clip_max`` (null: no clipping), ``converged``, ``seed``,
  ``n_users``, ``n_items``, ``n_train``, ``mfspark_version``

Prediction: r̂ = μ + b_user + c_item + w_userᵀu_item, clipped to [clip_min, clip_max]. A user or
item the model has not seen (or saw without training ratings) contributes bias 0 and factor
0, so its prediction falls back to μ plus the known bias: never NaN (``cold_start="fallback"``,
the default). ``"nan"`` gives NaN for such rows and ``"drop"`` removes them, as Spark's ALS.

Prediction runs in ``mapInArrow`` with the factors broadcast (vectorised numpy per Arrow
batch); nothing but the factor tables ever goes through the driver. A model makes that
broadcast once, on its first prediction, and shares it among all its prediction DataFrames;
since those are lazy, the broadcast must outlive them: :meth:`FactorModel.release` (or leaving
a ``with model:`` block) destroys it once the predictions have been written. An unreleased
broadcast lives until the Spark session stops (one per model, never one per call).
"""

from __future__ import annotations

import datetime as _dt
import logging
import weakref
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.errors import InputError
from mfspark.io import HadoopFS, join
from mfspark.models.factors import BiasedMF, predict

log = logging.getLogger(__name__)

COLD_START_STRATEGIES = ("fallback", "nan", "drop")
METADATA_FIELDS = (
    ("global_mean", T.DoubleType()),
    ("rank", T.IntegerType()),
    ("reg", T.DoubleType()),
    ("reg_bias", T.DoubleType()),
    ("reg_scaling", T.StringType()),
    ("iterations", T.IntegerType()),
    ("clip_min", T.DoubleType()),
    ("clip_max", T.DoubleType()),
    ("converged", T.BooleanType()),
    ("seed", T.LongType()),
    ("n_users", T.LongType()),
    ("n_items", T.LongType()),
    ("n_train", T.LongType()),
    ("mfspark_version", T.StringType()),
    ("created_at", T.StringType()),
)
METADATA_SCHEMA = T.StructType([T.StructField(n, t, True) for n, t in METADATA_FIELDS])


@dataclass
class FactorModel:
    """Parameters (numpy, by dense index) plus the id ↔ index tables (Spark)."""

    params: BiasedMF
    users: DataFrame  # user_id, user_idx
    items: DataFrame  # item_id, item_idx
    metadata: dict = field(default_factory=dict)

    @property
    def clip(self) -> tuple[float, float] | None:
        lo, hi = self.metadata.get("clip_min"), self.metadata.get("clip_max")
        return None if lo is None or hi is None else (float(lo), float(hi))

    # -- persistence -------------------------------------------------------------------
    def factor_frames(self, spark: SparkSession) -> tuple[DataFrame, DataFrame]:
        """(user_factors, item_factors) DataFrames in the Parquet layout."""
        p = self.params

        def frame(index: DataFrame, id_col: str, idx_col: str, factors, bias, counts) -> DataFrame:
            k = factors.shape[1]
            counts = np.zeros(len(bias), np.int64) if counts is None else counts
            flat = pa.array(np.ascontiguousarray(factors, np.float32).ravel())
            table = pa.table(
                {
                    idx_col: pa.array(np.arange(len(bias), dtype=np.int32)),
                    C.BIAS: pa.array(bias.astype(np.float64)),
                    C.N_TRAIN: pa.array(np.asarray(counts, np.int64)),
                    C.FACTORS: pa.ListArray.from_arrays(
                        pa.array(np.arange(0, len(bias) * k + 1, k, dtype=np.int32)), flat
                    ),
                }
            )
            values = spark.createDataFrame(table)
            return (
                index.select(id_col, idx_col)
                .join(values, idx_col)
                .select(id_col, idx_col, C.BIAS, C.FACTORS, C.N_TRAIN)
            )

        return (
            frame(self.users, C.USER_ID, C.USER_IDX, p.user_factors, p.user_bias, p.user_counts),
            frame(self.items, C.ITEM_ID, C.ITEM_IDX, p.item_factors, p.item_bias, p.item_counts),
        )

    def metadata_frame(self, spark: SparkSession) -> DataFrame:
        from mfspark import __version__

        row = {name: None for name, _ in METADATA_FIELDS}
        row.update({k: v for k, v in self.metadata.items() if k in row})
        row["global_mean"] = float(self.params.global_mean)
        row["rank"] = int(self.params.rank)
        row["mfspark_version"] = __version__
        row["created_at"] = row["created_at"] or _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"
        )
        return spark.createDataFrame([tuple(row[n] for n, _ in METADATA_FIELDS)], METADATA_SCHEMA)

    def write(self, writer, prefix: str = "models/als") -> None:
        """Write through a :class:`mfspark.io.StagedWriter` (atomic with the stage)."""
        spark = self.users.sparkSession
        users, items = self.factor_frames(spark)
        writer.write(users, f"{prefix}/user_factors")
        writer.write(items, f"{prefix}/item_factors")
        writer.write(self.metadata_frame(spark).coalesce(1), f"{prefix}/metadata")

    def save(self, path: str, overwrite: bool = True) -> None:
        """Write the three datasets under ``path`` (not staged: for library use)."""
        spark = self.users.sparkSession
        mode = "overwrite" if overwrite else "errorifexists"
        users, items = self.factor_frames(spark)
        users.write.mode(mode).parquet(join(path, "user_factors"))
        items.write.mode(mode).parquet(join(path, "item_factors"))
        self.metadata_frame(spark).coalesce(1).write.mode(mode).parquet(join(path, "metadata"))

    @classmethod
    def load(cls, spark: SparkSession, path: str) -> FactorModel:
        fs = HadoopFS(spark)
        for name in ("user_factors", "item_factors", "metadata"):
            if not fs.exists(join(path, name)):
                raise InputError(
                    f"no model at {path} ({name} missing); train one first (e.g. jobs/train_als.py)"
                )
        meta = spark.read.parquet(join(path, "metadata")).first().asDict()
        users_df = spark.read.parquet(join(path, "user_factors"))
        items_df = spark.read.parquet(join(path, "item_factors"))
        uf, ub, un = _factors_to_numpy(users_df, C.USER_IDX, int(meta["rank"]))
        itf, ib, itn = _factors_to_numpy(items_df, C.ITEM_IDX, int(meta["rank"]))
        params = BiasedMF(float(meta["global_mean"]), uf, ub, itf, ib, un, itn)
        return cls(
            params,
            users_df.select(C.USER_ID, C.USER_IDX),
            items_df.select(C.ITEM_ID, C.ITEM_IDX),
            meta,
        )

    # -- prediction --------------------------------------------------------------------
    def _broadcast(self, spark: SparkSession):
        """The parameters as one broadcast, made on first use and shared by every prediction
        DataFrame of this model until :meth:`release`."""
        bc = self.__dict__.get("_prediction_broadcast")
        if bc is None:
            p = self.params
            bc = spark.sparkContext.broadcast(
                (
                    float(p.global_mean),
                    np.asarray(p.user_factors, np.float32),
                    np.asarray(p.user_bias, np.float64),
                    np.asarray(p.item_factors, np.float32),
                    np.asarray(p.item_bias, np.float64),
                    self.clip,
                    _trained(p.user_counts, len(p.user_bias)),
                    _trained(p.item_counts, len(p.item_bias)),
                )
            )
            self.__dict__["_prediction_broadcast"] = bc
            # A model dropped unreleased (e.g. by CrossValidator) frees the executors' copies;
            # unpersist, not destroy: a prediction DataFrame still alive gets it re-sent.
            self.__dict__["_broadcast_finalizer"] = weakref.finalize(self, _unpersist_quietly, bc)
        return bc

    def release(self) -> None:
        """Destroy the broadcast that prediction DataFrames read (driver file and executor
        copies). Call it once the predictions built so far have been computed (written,
        collected); prediction DataFrames built afterwards get a fresh broadcast."""
        bc = self.__dict__.pop("_prediction_broadcast", None)
        if bc is not None:
            self.__dict__.pop("_broadcast_finalizer").detach()
            bc.destroy()

    def __enter__(self) -> FactorModel:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def predict_indexed(
        self,
        df: DataFrame,
        user_idx: str = C.USER_IDX,
        item_idx: str = C.ITEM_IDX,
        prediction: str = C.PREDICTION,
        cold_start: str = "fallback",
    ) -> DataFrame:
        """Add ``prediction`` to a DataFrame with (nullable) dense index columns."""
        if cold_start not in COLD_START_STRATEGIES:
            raise ValueError(f"cold_start must be one of {COLD_START_STRATEGIES}, got {cold_start!r}")
        bc = self._broadcast(df.sparkSession)
        nan_cold = cold_start != "fallback"
        schema = T.StructType(df.schema.fields + [T.StructField(prediction, T.DoubleType(), True)])

        def add_prediction(batches):
            from mfspark.session import worker_single_thread

            worker_single_thread()
            mu, uf, ub, itf, ib, clip, user_trained, item_trained = bc.value
            for batch in batches:
                u = _index_array(batch.column(user_idx))
                i = _index_array(batch.column(item_idx))
                pred = predict(mu, uf, ub, itf, ib, u, i, clip)
                if nan_cold:
                    pred[~(_lookup(user_trained, u) & _lookup(item_trained, i))] = np.nan
                yield pa.RecordBatch.from_arrays(
                    [*batch.columns, pa.array(pred)], names=[*batch.schema.names, prediction]
                )

        out = df.mapInArrow(add_prediction, schema)
        if cold_start == "drop":
            out = out.where(~F.isnan(F.col(prediction)))
        return out

    def transform(
        self,
        df: DataFrame,
        user_col: str = C.USER_ID,
        item_col: str = C.ITEM_ID,
        prediction: str = C.PREDICTION,
        cold_start: str = "fallback",
    ) -> DataFrame:
        """Predict for any DataFrame of original (user id, item id); other columns are kept."""
        users = self.users.select(F.col(C.USER_ID).alias("__uid"), F.col(C.USER_IDX).alias("__uidx"))
        items = self.items.select(F.col(C.ITEM_ID).alias("__iid"), F.col(C.ITEM_IDX).alias("__iidx"))
        joined = (
            df.join(F.broadcast(users), _id_match(df[user_col], users["__uid"]), "left")
            .join(F.broadcast(items), _id_match(df[item_col], items["__iid"]), "left")
            .drop("__uid", "__iid")
        )
        out = self.predict_indexed(joined, "__uidx", "__iidx", prediction, cold_start)
        return out.drop("__uidx", "__iidx")


def _unpersist_quietly(bc) -> None:
    try:
        bc.unpersist()
    except Exception:  # the session may have stopped already; nothing left to free then
        log.debug("broadcast %s already gone", bc)


def _id_match(left, right):
    """Join condition that tolerates integer ids arriving as strings and vice versa."""
    return left.cast("string") == right.cast("string")


def _index_array(column: pa.Array) -> np.ndarray:
    """Arrow index column → int64 numpy with -1 where null."""
    return column.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _trained(counts, n: int) -> np.ndarray:
    return np.ones(n, bool) if counts is None else np.asarray(counts) > 0


def _lookup(flags: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """flags[idx], False where idx is −1 or out of range."""
    ok = (idx >= 0) & (idx < len(flags))
    return ok & flags[np.where(ok, idx, 0)]


def _factors_to_numpy(df: DataFrame, idx_col: str, rank: int):
    """(factors, bias, n_train) arrays indexed by idx, from a factor table."""
    table = df.where(F.col(idx_col).isNotNull()).select(idx_col, C.BIAS, C.FACTORS, C.N_TRAIN).toArrow()
    n = int(pa.compute.max(table.column(idx_col)).as_py() or -1) + 1 if table.num_rows else 0
    idx = table.column(idx_col).to_numpy()
    factors = np.zeros((n, rank), dtype=np.float32)
    bias = np.zeros(n, dtype=np.float64)
    flat = table.column(C.FACTORS).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    factors[idx] = flat.astype(np.float32).reshape(-1, rank)
    bias[idx] = table.column(C.BIAS).to_numpy()
    counts = np.zeros(n, dtype=np.int64)
    counts[idx] = table.column(C.N_TRAIN).to_numpy()
    return factors, bias, counts
