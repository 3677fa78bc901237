"""Benchmark Spark MLlib ALS, mfspark and single-process numpy ALS on the same data and split.

python jobs/benchmark.py                              # conf/benchmark.toml: 20M synthetic, rank 10
python jobs/benchmark.py --set als.rank=50
python jobs/benchmark.py --set data.format=movielens-100k --set data.path=ml-100k/u.data
"""

import sys

try:
    import _bootstrap  # noqa: F401  (makes a source checkout importable)
except ModuleNotFoundError:  # shipped alone (spark-submit --deploy-mode cluster): mfspark is installed
    pass

from mfspark.cli import job_file_main

if __name__ == "__main__":
    sys.exit(job_file_main(__file__))  # the job of mfspark.jobs named like this file
