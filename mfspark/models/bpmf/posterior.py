"""A fitted Bayesian MF model as Parquet, and predictions with a predictive sd.

Layout under a model directory (``<output>/models/bpmf`` for the jobs):

* ``user_factors``, ``item_factors``, ``metadata`` — the posterior mean of the factors and
  biases in the factor-model layout (:class:`mfspark.models.factor_model.FactorModel`), so
  any job that scores factor models scores it (a plug-in prediction from the mean
  parameters);
* ``samples/user_factors``, ``samples/item_factors`` — the saved samples: ``sample`` (the
  sweep), ``user_idx``/``item_idx``, ``bias``, ``factors``;
* ``samples/noise`` — ``sample``, ``alpha`` (the noise precision of that sample).

:meth:`BayesianPosterior.transform` averages r̂ over the saved samples: ``prediction`` is the
mean (clipped as the model's metadata says) and ``prediction_sd`` = sqrt(Var r̂ + mean 1/α),
the sd of the predictive distribution. An unknown user or item contributes bias 0 and
factor 0 in every sample (μ plus the known bias, as for the other models).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.io import join
from mfspark.models.bpmf.sampler import Sample
from mfspark.models.factor_model import FactorModel, _index_array
from mfspark.models.factors import predict

SAMPLES = "samples"


@dataclass
class BayesianPosterior:
    """Posterior mean (a FactorModel) plus the saved samples, stacked by sample."""

    mean: FactorModel
    sweeps: np.ndarray  # (S,)
    user_factors: np.ndarray  # (S, n_users, k)
    user_bias: np.ndarray  # (S, n_users)
    item_factors: np.ndarray  # (S, n_items, k)
    item_bias: np.ndarray  # (S, n_items)
    alpha: np.ndarray  # (S,)

    @classmethod
    def from_samples(cls, mean: FactorModel, samples: list[Sample]) -> BayesianPosterior:
        stack = lambda name: np.stack([getattr(s, name) for s in samples])  # noqa: E731
        return cls(
            mean,
            np.array([s.sweep for s in samples]),
            stack("user_factors"),
            stack("user_bias"),
            stack("item_factors"),
            stack("item_bias"),
            np.array([s.alpha for s in samples]),
        )

    # -- persistence -------------------------------------------------------------------
    def _sample_frames(self, spark: SparkSession) -> dict[str, DataFrame]:
        def side(idx_col: str, factors: np.ndarray, bias: np.ndarray) -> DataFrame:
            s, n, k = factors.shape
            flat = pa.array(np.ascontiguousarray(factors, np.float32).ravel())
            table = pa.table(
                {
                    "sample": pa.array(np.repeat(self.sweeps, n).astype(np.int32)),
                    idx_col: pa.array(np.tile(np.arange(n, dtype=np.int32), s)),
                    C.BIAS: pa.array(bias.astype(np.float64).ravel()),
                    C.FACTORS: pa.ListArray.from_arrays(
                        pa.array(np.arange(0, s * n * k + 1, k, dtype=np.int32)), flat
                    ),
                }
            )
            return spark.createDataFrame(table)

        noise = pa.table(
            {"sample": pa.array(self.sweeps.astype(np.int32)), "alpha": pa.array(self.alpha)}
        )
        return {
            "user_factors": side(C.USER_IDX, self.user_factors, self.user_bias),
            "item_factors": side(C.ITEM_IDX, self.item_factors, self.item_bias),
            "noise": spark.createDataFrame(noise),
        }

    def write(self, writer, prefix: str) -> None:
        """Write through a :class:`mfspark.io.StagedWriter` (atomic with the stage)."""
        self.mean.write(writer, prefix)
        for name, df in self._sample_frames(self.mean.users.sparkSession).items():
            writer.write(df, f"{prefix}/{SAMPLES}/{name}")

    def save(self, path: str, overwrite: bool = True) -> None:
        self.mean.save(path, overwrite)
        mode = "overwrite" if overwrite else "errorifexists"
        for name, df in self._sample_frames(self.mean.users.sparkSession).items():
            df.write.mode(mode).parquet(join(path, SAMPLES, name))

    @classmethod
    def load(cls, spark: SparkSession, path: str) -> BayesianPosterior:
        mean = FactorModel.load(spark, path)
        k = int(mean.params.rank)
        noise = spark.read.parquet(join(path, SAMPLES, "noise")).toArrow().sort_by("sample")
        sweeps = noise.column("sample").to_numpy()

        def side(name: str, idx_col: str, n: int):
            table = spark.read.parquet(join(path, SAMPLES, name)).toArrow()
            pos = np.searchsorted(sweeps, table.column("sample").to_numpy())
            idx = table.column(idx_col).to_numpy()
            factors = np.zeros((len(sweeps), n, k), np.float32)
            bias = np.zeros((len(sweeps), n), np.float32)
            flat = table.column(C.FACTORS).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            factors[pos, idx] = flat.reshape(-1, k)
            bias[pos, idx] = table.column(C.BIAS).to_numpy()
            return factors, bias

        uf, ub = side("user_factors", C.USER_IDX, len(mean.params.user_bias))
        itf, ib = side("item_factors", C.ITEM_IDX, len(mean.params.item_bias))
        return cls(mean, sweeps, uf, ub, itf, ib, noise.column("alpha").to_numpy())

    # -- prediction --------------------------------------------------------------------
    def predict_indexed(
        self,
        df: DataFrame,
        user_idx: str = C.USER_IDX,
        item_idx: str = C.ITEM_IDX,
        prediction: str = C.PREDICTION,
        prediction_sd: str = C.PREDICTION_SD,
    ) -> DataFrame:
        """Add ``prediction`` and ``prediction_sd`` to a DataFrame with dense index columns."""
        spark = df.sparkSession
        bc = spark.sparkContext.broadcast(
            (
                float(self.mean.params.global_mean),
                self.user_factors,
                self.user_bias,
                self.item_factors,
                self.item_bias,
                float(np.mean(1.0 / self.alpha)),
                self.mean.clip,
            )
        )
        schema = T.StructType(
            df.schema.fields
            + [
                T.StructField(prediction, T.DoubleType(), True),
                T.StructField(prediction_sd, T.DoubleType(), True),
            ]
        )

        def add(batches):
            from mfspark.session import worker_single_thread

            worker_single_thread()
            mu, uf, ub, itf, ib, noise_var, clip = bc.value
            for batch in batches:
                u = _index_array(batch.column(user_idx))
                i = _index_array(batch.column(item_idx))
                total, total_sq = np.zeros(len(u)), np.zeros(len(u))
                for s in range(len(uf)):
                    r = predict(mu, uf[s], ub[s], itf[s], ib[s], u, i)
                    total += r
                    total_sq += r * r
                mean = total / len(uf)
                sd = np.sqrt(np.maximum(total_sq / len(uf) - mean * mean, 0.0) + noise_var)
                if clip is not None:
                    mean = np.clip(mean, clip[0], clip[1])
                yield pa.RecordBatch.from_arrays(
                    [*batch.columns, pa.array(mean), pa.array(sd)],
                    names=[*batch.schema.names, prediction, prediction_sd],
                )

        return df.mapInArrow(add, schema)

    def transform(
        self,
        df: DataFrame,
        user_col: str = C.USER_ID,
        item_col: str = C.ITEM_ID,
        prediction: str = C.PREDICTION,
        prediction_sd: str = C.PREDICTION_SD,
    ) -> DataFrame:
        """Predict for any DataFrame of original (user id, item id); other columns are kept."""
        users = self.mean.users.select(
            F.col(C.USER_ID).alias("__uid"), F.col(C.USER_IDX).alias("__uidx")
        )
        items = self.mean.items.select(
            F.col(C.ITEM_ID).alias("__iid"), F.col(C.ITEM_IDX).alias("__iidx")
        )
        joined = (
            df.join(
                F.broadcast(users), df[user_col].cast("string") == users["__uid"].cast("string"), "left"
            )
            .join(
                F.broadcast(items), df[item_col].cast("string") == items["__iid"].cast("string"), "left"
            )
            .drop("__uid", "__iid")
        )
        out = self.predict_indexed(joined, "__uidx", "__iidx", prediction, prediction_sd)
        return out.drop("__uidx", "__iidx")
