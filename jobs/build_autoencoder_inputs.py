"""Build autoencoder inputs: ``ae_inputs/by_item``, ``ae_inputs/by_user`` and ``ae_inputs/metadata``.

python jobs/build_autoencoder_inputs.py [--config conf/local.toml] [--set section.key=value ...]
spark-submit jobs/build_autoencoder_inputs.py --config cluster.toml

Reads ``prepared/*`` under ``output.path`` (run jobs/prepare.py first); which orientations to
build comes from ``autoencoder.orientations``.
"""

import sys

try:
    import _bootstrap  # noqa: F401  (makes a source checkout importable)
except ModuleNotFoundError:  # shipped alone (spark-submit --deploy-mode cluster): mfspark is installed
    pass

from mfspark.cli import job_file_main

if __name__ == "__main__":
    sys.exit(job_file_main(__file__))  # the job of mfspark.jobs named like this file
