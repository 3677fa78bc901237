"""Shared command line for every job: ``--config``, repeatable ``--set``, one-line errors.

The jobs are the table in :mod:`mfspark.jobs`; three entry points run them with the same flags:

* ``mfspark NAME …`` (the console script, :func:`main`) and ``python -m mfspark NAME …``;
* ``spark-submit "$(mfspark job-path)" NAME …``: ``job-path`` prints the path of the package's
  ``__main__.py``, a file ``spark-submit`` can run directly;
* ``python jobs/NAME.py …`` / ``spark-submit jobs/NAME.py …`` in a source checkout
  (:func:`job_file_main`).

Exit codes: 0 success, 1 a problem the message explains, 2 bad config or arguments, 3 bad
input data, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from mfspark import __version__, jobs
from mfspark.config import Config, default_config_file, load_config
from mfspark.errors import MfsparkError

log = logging.getLogger("mfspark")

JobFn = Callable[[Config, object], dict]
PreflightFn = Callable[[Config], None]
PROG = "mfspark"


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)


def add_job_arguments(p: argparse.ArgumentParser, config_name: str = "local.toml") -> None:
    """The flags every job takes."""
    p.add_argument(
        "--config",
        default=None,
        help=f"TOML config file (default: conf/{config_name}, shipped in the package)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config key (repeatable), e.g. --set als.rank=50",
    )
    p.add_argument("--verbose", action="store_true", help="print the full traceback on errors")


def parser_for(
    name: str, description: str, prog: str | None = None, config_name: str = "local.toml"
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or f"jobs/{name}.py", description=description)
    add_job_arguments(p, config_name)
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
    *,
    prog: str | None = None,
    config_name: str = "local.toml",
) -> int:
    """Parse arguments, load config, build the session, run the job; return the exit code.

    ``preflight(cfg)`` runs before Spark starts (after :func:`preflight_output`, which every
    job runs): checks that need no JVM (a missing local input, an output path that cannot be
    written) fail in a second with their one line and nothing else on stderr. Without
    ``--config`` the shipped ``conf/<config_name>`` is read.
    """
    args = parser_for(name, description, prog, config_name).parse_args(argv)
    setup_logging("INFO")
    spark = None
    started = time.time()
    try:
        cfg = load_config(args.config, args.set, default=default_config_file(config_name))
        setup_logging(cfg.log.level)
        preflight_output(cfg)
        if preflight is not None:
            preflight(cfg)
        from mfspark.io import check_output_spark, recover
        from mfspark.session import build_session

        log.info("mfspark %s (%s): %s", __version__, package_dir(), name)
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


def package_dir() -> str:
    """Where the running mfspark is imported from (an installed copy or a checkout)."""
    return os.path.dirname(os.path.abspath(__file__))


def job_path() -> str:
    """The file ``spark-submit`` runs for a job of this package: ``<package>/__main__.py``."""
    return os.path.join(package_dir(), "__main__.py")


def run_job(name: str, argv: Sequence[str], prog: str) -> int:
    """Run the job ``name`` of :data:`mfspark.jobs.JOBS` with its command-line flags."""
    job = jobs.BY_NAME[name]

    def run(cfg: Config, spark) -> dict:  # imported only now: --help and bad flags stay quick
        return jobs.run_function(name)(cfg, spark)

    def preflight(cfg: Config) -> None:
        check = jobs.preflight_function(name)
        if check is not None:
            check(cfg)

    return job_main(name, run, job.description, argv, preflight, prog=prog, config_name=job.config)


def job_file_main(path: str, argv: Sequence[str] | None = None) -> int:
    """``jobs/NAME.py`` of a source checkout: the job named by the file."""
    name = os.path.splitext(os.path.basename(path))[0]
    return run_job(name, sys.argv[1:] if argv is None else argv, prog=f"jobs/{name}.py")


def top_parser() -> argparse.ArgumentParser:
    width = max(len(job.name) for job in jobs.JOBS)
    listing = "\n".join(f"  {job.name:<{width}}  {job.description}" for job in jobs.JOBS)
    p = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{PROG} JOB [--config PATH] [--set SECTION.KEY=VALUE ...] [--verbose]\n"
        f"       {PROG} job-path",
        description="Latent-factor recommenders on Apache Spark: run a job.",
        epilog=f"jobs:\n{listing}\n\n"
        f"  job-path{' ' * (width - 8)}  print the file spark-submit runs for a job of this package:\n"
        f'  {" " * width}  spark-submit [options] "$({PROG} job-path)" JOB [--set ...]\n\n'
        f"{PROG} JOB --help shows a job's flags; `python -m mfspark JOB ...` is the same command.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("job", metavar="JOB", help="a job name (listed below) or job-path")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``mfspark JOB [flags]``, ``python -m mfspark JOB [flags]``, ``mfspark job-path``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = top_parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv)  # --help, --version and argparse's own errors exit here
        parser.error(f"name a job first; {PROG} --help lists them")
    name, rest = argv[0], argv[1:]
    if name == "job-path":
        if rest:
            parser.error(f"job-path takes no arguments (got {' '.join(rest)})")
        print(job_path())
        return 0
    if name not in jobs.BY_NAME:
        print(
            f"{PROG}: error: unknown job {name!r}; jobs: {', '.join(jobs.BY_NAME)} "
            f"({PROG} --help describes them)",
            file=sys.stderr,
        )
        return 2
    return run_job(name, rest, prog=f"{PROG} {name}")
