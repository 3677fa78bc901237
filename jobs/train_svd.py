"""Truncated SVD of the bias-removed ratings; write models/svd/, predictions, metrics/.

python jobs/train_svd.py [--config conf/local.toml] [--set svd.rank=20 ...]
spark-submit jobs/train_svd.py --config cluster.toml
"""

import sys

try:
    import _bootstrap  # noqa: F401  (makes a source checkout importable)
except ModuleNotFoundError:  # shipped alone (spark-submit --deploy-mode cluster): mfspark is installed
    pass

from mfspark.cli import job_file_main

if __name__ == "__main__":
    sys.exit(job_file_main(__file__))  # the job of mfspark.jobs named like this file
