"""Autoencoder inputs: sparse rating vectors per item and per user, and a numpy batch reader.

An AutoRec-style autoencoder learns f: R^n → R^n that reconstructs a rating vector x from
itself, with a loss over the observed cells only. Item-based (``by_item``): one row per item j,
x_j ∈ R^N over all N users; user-based (``by_user``): one row per user i, x_i ∈ R^M over the M
items. With the train mask m (m = 1 where a train rating is observed)

    L = Σ_rows ‖ m ⊙ (f(x) − x) ‖² (+ weight decay),

and the model is scored on the held-out cells only (``test_mask``), see
:func:`mfspark.evaluation.reconstructions_to_predictions`.

Layout (``ae_inputs/by_item``, ``ae_inputs/by_user``; schema :func:`mfspark.columns.ae_schema`):
one row per entity of ``prepared/items`` (or ``prepared/users``) — also entities that only have
test ratings, with empty train arrays — holding the row's id and idx, ``n_train``, ``n_test``,
``train_indices`` (array<int>, the other side's idx, strictly ascending), ``train_values``
(array<float>), ``test_indices``, ``test_values``. Rows are written in ascending idx order.
``ae_inputs/metadata`` is one row: ``n_users``, ``n_items``, the rating scale, the observed
train range, the global train mean and the train/test nnz.

Building is one shuffle per orientation, all inside Spark: the train and test cells, packed into
one long key (row, test flag, column), are range-partitioned by row idx; a vectorised Arrow
function sorts each partition's cells by that key and cuts them into list arrays (offsets from
run boundaries, no Python per row, no ratings on the driver), and a broadcast join adds the row
ids. Sorting makes the output independent of input order and partitioning.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mfspark import columns as C

log = logging.getLogger(__name__)

ORIENTATIONS = ("by_item", "by_user")

# A cell travels as one long sort key, (row << 32) | (is_test << 31) | col, plus its float
# value: one integer sort orders it, and the shuffled rows are half as wide as with separate
# columns. Idx values are int32 >= 0, so each part fits its bits.
_KEY, _VALUE = "_cell_key", "_value"
_ROW_SHIFT, _TEST_BIT, _COL_MASK = 32, 1 << 31, (1 << 31) - 1


# ---------------------------------------------------------------------------------------------
# Building (Spark)
# ---------------------------------------------------------------------------------------------


def build_rows(
    train, test, entities, orientation: str, num_partitions: int, broadcast_limit: int = 2_000_000
):
    """One row per entity of the orientation with its sorted train and test vectors.

    ``train``/``test`` are ``prepared/train``/``prepared/test``; ``entities`` is
    ``prepared/items`` for ``by_item`` (``prepared/users`` for ``by_user``), whose ids are
    attached by idx after the vectors are built (a broadcast join when at most
    ``broadcast_limit`` entities). Every entity with at least one train or test rating gets a
    row. Returns a DataFrame with schema ``ae_schema(orientation, id_type)``.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    row_id, row_idx = C.AE_ROW_KEYS[orientation]
    col_idx = C.AE_COLUMN_IDX[orientation]

    def cells(df, is_test: bool):
        key = F.shiftleft(F.col(row_idx).cast("long"), _ROW_SHIFT) + F.col(col_idx).cast("long")
        if is_test:
            key = key + F.lit(_TEST_BIT).cast("long")
        return df.select(key.alias(_KEY), F.col(C.RATING).cast("float").alias(_VALUE))

    schema = C.ae_schema(orientation, entities.schema[row_id].dataType)
    vector_schema = T.StructType([f for f in schema.fields if f.name != row_id])
    names = vector_schema.names
    vectors = (
        cells(train, False)
        .unionByName(cells(test, True))
        .repartitionByRange(max(1, num_partitions), F.shiftright(_KEY, _ROW_SHIFT))
        .mapInArrow(lambda batches: _rows_from_cells(batches, names), vector_schema)
    )
    ids = entities.select(row_id, row_idx)
    if entities.count() <= broadcast_limit:
        ids = F.broadcast(ids)
    return vectors.join(ids, row_idx).select(*schema.names)


#: Cells per output batch: rows are cut into Arrow batches of about this many cells (a row
#: longer than that is one batch of its own).
BATCH_CELLS = 1 << 20


def _rows_from_cells(
    batches: Iterator[pa.RecordBatch], names: list[str], batch_cells: int = BATCH_CELLS
) -> Iterator[pa.RecordBatch]:
    """One list-array row per row idx from a partition's cells, in any order.

    The partition's cells are gathered and ordered by their key in numpy (one argsort: several
    times cheaper than Spark's sort of the same rows), then cut into batches at row boundaries.
    A task holds its partition's cells, 12 bytes each, twice: raise
    ``spark.sql.shuffle.partitions`` to bound it.
    """
    parts = [(b.column(0).to_numpy(), b.column(1).to_numpy()) for b in batches if b.num_rows]
    if not parts:
        return
    key = np.concatenate([k for k, _ in parts])
    value = np.concatenate([v for _, v in parts])
    del parts
    order = np.argsort(key)
    key, value = key[order], value[order]
    del order
    row = key >> _ROW_SHIFT
    start = 0
    while start < len(key):
        # Cut before the first cell of the row that holds cell start + batch_cells.
        stop = min(start + batch_cells, len(key))
        if stop < len(key):
            stop = int(np.searchsorted(row, row[stop], side="left"))
            if stop <= start:  # one row longer than a batch
                stop = int(np.searchsorted(row, row[start], side="right"))
        yield _assemble(key[start:stop], value[start:stop], names)
        start = stop


def _list_array(offsets: np.ndarray, values: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()),
        pa.array(values, value_type),
        type=pa.list_(pa.field("element", value_type, nullable=False)),
    )


def _assemble(key: np.ndarray, value: np.ndarray, names: list[str]) -> pa.RecordBatch:
    """Complete rows from sorted cell keys: offsets from run boundaries, no loop over rows."""
    if np.any(key[1:] == key[:-1]):
        bad = int(key[1:][key[1:] == key[:-1]][0] >> _ROW_SHIFT)
        raise ValueError(f"row idx {bad} has a repeated (user, item) pair; re-run jobs/prepare.py")
    row = (key >> _ROW_SHIFT).astype(np.int32)
    is_test = (key & _TEST_BIT) != 0
    col = (key & _COL_MASK).astype(np.int32)
    new_row = np.empty(len(row), bool)
    new_row[0] = True
    np.not_equal(row[1:], row[:-1], out=new_row[1:])
    starts = np.flatnonzero(new_row)
    group = np.cumsum(new_row) - 1
    counts, lists = [], []
    # Sorted keys put a row's train cells (ascending col) before its test cells.
    for part in (~is_test, is_test):
        n = np.bincount(group[part], minlength=len(starts))
        offsets = np.zeros(len(starts) + 1, np.int64)
        np.cumsum(n, out=offsets[1:])
        counts.append(pa.array(n.astype(np.int64)))
        lists += [
            _list_array(offsets, col[part], pa.int32()),
            _list_array(offsets, value[part], pa.float32()),
        ]
    return pa.RecordBatch.from_arrays([pa.array(row[starts]), *counts, *lists], names=names)


def _row_summaries(df, orientation: str):
    from pyspark.sql import functions as F

    _, row_idx = C.AE_ROW_KEYS[orientation]
    return df.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(C.N_TRAIN).alias("train"),
        F.sum(C.N_TEST).alias("test"),
        F.sum((F.col(C.N_TRAIN) == 0).cast("long")).alias("rows_without_train"),
        F.countDistinct(row_idx).alias("distinct"),
    ).first()


def run_build_autoencoder_inputs(cfg, spark) -> dict:
    """The ``build_autoencoder_inputs`` stage: write ``ae_inputs/*`` and a manifest entry.

    Every written orientation is checked before it is moved into place: one row per entity,
    Σ n_train = train count, Σ n_test = test count.
    """
    from pyspark.sql import functions as F

    from mfspark.errors import ConfigError, InputError
    from mfspark.io import staged_outputs, update_manifest
    from mfspark.prepare import Prepared

    started = time.time()
    out = cfg.output.path
    orientations = list(dict.fromkeys(cfg.autoencoder.orientations))  # keep order, no repeats
    if not orientations:
        raise ConfigError('autoencoder.orientations is empty; use ["by_item"], ["by_user"] or both')
    prepared = Prepared.load(spark, out)
    stats = prepared.train.agg(
        F.count(F.lit(1)).alias("n"),
        F.min(C.RATING).alias("lo"),
        F.max(C.RATING).alias("hi"),
        F.avg(C.RATING).alias("mean"),
    ).first()
    nnz_train, nnz_test = int(stats["n"]), prepared.test.count()
    n_users, n_items = prepared.users.count(), prepared.items.count()
    n_rows = {"by_item": n_items, "by_user": n_users}
    num_partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    timings: dict[str, float] = {"stats_seconds": time.time() - started}
    counts: dict[str, dict] = {}
    with staged_outputs(spark, out) as stage:
        for orientation in orientations:
            t = time.time()
            name = C.AE_PATHS[orientation]
            entities = prepared.items if orientation == "by_item" else prepared.users
            rows = build_rows(prepared.train, prepared.test, entities, orientation, num_partitions)
            stage.write(rows, name)
            check = _row_summaries(spark.read.parquet(stage.path(name)), orientation)
            found = {
                "rows": int(check["rows"]),
                "train_values": int(check["train"] or 0),
                "test_values": int(check["test"] or 0),
                "rows_without_train": int(check["rows_without_train"] or 0),
            }
            expected = {"rows": n_rows[orientation], "train_values": nnz_train, "test_values": nnz_test}
            wrong = {k: (found[k], v) for k, v in expected.items() if found[k] != v}
            if wrong or int(check["distinct"]) != found["rows"]:
                raise InputError(
                    f"ae_inputs/{orientation} does not match prepared/ (found, expected): "
                    f"{wrong}; prepared/ may be damaged, re-run jobs/prepare.py"
                )
            counts[orientation] = found
            timings[f"{orientation}_seconds"] = time.time() - t
            log.info(
                "ae_inputs/%s: %s rows (%s without train ratings), %s train and %s test values, %.1f s",
                orientation,
                f"{found['rows']:,}",
                f"{found['rows_without_train']:,}",
                f"{found['train_values']:,}",
                f"{found['test_values']:,}",
                timings[f"{orientation}_seconds"],
            )
        meta = {
            "n_users": n_users,
            "n_items": n_items,
            "rating_min": float(cfg.data.rating_min),
            "rating_max": float(cfg.data.rating_max),
            "train_rating_min": None if stats["lo"] is None else float(stats["lo"]),
            "train_rating_max": None if stats["hi"] is None else float(stats["hi"]),
            "global_mean": None if stats["mean"] is None else float(stats["mean"]),
            "nnz_train": nnz_train,
            "nnz_test": nnz_test,
            "orientations": orientations,
        }
        metadata_df = spark.createDataFrame([meta], C.AE_METADATA_SCHEMA).coalesce(1)
        stage.write(metadata_df, C.AE_METADATA)
    timings["total_seconds"] = time.time() - started
    entry = {
        "orientations": orientations,
        "metadata": meta,
        "counts": counts,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    update_manifest(spark, out, "build_autoencoder_inputs", entry, cfg)
    return entry


# ---------------------------------------------------------------------------------------------
# Reading (numpy, no Spark)
# ---------------------------------------------------------------------------------------------


@dataclass
class AEBatch:
    """One batch of rows as dense numpy arrays (``B`` rows × ``n_cols`` columns).

    ``x`` holds the train ratings (0 where none is observed), ``train_mask`` says where one is;
    ``test_x``/``test_mask`` likewise for the held-out ratings (None with ``with_test=False``).
    ``row_idx`` is each row's idx (``item_idx`` for ``by_item``), ``n_train`` its train count.
    """

    row_idx: np.ndarray
    n_train: np.ndarray
    x: np.ndarray
    train_mask: np.ndarray
    test_x: np.ndarray | None
    test_mask: np.ndarray | None

    def __len__(self) -> int:
        return len(self.row_idx)


def _filesystem(path: str):
    from pyarrow import fs

    if "://" in path or path.startswith("file:"):
        return fs.FileSystem.from_uri(path)
    return fs.LocalFileSystem(), os.path.abspath(path)


def _parquet_files(filesystem, root: str) -> list[str]:
    from pyarrow import fs

    info = filesystem.get_file_info(root)
    if info.type == fs.FileType.NotFound:
        raise FileNotFoundError(f"no dataset at {root}; run jobs/build_autoencoder_inputs.py first")
    if info.type == fs.FileType.File:
        return [root]
    found = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    return sorted(
        f.path
        for f in found
        if f.type == fs.FileType.File
        and not os.path.basename(f.path).startswith(("_", "."))
        and f.path.endswith(".parquet")
    )


def _orientation_of(schema: pa.Schema) -> str:
    for orientation, (_, row_idx) in C.AE_ROW_KEYS.items():
        if row_idx in schema.names:
            return orientation
    raise ValueError(f"not an ae_inputs dataset: no item_idx or user_idx column in {schema.names}")


def row_width(path: str) -> int:
    """Number of columns of a row of ``path`` (users for ``by_item``, items for ``by_user``),
    read from the sibling ``metadata`` dataset."""
    filesystem, root = _filesystem(path)
    files = _parquet_files(filesystem, root)
    if not files:
        raise ValueError(f"no Parquet files under {path}")
    orientation = _orientation_of(pq.read_schema(filesystem.open_input_file(files[0])))
    meta_root = root.rstrip("/").rsplit("/", 1)[0] + "/metadata"
    try:
        meta_files = _parquet_files(filesystem, meta_root)
    except FileNotFoundError:
        meta_files = []
    if not meta_files:
        raise ValueError(f"no {meta_root} next to {path}; pass n_cols= explicitly")
    meta = pq.read_table(filesystem.open_input_file(meta_files[0])).to_pylist()[0]
    return int(meta["n_users"] if orientation == "by_item" else meta["n_items"])


def _dense(
    indices: pa.ListArray, values: pa.ListArray, n_cols: int, dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Scatter list-array rows into a dense (rows × n_cols) matrix and its mask."""
    n = len(indices)
    lengths = indices.value_lengths().to_numpy(zero_copy_only=False)
    cols = indices.flatten().to_numpy(zero_copy_only=False)
    vals = values.flatten().to_numpy(zero_copy_only=False)
    if len(cols) != len(vals):
        raise ValueError("indices and values arrays differ in length")
    if len(cols) and (cols.min() < 0 or cols.max() >= n_cols):
        raise ValueError(f"column index {int(cols.max())} outside a row width of {n_cols}")
    rows = np.repeat(np.arange(n), lengths)
    dense = np.zeros((n, n_cols), dtype)
    mask = np.zeros((n, n_cols), bool)
    dense[rows, cols] = vals
    mask[rows, cols] = True
    return dense, mask


def iter_batches(
    path: str,
    batch_size: int,
    *,
    n_cols: int | None = None,
    with_test: bool = True,
    dtype: np.dtype | type = np.float32,
    shuffle_seed: int | None = None,
) -> Iterator[AEBatch]:
    """Stream ``ae_inputs/by_item`` (or ``by_user``) as dense numpy batches of ``batch_size`` rows.

    Only one Parquet row group plus one batch is in memory at a time, so the dataset may be far
    larger than RAM; each dense batch costs ``batch_size × n_cols`` values (138k-wide item rows
    of MovieLens-20M: 0.55 MB per row in float32). Every batch has exactly ``batch_size`` rows
    except the last. ``n_cols`` defaults to the other side's size from ``ae_inputs/metadata``.

    ``shuffle_seed`` (e.g. the epoch number) permutes the order of the row groups and the rows
    inside each batch — a cheap, streaming approximation of a full shuffle; None keeps the file
    order (ascending row idx).

    A masked-loss trainer, e.g. with PyTorch::

        for epoch in range(n_epochs):
            for b in iter_batches("out/ae_inputs/by_item", 256, shuffle_seed=epoch):
                x, m = torch.from_numpy(b.x), torch.from_numpy(b.train_mask)
                x_in = x * (torch.rand_like(x) > drop)       # denoising: drop some inputs
                loss = (((model(x_in) - x) * m) ** 2).sum() / m.sum().clamp(min=1)
                opt.zero_grad(); loss.backward(); opt.step()

    numpy is the same formula; Keras: ``model.train_on_batch(b.x, np.concatenate([b.x,
    b.train_mask], 1))`` with a loss that splits ``y_true`` into the target and the mask. Held-out
    error per batch: ``e = (f(b.x) - b.test_x)[b.test_mask]`` — or write the reconstructions
    and score them with ``jobs/evaluate.py --set evaluate.reconstruction_path=...``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    filesystem, root = _filesystem(path)
    files = _parquet_files(filesystem, root)
    if n_cols is None:
        n_cols = row_width(path)
    units: list[tuple[pq.ParquetFile, int]] = []
    orientation = None
    for f in files:
        pf = pq.ParquetFile(filesystem.open_input_file(f))
        orientation = orientation or _orientation_of(pf.schema_arrow)
        units += [(pf, g) for g in range(pf.num_row_groups)]
    if not units:
        return
    row_idx_col = C.AE_ROW_KEYS[orientation][1]
    columns = [row_idx_col, C.N_TRAIN, C.TRAIN_INDICES, C.TRAIN_VALUES]
    if with_test:
        columns += [C.TEST_INDICES, C.TEST_VALUES]
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    if rng is not None:
        units = [units[i] for i in rng.permutation(len(units))]

    def record_batches() -> Iterator[pa.RecordBatch]:
        for pf, group in units:
            yield from pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns)

    def to_dense(table: pa.Table) -> AEBatch:
        if rng is not None:
            table = table.take(pa.array(rng.permutation(table.num_rows)))
        col = lambda name: table.column(name).combine_chunks()  # noqa: E731
        x, train_mask = _dense(col(C.TRAIN_INDICES), col(C.TRAIN_VALUES), n_cols, dtype)
        test_x = test_mask = None
        if with_test:
            test_x, test_mask = _dense(col(C.TEST_INDICES), col(C.TEST_VALUES), n_cols, dtype)
        return AEBatch(
            row_idx=table.column(row_idx_col).to_numpy().astype(np.int64),
            n_train=table.column(C.N_TRAIN).to_numpy().astype(np.int64),
            x=x,
            train_mask=train_mask,
            test_x=test_x,
            test_mask=test_mask,
        )

    # Re-cut reader batches (which end at row-group boundaries) to exactly batch_size rows.
    buffered: list[pa.RecordBatch] = []
    n_buffered = 0
    for rb in record_batches():
        buffered.append(rb)
        n_buffered += rb.num_rows
        while n_buffered >= batch_size:
            table = pa.Table.from_batches(buffered)
            yield to_dense(table.slice(0, batch_size))
            rest = table.slice(batch_size)
            buffered, n_buffered = rest.to_batches(), rest.num_rows
    if n_buffered:
        yield to_dense(pa.Table.from_batches(buffered))
