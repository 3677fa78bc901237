"""The prepare stage: read → validate → split → index → write ``prepared/*``.

Outputs (under ``output.path``; DESIGN.md section 3):

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
from mfspark.indexing import dense_index
from mfspark.io import HadoopFS, join, staged_outputs, update_manifest
from mfspark.readers import ParsedRatings, check_input_path, read_ratings, with_raw_from_typed
from mfspark.splits import assign_test
from mfspark.validation import (
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
        fs = HadoopFS(spark)
        missing = [p for p in (C.PREPARED_TRAIN, C.PREPARED_TEST) if not fs.exists(join(output, p))]
        if missing:
            raise InputError(
                f"no prepared dataset at {join(output, missing[0])}; run jobs/prepare.py "
                "with the same output.path first"
            )
        read = lambda name: spark.read.parquet(join(output, name))  # noqa: E731
        return cls(
            read(C.PREPARED_TRAIN), read(C.PREPARED_TEST), read(C.PREPARED_USERS), read(C.PREPARED_ITEMS)
        )


def input_fingerprint(spark: SparkSession, paths: list[str]) -> dict:
    files = []
    for path in paths:
        files += [
            {"path": p, "bytes": size, "modified_ms": mtime}
            for p, size, mtime in HadoopFS(spark).file_status(path)
        ]
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"files": files, "sha256_of_listing": digest}


def _fail_on_rejections(total: int, reasons: dict[str, int], limit: float, examples: list) -> None:
    rejected = sum(reasons.values())
    fraction = rejected / total if total else 0.0
    detail = ", ".join(f"{r}={n}" for r, n in reasons.items())
    if rejected:
        log.warning("rejected %d of %d input rows (%.3f%%): %s", rejected, total, 100 * fraction, detail)
    if fraction > limit:
        for ex in examples:
            log.error("rejected example: %s", ex)
        raise InputError(
            f"{rejected} of {total} input rows rejected ({fraction:.2%} > "
            f"data.max_rejected_fraction={limit:g}): {detail}; fix the input, or accept them "
            f"with --set data.max_rejected_fraction={min(1.0, fraction * 1.5 + 1e-4):.3g}"
        )


def _read_source(spark: SparkSession, cfg: Config, fmt: str):
    """(train-file parsed rows, test-file parsed rows or None, synthetic data or None)."""
    if fmt == "synthetic":
        from mfspark.synthetic import generate

        syn = generate(spark, cfg.synthetic, cfg.data.rating_min, cfg.data.rating_max)
        typed = syn.ratings.withColumn("source", F.lit("synthetic"))
        return ParsedRatings(with_raw_from_typed(typed), T.LongType()), None, syn
    train = read_ratings(spark, cfg.data, cfg.data.path, fmt)
    test = None
    if cfg.split.method == "predefined":
        test = read_ratings(spark, cfg.data, cfg.data.test_path, fmt)
        if test.id_type != train.id_type:  # csv auto-detection may disagree between files
            as_string = lambda p: ParsedRatings(  # noqa: E731
                p.df.withColumn(C.USER_ID, F.col("raw_user")).withColumn(C.ITEM_ID, F.col("raw_item")),
                T.StringType(),
                p.n_blank_lines,
            )
            train, test = as_string(train), as_string(test)
    return train, test, None


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


def run_prepare(cfg: Config, spark: SparkSession) -> dict:
    """Run the prepare stage and return its manifest entry."""
    started = time.time()
    fmt = cfg.resolved_format
    _check_config(cfg, fmt)
    out = cfg.output.path
    paths = [p for p in (cfg.data.path, cfg.data.test_path) if p]
    # Every input problem we can see up front fails before anything is created.
    for p, key in zip(paths, ("data.path", "data.test_path"), strict=False):
        check_input_path(spark, p, key)
    timings: dict[str, float] = {}
    cached: list[DataFrame] = []
    try:
        with staged_outputs(spark, out) as stage:
            t = time.time()
            train_parsed, test_parsed, synthetic = _read_source(spark, cfg, fmt)
            checked = check_rows(train_parsed.df, cfg.data).persist(StorageLevel.MEMORY_AND_DISK)
            cached.append(checked)
            n_valid, reasons = count_reasons(checked)
            total = n_valid + sum(reasons.values())
            rejected = rejected_rows(checked)
            blank = train_parsed.n_blank_lines
            test_valid = None
            if test_parsed is not None:
                test_checked = reject_test_pairs_in_train(
                    check_rows(test_parsed.df, cfg.data), valid_rows(checked)
                ).persist(StorageLevel.MEMORY_AND_DISK)
                cached.append(test_checked)
                n_valid_test, test_reasons = count_reasons(test_checked)
                total += n_valid_test + sum(test_reasons.values())
                for r, n in test_reasons.items():
                    reasons[r] = reasons.get(r, 0) + n
                reasons = dict(sorted(reasons.items()))
                rejected = rejected.unionByName(rejected_rows(test_checked))
                blank += test_parsed.n_blank_lines
                test_valid = valid_rows(test_checked)
            if total == 0:
                raise InputError(f"no ratings found in {', '.join(paths)}; check the path and format")
            examples = [r.asDict() for r in rejected.limit(5).collect()] if reasons else []
            _fail_on_rejections(total, reasons, cfg.data.max_rejected_fraction, examples)
            timings["read_validate_seconds"] = time.time() - t

            t = time.time()
            if test_valid is None:
                assigned = assign_test(valid_rows(checked), cfg.split).persist(
                    StorageLevel.MEMORY_AND_DISK
                )
                cached.append(assigned)
                train_raw = assigned.where(~F.col("_is_test")).drop("_is_test")
                test_raw = assigned.where(F.col("_is_test")).drop("_is_test")
            else:
                train_raw, test_raw = valid_rows(checked), test_valid
            train, test, users, items = index_and_flag(spark, train_raw, test_raw)
            cached += [users, items]
            stage.write(train, C.PREPARED_TRAIN)
            stage.write(test, C.PREPARED_TEST)
            stage.write(users, C.PREPARED_USERS)
            stage.write(items, C.PREPARED_ITEMS)
            stage.write(rejected.coalesce(1), C.PREPARED_REJECTED)
            if synthetic is not None:
                write_truth(stage, synthetic, users, items)
            timings["split_index_write_seconds"] = time.time() - t

            read = lambda name: spark.read.parquet(stage.path(name))  # noqa: E731
            test_w = read(C.PREPARED_TEST)
            cold = test_w.agg(
                F.count(F.lit(1)).alias("n"),
                F.sum(F.col(C.COLD_USER).cast("long")).alias("cold_user"),
                F.sum(F.col(C.COLD_ITEM).cast("long")).alias("cold_item"),
                F.sum((F.col(C.COLD_USER) | F.col(C.COLD_ITEM)).cast("long")).alias("cold_any"),
            ).first()
            counts = {
                "input_rows": total,
                "blank_lines_skipped": blank,
                "valid": total - sum(reasons.values()),
                "rejected": sum(reasons.values()),
                "train": read(C.PREPARED_TRAIN).count(),
                "test": int(cold["n"]),
                "test_cold_user": int(cold["cold_user"] or 0),
                "test_cold_item": int(cold["cold_item"] or 0),
                "test_cold_any": int(cold["cold_any"] or 0),
                "users": read(C.PREPARED_USERS).count(),
                "items": read(C.PREPARED_ITEMS).count(),
            }
    finally:
        for df in cached:
            df.unpersist()
    timings["total_seconds"] = time.time() - started
    entry = {
        "format": fmt,
        "id_type": train_parsed.id_type.simpleString(),
        "input": (
            {"synthetic": synthetic.metadata}
            if synthetic is not None
            else input_fingerprint(spark, paths)
        ),
        "counts": counts,
        "rejected_by_reason": reasons,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    update_manifest(spark, out, "prepare", entry, cfg)
    log.info(
        "prepared %s ratings (%s users x %s items): train %s, test %s (cold user %s, cold item %s); "
        "rejected %s; %.1f s",
        f"{counts['valid']:,}",
        f"{counts['users']:,}",
        f"{counts['items']:,}",
        f"{counts['train']:,}",
        f"{counts['test']:,}",
        f"{counts['test_cold_user']:,}",
        f"{counts['test_cold_item']:,}",
        f"{counts['rejected']:,}",
        timings["total_seconds"],
    )
    return entry


def index_and_flag(
    spark: SparkSession, train_raw: DataFrame, test_raw: DataFrame
) -> tuple[DataFrame, DataFrame, DataFrame, DataFrame]:
    """Index ids over train ∪ test, count train ratings per entity, flag cold test rows.

    Returns (train, test, users, items); users/items are cached (small).
    """
    n_parts = spark.sparkContext.defaultParallelism
    both = train_raw.select(C.USER_ID, C.ITEM_ID).unionByName(test_raw.select(C.USER_ID, C.ITEM_ID))
    user_index = dense_index(both, C.USER_ID, C.USER_IDX, n_parts)
    item_index = dense_index(both, C.ITEM_ID, C.ITEM_IDX, n_parts)

    def with_counts(index: DataFrame, id_col: str) -> DataFrame:
        counts = train_raw.groupBy(id_col).agg(F.count(F.lit(1)).alias(C.N_TRAIN))
        out = (
            index.join(counts, id_col, "left")
            .select(
                id_col,
                index.columns[1],
                F.coalesce(F.col(C.N_TRAIN), F.lit(0)).cast("long").alias(C.N_TRAIN),
            )
            .cache()
        )
        out.count()
        return out

    users = with_counts(user_index, C.USER_ID)
    items = with_counts(item_index, C.ITEM_ID)
    user_index.unpersist()
    item_index.unpersist()

    item_side = items.withColumnRenamed(C.N_TRAIN, "items_n")

    def indexed(df: DataFrame) -> DataFrame:
        return df.join(_maybe_broadcast(users), C.USER_ID).join(_maybe_broadcast(item_side), C.ITEM_ID)

    cols = [
        C.USER_ID,
        C.ITEM_ID,
        F.col(C.USER_IDX).cast("int").alias(C.USER_IDX),
        F.col(C.ITEM_IDX).cast("int").alias(C.ITEM_IDX),
        F.col(C.RATING).cast("double").alias(C.RATING),
        F.col(C.TIMESTAMP).cast("long").alias(C.TIMESTAMP),
    ]
    train = indexed(train_raw).select(*cols)
    # Cold flags come from the entity tables' train counts.
    test = (
        indexed(test_raw)
        .select(*cols, F.col(C.N_TRAIN).alias("_nu"), F.col("items_n").alias("_ni"))
        .select(
            C.USER_ID,
            C.ITEM_ID,
            C.USER_IDX,
            C.ITEM_IDX,
            C.RATING,
            C.TIMESTAMP,
            (F.col("_nu") == 0).alias(C.COLD_USER),
            (F.col("_ni") == 0).alias(C.COLD_ITEM),
        )
    )
    return train, test, users, items


def _maybe_broadcast(entities: DataFrame, limit: int = 2_000_000) -> DataFrame:
    """Broadcast-join the (cached) entity table when it is small enough to ship everywhere."""
    return F.broadcast(entities) if entities.count() <= limit else entities


def write_truth(stage, synthetic, users: DataFrame, items: DataFrame) -> None:
    """Write the planted model in the model layout (ids, idx, bias, factors, metadata)."""
    spark = users.sparkSession
    stage.write(
        synthetic.user_truth.join(users.select(C.USER_ID, C.USER_IDX), C.USER_ID, "left"),
        f"{C.SYNTHETIC_TRUTH}/user_factors",
    )
    stage.write(
        synthetic.item_truth.join(items.select(C.ITEM_ID, C.ITEM_IDX), C.ITEM_ID, "left"),
        f"{C.SYNTHETIC_TRUTH}/item_factors",
    )
    meta = {k: (float(v) if isinstance(v, float) else v) for k, v in synthetic.metadata.items()}
    stage.write(spark.createDataFrame([meta]).coalesce(1), f"{C.SYNTHETIC_TRUTH}/metadata")
