"""Peer accuracy on MovieLens 100K's canonical folds u1–u5: Surprise and Spark MLlib ALS.

The figures the README quotes for the peers come from this script. Each peer runs a small
grid; a setting's score is its mean test RMSE over the five folds, and the best setting is
reported. Choosing the setting on the test folds favours the peers (mfspark's own figures use
its defaults), so the comparison is, if anything, generous to them.

Surprise is not a dependency of mfspark: ``pip install scikit-surprise`` (a binary wheel) in
the environment that runs this script. Usage::

    python benchmarks/peers.py /path/to/ml-100k [--only surprise|mllib] [--json out.json]

MLlib ALS drops test rows of users or items unseen in training (``coldStartStrategy="drop"``),
as its users must; Surprise predicts its baseline for them. mfspark scores every test row.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np
from ml100k import FOLDS, read_fold, require_folds, write_json

SURPRISE_GRID = {
    "BaselineOnly": [
        {"bsl_options": {"method": "als", "reg_u": ru, "reg_i": ri, "n_epochs": 10}}
        for ru, ri in itertools.product((5, 10, 15), (5, 10, 15))
    ],
    "SVD": [
        {"n_factors": f, "n_epochs": e, "lr_all": 0.005, "reg_all": r, "random_state": 0}
        for f, e, r in itertools.product((50, 100), (20, 40), (0.02, 0.05, 0.1))
    ],
    "SVDpp": [
        {"n_factors": 20, "n_epochs": e, "lr_all": 0.007, "reg_all": r, "random_state": 0}
        for e, r in itertools.product((20,), (0.02, 0.05, 0.1))
    ],
}


def surprise_rmse(root: str, name: str, params: dict) -> list[float]:
    import surprise

    algo_class = getattr(surprise, name)
    reader = surprise.Reader(rating_scale=(1, 5))
    out = []
    for fold in FOLDS:
        base, test = read_fold(root, fold)
        data = surprise.Dataset.load_from_df(base[["user", "item", "rating"]], reader)
        algo = algo_class(**params, **({"verbose": False} if name == "BaselineOnly" else {}))
        algo.fit(data.build_full_trainset())
        pred = np.array([algo.predict(u, i).est for u, i in zip(test.user, test.item, strict=True)])
        out.append(float(np.sqrt(np.mean((pred - test.rating.to_numpy()) ** 2))))
    return out


def mllib_rmse(spark, root: str, rank: int, reg: float, max_iter: int) -> list[float]:
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    out = []
    for fold in FOLDS:
        base, test = (
            spark.createDataFrame(f[["user", "item", "rating"]]) for f in read_fold(root, fold)
        )
        als = ALS(rank=rank, regParam=reg, maxIter=max_iter, seed=0, userCol="user", itemCol="item")
        model = als.setColdStartStrategy("drop").fit(base)
        scored = model.transform(test)
        se = scored.select(F.avg((F.col("prediction") - F.col("rating")) ** 2)).first()[0]
        out.append(float(np.sqrt(se)))
    return out


def best(name: str, grid: list[dict], score) -> dict:
    rows = []
    for params in grid:
        t0 = time.perf_counter()
        folds = score(params)
        rows.append({"params": params, "folds": folds, "mean": float(np.mean(folds))})
        print(
            f"{name} {params}: mean {rows[-1]['mean']:.4f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    top = min(rows, key=lambda r: r["mean"])
    print(f"BEST {name}: {top['mean']:.4f} folds {[round(x, 4) for x in top['folds']]} {top['params']}")
    return {"peer": name, **top, "grid_size": len(grid)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ml100k", help="directory holding u1.base … u5.test")
    parser.add_argument("--only", choices=("surprise", "mllib"))
    parser.add_argument("--json", help="write the best setting of every peer here")
    args = parser.parse_args(argv)
    require_folds(args.ml100k)
    results = []
    if args.only in (None, "surprise"):
        for name, grid in SURPRISE_GRID.items():
            results.append(
                best(f"Surprise {name}", grid, lambda p, n=name: surprise_rmse(args.ml100k, n, p))
            )
    if args.only in (None, "mllib"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master("local[2]")
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.ui.enabled", "false")
            .getOrCreate()
        )
        grid = [{"rank": 20, "reg": r, "max_iter": 20} for r in (0.05, 0.1, 0.15, 0.2)]
        results.append(best("Spark MLlib ALS", grid, lambda p: mllib_rmse(spark, args.ml100k, **p)))
        spark.stop()
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
