"""The job table is the one list: jobs/ files, the `mfspark` command and the pipeline's stages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mfspark import cli, jobs
from mfspark.config import PIPELINE_STAGES, default_config_file, load_config
from mfspark.pipeline import stage_function

ROOT = Path(__file__).resolve().parents[1]
JOB_FILES = sorted(p for p in (ROOT / "jobs").glob("*.py") if not p.name.startswith("_"))


def test_every_job_has_its_file_and_every_file_a_job():
    assert sorted(p.stem for p in JOB_FILES) == sorted(jobs.BY_NAME)


def test_job_files_differ_only_in_their_docstring():
    """So a new job's file is a copy of any other: the job is named by the file."""
    bodies = {p.name: p.read_text().split('"""', 2)[2] for p in JOB_FILES}
    assert len(set(bodies.values())) == 1, bodies


def test_every_job_function_and_check_resolves():
    for job in jobs.JOBS:
        assert callable(jobs.run_function(job.name)), job.name
        check = jobs.preflight_function(job.name)
        assert (check is not None) == bool(job.preflight), job.name
        assert default_config_file(job.config).is_file(), job.config


def test_pipeline_stages_come_from_the_table():
    stages = [j.name for j in jobs.JOBS if j.stage != jobs.NOT_A_STAGE]
    assert list(PIPELINE_STAGES) == stages and "pipeline" not in stages
    default = [j.name for j in jobs.JOBS if j.stage == jobs.DEFAULT_STAGE]
    assert load_config().pipeline.stages == default
    for name in stages:
        assert stage_function(name) is jobs.run_function(name)


def test_help_lists_every_job_with_its_description(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    listed = re.findall(r"^  (\w+) +(.+)$", out.split("jobs:", 1)[1], flags=re.M)
    assert listed[: len(jobs.JOBS)] == [(j.name, j.description) for j in jobs.JOBS]
    assert "job-path" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "unknown job 'nope'; jobs: prepare, train_als"),
        ([], "the following arguments are required: JOB"),
        (["--set", "als.rank=5"], "unrecognized arguments"),
        (["job-path", "pipeline"], "job-path takes no arguments"),
    ],
)
def test_bad_command_lines_fail_with_one_line_and_exit_2(argv, message, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_job_path_is_the_package_entry_file(capsys):
    assert cli.main(["job-path"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == Path(cli.__file__).with_name("__main__.py") and path.is_file()


def test_bad_config_fails_before_spark_in_every_entry_point(tmp_path):
    """`mfspark`, `python -m mfspark`, the entry file and jobs/NAME.py run the same job."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    entry = str(ROOT / "mfspark" / "__main__.py")
    commands = {
        "python -m mfspark": [sys.executable, "-m", "mfspark", "prepare"],
        "entry file": [sys.executable, entry, "prepare"],
        "jobs/prepare.py": [sys.executable, str(ROOT / "jobs" / "prepare.py")],
    }
    for what, cmd in commands.items():
        done = subprocess.run(
            [*cmd, "--set", "als.rank=0"], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        assert done.returncode == 2, (what, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert (
            len(lines) == 1
            and lines[0] == "mfspark prepare: error: config key als.rank must be >= 1, got 0"
        ), what
