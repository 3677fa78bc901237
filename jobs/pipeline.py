"""Run every stage: prepare → train_als → evaluate → build_autoencoder_inputs; print a summary.

python jobs/pipeline.py                      # synthetic data, local Spark, ./output
python jobs/pipeline.py --set data.path=ml-100k/u.data
spark-submit jobs/pipeline.py --config cluster.toml
"""

import sys

try:
    import _bootstrap  # noqa: F401  (makes a source checkout importable)
except ModuleNotFoundError:  # shipped alone (spark-submit --deploy-mode cluster): mfspark is installed
    pass

from mfspark.cli import job_file_main

if __name__ == "__main__":
    sys.exit(job_file_main(__file__))  # the job of mfspark.jobs named like this file
