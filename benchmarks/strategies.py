"""Do the Gram strategies change the fitted factors? ALS on MovieLens 100K's fold u1, each strategy.

Fits biased ALS (single process, ``LocalSolver``: the same kernels Spark runs) on ``u1.base``
for each rank and each Gram strategy of :func:`mfspark.blocks.rows.normal_equations` (``sparse``,
``dense``, and ``auto``, which picks one by rank), with float32 and float64 products, and prints
the largest absolute difference of every factor and bias from the ``sparse`` strategy with the
same precision and from the float64 ``sparse`` fit (the closest to exact arithmetic). Usage::

    python benchmarks/strategies.py /path/to/ml-100k [--ranks 10 50] [--iterations 10]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ml100k import read_fold, require_folds  # noqa: E402

from mfspark.blocks.rows import STRATEGIES, gram_strategy  # noqa: E402
from mfspark.models.als.kernels import Regularization  # noqa: E402
from mfspark.models.als.train import ALSParams, LocalSolver, run_als  # noqa: E402


def arrays(df) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user index, item index, rating): MovieLens 100K's ids are 1..n, the index is id − 1."""
    return df.user.to_numpy() - 1, df.item.to_numpy() - 1, df.rating.to_numpy(np.float64)


def fit(train, test, n_users, n_items, rank, iterations, strategy, dtype) -> tuple[np.ndarray, float]:
    """All fitted parameters as one vector, and the final test RMSE."""
    params = ALSParams(
        rank=rank,
        max_iter=iterations,
        tol=0.0,
        clip=(1.0, 5.0),
        gram=strategy,
        dtype=dtype,
        reg=Regularization(0.05, 0.05, "count"),
    )
    result = run_als(LocalSolver(train, n_users, n_items, params, test=test), params)
    m = result.model
    flat = [m.user_factors.ravel(), m.item_factors.ravel(), m.user_bias, m.item_bias]
    return np.concatenate([x.astype(np.float64) for x in flat]), result.history[-1].test_rmse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the MovieLens 100K directory (u1.base, u1.test)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    require_folds(args.root, ["u1"])
    base, held_out = read_fold(args.root, "u1")
    train, test = arrays(base), arrays(held_out)
    n_users = int(max(base.user.max(), held_out.user.max()))
    n_items = int(max(base.item.max(), held_out.item.max()))
    print(
        f"{'rank':>4} {'strategy':>8} {'runs':>6} {'products':>8} {'test RMSE':>10} "
        f"{'max |Δ| vs sparse, same precision':>34} {'vs sparse float64':>18}"
    )
    for rank in args.ranks:
        fits = {
            (s, d): fit(train, test, n_users, n_items, rank, args.iterations, s, d)
            for s in STRATEGIES
            for d in (np.float32, np.float64)
        }
        exact = fits["sparse", np.float64][0]
        for (strategy, dtype), (params, rmse) in fits.items():
            same = np.abs(params - fits["sparse", dtype][0]).max()
            print(
                f"{rank:>4} {strategy:>8} {gram_strategy(rank, strategy):>6} "
                f"{np.dtype(dtype).name:>8} {rmse:>10.6f} {same:>34.2e} "
                f"{np.abs(params - exact).max():>18.2e}"
            )


if __name__ == "__main__":
    main()
