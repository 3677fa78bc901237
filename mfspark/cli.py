"""Shared command line for every job: ``--config``, repeatable ``--set``, one-line errors.

A job is a function ``run(cfg, spark) -> dict`` in the package; ``jobs/NAME.py`` only calls
:func:`job_main`. Exit codes: 0 success, 1 a problem the message explains, 2 bad config or
arguments, 3 bad input data, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from mfspark.config import DEFAULT_CONFIG, Config, load_config
from mfspark.errors import MfsparkError

log = logging.getLogger("mfspark")

JobFn = Callable[[Config, object], dict]
PreflightFn = Callable[[Config], None]


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)


def parser_for(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"jobs/{name}.py", description=description)
    p.add_argument(
        "--config",
        default=None,
        help=f"TOML config file (default: {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])})",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config key (repeatable), e.g. --set als.rank=50",
    )
    p.add_argument("--verbose", action="store_true", help="print the full traceback on errors")
    return p


def spark_error_line(exc: BaseException) -> str | None:
    """The first meaningful line of a Spark/JVM error, or None if ``exc`` is not one."""
    try:
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, Py4JJavaError):
        text = str(exc.java_exception.toString())
    elif isinstance(exc, PySparkException):
        text = str(exc)
    else:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    if "OutOfMemoryError" in text:
        first += " (give Spark more memory: --set spark.conf.spark.driver.memory=8g locally, "
        first += "or raise spark.executor.memory on a cluster)"
    return first


def preflight_output(cfg: Config) -> None:
    """Every job: refuse an ``output.path`` that cannot be written, before Spark starts.

    A local path (or ``file:`` URI) must be a writable directory or creatable; a URI's scheme
    must have a file system. Under spark-submit a path without a scheme is on the cluster's
    file system: it is checked through Hadoop once the session runs.
    """
    from mfspark.errors import ConfigError
    from mfspark.io import check_output_local, check_scheme, scheme_of
    from mfspark.session import under_spark_submit

    out = cfg.output.path
    if not out:
        raise ConfigError("output.path is empty; set it to a directory for the outputs")
    submitted = under_spark_submit()
    if not submitted:
        check_scheme(out, "output.path", cfg.spark.conf, error=ConfigError)
    scheme = scheme_of(out)
    if scheme == "file" or (scheme is None and not submitted and cfg.spark.master.startswith("local")):
        check_output_local(out)


def job_main(
    name: str,
    run: JobFn,
    description: str,
    argv: Sequence[str] | None = None,
    preflight: PreflightFn | None = None,
) -> int:
    """Parse arguments, load config, build the session, run the job; return the exit code.

    ``preflight(cfg)`` runs before Spark starts (after :func:`preflight_output`, which every
    job runs): checks that need no JVM (a missing local input, an output path that cannot be
    written) fail in a second with their one line and nothing else on stderr.
    """
    args = parser_for(name, description).parse_args(argv)
    setup_logging("INFO")
    spark = None
    started = time.time()
    try:
        cfg = load_config(args.config, args.set)
        setup_logging(cfg.log.level)
        preflight_output(cfg)
        if preflight is not None:
            preflight(cfg)
        from mfspark.io import check_output_spark, recover
        from mfspark.session import build_session

        spark = build_session(cfg, name)
        check_output_spark(spark, cfg.output.path)
        # A run killed while it committed left a journal: finish (or undo) that commit before
        # this job reads anything there.
        for action in recover(spark, cfg.output.path):
            log.warning("recovered %s: %s", cfg.output.path, action)
        run(cfg, spark)
        log.info("%s finished in %.1f s", name, time.time() - started)
        return 0
    except MfsparkError as exc:
        print(f"mfspark {name}: error: {exc}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"mfspark {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from mfspark.readers import read_error

        unreadable = read_error(exc)
        if unreadable is not None:
            print(f"mfspark {name}: error: {unreadable}", file=sys.stderr)
            if args.verbose:
                traceback.print_exc()
            return unreadable.exit_code
        line = spark_error_line(exc)
        if line is None:
            raise
        print(f"mfspark {name}: Spark failed: {line}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        else:
            print("(rerun with --verbose for the full trace)", file=sys.stderr)
        return 1
    finally:
        if spark is not None:
            spark.stop()
