"""Residual model: a base plus a network trained on its out-of-fold errors; write models/residual/.

python jobs/train_residual.py [--config conf/local.toml] [--set residual.folds=5 ...]
spark-submit jobs/train_residual.py --config cluster.toml
"""

import sys

import _bootstrap  # noqa: F401  (makes a source checkout importable)

from mfspark.cli import job_main
from mfspark.models.svd.job import run_train_residual

if __name__ == "__main__":
    sys.exit(job_main("train_residual", run_train_residual, __doc__.splitlines()[0]))
