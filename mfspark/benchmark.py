"""``jobs/benchmark.py``: Spark MLlib ALS vs mfspark vs single-process numpy, same data, one run.

All three systems see the same prepared train/test split in the same process:

* ``mllib`` — :class:`pyspark.ml.recommendation.ALS` (no biases; regParam is count-scaled).
  Test rows it predicts as NaN (users/items it never saw) are scored with the global train
  mean, not dropped; its predictions are not clipped (as it is used).
* ``mfspark`` — :class:`mfspark.models.als.spark.SparkBlockSolver` (blocked biased ALS),
  broadcast exchange; ``mfspark_partitioned`` — the same with the partitioned exchange
  (``als.exchange``), same regularisation.
* ``numpy`` — the same biased ALS in one Python process (:class:`mfspark.models.als.train.LocalSolver`):
  the one-machine limit of the same arithmetic, with the ratings collected to the driver.
* ``bpmf`` — Bayesian MF by Gibbs sampling on the same kind of cached blocks
  (:class:`mfspark.models.bpmf.spark.SparkBlockSampler`) at ``als.rank`` with the ``[bpmf]``
  settings: ``seconds_per_iteration`` is the median Gibbs sweep (a user and an item pass, as an
  ALS iteration), ``test_rmse`` that of the average over the kept samples. Its priors are
  learned, so it is not tuned (``reg`` 0, scaling ``p``: posterior).

Regularisation: with ``benchmark.tune`` each system's value is chosen from a small grid by
RMSE on a validation split of train (a hash of the indices, ``benchmark.validation_fraction``);
a grid whose best value is at an edge is extended past it. mfspark is tuned under both of its
penalty scalings (plain L2 and count-scaled) and keeps the better; numpy solves exactly
mfspark's objective, so it uses mfspark's choice.

Timings per system: ``setup_seconds`` (partitioning/packing the ratings, before the first
iteration), ``seconds_per_iteration`` (median over iterations), ``fit_seconds`` (the whole
fit), ``peak_memory_mb`` (peak memory of the processes the system runs in, sampled every 100 ms:
the driver, the JVM and its Python workers for the Spark systems, the driver for numpy; each
Python process counted by its proportional set size, so pages shared by forked Python workers
or memory-mapped by several of them count once, the JVM by its resident set, which costs
nothing to read; the JVM is collected before each system starts).
MLlib's iterations are timed from Spark's own stage timeline (two ``flatMap at ALS.scala``
stages per iteration, read from the Spark UI's REST API); when that is unavailable the mean
over (fit − first job) is reported and said so. ``mllib_blas`` says which BLAS MLlib ran on.

Written to ``<output.path>/benchmark`` (Parquet) and printed as a table with ratios to MLlib.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import statistics
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.blocks.rows import RatingRows, tile_width
from mfspark.config import Config
from mfspark.io import HadoopFS, join, read_manifest, staged_outputs, update_manifest
from mfspark.models.als.kernels import Regularization, half_step
from mfspark.models.als.spark import SparkBlockSolver, check_broadcast_size
from mfspark.models.als.train import ALSParams, LocalSolver, run_als
from mfspark.models.factor_model import FactorModel
from mfspark.models.factors import predict
from mfspark.prepare import Prepared, run_prepare
from mfspark.session import persisted_rdds, unpersist_since
from mfspark.splits import unit_hash

log = logging.getLogger(__name__)

BENCHMARK_SCHEMA = T.StructType(
    [
        T.StructField("system", T.StringType(), False),
        T.StructField("rank", T.IntegerType(), False),
        T.StructField("iterations", T.IntegerType(), False),
        T.StructField("setup_seconds", T.DoubleType(), True),
        T.StructField("seconds_per_iteration", T.DoubleType(), True),
        T.StructField("fit_seconds", T.DoubleType(), True),
        T.StructField("peak_memory_mb", T.DoubleType(), True),
        T.StructField("test_rmse", T.DoubleType(), True),
        T.StructField("reg", T.DoubleType(), True),
        T.StructField("reg_scaling", T.StringType(), True),
        T.StructField("validation_rmse", T.DoubleType(), True),
        T.StructField("iteration_timing", T.StringType(), True),
        T.StructField("mllib_blas", T.StringType(), True),
        T.StructField("planted_truth_test_rmse", T.DoubleType(), True),
        T.StructField("oracle_floor_test_rmse", T.DoubleType(), True),
        T.StructField("n_train", T.LongType(), False),
        T.StructField("n_test", T.LongType(), False),
        T.StructField("master", T.StringType(), False),
    ]
)


@dataclass
class SystemRun:
    system: str
    rank: int
    iterations: int
    setup_seconds: float | None
    seconds_per_iteration: float | None
    fit_seconds: float
    peak_memory_mb: float | None
    test_rmse: float
    reg: float
    validation_rmse: float | None = None
    iteration_timing: str = "measured per iteration"
    mllib_blas: str | None = None
    reg_scaling: str = "count"  # MLlib's regParam is always count-scaled


# -- memory ------------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(name))
    return tree


def _memory_mb(pid: int, proportional: bool = True) -> float:
    """A process's memory (Linux). ``proportional``: its proportional set size, i.e. its private
    pages plus its share of the pages it maps together with other processes, so summing it over
    processes counts every page once (falls back to the resident set size where
    ``smaps_rollup`` is missing). Otherwise its resident set size, which costs nothing to read:
    ``smaps_rollup`` walks the process's page tables under its memory-map lock, 13-15 ms for a
    JVM with a 12 GB heap, and sampled every 50 ms that slowed the measured fits by a quarter."""
    sources = [(f"/proc/{pid}/status", "VmRSS:")]
    if proportional:
        sources.insert(0, (f"/proc/{pid}/smaps_rollup", "Pss:"))
    for path, key in sources:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) / 1024
        except OSError:
            continue
    return 0.0


class PeakMemory:
    """Samples the summed memory (:func:`_memory_mb`) of chosen processes in a background thread.

    With ``spark``, every system starts from the same state: the JVM's heap and the driver's
    Python objects are collected first, so a system is not charged for the heap an earlier
    system grew (the JVM gives unused heap back to the OS after a full collection)."""

    def __init__(
        self, which: str, interval: float = 0.1, spark: SparkSession | None = None, label: str = ""
    ):
        self.which, self.interval, self.spark, self.label = which, interval, spark, label
        self.peak: float | None = None
        self.peak_jvm = 0.0  # the JVMs' part of the peak (MB)
        self.peak_at = 0.0  # seconds from the start to the peak
        self._stop = threading.Event()

    def _pids(self) -> tuple[list[int], list[int]]:
        """(processes, the JVMs among them)."""
        me = os.getpid()
        if self.which == "driver":
            return [me], []
        tree = _children()
        jvms = [p for p in tree.get(me, []) if _is_java(p)]
        pids, stack = [me], list(jvms)  # driver + JVM + everything under it (Python workers)
        while stack:
            p = stack.pop()
            pids.append(p)
            stack.extend(tree.get(p, []))
        return pids, jvms

    def _run(self):
        started = time.time()
        while not self._stop.is_set():
            pids, jvms = self._pids()
            # The JVM shares no pages with the other processes: its resident set is its share.
            jvm = sum(_memory_mb(p, proportional=False) for p in jvms)
            total = jvm + sum(_memory_mb(p) for p in pids if p not in jvms)
            if self.peak is None or total > self.peak:
                self.peak, self.peak_jvm, self.peak_at = total, jvm, time.time() - started
            self._stop.wait(self.interval)

    def describe(self) -> str:
        """Where the peak was: its size, the JVM's part and when it came."""
        if self.peak is None:
            return "not measured"
        return (
            f"{self.peak:,.0f} MB ({self.peak_jvm:,.0f} MB JVM, {self.peak - self.peak_jvm:,.0f} MB "
            f"Python) {self.peak_at:.1f} s in"
        )

    def __enter__(self):
        if self.spark is not None:
            gc.collect()
            self.spark.sparkContext._jvm.System.gc()
        if os.path.isdir("/proc"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if hasattr(self, "_thread"):
            self._thread.join()
        if self.label:
            log.info("%s: peak memory %s", self.label, self.describe())


def _is_java(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "java"
    except OSError:
        return False


# -- data ----------------------------------------------------------------------------------
def _same_prepare_settings(manifest: dict, cfg: Config) -> bool:
    entry = manifest.get("stages", {}).get("prepare")
    if not entry:
        return False
    ran = entry.get("config", {})
    now = cfg.to_dict()
    return all(ran.get(k) == now[k] for k in ("data", "synthetic", "split"))


def ensure_prepared(cfg: Config, spark: SparkSession) -> None:
    out = cfg.output.path
    fs = HadoopFS(spark)
    if (
        cfg.benchmark.reuse_prepared
        and fs.exists(join(out, C.PREPARED_TRAIN))
        and _same_prepare_settings(read_manifest(spark, out), cfg)
    ):
        log.info("reusing the prepared dataset in %s (same data, synthetic and split settings)", out)
        return
    run_prepare(cfg, spark)


def _indexed(df: DataFrame) -> DataFrame:
    return df.select(C.USER_IDX, C.ITEM_IDX, F.col(C.RATING).cast("double").alias(C.RATING))


def validation_split(train: DataFrame, fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    u = unit_hash(F.col(C.USER_IDX), F.col(C.ITEM_IDX), F.lit(seed), F.lit("validation"))
    marked = train.withColumn("_v", u < F.lit(fraction))
    return marked.where(~F.col("_v")).drop("_v"), marked.where(F.col("_v")).drop("_v")


def _arrays(df: DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = df.select(C.USER_IDX, C.ITEM_IDX, C.RATING).toArrow()
    return tuple(table.column(i).to_numpy() for i in range(3))


# -- systems -------------------------------------------------------------------------------
def mllib_blas(spark: SparkSession) -> str:
    jvm = spark.sparkContext._jvm
    try:
        jvm.dev.ludovic.netlib.blas.NativeBLAS.getInstance()
        native = "native"
    except Exception:  # noqa: BLE001 - any JVM error means no native BLAS was loaded
        native = "none"
    try:
        java = jvm.dev.ludovic.netlib.blas.JavaBLAS.getInstance().getClass().getSimpleName()
    except Exception:  # noqa: BLE001
        java = "unknown"
    return f"native BLAS: {native}; Java fallback: {java}"


def _stage_iteration_seconds(spark: SparkSession, group: str, iterations: int):
    """(setup end, [per-iteration seconds]) from the UI REST API, or None."""
    sc = spark.sparkContext
    url = sc.uiWebUrl
    if not url:
        return None
    base = f"{url}/api/v1/applications/{sc.applicationId}"
    try:
        jobs = json.load(urllib.request.urlopen(f"{base}/jobs", timeout=10))
        stage_ids = {s for j in jobs if j.get("jobGroup") == group for s in j["stageIds"]}
        stages = json.load(urllib.request.urlopen(f"{base}/stages?status=complete", timeout=10))
    except OSError:
        return None
    solve = sorted(
        (
            s
            for s in stages
            if s["stageId"] in stage_ids and s["name"].startswith("flatMap at ALS.scala")
        ),
        key=lambda s: s["stageId"],
    )
    if len(solve) != 2 * iterations:
        return None

    def ts(text: str) -> float:
        from datetime import datetime

        return datetime.strptime(text.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()

    starts = [ts(s["submissionTime"]) for s in solve[0::2]]
    ends = [ts(s["completionTime"]) for s in solve[1::2]]
    return starts[0], [e - s for s, e in zip(starts, ends, strict=True)]


def fit_mllib(spark, train, test, rank, iterations, reg, seed, global_mean, tag):
    from pyspark.ml.recommendation import ALS

    als = ALS(
        rank=rank,
        maxIter=iterations,
        regParam=reg,
        userCol=C.USER_IDX,
        itemCol=C.ITEM_IDX,
        ratingCol=C.RATING,
        coldStartStrategy="nan",
        seed=seed,
    )
    group = f"mfspark-benchmark-mllib-{tag}"
    spark.sparkContext.setJobGroup(group, f"MLlib ALS {tag}")
    try:
        started = time.time()
        model = als.fit(train)
        fit_seconds = time.time() - started
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    pred = model.transform(test).select(
        F.when(F.isnan(C.PREDICTION), F.lit(global_mean)).otherwise(F.col(C.PREDICTION)).alias("p"),
        C.RATING,
    )
    rmse = pred.agg(F.sqrt(F.avg((F.col("p") - F.col(C.RATING)) ** 2))).first()[0]
    timeline = _stage_iteration_seconds(spark, group, iterations)
    if timeline is not None:
        first_start, per_iter = timeline
        setup = first_start - started
        timing = "median of per-iteration stage spans (Spark UI timeline)"
    else:
        setup, per_iter = None, [fit_seconds / iterations]
        timing = "fit / iterations (Spark UI timeline unavailable)"
    return float(rmse), fit_seconds, setup, per_iter, timing, model


def fit_mfspark(spark, train, test, n_users, n_items, params, cfg, exchange="broadcast"):
    started = time.time()
    with SparkBlockSolver(
        spark,
        train,
        test,
        n_users,
        n_items,
        params,
        cfg.als.num_user_blocks,
        cfg.als.num_item_blocks,
        exchange,
    ) as solver:
        result = run_als(solver, params, "mfspark" if exchange == "broadcast" else "mfspark-part")
    return result, time.time() - started, solver.setup_seconds


def fit_numpy(train_arrays, test_arrays, n_users, n_items, params):
    started = time.time()
    solver = LocalSolver(train_arrays, n_users, n_items, params, test=test_arrays)
    setup = time.time() - started
    result = run_als(solver, params, "numpy")
    return result, time.time() - started, setup


#: How many times the grid is extended (x2 or /2) while its best value is at an edge.
MAX_GRID_EXTENSIONS = 3


def _mfspark_reg(reg: float, scaling: str, plain_reg_bias: float) -> Regularization:
    return Regularization(reg, reg if scaling == "count" else plain_reg_bias, scaling)


def tune(grid, score, system: str, key: str) -> tuple[float, dict[float, float]]:
    """Score every value of ``grid`` (lower is better); while the best is at an edge, extend
    the grid past it by a factor 2 (at most ``MAX_GRID_EXTENSIONS`` times), so the choice does
    not depend on the grid happening to suit the data. Returns (best, all scores)."""
    scores = {float(v): score(float(v)) for v in sorted(grid)}
    for _ in range(MAX_GRID_EXTENSIONS):
        best, values = min(scores, key=scores.get), sorted(scores)
        if len(values) < 2 or best <= 0 or best not in (values[0], values[-1]):
            break
        nxt = best * 2 if best == values[-1] else best / 2
        log.info("%s: best regularisation %g is at the edge of the grid; trying %g", system, best, nxt)
        scores[nxt] = score(nxt)
    best, values = min(scores, key=scores.get), sorted(scores)
    if len(values) > 1 and best in (values[0], values[-1]):
        log.warning(
            "%s: the best regularisation %g is still at the edge after extending %s; widen it",
            system,
            best,
            key,
        )
    return best, scores


def fit_bpmf_system(spark, train, test, n_users, n_items, cfg: Config, clip) -> SystemRun:
    """Bayesian MF at ``als.rank`` with the ``[bpmf]`` settings on the same split."""
    from mfspark.models.bpmf.sampler import BPMFParams, run_gibbs
    from mfspark.models.bpmf.spark import SparkBlockSampler

    params = BPMFParams.from_config(cfg.bpmf, rank=cfg.als.rank, clip=clip, saved_samples=0)
    started = time.time()
    with PeakMemory("all", spark=spark, label="bpmf") as mem:
        sampler = SparkBlockSampler(
            spark,
            train,
            test,
            n_users,
            n_items,
            params,
            cfg.bpmf.num_user_blocks,
            cfg.bpmf.num_item_blocks,
        )
        try:
            result = run_gibbs(sampler, params, "bpmf")
        finally:
            sampler.close()
    return SystemRun(
        "bpmf",
        params.rank,
        params.samples,
        sampler.setup_seconds,
        statistics.median(h.seconds for h in result.history),
        time.time() - started,
        mem.peak,
        result.history[-1].test_rmse,
        0.0,
        iteration_timing="median Gibbs sweep",
        reg_scaling="posterior",
    )


# -- top-K recommendation ------------------------------------------------------------------
BENCHMARK_RECOMMEND = "benchmark_recommend"
RECOMMEND_SCHEMA = T.StructType(
    [
        T.StructField("system", T.StringType(), False),
        T.StructField("k", T.IntegerType(), False),
        T.StructField("exclude_seen", T.BooleanType(), False),
        T.StructField("n_users", T.LongType(), False),
        T.StructField("seconds", T.DoubleType(), False),
    ]
)


@dataclass
class RecommendRun:
    system: str
    k: int
    exclude_seen: bool
    n_users: int
    seconds: float


def _timed_write(df: DataFrame) -> float:
    """Seconds to compute ``df`` completely (written to Spark's no-op sink)."""
    started = time.time()
    df.write.format("noop").mode("overwrite").save()
    return time.time() - started


def time_recommend(
    spark, mllib_model, params, train: DataFrame, k: int, cfg: Config
) -> list[RecommendRun]:
    """K lists for every user: MLlib's ``recommendForAllUsers`` on its own model, then
    mfspark's on its model without and with seen-item exclusion, each computed in full.

    Both outputs are keyed by the dense indices both systems were fitted on (no id mapping on
    either side), so the timings compare the ranking work itself.
    """
    from mfspark.recommend import COL, ROW, factor_scorer, index_frame, rank_frame

    runs = []
    mllib = mllib_model.recommendForAllUsers(k)
    seconds = _timed_write(mllib)
    runs.append(RecommendRun("mllib", k, False, mllib_model.userFactors.count(), seconds))
    log.info("MLlib recommendForAllUsers(%d): %.1f s", k, seconds)
    users = np.flatnonzero(np.asarray(params.user_counts) > 0)
    rows = index_frame(spark, users)
    seen = train.select(F.col(C.USER_IDX).alias(ROW), F.col(C.ITEM_IDX).alias(COL))
    for exclude in (False, True):
        ranked = rank_frame(
            spark, rows, seen if exclude else None, factor_scorer(params), k, cfg.recommend.num_blocks
        )
        try:
            seconds = _timed_write(ranked.frame)
        finally:
            ranked.close()
        runs.append(RecommendRun("mfspark", k, exclude, len(users), seconds))
        log.info("mfspark top-%d lists (exclude_seen=%s): %.1f s", k, exclude, seconds)
    return runs


def recommend_text(runs: list[RecommendRun]) -> str:
    base = next(r for r in runs if r.system == "mllib")
    lines = ["", f"top-{base.k} lists for every user ({base.n_users:,} users):"]
    lines.append(f"{'system':<9}{'exclude seen':>14}{'seconds':>10}{'vs MLlib':>10}")
    for r in runs:
        lines.append(
            f"{r.system:<9}{'yes' if r.exclude_seen else 'no':>14}{r.seconds:10.1f}"
            f"{r.seconds / base.seconds if base.seconds else float('nan'):9.2f}x"
        )
    lines.append("MLlib cannot exclude seen items; its lists may contain items the user rated.")
    return "\n".join(lines)


# -- driver --------------------------------------------------------------------------------
def planted_truth_rmse(spark, out: str, test: DataFrame, clip) -> float | None:
    path = join(out, C.SYNTHETIC_TRUTH)
    if not HadoopFS(spark).exists(join(path, "metadata")):
        return None
    truth = FactorModel.load(spark, path)
    truth.metadata["clip_min"], truth.metadata["clip_max"] = clip
    with truth:  # its prediction broadcast is released once the RMSE is computed
        scored = truth.transform(test.select(C.USER_ID, C.ITEM_ID, C.RATING))
        return float(scored.agg(F.sqrt(F.avg((F.col(C.PREDICTION) - F.col(C.RATING)) ** 2))).first()[0])


def oracle_floor_rmse(spark, out: str, train_arrays, test_arrays, clip) -> float | None:
    """Test RMSE of an oracle no real estimator can beat in expectation: every user's bias and
    factors are the posterior mean under the planted Gaussian prior (ridge with
    λ = noise variance / prior variance), solved with the *true* global mean and item
    parameters given. A system must learn the items from the same ratings, so this — not the
    planted truth, which knows every user exactly — is the best RMSE reachable on this data."""
    path = join(out, C.SYNTHETIC_TRUTH)
    if not HadoopFS(spark).exists(join(path, "metadata")):
        return None
    truth = FactorModel.load(spark, path)
    meta, p = truth.metadata, truth.params
    noise = float(meta["noise_var"]) + float(meta["rounding_var"])
    prior = Regularization(
        noise / float(meta["factor_entry_sd"]) ** 2, noise / float(meta["user_bias_var"]), "none"
    )
    u, i, r = train_arrays
    users = RatingRows.from_coo(u, i, r, np.arange(len(p.user_bias)), tile_width(p.rank))
    solved = half_step(users, p.item_factors, p.item_bias, p.global_mean, prior, np.float64)
    tu, ti, tr = test_arrays
    pred = predict(p.global_mean, solved.factors, solved.bias, p.item_factors, p.item_bias, tu, ti, clip)
    return float(np.sqrt(np.mean((pred - tr) ** 2)))


def run_benchmark(cfg: Config, spark: SparkSession) -> dict:
    bench, als = cfg.benchmark, cfg.als
    out = cfg.output.path
    ensure_prepared(cfg, spark)
    prepared = Prepared.load(spark, out)
    n_users, n_items = prepared.users.count(), prepared.items.count()
    cached_before = persisted_rdds(spark)  # what the run caches is released at its end
    if {"mfspark", "numpy", "bpmf"} & set(bench.systems):  # they broadcast (or collect) a side
        check_broadcast_size(n_users, n_items, als.rank, als.max_broadcast_mb)
    train = _indexed(prepared.train).cache()
    test = _indexed(prepared.test).cache()
    n_train, n_test = train.count(), test.count()
    stats = train.agg(F.avg(C.RATING), F.min(C.RATING), F.max(C.RATING)).first()
    global_mean, clip = float(stats[0]), (float(stats[1]), float(stats[2]))
    iterations, rank = als.max_iter, als.rank
    log.info(
        "benchmark: %s train / %s test ratings, %s users x %s items, rank %d, %d iterations, master %s",
        f"{n_train:,}",
        f"{n_test:,}",
        f"{n_users:,}",
        f"{n_items:,}",
        rank,
        iterations,
        spark.sparkContext.master,
    )
    regs = {
        "mllib": bench.mllib_reg,
        "mfspark": Regularization(als.reg, als.reg_bias, als.reg_scaling),
    }
    validation_rmse: dict[str, float | None] = {"mllib": None, "mfspark": None}
    if bench.tune:
        fit_part, valid = validation_split(train, bench.validation_fraction, cfg.split.seed)
        fit_part, valid = fit_part.cache(), valid.cache()
        fit_part.count(), valid.count()
        if "mllib" in bench.systems:

            def mllib_score(reg: float) -> float:
                before = persisted_rdds(spark)
                rmse = fit_mllib(
                    spark, fit_part, valid, rank, iterations, reg, als.seed, global_mean, f"tune-{reg}"
                )[0]
                unpersist_since(spark, before)  # the model's factors, not to pile up in memory
                log.info("tuning mllib regParam=%g: validation RMSE %.5f", reg, rmse)
                return rmse

            regs["mllib"], scores = tune(
                bench.mllib_reg_grid, mllib_score, "mllib", "benchmark.mllib_reg_grid"
            )
            validation_rmse["mllib"] = scores[regs["mllib"]]
        if {"mfspark", "numpy"} & set(bench.systems):
            # both penalty scalings mfspark offers: plain L2 with als.reg_bias on biases, and
            # count-scaled (ALS-WR, MLlib's) with the same λ on factors and biases
            candidates = {}
            for scaling, grid, key in (
                ("none", bench.mfspark_reg_grid, "benchmark.mfspark_reg_grid"),
                ("count", bench.mfspark_count_reg_grid, "benchmark.mfspark_count_reg_grid"),
            ):
                if not grid:
                    continue

                def mfspark_score(reg: float, scaling=scaling) -> float:
                    p = ALSParams.from_config(
                        als, clip=clip, tol=0.0, reg=_mfspark_reg(reg, scaling, als.reg_bias)
                    )
                    result, _, _ = fit_mfspark(spark, fit_part, valid, n_users, n_items, p, cfg)
                    rmse = result.history[-1].test_rmse
                    log.info(
                        "tuning mfspark als.reg=%g (reg_scaling %s): validation RMSE %.5f",
                        reg,
                        scaling,
                        rmse,
                    )
                    return rmse

                best, scores = tune(grid, mfspark_score, f"mfspark ({scaling})", key)
                candidates[scaling] = (scores[best], best)
            scaling = min(candidates, key=lambda k: candidates[k][0])
            validation_rmse["mfspark"], best = candidates[scaling]
            regs["mfspark"] = _mfspark_reg(best, scaling, als.reg_bias)
        fit_part.unpersist(), valid.unpersist()
    runs: list[SystemRun] = []
    oracle = None  # needs the ratings on the driver: computed with the numpy system
    final = ALSParams.from_config(  # tol 0: exactly max_iter iterations, like MLlib
        als, clip=clip, tol=0.0, reg=regs["mfspark"]
    )
    if "mllib" in bench.systems:
        with PeakMemory("all", spark=spark, label="mllib") as mem:
            rmse, fit_s, setup, per_iter, timing, mllib_model = fit_mllib(
                spark, train, test, rank, iterations, regs["mllib"], als.seed, global_mean, "final"
            )
        runs.append(
            SystemRun(
                "mllib",
                rank,
                iterations,
                setup,
                statistics.median(per_iter),
                fit_s,
                mem.peak,
                rmse,
                regs["mllib"],
                validation_rmse["mllib"],
                timing,
                mllib_blas(spark),
            )
        )
    for system, exchange in (("mfspark", "broadcast"), ("mfspark_partitioned", "partitioned")):
        if system not in bench.systems:
            continue
        with PeakMemory("all", spark=spark, label=system) as mem:
            result, fit_s, setup = fit_mfspark(
                spark, train, test, n_users, n_items, final, cfg, exchange
            )
        if system == "mfspark":
            mfspark_model = result.model
        runs.append(
            SystemRun(
                system,
                rank,
                result.iterations,
                setup,
                statistics.median(h.seconds for h in result.history),
                fit_s,
                mem.peak,
                result.history[-1].test_rmse,
                regs["mfspark"].reg,
                validation_rmse["mfspark"],
                reg_scaling=regs["mfspark"].scaling,
            )
        )
    if "numpy" in bench.systems:
        train_arrays, test_arrays = _arrays(train), _arrays(test)
        with PeakMemory("driver", label="numpy") as mem:
            result, fit_s, setup = fit_numpy(train_arrays, test_arrays, n_users, n_items, final)
        oracle = oracle_floor_rmse(spark, out, train_arrays, test_arrays, clip)
        del train_arrays, test_arrays
        runs.append(
            SystemRun(
                "numpy",
                rank,
                result.iterations,
                setup,
                statistics.median(h.seconds for h in result.history),
                fit_s,
                mem.peak,
                result.history[-1].test_rmse,
                regs["mfspark"].reg,
                validation_rmse["mfspark"],
                "measured per iteration (single process, one core)",
                reg_scaling=regs["mfspark"].scaling,
            )
        )
    if "bpmf" in bench.systems:
        runs.append(fit_bpmf_system(spark, train, test, n_users, n_items, cfg, clip))
    truth = planted_truth_rmse(spark, out, prepared.test, clip)
    timings = []
    if bench.recommend:
        if not {"mllib", "mfspark"} <= set(bench.systems):
            log.warning("benchmark.recommend needs the mllib and mfspark systems; skipped")
        else:
            timings = time_recommend(spark, mllib_model, mfspark_model, train, cfg.recommend.k, cfg)
    train.unpersist(), test.unpersist()
    unpersist_since(spark, cached_before)  # MLlib's final model's factors
    master = spark.sparkContext.master
    rows = [
        (
            r.system,
            r.rank,
            r.iterations,
            r.setup_seconds,
            r.seconds_per_iteration,
            r.fit_seconds,
            r.peak_memory_mb,
            r.test_rmse,
            float(r.reg),
            r.reg_scaling,
            r.validation_rmse,
            r.iteration_timing,
            r.mllib_blas,
            truth,
            oracle,
            n_train,
            n_test,
            master,
        )
        for r in runs
    ]
    with staged_outputs(spark, out) as stage:
        stage.write(spark.createDataFrame(rows, BENCHMARK_SCHEMA).coalesce(1), C.BENCHMARK)
        if timings:
            stage.write(
                spark.createDataFrame(
                    [tuple(asdict(t).values()) for t in timings], RECOMMEND_SCHEMA
                ).coalesce(1),
                BENCHMARK_RECOMMEND,
            )
    entry = {
        "runs": [asdict(r) for r in runs],
        "recommend": [asdict(t) for t in timings],
        "planted_truth_test_rmse": truth,
        "oracle_floor_test_rmse": oracle,
        "n_train": n_train,
        "n_test": n_test,
        "master": master,
    }
    update_manifest(spark, out, "benchmark", entry, cfg)
    print(table_text(runs, truth, oracle, n_train, n_test, n_users, n_items, master))
    if timings:
        print(recommend_text(timings))
    return entry


def table_text(runs, truth, oracle, n_train, n_test, n_users, n_items, master) -> str:
    base = next((r for r in runs if r.system == "mllib"), None)

    def ratio(value, ref):
        return f"{value / ref:.2f}x" if value is not None and ref else "-"

    def num(value, fmt):
        return format(value, fmt) if value is not None else format("-", f">{int(float(fmt[:-1]))}")

    shape = f"{n_users:,} users x {n_items:,} items"
    lines = [
        "",
        f"benchmark: {n_train:,} train / {n_test:,} test ratings, {shape}, master {master}",
        f"{'system':<9}{'reg':>8}{'setup s':>9}{'s/iter':>9}{'vs MLlib':>9}{'fit s':>9}"
        f"{'vs MLlib':>9}{'peak MB':>9}{'test RMSE':>11}{'vs MLlib':>9}",
    ]
    for r in runs:
        ref = base or r
        lines.append(
            f"{r.system:<9}{r.reg:>7g}{r.reg_scaling[0]}{num(r.setup_seconds, '9.1f')}"
            f"{num(r.seconds_per_iteration, '9.2f')}"
            f"{ratio(r.seconds_per_iteration, ref.seconds_per_iteration):>9}"
            f"{r.fit_seconds:9.1f}{ratio(r.fit_seconds, ref.fit_seconds):>9}"
            f"{num(r.peak_memory_mb, '9.0f')}{r.test_rmse:11.4f}{ratio(r.test_rmse, ref.test_rmse):>9}"
        )
    if truth is not None:
        best = min(r.test_rmse for r in runs)
        lines.append(f"planted truth test RMSE {truth:.4f}; best system / truth = {best / truth:.4f}")
    if truth is not None and oracle is not None:
        lines.append(
            f"oracle floor (users solved with the true items and prior) {oracle:.4f} = "
            f"{oracle / truth:.4f} x truth; best system / oracle = {best / oracle:.4f}"
        )
    lines.append(
        "reg: n = plain L2 (als.reg_scaling none), c = count-scaled (ALS-WR, MLlib's), "
        "p = priors learned by the posterior (bpmf; s/iter is one Gibbs sweep)"
    )
    if base is not None and base.mllib_blas:
        lines.append(f"MLlib: {base.mllib_blas}; iterations timed by {base.iteration_timing}")
    return "\n".join(lines)
