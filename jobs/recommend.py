"""Top-K recommendations per user for every trained model, similar items, ranking metrics.

python jobs/recommend.py [--config conf/local.toml] [--set recommend.k=20 ...]
spark-submit jobs/recommend.py --config cluster.toml

Reads ``<output.path>/prepared`` and the factor models under ``<output.path>/models/``; writes
``recommendations/model=<model>/`` (and ``similar_items/model=<model>/`` with
``recommend.similar_items``), ``recommendations_unknown_users`` and ``metrics/ranking``.
"""

import sys

try:
    import _bootstrap  # noqa: F401  (makes a source checkout importable)
except ModuleNotFoundError:  # shipped alone (spark-submit --deploy-mode cluster): mfspark is installed
    pass

from mfspark.cli import job_file_main

if __name__ == "__main__":
    sys.exit(job_file_main(__file__))  # the job of mfspark.jobs named like this file
