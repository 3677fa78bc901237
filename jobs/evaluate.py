"""Score predictions (or autoencoder reconstructions) on the held-out ratings; write ``metrics/summary``.

python jobs/evaluate.py [--config conf/local.toml] [--set section.key=value ...]
spark-submit jobs/evaluate.py --config cluster.toml

Scores every model under ``<output.path>/predictions/model=<name>/`` (or only
``evaluate.model_name``; or ``evaluate.predictions_path``; or the reconstructions at
``evaluate.reconstruction_path`` with ``evaluate.reconstruction_orientation``) against
``prepared/test``; the scored models' rows of ``metrics/summary`` are replaced, others kept.
"""

import sys

try:
    import _bootstrap  # noqa: F401  (makes a source checkout importable)
except ModuleNotFoundError:  # shipped alone (spark-submit --deploy-mode cluster): mfspark is installed
    pass

from mfspark.cli import job_file_main

if __name__ == "__main__":
    sys.exit(job_file_main(__file__))  # the job of mfspark.jobs named like this file
