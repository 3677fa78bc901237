"""Dense integer indices for original ids, computed without a single-partition window.

The index of an id is its rank among all distinct ids in sort order (numeric for integer
ids, lexicographic for strings), so the same input always gives the same indices whatever
the partitioning. Ranks are computed distributed: range-partition and sort the distinct ids,
count each partition (a few numbers to the driver), and number rows inside each partition
from its offset.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T


def dense_index(ids: DataFrame, id_col: str, idx_col: str, num_partitions: int) -> DataFrame:
    """Map each distinct value of ``ids[id_col]`` (no nulls) to its 0-based rank ``idx_col``.

    The result is cached and materialised (it is small: one row per distinct id); the caller
    unpersists it when done.
    """
    ordered = (
        ids.select(id_col)
        .distinct()
        .repartitionByRange(max(1, num_partitions), id_col)
        .sortWithinPartitions(id_col)
        .cache()
    )
    counts = dict(
        ordered.groupBy(F.spark_partition_id().alias("p")).count().select("p", "count").collect()
    )
    n_parts = ordered._jdf.rdd().getNumPartitions()
    sizes = np.array([counts.get(p, 0) for p in range(n_parts)], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()

    def number_rows(batches):
        from pyspark import TaskContext

        start = offsets[TaskContext.get().partitionId()]
        for batch in batches:
            idx = pa.array(np.arange(start, start + batch.num_rows, dtype=np.int32))
            start += batch.num_rows
            yield pa.RecordBatch.from_arrays([batch.column(0), idx], [id_col, idx_col])

    id_field = ordered.schema[id_col]
    schema = T.StructType(
        [T.StructField(id_col, id_field.dataType, False), T.StructField(idx_col, T.IntegerType(), False)]
    )
    if int(sizes.sum()) >= 2**31:
        raise ValueError(f"{int(sizes.sum())} distinct {id_col} values do not fit int32 indices")
    index = ordered.mapInArrow(number_rows, schema).cache()
    index.count()
    ordered.unpersist()
    return index
