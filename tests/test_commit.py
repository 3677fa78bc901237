"""Atomic stage commits: a job killed (SIGKILL) in the middle of committing, what readers see
then, recovery by the next job, and readers refusing datasets that were not committed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from mfspark import columns as C
from mfspark.autoencoder import run_build_autoencoder_inputs
from mfspark.config import load_config
from mfspark.errors import InputError
from mfspark.io import PAUSE_ENV, STAGING_DIR, recover, require_committed
from mfspark.prepare import Prepared, run_prepare

FAST = [
    "spark.master=local[1]",
    "spark.conf.spark.sql.shuffle.partitions=2",
    "spark.conf.spark.default.parallelism=2",
    "spark.conf.spark.ui.enabled=false",
]
PREPARED = (C.PREPARED_TRAIN, C.PREPARED_TEST, C.PREPARED_USERS, C.PREPARED_ITEMS)
KEY = [C.USER_ID, C.ITEM_ID]


@pytest.fixture(scope="module")
def ratings_file(tmp_path_factory):
    """Generated MovieLens-100K-format ratings (unique pairs), and the same as a frame."""
    rng = np.random.default_rng(5)
    cells = rng.choice(40 * 30, 500, replace=False)
    frame = pd.DataFrame(
        {
            C.USER_ID: cells // 30 + 1,
            C.ITEM_ID: cells % 30 + 1,
            C.RATING: rng.integers(1, 6, len(cells)).astype(float),
            C.TIMESTAMP: rng.integers(8e8, 9e8, len(cells)),
        }
    )
    path = tmp_path_factory.mktemp("commit") / "u.data"
    lines = [f"{u}\t{i}\t{int(r)}\t{t}" for u, i, r, t in frame.itertuples(index=False)]
    path.write_text("\n".join(lines) + "\n")
    return str(path), frame


def _settings(out, data, seed):
    return [f"output.path={out}", f"data.path={data}", f"split.seed={seed}", "split.test_fraction=0.3"]


def _snapshot(out) -> dict[str, pd.DataFrame]:
    """Every prepared dataset as pyarrow reads it (no Spark), sorted."""
    snap = {}
    for name in PREPARED:
        df = pd.read_parquet(os.path.join(out, name))
        snap[name] = df.sort_values(list(df.columns[:2]), ignore_index=True)
    return snap


def _assert_same(a: dict, b: dict) -> None:
    for name in PREPARED:
        pd.testing.assert_frame_equal(a[name], b[name])


def _kill_prepare_in_commit(out, data, seed, step: int) -> str:
    """Run jobs/prepare.py until its commit pauses at ``step``; SIGKILL it there.

    Returns the job's stderr so far. The process group (the driver and its JVM) is killed by
    its id, also when the test fails.
    """
    args = [f"--set={kv}" for kv in [*_settings(out, data, seed), *FAST]]
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "jobs", "prepare.py"), *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, PAUSE_ENV: str(step)},
        start_new_session=True,
    )
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "commit paused at step" in line:
                break
        else:
            pytest.fail("prepare ended without pausing in its commit:\n" + "".join(seen[-30:]))
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return "".join(seen)


def _check_complete(out, frame: pd.DataFrame, seed: int) -> dict:
    """The prepared dataset is complete and is the one of the run with ``split.seed=seed``."""
    snap = _snapshot(out)
    train, test = snap[C.PREPARED_TRAIN], snap[C.PREPARED_TEST]
    both = pd.concat([train[frame.columns], test[frame.columns]]).sort_values(KEY, ignore_index=True)
    pd.testing.assert_frame_equal(both, frame.sort_values(KEY, ignore_index=True), check_dtype=False)
    with open(os.path.join(out, C.MANIFEST)) as f:
        manifest = json.load(f)
    entry = manifest["stages"]["prepare"]
    assert entry["config"]["split"]["seed"] == seed
    assert entry["counts"]["train"] == len(train) and entry["counts"]["test"] == len(test)
    for name in PREPARED:  # each dataset was committed by the run the stage entry describes
        assert manifest["datasets"][name]["run_id"] == entry["run_id"]
    return snap


def test_kill_after_commit_point_is_refused_then_finished_by_the_next_job(
    spark, ratings_file, tmp_path, caplog
):
    data, frame = ratings_file
    out = str(tmp_path / "out")
    run_prepare(load_config(None, _settings(out, data, 1)), spark)
    old = _check_complete(out, frame, 1)

    # Step 2: the old prepared/train was moved away and the new one moved in; test, users and
    # items are still the old ones, manifest.json still records the old run.
    _kill_prepare_in_commit(out, data, 2, step=2)
    staged = os.listdir(os.path.join(out, STAGING_DIR))
    assert len(staged) == 1 and os.path.exists(os.path.join(out, STAGING_DIR, staged[0], "_COMMIT.json"))
    new_test = pd.read_parquet(os.path.join(out, STAGING_DIR, staged[0], C.PREPARED_TEST))
    pairs = lambda df: sorted(map(tuple, df[KEY].values))  # noqa: E731
    assert pairs(new_test) != pairs(old[C.PREPARED_TEST])

    # Readers and a downstream stage refuse the half-committed input, naming it and its stage.
    with pytest.raises(InputError) as err:
        Prepared.load(spark, out)
    message = str(err.value)
    assert f"{out}/{C.PREPARED_TRAIN} is part of an interrupted commit of stage prepare" in message
    assert "\n" not in message
    ae_cfg = load_config(None, [f"output.path={out}"])
    with pytest.raises(InputError, match="interrupted commit of stage prepare"):
        run_build_autoencoder_inputs(ae_cfg, spark)
    assert not os.path.exists(os.path.join(out, "ae_inputs"))

    # The next job (here in-process, as every job's entry point does first) finishes the
    # commit (the journal was written: roll forward), then runs.
    with caplog.at_level(logging.WARNING, logger="mfspark"):
        actions = recover(spark, out)
    assert len(actions) == 1 and actions[0].startswith("committed "), actions
    assert "finishing the interrupted commit of stage prepare" in caplog.text
    run_build_autoencoder_inputs(ae_cfg, spark)
    new = _check_complete(out, frame, 2)
    assert not os.path.exists(os.path.join(out, STAGING_DIR))
    assert pairs(new[C.PREPARED_TEST]) == pairs(new_test) != pairs(old[C.PREPARED_TEST])
    meta = pd.read_parquet(os.path.join(out, C.AE_METADATA))
    assert int(meta["nnz_train"][0]) == len(new[C.PREPARED_TRAIN])


def test_kill_before_commit_point_keeps_the_previous_output(spark, ratings_file, tmp_path):
    data, frame = ratings_file
    out = str(tmp_path / "out")
    run_prepare(load_config(None, _settings(out, data, 1)), spark)
    old = _check_complete(out, frame, 1)

    # Step 0: every dataset staged, the journal not yet written.
    _kill_prepare_in_commit(out, data, 2, step=0)
    (run,) = os.listdir(os.path.join(out, STAGING_DIR))
    assert not os.path.exists(os.path.join(out, STAGING_DIR, run, "_COMMIT.json"))
    # The previous complete output is what readers get, leftovers or not.
    prepared = Prepared.load(spark, out)
    assert prepared.train.count() == len(old[C.PREPARED_TRAIN])
    _assert_same(_snapshot(out), old)
    # Recovery rolls the uncommitted run back.
    assert recover(spark, out) == [f"rolled back {run}"]
    assert not os.path.exists(os.path.join(out, STAGING_DIR))
    _assert_same(_check_complete(out, frame, 1), old)


def test_readers_refuse_datasets_not_committed(spark, ratings_file, tmp_path):
    data, _ = ratings_file
    out = str(tmp_path / "out")
    run_prepare(load_config(None, _settings(out, data, 1)), spark)
    require_committed(spark, out, list(PREPARED))  # as committed: accepted

    # A dataset whose Spark write did not finish (no _SUCCESS).
    os.remove(os.path.join(out, C.PREPARED_USERS, "_SUCCESS"))
    with pytest.raises(InputError, match=r"prepared/users is incomplete \(no _SUCCESS marker\)"):
        Prepared.load(spark, out)
    open(os.path.join(out, C.PREPARED_USERS, "_SUCCESS"), "w").close()

    # A dataset replaced behind the stage's back (written directly, not committed).
    spark.read.parquet(f"{out}/{C.PREPARED_TEST}").write.mode("overwrite").parquet(f"{out}/prepared/t2")
    shutil.rmtree(os.path.join(out, C.PREPARED_TEST))
    os.rename(os.path.join(out, "prepared", "t2"), os.path.join(out, C.PREPARED_TEST))
    with pytest.raises(InputError, match="prepared/test is not the dataset manifest.json records"):
        Prepared.load(spark, out)

    # No record at all (an output written by something else): refused, naming the producer.
    with open(os.path.join(out, C.MANIFEST)) as f:
        manifest = json.load(f)
    del manifest["datasets"][C.PREPARED_ITEMS]
    with open(os.path.join(out, C.MANIFEST), "w") as f:
        json.dump(manifest, f)
    with pytest.raises(InputError, match="prepared/items was not committed by stage prepare"):
        require_committed(spark, out, [C.PREPARED_ITEMS])
    with pytest.raises(InputError, match="no ae_inputs/by_item at .*jobs/build_autoencoder_inputs.py"):
        require_committed(spark, out, [C.AE_BY_ITEM])


def test_manifest_replacement_survives_a_kill_between_delete_and_rename(spark, tmp_path):
    """manifest.json is replaced by writing manifest.json.next, deleting, renaming: a kill
    between the last two leaves only .next, which readers use and recovery puts in place."""
    from mfspark.io import read_manifest, update_manifest

    out = str(tmp_path)
    update_manifest(spark, out, "x", {"n": 1})
    update_manifest(spark, out, "y", {"n": 2})
    os.rename(os.path.join(out, C.MANIFEST), os.path.join(out, C.MANIFEST + ".next"))
    assert read_manifest(spark, out)["stages"]["y"]["n"] == 2
    assert recover(spark, out) == ["restored manifest.json"]
    with open(os.path.join(out, C.MANIFEST)) as f:
        assert set(json.load(f)["stages"]) == {"x", "y"}
