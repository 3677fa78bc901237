"""Train blocked biased ALS on the prepared dataset; write models/als, predictions/model=als, metrics.

python jobs/train_als.py [--config conf/local.toml] [--set als.rank=50 ...]
spark-submit jobs/train_als.py --config cluster.toml
"""

import sys

import _bootstrap  # noqa: F401  (makes a source checkout importable)

from mfspark.cli import job_main
from mfspark.models.als.job import run_train_als

if __name__ == "__main__":
    sys.exit(job_main("train_als", run_train_als, __doc__.splitlines()[0]))
