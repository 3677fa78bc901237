"""Train AutoRec (item- or user-based, optionally denoising) on the autoencoder inputs.

python jobs/train_autorec.py [--config conf/local.toml] [--set autorec.orientation=by_user ...]
spark-submit jobs/train_autorec.py --config cluster.toml

Reads ``ae_inputs/*`` (run jobs/build_autoencoder_inputs.py first) and ``prepared/*`` under
``output.path``; writes ``models/<model>/``, ``predictions/model=<model>/`` and this model's rows
of ``metrics/history`` and ``metrics/summary`` (model ``autorec``, or ``autorec_user``).
"""

import sys

try:
    import _bootstrap  # noqa: F401  (makes a source checkout importable)
except ModuleNotFoundError:  # shipped alone (spark-submit --deploy-mode cluster): mfspark is installed
    pass

from mfspark.cli import job_file_main

if __name__ == "__main__":
    sys.exit(job_file_main(__file__))  # the job of mfspark.jobs named like this file
