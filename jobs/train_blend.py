"""Ridge blend of trained models (weights fitted on a held-out share of train); write models/blend/.

python jobs/train_blend.py [--config conf/local.toml] [--set blend.l2=1.0 ...]
spark-submit jobs/train_blend.py --config cluster.toml
"""

import sys

try:
    import _bootstrap  # noqa: F401  (makes a source checkout importable)
except ModuleNotFoundError:  # shipped alone (spark-submit --deploy-mode cluster): mfspark is installed
    pass

from mfspark.cli import job_file_main

if __name__ == "__main__":
    sys.exit(job_file_main(__file__))  # the job of mfspark.jobs named like this file
