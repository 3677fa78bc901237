"""Write the run report: report/index.html (one self-contained page with plots) and report/summary.md.

python jobs/report.py [--config conf/local.toml] [--set output.path=out/u1 ...]
spark-submit jobs/report.py --config cluster.toml

Runs on whatever an existing output.path holds (prepared data, metrics, predictions,
recommendations, benchmark results, manifest.json); a stage that did not run is named in the
report. Plots need matplotlib (pip install 'mfspark[report]'); without it the report has tables only.
"""

import sys

try:
    import _bootstrap  # noqa: F401  (makes a source checkout importable)
except ModuleNotFoundError:  # shipped alone (spark-submit --deploy-mode cluster): mfspark is installed
    pass

from mfspark.cli import job_file_main

if __name__ == "__main__":
    sys.exit(job_file_main(__file__))  # the job of mfspark.jobs named like this file
