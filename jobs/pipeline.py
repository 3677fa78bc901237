"""Run every stage: prepare → train_als → evaluate → build_autoencoder_inputs; print a summary.

python jobs/pipeline.py                      # synthetic data, local Spark, ./output
python jobs/pipeline.py --set data.path=ml-100k/u.data
spark-submit jobs/pipeline.py --config cluster.toml
"""

import sys

import _bootstrap  # noqa: F401  (makes a source checkout importable)

from mfspark.cli import job_main
from mfspark.pipeline import preflight_pipeline, run_pipeline

if __name__ == "__main__":
    sys.exit(job_main("pipeline", run_pipeline, __doc__.splitlines()[0], preflight=preflight_pipeline))
