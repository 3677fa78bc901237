"""Train Bayesian MF (Gibbs sampling) on prepared data; write models/bpmf, predictions, metrics.

python jobs/train_bpmf.py [--config conf/local.toml] [--set bpmf.samples=300 ...]
spark-submit jobs/train_bpmf.py --config cluster.toml
"""

import sys

import _bootstrap  # noqa: F401  (makes a source checkout importable)

from mfspark.cli import job_main
from mfspark.models.bpmf.job import run_train_bpmf

if __name__ == "__main__":
    sys.exit(job_main("train_bpmf", run_train_bpmf, __doc__.splitlines()[0]))
