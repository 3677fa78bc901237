"""Truncated SVD of the bias-removed ratings; write models/svd/, predictions, metrics/.

python jobs/train_svd.py [--config conf/local.toml] [--set svd.rank=20 ...]
spark-submit jobs/train_svd.py --config cluster.toml
"""

import sys

import _bootstrap  # noqa: F401  (makes a source checkout importable)

from mfspark.cli import job_main
from mfspark.models.svd.job import run_train_svd

if __name__ == "__main__":
    sys.exit(job_main("train_svd", run_train_svd, __doc__.splitlines()[0]))
