"""Train AutoRec (item- or user-based, optionally denoising) on the autoencoder inputs.

python jobs/train_autorec.py [--config conf/local.toml] [--set autorec.orientation=by_user ...]
spark-submit jobs/train_autorec.py --config cluster.toml

Reads ``ae_inputs/*`` (run jobs/build_autoencoder_inputs.py first) and ``prepared/*`` under
``output.path``; writes ``models/<model>/``, ``predictions/model=<model>/`` and this model's rows
of ``metrics/history`` and ``metrics/summary`` (model ``autorec``, or ``autorec_user``).
"""

import sys

import _bootstrap  # noqa: F401  (makes a source checkout importable)

from mfspark.cli import job_main
from mfspark.models.autorec.job import preflight_train_autorec, run_train_autorec

if __name__ == "__main__":
    sys.exit(
        job_main(
            "train_autorec",
            run_train_autorec,
            __doc__.splitlines()[0],
            preflight=preflight_train_autorec,
        )
    )
