"""The prepare stage: read → validate → split → index → write ``prepared/*``.

Outputs (under ``output.path``; the README's "Outputs" table):

* ``prepared/train``, ``prepared/test`` — ``user_id``, ``item_id``, ``user_idx``, ``item_idx``,
  ``rating``, ``timestamp``; test adds ``cold_user``/``cold_item`` (no train rating for that
  user/item: such rows are kept, flagged, never dropped);
* ``prepared/users``, ``prepared/items`` — original id, dense idx, ``n_train``;
* ``prepared/rejected`` — every rejected input row as read, with its ``reason``;
* ``synthetic_truth/*`` (synthetic data only) — the planted model in the model layout;
* ``manifest.json`` — config, versions, input fingerprint, counts, rejections, timings.

Nothing is moved into place unless every dataset was written and the rejected fraction is
within ``data.max_rejected_fraction``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import time
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.config import Config
from mfspark.errors import ConfigError, InputError
from mfspark.indexing import rank_ids_by_group
from mfspark.io import (
    HadoopFS,
    check_scheme,
    join,
    require_committed,
    scheme_of,
    staged_outputs,
)
from mfspark.readers import (
    SOURCE,
    ParsedRatings,
    check_input_path,
    check_local_input,
    from_typed,
    read_error,
    read_ratings,
)
from mfspark.splits import IS_TEST, assign_test
from mfspark.validation import (
    ReasonCounts,
    check_rows,
    count_reasons,
    reject_test_pairs_in_train,
    rejected_rows,
    valid_rows,
)

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """The prepared dataset as DataFrames (read back from ``output.path``)."""

    train: DataFrame
    test: DataFrame
    users: DataFrame
    items: DataFrame

    @classmethod
    def load(cls, spark: SparkSession, output: str) -> Prepared:
        """Read ``prepared/*``; refused (:class:`InputError`) unless ``prepare`` committed it."""
        names = (C.PREPARED_TRAIN, C.PREPARED_TEST, C.PREPARED_USERS, C.PREPARED_ITEMS)
        require_committed(spark, output, list(names))
        read = lambda name: spark.read.parquet(join(output, name))  # noqa: E731
        return cls(*(read(name) for name in names))


def input_fingerprint(spark: SparkSession, paths: list[str]) -> dict:
    fs = HadoopFS(spark)
    files = []
    for path in paths:
        for match in fs.glob(path) if glob.has_magic(path) else [path]:
            files += [
                {"path": p, "bytes": size, "modified_ms": mtime}
                for p, size, mtime in fs.file_status(match)
            ]
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"files": files, "sha256_of_listing": digest}


def _fail_on_rejections(counts: ReasonCounts, limit: float, rejected: DataFrame) -> None:
    """Log the rejections; fail (with the counts per reason) when there are too many."""
    fraction = counts.n_rejected / counts.total if counts.total else 0.0
    detail = ", ".join(f"{r}={n}" for r, n in counts.rejected.items())
    if counts.n_rejected:
        log.warning(
            "rejected %d of %d input rows (%.3f%%): %s",
            counts.n_rejected,
            counts.total,
            100 * fraction,
            detail,
        )
    if fraction > limit:
        for example in rejected.limit(5).collect():
            log.error("rejected example: %s", example.asDict())
        raise InputError(
            f"{counts.n_rejected} of {counts.total} input rows rejected ({fraction:.2%} > "
            f"data.max_rejected_fraction={limit:g}): {detail}; fix the input, or accept them "
            f"with --set data.max_rejected_fraction={min(1.0, fraction * 1.5 + 1e-4):.3g}"
        )


def _read_source(spark: SparkSession, cfg: Config, fmt: str):
    """(train-file parsed rows, test-file parsed rows or None, synthetic data or None)."""
    if fmt == "synthetic":
        from mfspark.synthetic import generate

        syn = generate(spark, cfg.synthetic, cfg.data.rating_min, cfg.data.rating_max)
        typed = syn.ratings.withColumn(SOURCE, F.lit("synthetic"))
        return ParsedRatings(from_typed(typed), T.LongType()), None, syn
    # The paths were checked before the stage started.
    train = read_ratings(spark, cfg.data, cfg.data.path, fmt, check=False)
    test = None
    if cfg.split.method == "predefined":
        test = read_ratings(spark, cfg.data, cfg.data.test_path, fmt, check=False)
        if test.id_type != train.id_type:  # csv auto-detection may disagree between files
            train, test = _with_string_ids(train), _with_string_ids(test)
    return train, test, None


def _with_string_ids(parsed: ParsedRatings) -> ParsedRatings:
    df = parsed.df.withColumn(C.USER_ID, parsed.raw["raw_user"]).withColumn(
        C.ITEM_ID, parsed.raw["raw_item"]
    )
    return ParsedRatings(df, T.StringType(), parsed.raw)


def input_paths(cfg: Config) -> list[tuple[str, str]]:
    """(path, config key) of every input file the config names."""
    return [
        (p, k) for p, k in ((cfg.data.path, "data.path"), (cfg.data.test_path, "data.test_path")) if p
    ]


def _check_config(cfg: Config, fmt: str) -> None:
    if fmt == "synthetic":
        if cfg.data.path:
            raise ConfigError(
                "data.format is synthetic but data.path is set; use data.format=auto (or the "
                "file's format) to read it, or clear data.path"
            )
        if cfg.split.method == "predefined":
            raise ConfigError(
                'split.method = "predefined" needs train and test files; synthetic data '
                "uses random, user or time splits"
            )


def preflight_prepare(cfg: Config, earlier_stages: tuple = ()) -> None:
    """Checks that need no Spark, run before the session starts (a bad path fails in a second).

    Local inputs are checked on the local file system; paths on a cluster file system (or any
    path under ``spark-submit``, where a path without a scheme is on the cluster's default
    file system) are checked by :func:`run_prepare` through Hadoop.
    """
    from mfspark.session import under_spark_submit

    submitted = under_spark_submit()
    if not submitted:  # spark-submit may bring file systems of its own
        for path, key in input_paths(cfg):
            check_scheme(path, key, cfg.spark.conf)
    fmt = cfg.resolved_format
    _check_config(cfg, fmt)
    local_master = cfg.spark.master.startswith("local") and not submitted
    for path, key in input_paths(cfg):
        scheme = scheme_of(path)
        if scheme == "file" or (scheme is None and local_master):
            check_local_input(path, key, fmt)


def run_prepare(cfg: Config, spark: SparkSession) -> dict:
    """Run the prepare stage and return its manifest entry.

    Spark work, in order: the checks (parse and per-row checks run once, cached; one
    aggregation finds the repeated pairs, and only their rows are ranked; generated data,
    which hold each pair once, skip it), one aggregation
    of the reasons, one index build for users and items together, one write per dataset and
    two cheap counts of what was written. The input is read once.
    """
    started = time.time()
    fmt = cfg.resolved_format
    _check_config(cfg, fmt)
    out = cfg.output.path
    paths = input_paths(cfg)
    # Every input problem we can see up front fails before anything is created.
    for p, key in paths:
        check_input_path(spark, p, key, fmt)
    timings: dict[str, float] = {}
    cached: list[DataFrame] = []
    try:
        with staged_outputs(spark, out, stage="prepare") as stage:
            t = time.time()
            train_parsed, test_parsed, synthetic = _read_source(spark, cfg, fmt)
            # persisted; generated data hold each pair once by construction
            checked = check_rows(train_parsed.df, cfg.data, distinct_pairs=synthetic is not None)
            cached.append(checked)
            counts = count_reasons(checked)
            rejected = rejected_rows(checked, train_parsed.raw)
            test_valid = None
            if test_parsed is not None:
                test_rows = check_rows(test_parsed.df, cfg.data)
                cached.append(test_rows)
                test_checked = reject_test_pairs_in_train(test_rows, valid_rows(checked)).persist(
                    StorageLevel.MEMORY_AND_DISK
                )
                cached.append(test_checked)
                counts = counts + count_reasons(test_checked)  # materialises test_checked
                test_rows.unpersist()  # only test_checked is read from here on
                rejected = rejected.unionByName(rejected_rows(test_checked, test_parsed.raw))
                test_valid = valid_rows(test_checked)
            if counts.blank_lines:
                log.warning("%d blank lines skipped (they hold no rating)", counts.blank_lines)
            if counts.total == 0:
                where = ", ".join(p for p, _ in paths) or "the synthetic source"
                raise InputError(f"no ratings found in {where}; check the path and data.format")
            _fail_on_rejections(counts, cfg.data.max_rejected_fraction, rejected)
            timings["read_validate_seconds"] = time.time() - t

            t = time.time()
            if test_valid is None:
                rated = assign_test(valid_rows(checked), cfg.split, counts.valid_without_timestamp)
                if cfg.split.method != "random":  # a per-user window: compute it once
                    rated = rated.persist(StorageLevel.MEMORY_AND_DISK)
                    cached.append(rated)
            else:
                rated = (
                    valid_rows(checked)
                    .withColumn(IS_TEST, F.lit(False))
                    .unionByName(test_valid.withColumn(IS_TEST, F.lit(True)))
                )
            ix = index_and_flag(spark, rated)
            cached.append(ix.cached)
            stage.write(ix.train, C.PREPARED_TRAIN, options=RATINGS_WRITE_OPTIONS)
            stage.write(ix.test, C.PREPARED_TEST, options=RATINGS_WRITE_OPTIONS)
            stage.write(ix.users, C.PREPARED_USERS)
            stage.write(ix.items, C.PREPARED_ITEMS)
            # One file; with no rejections an empty dataset with the schema, without a scan.
            stage.write(
                rejected.repartition(1) if counts.n_rejected else rejected.limit(0),
                C.PREPARED_REJECTED,
            )
            if synthetic is not None:
                write_truth(stage, synthetic, ix.users, ix.items)
            timings["split_index_write_seconds"] = time.time() - t

            # Counts of what was written (parquet scans of two columns).
            id_type = train_parsed.id_type
            train_w = spark.read.schema(C.ratings_schema(id_type)).parquet(stage.path(C.PREPARED_TRAIN))
            test_w = spark.read.schema(C.test_schema(id_type)).parquet(stage.path(C.PREPARED_TEST))
            cold = test_w.agg(
                F.count(F.lit(1)).alias("n"),
                F.count_if(F.col(C.COLD_USER)).alias("cold_user"),
                F.count_if(F.col(C.COLD_ITEM)).alias("cold_item"),
                F.count_if(F.col(C.COLD_USER) | F.col(C.COLD_ITEM)).alias("cold_any"),
            ).first()
            summary = {
                "input_rows": counts.total,
                "blank_lines_skipped": counts.blank_lines,
                "valid": counts.valid,
                "rejected": counts.n_rejected,
                "train": train_w.count(),
                "test": int(cold["n"]),
                "test_cold_user": int(cold["cold_user"]),
                "test_cold_item": int(cold["cold_item"]),
                "test_cold_any": int(cold["cold_any"]),
                "users": ix.n_users,
                "items": ix.n_items,
            }
            timings["total_seconds"] = time.time() - started
            entry = {
                "format": fmt,
                "id_type": train_parsed.id_type.simpleString(),
                "input": (
                    {"synthetic": synthetic.metadata}
                    if synthetic is not None
                    else input_fingerprint(spark, [p for p, _ in paths])
                ),
                "counts": summary,
                "rejected_by_reason": counts.rejected,
                "timings": {k: round(v, 3) for k, v in timings.items()},
            }
            # Written with the datasets, in the last step of their commit.
            stage.manifest_entry("prepare", entry, cfg)
    except Exception as exc:
        translated = read_error(exc)
        if translated is not None:
            raise translated from exc
        raise
    finally:
        for df in cached:
            df.unpersist()
    log.info(
        "prepared %s ratings (%s users x %s items): train %s, test %s (cold user %s, cold item %s); "
        "rejected %s; %.1f s",
        f"{summary['valid']:,}",
        f"{summary['users']:,}",
        f"{summary['items']:,}",
        f"{summary['train']:,}",
        f"{summary['test']:,}",
        f"{summary['test_cold_user']:,}",
        f"{summary['test_cold_item']:,}",
        f"{summary['rejected']:,}",
        timings["total_seconds"],
    )
    return entry


USERS, ITEMS = "users", "items"

#: Parquet's dictionary encoding is turned off for the columns with a value per user or per
#: rating. Timestamps overflow their dictionaries and fall back to plain encoding after the
#: work of building them; user ids and idx come in runs (a file holds a few thousand users)
#: that plain pages plus snappy keep small too. At 20M ratings the train write took 7.4-7.7 s
#: instead of 10.1-10.3 s, files 5% larger; items and ratings keep their dictionaries.
RATINGS_WRITE_OPTIONS = {
    f"parquet.enable.dictionary#{col}": "false" for col in (C.USER_ID, C.USER_IDX, C.TIMESTAMP)
}


@dataclass
class Indexed:
    """Indexed train and test rows (lazy) and the entity tables (read from ``cached``)."""

    train: DataFrame
    test: DataFrame
    users: DataFrame
    items: DataFrame
    n_users: int
    n_items: int
    cached: DataFrame


def index_and_flag(spark: SparkSession, rated: DataFrame) -> Indexed:
    """Index ids over train ∪ test, count train ratings per entity, flag cold test rows.

    ``rated`` holds every valid rating with the boolean :data:`~mfspark.splits.IS_TEST`.
    Indices are ranks of the ids (:func:`~mfspark.indexing.rank_ids_by_group`), so they do not depend
    on the split's partitioning; ``n_train`` is the entity's number of train ratings.
    """
    n_parts = spark.sparkContext.defaultParallelism
    # Users and items are ranked in one pass: (side, id) rows, each side numbered from 0.
    sides = {USERS: (C.USER_ID, C.USER_IDX), ITEMS: (C.ITEM_ID, C.ITEM_IDX)}
    both = F.array(
        *[
            F.struct(F.lit(s).alias("_side"), F.col(id_col).alias("_id"))
            for s, (id_col, _) in sides.items()
        ]
    )
    ids = rated.select(F.inline(both), IS_TEST)  # one scan of the ratings for both sides
    entities = ids.groupBy("_side", "_id").agg(F.count_if(~F.col(IS_TEST)).cast("long").alias(C.N_TRAIN))
    index, counts = rank_ids_by_group(entities, "_side", "_id", "_idx", n_parts)

    def table(side: str) -> DataFrame:
        id_col, idx_col = sides[side]
        return index.where(F.col("_side") == side).select(
            F.col("_id").alias(id_col), F.col("_idx").alias(idx_col), C.N_TRAIN
        )

    users, items = table(USERS), table(ITEMS)
    n_users, n_items = counts.get(USERS, 0), counts.get(ITEMS, 0)

    def lookup(entity: DataFrame, n: int, id_col: str, idx_col: str, n_col: str) -> DataFrame:
        lookup = entity.select(id_col, idx_col, F.col(C.N_TRAIN).alias(n_col))
        # Entity tables fit in memory for any realistic size: ship them instead of shuffling.
        return F.broadcast(lookup) if n <= _BROADCAST_ENTITIES else lookup

    indexed = rated.join(lookup(users, n_users, C.USER_ID, C.USER_IDX, "_nu"), C.USER_ID).join(
        lookup(items, n_items, C.ITEM_ID, C.ITEM_IDX, "_ni"), C.ITEM_ID
    )
    cols = [
        C.USER_ID,
        C.ITEM_ID,
        F.col(C.USER_IDX).cast("int").alias(C.USER_IDX),
        F.col(C.ITEM_IDX).cast("int").alias(C.ITEM_IDX),
        F.col(C.RATING).cast("double").alias(C.RATING),
        F.col(C.TIMESTAMP).cast("long").alias(C.TIMESTAMP),
    ]
    train = indexed.where(~F.col(IS_TEST)).select(*cols)
    # Cold: the user (item) has no train rating at all.
    test = indexed.where(F.col(IS_TEST)).select(
        *cols, (F.col("_nu") == 0).alias(C.COLD_USER), (F.col("_ni") == 0).alias(C.COLD_ITEM)
    )
    return Indexed(train, test, users, items, n_users, n_items, index)


_BROADCAST_ENTITIES = 2_000_000


def write_truth(stage, synthetic, users: DataFrame, items: DataFrame) -> None:
    """Write the planted model in the model layout (ids, idx, bias, factors, n_train, metadata).

    Planted entities without any rating have a null idx and n_train 0; loading the truth
    as a model (:meth:`mfspark.models.factor_model.FactorModel.load`) skips them.
    """
    spark = users.sparkSession
    for truth, index, id_col, idx_col, name in (
        (synthetic.user_truth, users, C.USER_ID, C.USER_IDX, "user_factors"),
        (synthetic.item_truth, items, C.ITEM_ID, C.ITEM_IDX, "item_factors"),
    ):
        table = truth.join(index.select(id_col, idx_col, C.N_TRAIN), id_col, "left").withColumn(
            C.N_TRAIN, F.coalesce(F.col(C.N_TRAIN), F.lit(0))
        )
        stage.write(table, f"{C.SYNTHETIC_TRUTH}/{name}")
    meta = {k: (float(v) if isinstance(v, float) else v) for k, v in synthetic.metadata.items()}
    stage.write(spark.createDataFrame([meta]).coalesce(1), f"{C.SYNTHETIC_TRUTH}/metadata")
