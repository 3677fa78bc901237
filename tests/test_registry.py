"""The model registry: every model is reachable from the pipeline, evaluate and the config."""

from __future__ import annotations

import pytest

from mfspark import columns as C
from mfspark.config import PIPELINE_STAGES
from mfspark.errors import ConfigError
from mfspark.models.registry import MODELS, model_spec, spec_for_stage
from mfspark.pipeline import stage_function


def test_every_model_has_a_stage_the_pipeline_runs():
    for name, spec in MODELS.items():
        assert spec.stage in (f"train_{name}", "train_autorec") and spec.stage in PIPELINE_STAGES
        assert PIPELINE_STAGES.index(spec.stage) < PIPELINE_STAGES.index("evaluate")
        assert callable(stage_function(spec.stage))
        assert spec_for_stage(spec.stage).stage == spec.stage
        assert not spec.load or callable(spec._load_function())
    assert list(MODELS)[:2] == ["als", "bpmf"]
    assert stage_function("evaluate").__name__ == "run_evaluate"


def test_layout_paths_and_unknown_model():
    assert C.model_dir("bpmf") == "models/bpmf"
    assert C.predictions_dir("als") == "predictions/model=als"
    with pytest.raises(ConfigError, match="unknown model 'svdd'; models are: als, bpmf, autorec"):
        model_spec("svdd")
