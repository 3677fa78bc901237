"""Broadcast vs partitioned factor exchange: the same fit both ways, same data, one run.

For every dataset and block layout it fits ALS (the ``[als]`` defaults, ``tol`` 0 so both run
exactly ``--iterations``) with ``als.exchange=broadcast`` and with ``partitioned``, and prints
the largest difference between their factors and biases, the median seconds per iteration of
each, and the fixed-side rows the partitioned exchange shipped per half-step (the figure the
cost model in the README predicts)::

    python3 benchmarks/exchange.py --ml100k ../shared/data/ml-100k \\
        --prepared benchmark-output/2m --blocks 1x1 7x5 --json exchange.json

``--bpmf SWEEPS`` instead samples Bayesian MF (the ``[bpmf]`` defaults, ``SWEEPS`` sweeps, half
of them burn-in, default blocks) both ways and prints the median seconds per sweep of each and
whether the two chains are identical (posterior mean and every sweep's train RMSE).

``--ml100k DIR`` fits fold u1 (``u1.base``, scored on ``u1.test``); ``--prepared OUT`` fits the
prepared split of a pipeline or benchmark output (e.g. the 2M synthetic set that
``jobs/benchmark.py --set synthetic.n_ratings=2000000 ...`` prepares). Runs on ``local[2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ml100k import read_fold, require_folds, write_json  # noqa: E402


def _u1(spark, root: str):
    import pandas as pd

    require_folds(root, ["u1"])
    base, test = read_fold(root, "u1")
    n_users = int(max(base.user.max(), test.user.max()))
    n_items = int(max(base.item.max(), test.item.max()))

    def frame(df):  # MovieLens 100K ids are 1..n: the index is id - 1
        out = pd.DataFrame(
            {
                "user_idx": (df.user - 1).astype(np.int32),
                "item_idx": (df.item - 1).astype(np.int32),
                "rating": df.rating.astype(np.float64),
            }
        )
        return spark.createDataFrame(out)

    return frame(base), frame(test), n_users, n_items


def _prepared(spark, out: str):
    from mfspark import columns as C
    from mfspark.prepare import Prepared

    p = Prepared.load(spark, out)
    cols = (C.USER_IDX, C.ITEM_IDX, C.RATING)
    train, test = p.train.select(*cols).cache(), p.test.select(*cols).cache()
    train.count(), test.count()
    return train, test, p.users.count(), p.items.count()


def expected_blocks(degrees: np.ndarray, blocks: int) -> float:
    """Σ_j E[number of the other side's blocks entity j is rated in], for ratings hashed to
    ``blocks`` blocks at random: the cost model's shipped rows per half-step."""
    d = np.asarray(degrees, np.float64)
    return float(np.sum(blocks * (1.0 - (1.0 - 1.0 / blocks) ** d)))


def degrees(train, test):
    """Train ratings per item (what user blocks rate), and per user with any train rating,
    its train + test ratings (what item blocks rate: they also hold the test ratings)."""
    from pyspark.sql import functions as F

    items = train.groupBy("item_idx").count().toPandas()["count"].to_numpy()
    users = (
        train.select("user_idx", F.lit(1).alias("t"))
        .unionByName(test.select("user_idx", F.lit(0).alias("t")))
        .groupBy("user_idx")
        .agg(F.count("*").alias("n"), F.sum("t").alias("train"))
        .where("train > 0")
        .toPandas()["n"]
        .to_numpy()
    )
    return items, users


def compare(spark, name, data, blocks, iterations) -> list[dict]:
    from mfspark.config import load_config
    from mfspark.models.als.spark import SparkBlockSolver
    from mfspark.models.als.train import ALSParams, run_als

    train, test, n_users, n_items = data
    params = ALSParams.from_config(load_config(None, []).als, max_iter=iterations, tol=0.0)
    rows = []
    item_deg, user_deg = degrees(train, test)
    for ub, ib in blocks:
        fits = {}
        for exchange in ("broadcast", "partitioned"):
            with SparkBlockSolver(
                spark, train, test, n_users, n_items, params, ub, ib, exchange
            ) as solver:
                result = run_als(solver, params, f"{name} {ub}x{ib} {exchange}")
            fits[exchange] = (result, solver.shipped_rows)
        (b, _), (p, shipped) = fits["broadcast"], fits["partitioned"]
        diff = max(
            float(np.abs(getattr(b.model, a) - getattr(p.model, a)).max())
            for a in ("user_factors", "user_bias", "item_factors", "item_bias")
        )
        per_side = {s: [n for side, n in shipped if side == s] for s in ("user", "item")}
        row = {
            "data": name,
            "blocks": f"{ub}x{ib}",
            "n_users": n_users,
            "n_items": n_items,
            "max_abs_diff": diff,
            "broadcast_s_per_iter": statistics.median(h.seconds for h in b.history),
            "partitioned_s_per_iter": statistics.median(h.seconds for h in p.history),
            "test_rmse": b.history[-1].test_rmse,
            "shipped_rows_user_half_step": per_side["user"][-1],
            "shipped_rows_item_half_step": per_side["item"][-1],
            "model_rows_user_half_step": expected_blocks(item_deg, ub),
            "model_rows_item_half_step": expected_blocks(user_deg, ib),
        }
        print(
            f"{name:>10} {row['blocks']:>5}: max |Δ| {diff:.1e}, s/iter broadcast "
            f"{row['broadcast_s_per_iter']:.2f} partitioned {row['partitioned_s_per_iter']:.2f} "
            f"({row['partitioned_s_per_iter'] / row['broadcast_s_per_iter']:.2f}x), shipped rows "
            f"per half-step: user {row['shipped_rows_user_half_step']:,} item "
            f"{row['shipped_rows_item_half_step']:,} (cost model: "
            f"{row['model_rows_user_half_step']:,.0f} / {row['model_rows_item_half_step']:,.0f}), "
            f"test RMSE {row['test_rmse']:.5f}",
            flush=True,
        )
        rows.append(row)
    return rows


def compare_bpmf(spark, name, data, sweeps) -> list[dict]:
    from mfspark.config import load_config
    from mfspark.models.bpmf.sampler import BPMFParams, run_gibbs
    from mfspark.models.bpmf.spark import SparkBlockSampler

    train, test, n_users, n_items = data
    params = BPMFParams.from_config(
        load_config(None, []).bpmf, samples=sweeps, burn_in=sweeps // 2, saved_samples=2, clip=(1.0, 5.0)
    )
    fits = {}
    for exchange in ("broadcast", "partitioned"):
        sampler = SparkBlockSampler(spark, train, test, n_users, n_items, params, 0, 0, exchange)
        try:
            fits[exchange] = run_gibbs(sampler, params, f"{name} bpmf {exchange}")
        finally:
            sampler.close()
    b, p = fits["broadcast"], fits["partitioned"]
    identical = all(
        np.array_equal(getattr(b.posterior_mean, a), getattr(p.posterior_mean, a))
        for a in ("user_factors", "user_bias", "item_factors", "item_bias")
    ) and [h.train_rmse for h in b.history] == [h.train_rmse for h in p.history]
    row = {
        "data": name,
        "model": "bpmf",
        "sweeps": sweeps,
        "identical": identical,
        "broadcast_s_per_sweep": statistics.median(h.seconds for h in b.history),
        "partitioned_s_per_sweep": statistics.median(h.seconds for h in p.history),
        "test_rmse": b.history[-1].test_rmse,
    }
    print(
        f"{name:>10} bpmf {sweeps} sweeps: identical {identical}, s/sweep broadcast "
        f"{row['broadcast_s_per_sweep']:.2f} partitioned {row['partitioned_s_per_sweep']:.2f} "
        f"({row['partitioned_s_per_sweep'] / row['broadcast_s_per_sweep']:.2f}x), test RMSE "
        f"{row['test_rmse']:.5f}",
        flush=True,
    )
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ml100k", help="MovieLens 100K directory (fits fold u1)")
    parser.add_argument("--prepared", nargs="*", default=[], help="output paths with prepared/")
    parser.add_argument("--blocks", nargs="*", default=["1x1", "7x5"], help="user x item blocks")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--bpmf", type=int, metavar="SWEEPS", help="compare Bayesian MF instead")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    if not args.ml100k and not args.prepared:
        parser.error("give --ml100k and/or --prepared")
    blocks = [tuple(int(x) for x in b.split("x")) for b in args.blocks]

    from mfspark.config import load_config
    from mfspark.session import build_session

    cfg = load_config(None, ["spark.master=local[2]", "spark.conf.spark.driver.memory=12g"])
    spark = build_session(cfg, "exchange")
    spark.sparkContext.setLogLevel("ERROR")
    figures = []

    def run(name, data):
        if args.bpmf:
            return compare_bpmf(spark, name, data, args.bpmf)
        return compare(spark, name, data, blocks, args.iterations)

    if args.ml100k:
        figures += run("ml100k-u1", _u1(spark, args.ml100k))
    for out in args.prepared:
        figures += run(os.path.basename(os.path.normpath(out)), _prepared(spark, out))
    write_json(args.json, figures)
    spark.stop()


if __name__ == "__main__":
    main()
