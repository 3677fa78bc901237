"""Dense integer indices for original ids, computed without a single-partition window.

The index of an id is its rank among all distinct ids in sort order (numeric for integer
ids, lexicographic for strings), so the same input always gives the same indices whatever
the partitioning. Ranks are computed distributed and entirely in the JVM: range-partition and
sort the distinct ids, number the rows of each partition (``monotonically_increasing_id``
holds the partition in its upper 31 bits and the row within it in the lower 33), collect one
row count per partition (a few numbers to the driver), and add each partition's offset.

Several id spaces (users and items) can be ranked in one pass: rows carry a group, are
sorted by (group, id), and each group is numbered from 0 on its own.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

_ROW_BITS = 33  # monotonically_increasing_id = partition << 33 | row within the partition
_ROW_MASK = (1 << _ROW_BITS) - 1
_MAX_INDEX = 2**31 - 1


def rank_ids_by_group(
    entities: DataFrame, group_col: str | None, id_col: str, idx_col: str, num_partitions: int
) -> tuple[DataFrame, dict]:
    """Add ``idx_col``, the 0-based rank of ``id_col`` within its ``group_col`` value.

    ``entities`` must hold each (group, id) once, ids non-null; its other columns are kept.
    Without ``group_col`` all rows form one group (keyed 0 in the counts). Returns the indexed
    table (cached and materialised: it is small, one row per entity; the caller unpersists
    it) and the number of rows of each group.

    The indices hold while the table is cached (a lost cached block is rebuilt through the
    same range partitioner). A frame derived from it must be used before it is unpersisted,
    or built from a copy (``toArrow``): after ``unpersist`` a new plan samples the range
    bounds again, and the per-partition offsets baked into the table need not match them.
    """
    keys = [group_col, id_col] if group_col else [id_col]
    group = F.col(group_col) if group_col else F.lit(0)
    ordered = (
        entities.repartitionByRange(max(1, num_partitions), *keys)
        .sortWithinPartitions(*keys)
        .withColumn("_row_id", F.monotonically_increasing_id())
        .cache()
    )
    partition = F.shiftright(F.col("_row_id"), _ROW_BITS).cast("int")
    sizes = [
        (int(r["p"]), r["g"], int(r["n"]))
        for r in ordered.groupBy(partition.alias("p"), group.alias("g"))
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    ]
    groups = sorted({g for _, g, _ in sizes})
    totals = {g: sum(n for _, h, n in sizes if h == g) for g in groups}
    if any(n > _MAX_INDEX for n in totals.values()):
        ordered.unpersist()
        raise ValueError(f"more distinct {id_col} values than int32 indices: {totals}")
    n_parts = max((p for p, _, _ in sizes), default=0) + 1
    count = {(p, g): n for p, g, n in sizes}
    # idx = row within the partition - rows of earlier groups in that partition
    #       + rows of the same group in earlier partitions.
    shift: Column = F.lit(0)
    for g in groups:
        shifts, before = [], 0
        for p in range(n_parts):
            shifts.append(before - sum(count.get((p, h), 0) for h in groups if h < g))
            before += count.get((p, g), 0)
        by_partition = F.element_at(F.array(*[F.lit(s) for s in shifts]), partition + 1)
        shift = F.when(group == F.lit(g), by_partition).otherwise(shift)
    idx = (F.col("_row_id").bitwiseAND(F.lit(_ROW_MASK)) + shift).cast("int")
    others = [c for c in entities.columns if c not in keys]
    index = ordered.select(*keys, idx.alias(idx_col), *others).cache()
    index.count()
    ordered.unpersist()
    return index, totals


def rank_ids(
    entities: DataFrame, id_col: str, idx_col: str, num_partitions: int
) -> tuple[DataFrame, int]:
    """Add ``idx_col``, the 0-based rank of ``id_col``, to a table with one row per id.

    ``entities`` must hold each (non-null) id once; its other columns are kept. Returns the
    indexed table (``id_col``, ``idx_col`` int, the other columns; cached and materialised,
    the caller unpersists it) and its number of rows.
    """
    index, totals = rank_ids_by_group(entities, None, id_col, idx_col, num_partitions)
    return index, totals.get(0, 0)


def dense_index(ids: DataFrame, id_col: str, idx_col: str, num_partitions: int) -> DataFrame:
    """Map each distinct value of ``ids[id_col]`` (no nulls) to its 0-based rank ``idx_col``.

    The result is cached and materialised (it is small: one row per distinct id); the caller
    unpersists it when done.
    """
    return rank_ids(ids.select(id_col).distinct(), id_col, idx_col, num_partitions)[0]
