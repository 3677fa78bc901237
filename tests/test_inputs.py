"""Inputs a cluster user has — gzip/bzip2 text, directories of Spark part files, ``file://`` URIs —
each through the same validation and quarantine; and bad inputs and output paths refused in one
line (run as a user runs the job: ``python jobs/NAME.py``)."""

from __future__ import annotations

import bz2
import gzip
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from mfspark import columns as C
from mfspark.config import DataConfig, load_config
from mfspark.errors import InputError
from mfspark.prepare import preflight_prepare, run_prepare
from mfspark.readers import check_input_path, detect_format

KEY = [C.USER_ID, C.ITEM_ID]
FAST = ["spark.master=local[1]", "spark.conf.spark.ui.enabled=false"]


def _ratings(seed: int, n: int = 300) -> pd.DataFrame:
    """Valid ratings with unique (user, item) pairs and distinct timestamps."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(30 * 25, n, replace=False)
    return pd.DataFrame(
        {
            C.USER_ID: cells // 25 + 1,
            C.ITEM_ID: cells % 25 + 1,
            C.RATING: rng.integers(1, 6, n).astype(float),
            C.TIMESTAMP: 880_000_000 + rng.permutation(n),
        }
    )


def _lines(good: pd.DataFrame, sep: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The good rows as text lines, plus planted bad lines and the reason each must get."""
    lines = [sep.join(str(int(v)) for v in row) for row in good.itertuples(index=False)]
    bad = [
        (sep.join(["7", "3", "4"]), C.REASON_WRONG_FIELD_COUNT),
        (sep.join(["7", "3", "4x", "881250949"]), C.REASON_BAD_NUMBER),
        (sep.join(["8", "4", "9", "881250950"]), C.REASON_OUT_OF_RANGE),
    ]
    return lines + [line for line, _ in bad], bad


def _prepared(spark, out: str, *overrides: str):
    cfg = load_config(None, [f"output.path={out}", "data.max_rejected_fraction=0.2", *overrides])
    preflight_prepare(cfg)  # the checks the job runs before Spark starts
    entry = run_prepare(cfg, spark)
    both = pd.concat([pd.read_parquet(f"{out}/{p}") for p in (C.PREPARED_TRAIN, C.PREPARED_TEST)])
    rejected = pd.read_parquet(f"{out}/{C.PREPARED_REJECTED}")
    return entry, both, rejected


def _assert_quarantined(both, rejected, good, bad, source_suffix):
    cols = [C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP]
    got = both[cols].sort_values(KEY, ignore_index=True)
    pd.testing.assert_frame_equal(got, good[cols].sort_values(KEY, ignore_index=True), check_dtype=False)
    assert sorted(zip(rejected[C.LINE], rejected[C.REASON], strict=True)) == sorted(bad)
    assert all(s.endswith(source_suffix) for s in rejected["source"])


# -- compressed text -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, fmt, sep, header, opener",
    [
        ("u.data.gz", "movielens-100k", "\t", None, gzip.open),
        ("ratings.dat.bz2", "movielens-dat", "::", None, bz2.open),
        ("ratings.csv.gz", "movielens-csv", ",", "userId,movieId,rating,timestamp", gzip.open),
    ],
)
def test_compressed_text_is_detected_read_and_validated(spark, tmp_path, name, fmt, sep, header, opener):
    good = _ratings(1)
    lines, bad = _lines(good, sep)
    path = tmp_path / name
    with opener(path, "wt") as f:
        f.write("\n".join(([header] if header else []) + lines) + "\n")
    assert detect_format(DataConfig(path=str(path))) == fmt
    entry, both, rejected = _prepared(spark, str(tmp_path / "out"), f"data.path={path}")
    assert entry["format"] == fmt
    _assert_quarantined(both, rejected, good, bad, name)


def test_format_detection_looks_through_compression_and_into_part_directories(tmp_path):
    for name, fmt in [
        ("u1.base.gz", "movielens-100k"),
        ("ratings.dat.gz", "movielens-dat"),
        ("x.csv.bz2", "csv"),
        ("part-00000-abc.snappy.parquet", "parquet"),
    ]:
        assert detect_format(DataConfig(path=f"/somewhere/{name}")) == fmt, name
    parts = tmp_path / "ratings_out"
    parts.mkdir()
    for n in ("part-00000-x-c000.csv.gz", "part-00001-x-c000.csv.gz", "_SUCCESS", ".part-00000-x.crc"):
        (parts / n).write_text("")
    assert detect_format(DataConfig(path=str(parts))) == "csv"
    assert detect_format(DataConfig(path=f"file://{parts}")) == "csv"
    (parts / "notes.txt").write_text("")  # tells nothing: the part files decide
    assert detect_format(DataConfig(path=str(parts))) == "csv"
    (parts / "part-00002-x-c000.snappy.parquet").write_text("")  # two formats: undecided
    with pytest.raises(Exception, match="cannot tell the format"):
        detect_format(DataConfig(path=str(parts)))


# -- directories of Spark part files -------------------------------------------------------
def test_spark_csv_output_directory_gzip_parts(spark, tmp_path):
    good = _ratings(2)
    _, bad = _lines(good, ",")
    rows = [tuple(str(int(v)) for v in r) for r in good.itertuples(index=False)]
    # Bad rows as Spark's CSV writer writes them (fields it quotes stay one field).
    rows += [("7", "3", "4x", "881250949"), ("8", "4", "9", "881250950")]
    cols = [C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP]
    parts = str(tmp_path / "ratings_parts")
    spark.createDataFrame(rows, cols).repartition(3).write.option("header", True).option(
        "compression", "gzip"
    ).csv(parts)
    names = os.listdir(parts)
    assert "_SUCCESS" in names and any(n.endswith(".crc") for n in names)
    assert sum(n.endswith(".csv.gz") for n in names) == 3
    (tmp_path / "ratings_parts" / ".hidden").write_text("not,a,rating,line\n")
    os.makedirs(f"{parts}/_temporary/0")
    (tmp_path / "ratings_parts" / "_temporary" / "0" / "part-9.csv").write_text("1,1,1,1\n")
    entry, both, rejected = _prepared(spark, str(tmp_path / "out"), f"data.path={parts}")
    assert entry["format"] == "csv"
    assert entry["counts"]["input_rows"] == len(rows)  # one header per part dropped, hidden skipped
    _assert_quarantined(
        both, rejected, good, [b for b in bad if b[1] != C.REASON_WRONG_FIELD_COUNT], ".csv.gz"
    )
    assert len(entry["input"]["files"]) == 3


def test_spark_parquet_output_directory(spark, tmp_path):
    good = _ratings(3)
    planted = pd.DataFrame(  # out of range, NaN
        {C.USER_ID: [99, 99], C.ITEM_ID: [9, 10], C.RATING: [11.0, float("nan")], C.TIMESTAMP: [1, 2]}
    )
    frame = pd.concat([good, planted], ignore_index=True).astype(good.dtypes.to_dict())
    parts = str(tmp_path / "ratings_pq")
    # from rows, not from pandas: Arrow's pandas conversion would turn the NaN into a null
    rows = [tuple(r) for r in frame.astype(object).itertuples(index=False)]
    spark.createDataFrame(rows, list(frame.columns)).repartition(3).write.parquet(parts)
    assert "_SUCCESS" in os.listdir(parts)
    entry, both, rejected = _prepared(spark, str(tmp_path / "out"), f"data.path={parts}")
    assert entry["format"] == "parquet"
    cols = [C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP]
    pd.testing.assert_frame_equal(
        both[cols].sort_values(KEY, ignore_index=True),
        good[cols].sort_values(KEY, ignore_index=True),
        check_dtype=False,
    )
    assert sorted(rejected[C.REASON]) == sorted([C.REASON_OUT_OF_RANGE, C.REASON_NAN_RATING])


def test_file_uri(spark, tmp_path):
    good = _ratings(4)
    lines, bad = _lines(good, "\t")
    (tmp_path / "u.data").write_text("\n".join(lines) + "\n")
    uri = f"file://{tmp_path}/u.data"
    entry, both, rejected = _prepared(spark, str(tmp_path / "out"), f"data.path={uri}")
    _assert_quarantined(both, rejected, good, bad, "u.data")
    assert entry["input"]["files"][0]["path"].startswith("file:")


# -- bad inputs: one line, exit 3, nothing left behind ------------------------------------
def _fails_in_one_line(result, out, *expected, code=3, only_line=True):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr[-3000:]
    if only_line:  # refused before Spark started: nothing else on stderr
        assert len(lines) == 1, result.stderr[-3000:]
    for text in expected:
        assert text in lines[-1], lines[-1]
    assert not os.path.exists(out)


def test_gzip_file_that_is_not_gzip(run_job, tmp_path):
    path = tmp_path / "u.data.gz"
    path.write_bytes(np.random.default_rng(0).bytes(3000))
    out = tmp_path / "out"
    result = run_job("prepare", "--set", f"data.path={path}", "--set", f"output.path={out}")
    _fails_in_one_line(result, out, str(path), "not a gzip file", "replace it")


def test_truncated_gzip_file(run_job, tmp_path):
    """A cut-short .gz passes the header checks; Spark's read error becomes the one line."""
    text = "\n".join(_lines(_ratings(5), "\t")[0]) + "\n"
    data = gzip.compress(text.encode())
    path = tmp_path / "u.data.gz"
    path.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    fast = [a for kv in FAST for a in ("--set", kv)]
    result = run_job("prepare", "--set", f"data.path={path}", "--set", f"output.path={out}", *fast)
    _fails_in_one_line(
        result, out, f"cannot read file://{path}", "cut short or corrupt", only_line=False
    )
    assert result.stderr.strip().splitlines()[-1].startswith("mfspark prepare: error: ")


def test_parquet_directory_with_a_foreign_file(spark, run_job, tmp_path):
    parts = tmp_path / "ratings_pq"
    spark.createDataFrame(_ratings(6)).repartition(2).write.parquet(str(parts))
    (parts / "notes.txt").write_text("these are my ratings\n")
    out = tmp_path / "out"
    result = run_job("prepare", "--set", f"data.path={parts}", "--set", f"output.path={out}")
    _fails_in_one_line(result, out, str(parts / "notes.txt"), "not a Parquet file", "move it out")
    # The same check through Hadoop (paths on a cluster file system), in this process.
    with pytest.raises(InputError, match=r"notes.txt is not a Parquet file"):
        check_input_path(spark, str(parts), fmt="parquet")


def test_parquet_part_with_a_corrupt_footer_is_named(spark, tmp_path):
    """Right magic numbers, broken footer: only the read sees it; the error names the file."""
    parts = tmp_path / "ratings_pq"
    spark.createDataFrame(_ratings(7)).repartition(2).write.parquet(str(parts))
    bad = parts / "part-99999-broken.snappy.parquet"
    bad.write_bytes(b"PAR1" + np.random.default_rng(1).bytes(200) + b"PAR1")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=f"cannot read file:/+{str(bad)[1:]} .*Parquet"):
        run_prepare(load_config(None, [f"output.path={out}", f"data.path={parts}"]), spark)
    assert not out.exists()


def test_unknown_uri_scheme(spark, run_job, tmp_path):
    out = tmp_path / "out"
    result = run_job("prepare", "--set", "data.path=foo://x/y", "--set", f"output.path={out}")
    _fails_in_one_line(result, out, "foo://x/y", "no file system for the scheme 'foo'")
    # Under spark-submit the check is left to Hadoop, which must refuse it the same way.
    with pytest.raises(InputError, match=r"cannot open data.path=foo://x/y: .*No FileSystem for scheme"):
        check_input_path(spark, "foo://x/y")


# -- output paths: refused before Spark starts, by every job -------------------------------
JOBS = ["prepare", "train_als", "evaluate", "build_autoencoder_inputs", "pipeline", "benchmark"]


@pytest.mark.parametrize("job", JOBS)
def test_output_path_that_is_a_file(run_job, tmp_path, job):
    target = tmp_path / "output"
    target.write_text("keep me")
    result = run_job(job, "--set", f"output.path={target}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert f"output.path={target} is a file, not a directory" in lines[0]
    assert target.read_text() == "keep me"


def test_output_path_under_a_file(run_job, tmp_path):
    parent = tmp_path / "afile"
    parent.write_text("")
    target = parent / "out"
    result = run_job("prepare", "--set", f"output.path={target}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert f"cannot be created: {parent} is a file" in lines[0]


def test_output_path_that_cannot_be_written(run_job, tmp_path):
    if os.geteuid() == 0:
        # root writes through permission bits; sysfs refuses new files even to root.
        parent = "/sys"
    else:
        parent = str(tmp_path / "readonly")
        os.mkdir(parent, 0o555)
    target = os.path.join(parent, "mfspark-out")
    try:
        result = run_job("train_als", "--set", f"output.path={target}")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
        assert f"output.path={target} cannot be created in {parent}" in lines[0]
        assert "choose a directory you can write to" in lines[0]
        assert not os.path.exists(target)
    finally:
        if parent != "/sys":
            shutil.rmtree(parent, ignore_errors=True)
