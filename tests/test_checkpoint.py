"""Checkpoint and resume: the generic store round-trips state exactly and refuses a mismatch;
a train_als job killed with SIGKILL mid-training resumes to the factors of an uninterrupted run."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mfspark import columns as C
from mfspark.checkpoint import Checkpointer, checkpoint_root
from mfspark.errors import ConfigError
from mfspark.models.als.train import ALSParams, ALSState, LocalSolver, run_als

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_problem(seed=5, n_users=40, n_items=25, nnz=500):
    rng = np.random.default_rng(seed)
    cells = rng.choice(n_users * n_items, nnz, replace=False)
    u, i = cells // n_items, cells % n_items
    r = np.clip(np.round(3 + rng.normal(0, 1, nnz)), 1, 5)
    return (u, i, r), n_users, n_items


def test_run_als_resumed_from_a_state_equals_an_uninterrupted_run():
    """The loop hook alone (no Spark): stop after 3 iterations, restore through the
    checkpoint's own JSON/array forms, continue; history and convergence continue too."""
    import json

    train, n_users, n_items = small_problem()
    params = ALSParams(rank=3, max_iter=40, tol=1e-3)  # converges at 26
    full = run_als(LocalSolver(train, n_users, n_items, params), params)
    assert full.converged and 5 < full.iterations < 40  # convergence must fall after the cut

    saved = {}

    def keep(state: ALSState) -> None:
        if state.iteration == 3:
            saved["arrays"] = {k: v.copy() for k, v in state.arrays().items()}
            saved["scalars"] = json.loads(json.dumps(state.scalars()))

    first = dataclasses.replace(params, max_iter=3)  # the "killed" run: stops after 3
    run_als(LocalSolver(train, n_users, n_items, first), first, on_iteration=keep)
    start = ALSState.restore(saved["arrays"], saved["scalars"])
    resumed = run_als(LocalSolver(train, n_users, n_items, params), params, start=start)
    assert resumed.iterations == full.iterations and resumed.converged
    assert [h.objective for h in resumed.history] == [h.objective for h in full.history]
    assert resumed.half_step_objectives == full.half_step_objectives
    for a, b in zip(
        (resumed.model.user_factors, resumed.model.item_factors, resumed.model.user_bias),
        (full.model.user_factors, full.model.item_factors, full.model.user_bias),
        strict=True,
    ):
        assert np.array_equal(a, b)


def test_checkpointer_round_trip_atomicity_and_refusal(spark, tmp_path):
    root = checkpoint_root(str(tmp_path / "out"), "toy")
    fingerprint = {"als.rank": 3, "prepared.n_train": 500, "prepared.global_mean": 3.141592653589793}
    ckpt = Checkpointer(spark, root, fingerprint)
    assert ckpt.load() is None
    rng = np.random.default_rng(0)
    arrays = {
        "f": rng.normal(size=(7, 3)).astype(np.float32),
        "b": rng.normal(size=7),
        "n": np.arange(7, dtype=np.int64),
        "empty": np.zeros((0, 3), np.float32),
    }
    state = {"iteration": 2, "history": [{"objective": 0.1 + 0.2}], "x": float("nan")}
    ckpt.save(2, arrays, state)
    arrays2 = {k: v * 2 for k, v in arrays.items()}
    ckpt.save(4, arrays2, {**state, "iteration": 4})
    # A half-written checkpoint (killed before its rename) is ignored.
    spark.createDataFrame([(1,)], "x int").write.parquet(os.path.join(root, "_tmp-deadbeef", "f"))
    found = ckpt.load()
    assert found.iteration == 4
    assert sorted(os.listdir(root)) == ["_tmp-deadbeef", "iter-000004"]  # iteration 2 removed
    for name, arr in arrays2.items():
        assert found.arrays[name].dtype == arr.dtype and found.arrays[name].shape == arr.shape
        assert np.array_equal(found.arrays[name], arr)
    assert found.state["history"][0]["objective"] == 0.1 + 0.2  # floats round-trip exactly
    Checkpointer(spark, root, dict(fingerprint)).check_compatible(found)

    other = Checkpointer(spark, root, {**fingerprint, "prepared.n_train": 499})
    with pytest.raises(ConfigError) as err:
        other.check_compatible(found)
    message = str(err.value)
    assert "\n" not in message and "prepared.n_train: checkpoint 500, now 499" in message


# -- the job, killed and resumed ------------------------------------------------------------
SETTINGS = [
    "spark.master=local[2]",
    "spark.conf.spark.sql.shuffle.partitions=4",
    "spark.conf.spark.default.parallelism=4",
    "spark.conf.spark.ui.enabled=false",
    "synthetic.n_users=300",
    "synthetic.n_items=120",
    "synthetic.n_ratings=6000",
    "synthetic.min_user_ratings=5",
    "als.rank=4",
    "als.max_iter=8",
    "als.tol=0",
]


def _cmd(name: str, out: str, *extra: str) -> list[str]:
    args = [a for kv in [*SETTINGS, f"output.path={out}", *extra] for a in ("--set", kv)]
    return [sys.executable, os.path.join(ROOT, "jobs", f"{name}.py"), *args]


def _model_dir(out: str) -> str:
    for name in ("models/als", "model"):  # the layout moves to models/<model>/
        if os.path.isdir(os.path.join(out, name, "user_factors")):
            return os.path.join(out, name)
    raise AssertionError(f"no model under {out}")


def _factors(spark, out: str) -> dict[str, np.ndarray]:
    from mfspark.models.factor_model import FactorModel

    model = FactorModel.load(spark, _model_dir(out))
    p = model.params
    return {
        "user_factors": p.user_factors,
        "item_factors": p.item_factors,
        "user_bias": p.user_bias,
        "item_bias": p.item_bias,
    }


def _run_and_kill(cmd: list[str], after: str, log_path: str, timeout: float = 600) -> str:
    """Start ``cmd``, SIGKILL it once ``after`` appears in its stderr; the stderr so far."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
        try:
            deadline = time.time() + timeout
            while time.time() < deadline and proc.poll() is None:
                with open(log_path) as f:
                    if after in f.read():
                        break
                time.sleep(0.2)
            assert proc.poll() is None, "the job ended before it could be killed"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with open(log_path) as f:
        return f.read()


def test_train_als_killed_then_resumed_gives_the_uninterrupted_factors(spark, tmp_path, caplog):
    """Only the killed run is a subprocess (the driver must die); the uninterrupted reference,
    the refused resume and the resume run in this process, on the shared session."""
    import logging

    from mfspark.config import load_config
    from mfspark.pipeline import run_pipeline

    out = str(tmp_path / "out")

    def cfg(*extra):
        return load_config(None, [*SETTINGS, f"output.path={out}", *extra])

    run_pipeline(cfg('pipeline.stages=["prepare", "train_als"]'), spark)  # uninterrupted
    expected = _factors(spark, out)
    assert not os.path.exists(os.path.join(out, "checkpoints"))

    # SIGKILL the driver after iteration 3 has been checkpointed, during iteration 4.
    stderr = _run_and_kill(
        _cmd("train_als", out, "als.checkpoint_interval=1"),
        "checkpoint saved: iteration 3",
        str(tmp_path / "killed.log"),
    )
    assert "als iteration 8" not in stderr
    saved = sorted(os.listdir(os.path.join(out, "checkpoints", "als")))
    complete = [s for s in saved if s.startswith("iter-")]
    # Iteration 3's checkpoint, or 4's (killed after the rename, perhaps before 3 was deleted).
    assert complete in (["iter-000003"], ["iter-000004"], ["iter-000003", "iter-000004"]), saved

    # A resume with other settings is refused with one line naming the difference.
    with pytest.raises(ConfigError) as refused:
        run_pipeline(
            cfg(
                'pipeline.stages=["train_als"]',
                "als.checkpoint_interval=1",
                "als.resume=true",
                "als.reg=3.0",
            ),
            spark,
        )
    message = str(refused.value)
    assert "\n" not in message and "als.reg: checkpoint 15.0, now 3.0" in message, message

    with caplog.at_level(logging.INFO, logger="mfspark"):
        run_pipeline(
            cfg('pipeline.stages=["train_als"]', "als.checkpoint_interval=1", "als.resume=true"), spark
        )
    logged = caplog.text
    assert "resuming ALS from the checkpoint of iteration" in logged
    assert "als iteration 1:" not in logged and "als iteration 8:" in logged
    got = _factors(spark, out)
    diffs = {k: float(np.max(np.abs(got[k] - expected[k]))) for k in expected}
    print("max abs diff after kill-and-resume:", diffs)
    assert max(diffs.values()) <= 1e-6, diffs
    # The history of the resumed run has every iteration once.
    history = spark.read.parquet(os.path.join(out, C.METRICS_HISTORY)).toPandas()
    assert sorted(history["iteration"]) == list(range(1, 9))
    assert not os.path.exists(os.path.join(out, "checkpoints", "als"))  # removed after success
