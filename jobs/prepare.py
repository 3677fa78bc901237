"""Read, validate, split and index ratings; write ``prepared/*`` and ``manifest.json``.

python jobs/prepare.py [--config conf/local.toml] [--set section.key=value ...]
spark-submit jobs/prepare.py --config cluster.toml
"""

import sys

import _bootstrap  # noqa: F401  (makes a source checkout importable)

from mfspark.cli import job_main
from mfspark.prepare import preflight_prepare, run_prepare

if __name__ == "__main__":
    sys.exit(job_main("prepare", run_prepare, __doc__.splitlines()[0], preflight=preflight_prepare))
