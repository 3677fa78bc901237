"""The one table of jobs: ``mfspark NAME``, ``python -m mfspark NAME``, ``jobs/NAME.py`` and
the pipeline's stages all come from :data:`JOBS`.

A job is a function ``run(cfg, spark) -> dict`` and, optionally, a ``preflight(cfg)`` that runs
before Spark starts (checks that need no JVM, such as a missing local input). Functions are
named as ``"module:function"`` strings and imported only when the job runs, so this module
imports nothing heavy (the config module reads the stage names from it).

Adding a job is one entry in :data:`JOBS` (plus, for ``python jobs/NAME.py``, a copy of any
``jobs/*.py`` file: their body does not depend on the name).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

# How a job takes part in the pipeline job.
DEFAULT_STAGE = "default"  # a stage, run when `pipeline.stages` is left at its default
OPTIONAL_STAGE = "optional"  # a stage, run only when `pipeline.stages` lists it
NOT_A_STAGE = "no"  # a job of its own only
_STAGE_KINDS = (DEFAULT_STAGE, OPTIONAL_STAGE, NOT_A_STAGE)


@dataclass(frozen=True)
class Job:
    name: str
    run: str  # "module:function", called as function(cfg, spark) -> dict
    description: str  # one line: `mfspark --help` and `mfspark NAME --help` show it
    preflight: str = ""  # "module:function", called as function(cfg) before Spark starts
    stage: str = DEFAULT_STAGE  # DEFAULT_STAGE | OPTIONAL_STAGE | NOT_A_STAGE; stages run in table order
    config: str = "local.toml"  # the default --config: a file of the repository's conf/


JOBS: tuple[Job, ...] = (
    Job(
        "prepare",
        "mfspark.prepare:run_prepare",
        "Read, validate, split and index ratings; write prepared/* and manifest.json.",
        preflight="mfspark.prepare:preflight_prepare",
    ),
    Job(
        "train_als",
        "mfspark.models.als.job:run_train_als",
        "Train blocked biased ALS on the prepared dataset; write models/als/, "
        "predictions/model=als/, metrics/.",
    ),
    Job(
        "train_bpmf",
        "mfspark.models.bpmf.job:run_train_bpmf",
        "Train Bayesian MF by Gibbs sampling; write models/bpmf/, predictions/model=bpmf/ "
        "(with prediction_sd), metrics/.",
    ),
    Job(
        "build_autoencoder_inputs",
        "mfspark.autoencoder:run_build_autoencoder_inputs",
        "Build autoencoder inputs: ae_inputs/by_item, ae_inputs/by_user and ae_inputs/metadata.",
    ),
    Job(
        "train_autorec",
        "mfspark.models.autorec.job:run_train_autorec",
        "AutoRec (item- or user-based, optionally denoising) on the autoencoder inputs; write "
        "models/autorec[_user]/, predictions/model=autorec[_user]/, metrics/.",
        preflight="mfspark.models.autorec.job:preflight_train_autorec",
    ),
    Job(
        "train_svd",
        "mfspark.models.svd.job:run_train_svd",
        "Truncated SVD of the bias-removed ratings on the rating blocks; write models/svd/ "
        "(with singular_values), predictions/model=svd/, metrics/.",
        stage=OPTIONAL_STAGE,
    ),
    Job(
        "train_residual",
        "mfspark.models.residual.job:run_train_residual",
        "A base model plus a small network trained on its out-of-fold errors; write "
        "models/residual/, predictions/model=residual/, metrics/.",
        stage=OPTIONAL_STAGE,
    ),
    Job(
        "train_blend",
        "mfspark.models.blend.job:run_train_blend",
        "Ridge blend of trained models, weights fitted on a held-out share of train; write "
        "models/blend/, predictions/model=blend/, metrics/summary.",
    ),
    Job(
        "evaluate",
        "mfspark.evaluation:run_evaluate",
        "Score predictions (or autoencoder reconstructions) on the held-out ratings; "
        "write metrics/summary.",
    ),
    Job(
        "recommend",
        "mfspark.recommend:run_recommend",
        "Top-K lists for every user from every trained factor model and a popularity baseline; "
        "write recommendations/, metrics/ranking (and similar_items/).",
        preflight="mfspark.recommend:preflight_recommend",
    ),
    Job(
        "report",
        "mfspark.report:run_report",
        "One self-contained HTML page (report/index.html) and a Markdown summary of a run: data, "
        "training, every model's errors, ranking, benchmark, configuration.",
        preflight="mfspark.report:preflight_report",
    ),
    Job(
        "pipeline",
        "mfspark.pipeline:run_pipeline",
        "Run the stages of pipeline.stages in order in one Spark session; print a summary.",
        preflight="mfspark.pipeline:preflight_pipeline",
        stage=NOT_A_STAGE,
    ),
    Job(
        "benchmark",
        "mfspark.benchmark:run_benchmark",
        "Benchmark Spark MLlib ALS, mfspark and single-process numpy ALS on the same data and split.",
        preflight="mfspark.pipeline:preflight_pipeline",
        stage=NOT_A_STAGE,
        config="benchmark.toml",
    ),
)

BY_NAME: dict[str, Job] = {job.name: job for job in JOBS}
assert len(BY_NAME) == len(JOBS), "two jobs with one name"
assert all(job.stage in _STAGE_KINDS for job in JOBS), "unknown stage kind"

STAGES: tuple[str, ...] = tuple(job.name for job in JOBS if job.stage != NOT_A_STAGE)
DEFAULT_STAGES: tuple[str, ...] = tuple(job.name for job in JOBS if job.stage == DEFAULT_STAGE)


def resolve(target: str) -> Callable:
    """The function named by ``"module:function"`` (``function`` may be ``Class.method``)."""
    module, _, name = target.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def run_function(name: str) -> Callable:
    return resolve(BY_NAME[name].run)


def preflight_function(name: str) -> Callable | None:
    job = BY_NAME[name]
    return resolve(job.preflight) if job.preflight else None
