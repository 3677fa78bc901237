"""The README is the user's entry: it must match what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from mfspark.config import reference, reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_config_reference_is_the_generated_table():
    assert reference_markdown() in README
    for key, _, _ in reference():  # and so every key is documented
        assert f"`{key}`" in README


def test_every_job_is_documented():
    jobs = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if not p.stem.startswith("_"))
    assert jobs, "no jobs found"
    for job in jobs:
        assert f"`{job}.py`" in README, job


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    quick = [b.strip() for b in blocks[:2]]
    assert quick[0] == "python3 -m pip install -e . && python3 jobs/pipeline.py"
    assert quick[1] in (ROOT / ".ci" / "run").read_text()
