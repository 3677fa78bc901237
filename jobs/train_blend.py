"""Ridge blend of trained models (weights fitted on a held-out share of train); write models/blend/.

python jobs/train_blend.py [--config conf/local.toml] [--set blend.l2=1.0 ...]
spark-submit jobs/train_blend.py --config cluster.toml
"""

import sys

import _bootstrap  # noqa: F401  (makes a source checkout importable)

from mfspark.cli import job_main
from mfspark.models.svd.job import run_train_blend

if __name__ == "__main__":
    sys.exit(job_main("train_blend", run_train_blend, __doc__.splitlines()[0]))
