"""Residual model: a base plus a network trained on its out-of-fold errors; write models/residual/.

python jobs/train_residual.py [--config conf/local.toml] [--set residual.folds=5 ...]
spark-submit jobs/train_residual.py --config cluster.toml
"""

import sys

try:
    import _bootstrap  # noqa: F401  (makes a source checkout importable)
except ModuleNotFoundError:  # shipped alone (spark-submit --deploy-mode cluster): mfspark is installed
    pass

from mfspark.cli import job_file_main

if __name__ == "__main__":
    sys.exit(job_file_main(__file__))  # the job of mfspark.jobs named like this file
