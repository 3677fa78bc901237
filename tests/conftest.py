"""One Spark session for the whole test run (local[2], few shuffle partitions, UI off)."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Files that hold the longest tests start first: with ``--dist loadfile`` the
# workers take whole files in collection order, so a long file collected last
# would run alone at the end.
SLOW_FIRST = (
    "test_cluster.py",
    "test_checkpoint.py",
    "test_commit.py",
    "test_evaluation.py",
    "test_autorec.py",
    "test_report.py",
    "test_jobs.py",
    "test_als_spark.py",
    "test_als_cleanup.py",  # a pipeline subprocess (partitioned exchange under a result limit)
)


#: Every JVM the suite starts (the shared session, job subprocesses, the loopback cluster's
#: daemons and executors) compiles with C1 only: the test data is tiny, so C2's optimising
#: compiles cost more CPU than they save; on 2 cores this cut the suite from 728 s to 627 s.
#: Results do not depend on it (the JIT never changes what a program computes).
JIT_OPTION = "-XX:TieredStopAtLevel=1"


def pytest_configure(config):
    options = os.environ.get("JAVA_TOOL_OPTIONS", "")
    if "TieredStopAtLevel" not in options:  # inherited by every process started from here
        os.environ["JAVA_TOOL_OPTIONS"] = f"{options} {JIT_OPTION}".strip()
    # pytest-xdist >= 3.8 reorders files by their number of tests unless told not to, which
    # would undo SLOW_FIRST (and start the cluster test last).
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.spark)

    def rank(item):
        name = os.path.basename(str(item.fspath))
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order inside a file is kept


@pytest.fixture(scope="session")
def spark():
    from mfspark.config import load_config
    from mfspark.session import build_session

    cfg = load_config(
        None,
        [
            "spark.master=local[2]",
            "spark.conf.spark.sql.shuffle.partitions=4",
            "spark.conf.spark.default.parallelism=4",
            "spark.conf.spark.ui.enabled=false",
            "spark.conf.spark.driver.memory=3g",
        ],
    )
    session = build_session(cfg, "tests")
    yield session
    session.stop()


@pytest.fixture
def run_job():
    """Run ``jobs/NAME.py`` in a subprocess, as a user would; returns CompletedProcess."""
    import subprocess

    def _run(name, *args, timeout=600, env=None):
        cmd = [sys.executable, os.path.join(ROOT, "jobs", f"{name}.py"), *args]
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )

    return _run
