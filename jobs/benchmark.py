"""Benchmark Spark MLlib ALS, mfspark and single-process numpy ALS on the same data and split.

python jobs/benchmark.py                              # conf/benchmark.toml: 20M synthetic, rank 10
python jobs/benchmark.py --set als.rank=50
python jobs/benchmark.py --set data.format=movielens-100k --set data.path=ml-100k/u.data
"""

import os
import sys

import _bootstrap  # noqa: F401  (makes a source checkout importable)

from mfspark.benchmark import run_benchmark
from mfspark.cli import job_main
from mfspark.pipeline import preflight_pipeline

DEFAULT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "benchmark.toml"
)

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", DEFAULT, *argv]
    sys.exit(
        job_main("benchmark", run_benchmark, __doc__.splitlines()[0], argv, preflight=preflight_pipeline)
    )
