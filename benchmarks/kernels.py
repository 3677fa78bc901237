"""Micro-benchmark of the Gram strategies of :func:`mfspark.blocks.rows.normal_equations`.

For each rank it builds one block shaped like a MovieLens-20M user block (users with a
heavy-tailed number of ratings against a fixed side of items), then times the normal
equations of the whole block with each Gram strategy, in float32 on one core: *compiled*
(numba, one pass per row), *sparse* (packed outer products, CSR × dense, on the column tiles
it is stored in) and *dense* (padded gathers, batched BLAS-3 products, on one tile). It prints
seconds and GFLOP/s, counting the same useful work for all: the upper triangle of the
(k+1)×(k+1) Gram matrix plus the right-hand side, two flops per multiply-add, per rating; and
the seconds of a whole ALS half-step (the same products, then the penalty and the solves).
``gram_strategy`` in ``mfspark/blocks/rows.py`` picks the winner for ``"auto"``.

    python benchmarks/kernels.py [--ranks 10 20 50 100] [--rows 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core, as in a Spark task

import numpy as np  # noqa: E402

from mfspark.blocks.rows import RatingRows, normal_equations, tile_width  # noqa: E402
from mfspark.models.als.kernels import Regularization, half_step  # noqa: E402


def block(rows: int, fixed: int, mean_count: float, seed: int = 0):
    """Ratings of ``rows`` entities: log-normal counts (mean ``mean_count``), popular columns."""
    rng = np.random.default_rng(seed)
    counts = np.minimum(fixed, np.maximum(1, rng.lognormal(np.log(mean_count) - 0.6, 1.1, rows))).astype(
        int
    )
    popularity = rng.zipf(1.3, fixed * 4) % fixed
    r, c = [], []
    for i, n in enumerate(counts):  # set-up only, not timed
        cols = np.unique(
            np.concatenate(
                [popularity[rng.integers(0, len(popularity), n)], rng.integers(0, fixed, n // 4 + 1)]
            )
        )[:n]
        r.append(np.full(len(cols), i))
        c.append(cols)
    r, c = np.concatenate(r), np.concatenate(c)
    return r, c, rng.integers(1, 6, len(r)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[10, 20, 50, 100])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--fixed", type=int, default=26744)
    parser.add_argument("--mean-count", type=float, default=144.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    r, c, v = block(args.rows, args.fixed, args.mean_count)
    print(f"block: {args.rows:,} rows x {args.fixed:,} fixed, {len(r):,} ratings; float32, one core")
    print(f"{'rank':>5} {'strategy':>8} {'tile':>10} {'seconds':>8} {'GFLOP/s':>8} {'half-step s':>11}")
    reg = Regularization(0.05, 0.05, "count")
    rng = np.random.default_rng(1)
    for k in args.ranks:
        factors = rng.normal(0, 0.3, (args.fixed, k)).astype(np.float32)
        bias = rng.normal(0, 0.3, args.fixed).astype(np.float32)
        dim = k + 1
        flops = 2.0 * len(r) * (dim * (dim + 1) / 2 + dim)
        for strategy in ("compiled", "sparse", "dense"):
            width = tile_width(k, strategy)
            rows = RatingRows.from_coo(r, c, v, np.arange(args.rows), width)

            fixed = (factors, bias, 3.5)

            def gram(rows=rows, strategy=strategy, fixed=fixed):
                for _eq in normal_equations(rows, *fixed, np.float32, strategy=strategy):
                    pass

            def solve(rows=rows, strategy=strategy, fixed=fixed):
                half_step(rows, *fixed, reg, np.float32, strategy=strategy)

            gram_s, solve_s = best_of(gram, args.repeat), best_of(solve, args.repeat)
            tile = "one" if rows.n_tiles == 1 else f"{rows.tile_width}"
            print(
                f"{k:>5} {strategy:>8} {tile:>10} {gram_s:>8.3f} {flops / gram_s / 1e9:>8.2f}"
                f" {solve_s:>11.3f}",
                flush=True,
            )


def best_of(run, repeat: int) -> float:
    """The fastest of ``repeat`` timed calls, after one untimed call (which compiles the
    compiled strategy's kernels in this process)."""
    run()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best


if __name__ == "__main__":
    main()
