"""Train blocked biased ALS on the prepared dataset; write models/als, predictions/model=als, metrics.

python jobs/train_als.py [--config conf/local.toml] [--set als.rank=50 ...]
spark-submit jobs/train_als.py --config cluster.toml
"""

import sys

try:
    import _bootstrap  # noqa: F401  (makes a source checkout importable)
except ModuleNotFoundError:  # shipped alone (spark-submit --deploy-mode cluster): mfspark is installed
    pass

from mfspark.cli import job_file_main

if __name__ == "__main__":
    sys.exit(job_file_main(__file__))  # the job of mfspark.jobs named like this file
