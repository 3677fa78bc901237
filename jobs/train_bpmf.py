"""Train Bayesian MF (Gibbs sampling) on prepared data; write models/bpmf, predictions, metrics.

python jobs/train_bpmf.py [--config conf/local.toml] [--set bpmf.samples=300 ...]
spark-submit jobs/train_bpmf.py --config cluster.toml
"""

import sys

try:
    import _bootstrap  # noqa: F401  (makes a source checkout importable)
except ModuleNotFoundError:  # shipped alone (spark-submit --deploy-mode cluster): mfspark is installed
    pass

from mfspark.cli import job_file_main

if __name__ == "__main__":
    sys.exit(job_file_main(__file__))  # the job of mfspark.jobs named like this file
