"""Config: the embedded default, ``--set`` parsing, and errors that name the key and what it allows."""

from __future__ import annotations

import pytest

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from mfspark.config import DEFAULT_CONFIG, load_config, parse_override
from mfspark.errors import ConfigError
from mfspark.readers import detect_format


def test_defaults_load_as_written_in_conf_local_toml():
    cfg = load_config()
    raw = tomllib.loads(DEFAULT_CONFIG.read_text())
    for section in ("data", "synthetic", "split", "als", "output"):
        for key, value in raw[section].items():
            assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"
    assert cfg.spark.master == raw["spark"]["master"]
    # Spark properties are handed to Spark as strings.
    assert cfg.spark.conf == {
        k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw["spark"]["conf"].items()
    }
    # Keys absent from the file take the dataclass defaults.
    assert cfg.data.delimiter == "," and cfg.data.header is True and cfg.data.id_type == "auto"


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("als.rank=50", ["als", "rank"], 50),
        ("split.test_fraction=0.25", ["split", "test_fraction"], 0.25),
        ("data.header=false", ["data", "header"], False),
        ("data.path=../data/ml-100k/u.data", ["data", "path"], "../data/ml-100k/u.data"),
        ('data.path="quoted path"', ["data", "path"], "quoted path"),
        ('autoencoder.orientations=["by_user"]', ["autoencoder", "orientations"], ["by_user"]),
        (
            "spark.conf.spark.sql.shuffle.partitions=8",
            ["spark", "conf", "spark.sql.shuffle.partitions"],
            8,
        ),
        ("spark.conf.spark.driver.memory=8g", ["spark", "conf", "spark.driver.memory"], "8g"),
    ],
)
def test_parse_override(text, path, value):
    got_path, got_value = parse_override(text)
    assert got_path == path
    assert got_value == value and type(got_value) is type(value)


def test_overrides_apply_with_types():
    cfg = load_config(
        None,
        [
            "als.rank=50",
            "split.test_fraction=0.25",
            "data.header=false",
            "data.path=../x/u1.base",
            "als.reg=2",  # an integer literal for a float key is a float
            "spark.conf.spark.sql.shuffle.partitions=8",
            "spark.conf.spark.sql.adaptive.enabled=false",
            "spark.master=local[1]",
            'data.columns=["u", "i", "r"]',
        ],
    )
    assert cfg.als.rank == 50
    assert cfg.split.test_fraction == 0.25
    assert cfg.data.header is False
    assert cfg.data.path == "../x/u1.base"
    assert cfg.als.reg == 2.0 and isinstance(cfg.als.reg, float)
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == "8"
    assert cfg.spark.conf["spark.sql.adaptive.enabled"] == "false"
    assert cfg.spark.conf["spark.driver.memory"] == "4g"  # the file's other properties stay
    assert cfg.spark.master == "local[1]"
    assert cfg.data.columns == ["u", "i", "r"]


def test_string_keys_take_the_text_as_typed():
    # 2024 and 2024-01-01 are TOML literals (an integer, a date) but these keys are strings.
    cfg = load_config(None, ["output.path=2024", "data.path=2024-01-01", "spark.conf.spark.x=1e3"])
    assert cfg.output.path == "2024"
    assert cfg.data.path == "2024-01-01"
    assert cfg.spark.conf["spark.x"] == "1e3"


def test_nested_spark_conf_table_becomes_property_names(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[spark.conf]\nspark.sql.shuffle.partitions = 3\n"spark.driver.memory" = "1g"\n')
    assert load_config(conf).spark.conf == {
        "spark.sql.shuffle.partitions": "3",
        "spark.driver.memory": "1g",
    }


@pytest.mark.parametrize(
    ("overrides", "must_name"),
    [
        (["foo.bar=1"], ["[foo]", "spark", "data", "split", "als", "output"]),
        (["als.rnk=3"], ["als.rnk", "rank", "max_iter", "reg_scaling"]),
        (["als.rank=ten"], ["als.rank", "an integer", "'ten'"]),
        (["als.rank=true"], ["als.rank", "an integer"]),
        (["als.rank=0"], ["als.rank", ">= 1"]),
        (["data.header=yes"], ["data.header", "true or false"]),
        (["data.max_rejected_fraction=2"], ["data.max_rejected_fraction", "<= 1.0"]),
        (["split.method=kfold"], ["split.method", "'kfold'", "random, user, time, predefined"]),
        (["als.reg_scaling=wr"], ["als.reg_scaling", "none, count"]),
        (["data.format=xlsx"], ["data.format", "movielens-100k", "movielens-dat", "parquet"]),
        (['autoencoder.orientations=["by_row"]'], ["autoencoder.orientations", "by_item, by_user"]),
        (["split.test_fraction=1"], ["split.test_fraction", "between 0 and 1"]),
        (["data.rating_min=5", "data.rating_max=1"], ["data.rating_min", "data.rating_max"]),
        (["data.delimiter=::"], ["data.delimiter", "one character"]),
        (["split.method=predefined"], ["data.test_path", "predefined"]),
        (["data.test_path=u1.test"], ["data.test_path", "split.method=predefined"]),
        (["als.rank"], ["section.key=value"]),
        (["rank=3"], ["section.key=value"]),
        (["spark.conf=3"], ["spark.conf.<property>"]),
    ],
)
def test_bad_config_names_the_key_and_what_is_allowed(overrides, must_name):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert "\n" not in message
    for part in must_name:
        assert part in message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_predefined_with_test_path_is_accepted():
    cfg = load_config(
        None, ["split.method=predefined", "data.path=a/u1.base", "data.test_path=a/u1.test"]
    )
    assert (cfg.split.method, cfg.data.test_path) == ("predefined", "a/u1.test")


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("", "synthetic"),
        ("../ml-100k/u.data", "movielens-100k"),
        ("ml-100k/u1.base", "movielens-100k"),
        ("ml-100k/ua.test", "movielens-100k"),
        ("ml-1m/ratings.dat", "movielens-dat"),
        ("ml-25m/ratings.csv", "movielens-csv"),
        ("hdfs:///data/ml-25m/ratings.csv", "movielens-csv"),
        ("exports/my_ratings.csv", "csv"),
        ("warehouse/ratings.parquet/", "parquet"),
        ("x.pq", "parquet"),
    ],
)
def test_format_auto_detection(path, fmt):
    overrides = [f"data.path={path}"] if path else []
    assert load_config(None, overrides).resolved_format == fmt


def test_explicit_format_wins_and_unknown_names_fail():
    assert load_config(None, ["data.path=r.txt", "data.format=csv"]).resolved_format == "csv"
    with pytest.raises(ConfigError, match="data.format") as err:
        detect_format(load_config(None, ["data.path=ratings.txt"]).data)
    assert "ratings.txt" in str(err.value)
