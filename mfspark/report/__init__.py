"""The run report: ``report/index.html`` (one self-contained page with plots) and
``report/summary.md`` (the same tables), built from an output directory's aggregates."""

from __future__ import annotations

from mfspark.report.job import build_report, preflight_report, run_report

__all__ = ["build_report", "preflight_report", "run_report"]
