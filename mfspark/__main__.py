"""``python -m mfspark JOB [flags]``, and the file ``spark-submit`` runs for an installed package.

``mfspark job-path`` prints this file's path, so a job of an installed mfspark is submitted as
``spark-submit [options] "$(mfspark job-path)" JOB [--config …] [--set …]``. The file imports
only the installed package, so it also works when ``spark-submit --deploy-mode cluster`` ships
it alone to the node that runs the driver.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if not __package__ and os.path.isfile(os.path.join(_here, "__init__.py")):
    # Run as a file of the installed package (spark-submit …/mfspark/__main__.py): Python put
    # the package's own directory first on sys.path, where its modules (config, io, session, …)
    # would shadow top-level modules of the same names. Import mfspark as the package it is.
    # (A copy that spark-submit shipped alone to a cluster node is not in a package: kept as is.)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

from mfspark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
