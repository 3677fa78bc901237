"""The one Spark session builder every job uses.

* ``python jobs/NAME.py`` (local mode): checks that Java 17+ is there, makes the Python
  workers run the driver's own interpreter, sets the master from ``spark.master`` and
  applies ``spark.conf.*``.
* ``spark-submit jobs/NAME.py``: the master and every property the submit command set are
  left alone, and resource properties from the config file are never applied: the cluster
  decides resources.

In both cases numeric libraries in the Python workers run single-threaded (Spark owns the
cores) and Arrow is enabled for pandas conversions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import shutil
import subprocess
import sys

from mfspark.config import Config
from mfspark.errors import MfsparkError

log = logging.getLogger(__name__)

MIN_JAVA = 17
#: Environment of the Python workers (``spark.executorEnv.*`` unless already set): BLAS on one
#: thread per task, since Spark owns the cores; and no transparent huge pages for numpy's
#: arrays. numpy asks the kernel for them on every large array, and where the kernel must
#: compact memory to find one (``defrag = madvise``, the usual default) the first touch of
#: a fresh worker's arrays stalls: building a 9M-rating block took 4.0 s instead of 1.0 s,
#: and the ALS set-up at 20M ratings 23 s instead of 18 s.
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMPY_MADVISE_HUGEPAGE": "0",
}
# Properties that size the application: under spark-submit the cluster's values always win.
RESOURCE_PREFIXES = (
    "spark.master",
    "spark.submit.",
    "spark.driver.memory",
    "spark.driver.cores",
    "spark.executor.memory",
    "spark.executor.cores",
    "spark.executor.instances",
    "spark.cores.max",
    "spark.dynamicAllocation.",
    "spark.memory.offHeap.",
)
DEFAULT_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.python.worker.reuse": "true",
}


def under_spark_submit() -> bool:
    """True when this Python process was started by ``spark-submit``.

    spark-submit's PythonRunner starts the JVM first and hands the driver the gateway port.
    """
    return "PYSPARK_GATEWAY_PORT" in os.environ


def java_major_version(java: str) -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def ensure_java() -> None:
    """Fail in one line when no Java 17+ can be found (PySpark's own error is a page long)."""
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        where = f"JAVA_HOME={java_home} has no bin/java" if java_home else "no `java` on PATH"
        raise MfsparkError(
            f"Java {MIN_JAVA}+ is required by Spark but was not found ({where}); install a "
            f"JDK/JRE {MIN_JAVA}+ (e.g. `apt install openjdk-17-jre-headless`) or set JAVA_HOME"
        )
    major = java_major_version(java)
    if major is not None and major < MIN_JAVA:
        raise MfsparkError(
            f"Java {major} found at {java}, but Spark 4 needs Java {MIN_JAVA}+; install a newer "
            "JDK/JRE or point JAVA_HOME at one"
        )


def build_session(cfg: Config, app_suffix: str = ""):
    """Create (or return the running) SparkSession configured from ``cfg``."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    submitted = under_spark_submit()
    name = cfg.spark.app_name + (f"-{app_suffix}" if app_suffix else "")
    builder = SparkSession.builder.appName(name)
    already = SparkConf() if submitted else None  # what spark-submit set
    if not submitted:
        ensure_java()
        # Workers must import the same numpy/pandas/pyarrow as the driver.
        os.environ["PYSPARK_PYTHON"] = sys.executable
        os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
        builder = builder.master(cfg.spark.master)
    conf = {**DEFAULT_CONF, **cfg.spark.conf}
    for var, value in WORKER_ENV.items():
        conf.setdefault(f"spark.executorEnv.{var}", value)
    for key, value in conf.items():
        if submitted and (already.contains(key) or key.startswith(RESOURCE_PREFIXES)):
            log.debug("keeping %s as spark-submit set it", key)
            continue
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info(
        "Spark %s, master %s, default parallelism %d%s",
        spark.version,
        spark.sparkContext.master,
        spark.sparkContext.defaultParallelism,
        " (spark-submit)" if submitted else "",
    )
    return spark


def worker_single_thread() -> None:
    """Called at the top of worker-side functions: :data:`WORKER_ENV` in this process.

    The variables set through ``spark.executorEnv`` cover workers started by Spark, before
    they import numpy; this covers a worker started otherwise for what it loads or starts
    after the call (a library imported later, a subprocess).
    """
    for var, value in WORKER_ENV.items():
        os.environ.setdefault(var, value)


def release_memory() -> None:
    """Give the C heap's free memory back to the OS (glibc's ``malloc_trim``; elsewhere a
    no-op). Called by worker functions after their large arrays are freed: a reused Python
    worker otherwise keeps the peak of its last task resident (glibc raises its mmap
    threshold after large frees, so later arrays come from a heap it never trims), about
    250 MB per idle worker after the ALS set-up at 20M ratings."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None

_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}


def persisted_rdds(spark) -> frozenset[int]:
    """The ids of the RDDs persisted in ``spark``'s context now."""
    ids = spark.sparkContext._jsc.sc().getPersistentRDDs().keysIterator()
    found = []
    while ids.hasNext():
        found.append(int(ids.next()))
    return frozenset(found)


def unpersist_since(spark, before: frozenset[int]) -> int:
    """Unpersist the RDDs persisted since ``before = persisted_rdds(spark)``; returns how many.

    For code that caches out of our reach: MLlib's ALS leaves each model's factors cached
    until the JVM collects the model.
    """
    persistent = spark.sparkContext._jsc.sc().getPersistentRDDs()
    released = persisted_rdds(spark) - before
    for rdd_id in released:
        rdd = persistent.get(rdd_id)
        if rdd.isDefined():  # it may have been cleaned meanwhile
            rdd.get().unpersist(False)
    return len(released)


def parse_size(text: str) -> int:
    """Bytes in a Spark size string (``1g``, ``512m``, ``2048k``, ``1024``: bytes; ``kb`` etc.
    also accepted), as Spark parses ``spark.driver.maxResultSize``."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgtp]?)b?\s*", str(text).lower())
    if not match:
        raise MfsparkError(
            f"cannot read the Spark size {text!r} (expected e.g. 1g, 512m, 0 for unlimited)"
        )
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


#: Pickling and task-result framing on top of the raw arrays a job collects (e.g. an ALS
#: half-step's factors, an AutoRec gradient).
RESULT_OVERHEAD = 1.05
RESULT_OVERHEAD_BYTES = 1 << 20
