"""Rating blocks on Spark: ratings partitioned once, a per-block function run over one side.

Set-up (one Spark job): every input partition of the train (and test) ratings is split, in
numpy, by user block (user index mod ``num_user_blocks``) and by item block (item index mod
``num_item_blocks``); each piece travels as a few large byte arrays through one shuffle whose
partition p holds user block p and item block p, and each reduce task builds its blocks of
column-tiled CSR arrays (:class:`mfspark.blocks.rows.RatingRows`). A pass over one side thus
runs one task per block of that side and none for the other side. The
JVM only moves opaque bytes: no per-rating rows are built, converted or pickled. Item blocks
also carry the test ratings of their items, so the masked test error is computed where the
new item factors are born.

Where the blocks live: the task that builds a block saves its arrays as ``.npy`` files in the
executor's local Spark directory and returns a small *token* (block id, directory, the
block's rows with their rating counts); the tokens are cached, so Spark schedules every later
task of that block on the executor that holds its files. A half-step's task memory-maps the
arrays (from the page cache: no copy, no deserialisation). Should a task run where the files
are not (an executor was lost, or the scheduler gave up on locality), that block is rebuilt
from the shuffle output and solved from memory instead: slower, never wrong.

Each pass over a side (:meth:`BlockStore.run`): broadcast what the model needs from the fixed
side (ALS: its factors and biases), run the model's per-block function on every block of the
side at once, collect only its small result, destroy the broadcast. The ratings are never
shuffled again. ALS (:mod:`mfspark.models.als.spark`) and Bayesian MF use the same store.

A pass can instead *exchange* the fixed side (:meth:`BlockStore.step`), for a side too large
to broadcast: each side lives as an RDD of per-block states partitioned like the blocks. At
first use the store records, for every pair (block f, block s of the other side), which rows of
f the block s rates (its block-local columns; one shuffle of column indices, cached as
*routes*). Then each step is **one Spark stage**: the task of block s reads the rows shipped to
it, builds its new state (ALS: solves), keeps it cached, and at once writes the messages that
ship each block of the other side exactly the rows of s it rates — the shuffle the other
side's next step reads (the stage is run as the map stage of that shuffle). Per-block sums come
back through an accumulator keyed by block. Co-partitioned RDDs (tokens, routes, states,
messages: all partitioned by :func:`_block_partition`) are combined by a union that keeps
partition p of each together, so only the messages move, and nothing per entity reaches the
driver. A state that must outlive its step (Bayesian MF's running sums) rides the same
shuffle to the block's next step. Every ``LINEAGE_STEPS`` steps the messages are checkpointed,
so a long fit's lineage and shuffle files stay bounded.

Because a row's result depends only on its own ratings and the fixed side's values, results are
identical for any number of blocks or partitions, broadcast or exchanged.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid

import numpy as np
import pyarrow as pa
from pyspark import AccumulatorParam, StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.blocks.rows import ITEM, USER, RatingRows, distinct
from mfspark.errors import MfsparkError

log = logging.getLogger(__name__)

#: Steps (half-steps, Gibbs passes) between two checkpoints of the exchanged messages: keeps
#: a long fit's lineage, and the shuffle files it pins, to a few steps.
LINEAGE_STEPS = 10

#: Ratings per piece at most: an input partition's ratings for one block travel as pieces of
#: up to this many (1 MB per array), so the JVM never holds one large byte array per block
#: (and no piece nears Arrow's 2 GiB limit of a binary value). Arrays of more than half a G1
#: heap region are "humongous", allocated outside the young generation; with one piece per
#: (partition, block) they grew the JVM by 2.3 GB during a 20M-rating set-up.
PIECE_RATINGS = 1 << 18

#: One piece of a block, as the map side emits it: the block's key (``part``, see
#: :func:`block_key`) and the ratings as raw little-endian arrays.
PIECE_ARRAYS = (("rows", np.int32), ("cols", np.int32), ("values", np.float32), ("is_test", np.bool_))
PIECE_SCHEMA = T.StructType(
    [T.StructField("part", T.IntegerType(), False)]
    + [T.StructField(name, T.BinaryType(), False) for name, _ in PIECE_ARRAYS]
)

#: Arrays of a stored block (file names under its directory).
BLOCK_FILES = (
    "rows",
    "train_indptr",
    "train_cols",
    "train_values",
    "train_tile_width",
    "test_indptr",
    "test_cols",
    "test_values",
    "test_tile_width",
    "col_ids",
)


def _binary(arr: np.ndarray) -> pa.Array:
    """A one-value Arrow binary array viewing ``arr``'s bytes (no copy)."""
    data = pa.py_buffer(np.ascontiguousarray(arr))
    offsets = pa.py_buffer(np.array([0, data.size], dtype=np.int32))
    return pa.Array.from_buffers(pa.binary(), 1, [None, offsets, data])


def keyed_pieces(keys: np.ndarray, arrays, schema: pa.Schema):
    """Record batches of one row each: ``(key, bytes of each array's entries with that key)``,
    keys ascending, at most :data:`PIECE_RATINGS` entries per piece (a key with more is sent
    as several pieces, in their input order)."""
    if not len(keys):  # e.g. an input partition of test ratings only, on the user side
        return
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(keys)], strict=True):
        key = pa.array([int(keys[a])], pa.int32())
        for start in range(a, b, PIECE_RATINGS):
            take = order[start : min(b, start + PIECE_RATINGS)]
            yield pa.RecordBatch.from_arrays(
                [key] + [_binary(np.take(x, take)) for x in arrays], schema=schema
            )


def _split_fn(num_user_blocks: int, num_item_blocks: int):
    """mapInArrow function: an input partition's ratings → one piece per block it touches."""
    schema = pa.schema(
        [pa.field("part", pa.int32(), False)]
        + [pa.field(name, pa.binary(), False) for name, _ in PIECE_ARRAYS]
    )

    def split(batches):
        from mfspark.session import release_memory

        parts = [b for b in batches if b.num_rows]
        if not parts:
            return
        table = pa.Table.from_batches(parts)
        users = table.column(C.USER_IDX).to_numpy().astype(np.int32, copy=False)
        items = table.column(C.ITEM_IDX).to_numpy().astype(np.int32, copy=False)
        values = table.column(C.RATING).to_numpy().astype(np.float32, copy=False)
        is_test = table.column("is_test").to_numpy(zero_copy_only=False)
        del table, parts
        train = ~is_test
        sides = (  # user blocks get train ratings only; item blocks also the test ratings
            (
                users[train],
                items[train],
                values[train],
                is_test[train],
                2 * (users[train] % num_user_blocks),
            ),
            (items, users, values, is_test, 2 * (items % num_item_blocks) + 1),
        )
        for rows, cols, vals, test, part in sides:
            yield from keyed_pieces(part, (rows, cols, vals, test), schema)
        del users, items, values, is_test, sides
        release_memory()

    return split


def block_key(side: str, block: int) -> int:
    """The key of ``side``'s block ``block`` (pieces, tokens, routes and messages are keyed by
    it): ``2 · block`` for a user block, ``2 · block + 1`` for an item block."""
    return 2 * int(block) + (side == ITEM)


def key_block(key: int) -> tuple[str, int]:
    """(side, block) of a :func:`block_key`."""
    return (ITEM if key & 1 else USER), key >> 1


def _block_partition(key: int) -> int:
    """The partition function of everything keyed by :func:`block_key`: partition p holds
    user block p and item block p, so a pass over either side runs one task per block and no
    task for the other side. One function object, so RDDs partitioned by it are
    co-partitioned: a union of them keeps partition p of each together, without a shuffle."""
    return key >> 1


def _local_root() -> str:
    """The executor's first local Spark directory (what PySpark itself spills to)."""
    return os.environ.get("SPARK_LOCAL_DIRS", tempfile.gettempdir()).split(",")[0]


def _spooled_blocks(records, root: str):
    """(key, arrays) of every block among ``records`` (shuffled ``(key, piece)`` pairs), keys
    ascending, each block's :data:`PIECE_ARRAYS` concatenated. Pieces arrive in shuffle-fetch
    order, all of a partition's blocks interleaved; each piece's bytes are appended to its
    block's files under a fresh directory in ``root`` as it arrives, so a task holds one
    block's ratings at a time (read back in one piece, no concatenation copy), not its whole
    partition's pieces. The directory is removed when the generator ends."""
    directory = tempfile.mkdtemp(prefix="mfspark-spool-", dir=root)
    try:
        files: dict[int, list] = {}  # key → one open file per array
        try:
            for key, piece in records:
                if key not in files:
                    files[key] = [
                        open(os.path.join(directory, f"{key}-{name}"), "wb") for name, _ in PIECE_ARRAYS
                    ]
                for handle, data in zip(files[key], piece, strict=True):
                    handle.write(data)
        finally:
            for handles in files.values():
                for handle in handles:
                    handle.close()
        for key in sorted(files):
            arrays = []
            for handle, (_, dtype) in zip(files.pop(key), PIECE_ARRAYS, strict=True):
                arrays.append(np.fromfile(handle.name, dtype=dtype))
                os.remove(handle.name)
            yield key, arrays
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _assemble(rows, cols, values, is_test, width: int) -> tuple[RatingRows, RatingRows] | None:
    """A block's train and test RatingRows from its ratings (global row and column indices,
    values, test flags); None for a block without ratings."""
    if not len(rows):
        return None
    entities = distinct(rows)[0]
    # Block-local columns: the block addresses only the fixed-side entities it rates.
    col_ids, cols = distinct(cols)
    cols = cols.astype(np.int32)  # local columns: fewer than the fixed side's entities
    train = RatingRows.from_coo(
        rows[~is_test], cols[~is_test], values[~is_test], entities, width, col_ids
    )
    test = RatingRows.from_coo(rows[is_test], cols[is_test], values[is_test], entities, None, col_ids)
    return train, test


def save_block(directory: str, train: RatingRows, test: RatingRows) -> None:
    """Save a block's arrays as ``.npy`` files (atomically: staged, then renamed)."""
    arrays = {
        "rows": train.rows,
        "train_indptr": train.indptr,
        "train_cols": train.cols,
        "train_values": train.values,
        "train_tile_width": np.array([train.tile_width]),
        "test_indptr": test.indptr,
        "test_cols": test.cols,
        "test_values": test.values,
        "test_tile_width": np.array([test.tile_width]),
        "col_ids": train.col_ids,
    }
    staging = f"{directory}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(staging)
    for name in BLOCK_FILES:
        np.save(os.path.join(staging, f"{name}.npy"), np.ascontiguousarray(arrays[name]))
    shutil.rmtree(directory, ignore_errors=True)  # a recomputed block replaces its files
    os.replace(staging, directory)


def open_block(directory: str) -> tuple[RatingRows, RatingRows] | None:
    """Memory-map a stored block; None when its files are not on this machine."""
    if not os.path.isdir(directory):
        return None
    a = {name: np.load(os.path.join(directory, f"{name}.npy"), mmap_mode="r") for name in BLOCK_FILES}
    train = RatingRows(
        a["rows"],
        a["train_indptr"],
        a["train_cols"],
        a["train_values"],
        int(a["train_tile_width"][0]),
        a["col_ids"],
    )
    test = RatingRows(
        a["rows"],
        a["test_indptr"],
        a["test_cols"],
        a["test_values"],
        int(a["test_tile_width"][0]),
        a["col_ids"],
    )
    return train, test


def _build_fn(width: int, store_dir: str | None):
    """mapPartitions function: a shuffle partition's pieces → its blocks (user block p, then
    item block p), each either kept in memory (``store_dir=None``) or saved under
    ``store_dir`` with a token."""

    def build(records):
        from mfspark.session import release_memory, worker_single_thread

        worker_single_thread()
        # A block does not depend on the order its pieces arrive in: the (row, col) pairs
        # are unique and from_coo sorts by them.
        for key, arrays in _spooled_blocks(records, _local_root()):
            yield from _build_block(*key_block(key), arrays, width, store_dir)  # clears arrays
            release_memory()

    return build


def _build_block(side: str, block_id: int, arrays: list, width: int, store_dir: str | None):
    block = _assemble(*arrays, width)
    arrays.clear()  # the raw ratings are released once the block is built
    if block is not None:
        train, test = block
        if store_dir is None:
            yield {"side": side, "block": block_id, "train": train, "test": test}
            return
        directory = os.path.join(_local_root(), store_dir, f"{side}-{block_id}")
        save_block(directory, train, test)
        yield {
            "side": side,
            "block": block_id,
            "dir": directory,
            "host": socket.gethostname(),
            "rows": np.array(train.rows),
            "counts": train.counts(),
            "n_train": train.nnz,
            "value_sum": float(np.sum(train.values, dtype=np.float64)),
            "n_test": test.nnz,
        }


def _sweep_fn(store_dir: str, recorded: dict[str, list[str]]):
    """A removal task: delete this executor's ``store_dir`` and every recorded block directory
    on this host (executors of one host share its disks); report (host, what remains)."""

    def sweep(_):
        host = socket.gethostname()
        targets = [os.path.join(_local_root(), store_dir)] + [
            os.path.dirname(d) for d in recorded.get(host, [])
        ]
        for path in targets:
            shutil.rmtree(path, ignore_errors=True)
        yield host, [path for path in targets if os.path.exists(path)]

    return sweep


def _run_stored_fn(side: str, block_fn, payload):
    def run(tokens):
        for token in tokens:
            if token["side"] != side:
                continue
            block = open_block(token["dir"])
            if block is None:
                yield {"missing": token["block"]}
            else:
                out = _timed(block_fn, side, token["block"], *block, payload)
                out["stored_at"] = (token["host"], token["dir"])  # a recomputed token moves
                yield out

    return run


def _run_packed_fn(side: str, block_fn, payload):
    def run(blocks):
        for block in blocks:
            if block["side"] != side:
                continue
            yield _timed(block_fn, side, block["block"], block["train"], block["test"], payload)

    return run


def _timed(block_fn, side, block_id, train, test, payload) -> dict:
    from mfspark.session import worker_single_thread

    worker_single_thread()
    started = time.perf_counter()
    out = block_fn(side, train, test, payload.value)
    out["seconds"] = time.perf_counter() - started
    out["block"] = block_id
    return out


def _token_summary(token: dict) -> dict:
    """A token without its per-entity arrays (what the driver keeps in partitioned mode)."""
    return {k: v for k, v in token.items() if k not in ("rows", "counts")}


def _open_or_fail(token: dict) -> tuple[RatingRows, RatingRows]:
    block = open_block(token["dir"])
    if block is None:  # the task is retried; the scheduler normally runs it where the files are
        raise MfsparkError(
            f"{token['side']} block {token['block']} is stored on {token['host']} "
            f"({token['dir']}), not on {socket.gethostname()}"
        )
    return block


def _request_fn(num_blocks: dict[str, int]):
    """Tokens → ``(key of fixed block f, (key of block s, ids))``: the fixed-side entities of
    block f that block s rates, ascending."""

    def run(tokens):
        for token in tokens:
            train, _ = _open_or_fail(token)
            ids = np.asarray(train.col_ids, dtype=np.int64)
            other = ITEM if token["side"] == USER else USER
            owner = ids % num_blocks[other]
            order = np.argsort(owner, kind="stable")  # ids stay ascending per owner
            owner = owner[order]
            bounds = np.flatnonzero(np.diff(owner)) + 1
            for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(owner)], strict=True):
                if a < b:
                    target = block_key(other, int(owner[a]))
                    yield target, (block_key(token["side"], token["block"]), ids[order[a:b]])

    return run


def _route_fn(records):
    """Partition p: its tokens and the requests for their blocks → ``("route", side of f, key
    of s, positions, ids)`` with the positions of the ids block s requests among block f's rows
    (ids f does not hold, e.g. users with test ratings only, are left out: they stay zero at
    the receiver)."""
    tokens, requests = {}, []
    for record in records:
        if isinstance(record, dict):
            tokens[block_key(record["side"], record["block"])] = record
        else:
            requests.append(record)
    rows = {}
    for key, (target, ids) in requests:
        if key not in tokens:
            continue
        if key not in rows:
            rows[key] = np.asarray(_open_or_fail(tokens[key])[0].rows, dtype=np.int64)
        held_rows = rows[key]
        pos = np.minimum(np.searchsorted(held_rows, ids), max(len(held_rows) - 1, 0))
        held = held_rows[pos] == ids if len(held_rows) else np.zeros(len(ids), bool)
        yield ("route", tokens[key]["side"], target, pos[held], ids[held].astype(np.int32))


class _Stats(AccumulatorParam):
    """Per-block summaries of one exchange step, keyed by block: a task run again (a lost
    executor, a recomputed partition) reports the same values under the same key."""

    def zero(self, value):
        return {}

    def addInPlace(self, a, b):
        a.update(b)
        return a


def _step_fn(side: str, fields: tuple[str, ...], make_state, summarize, stats, carry: tuple[str, ...]):
    """Partition p: the token of ``side``'s block p, its routes and what the previous step's
    shuffle brought it → the block's new state, the messages that state sends to the blocks
    of the other side that rate its rows and, with ``carry``, the state's ``carry`` entries
    for this block's next step. The other side's carries pass through unchanged."""

    def step(records):
        from mfspark.session import worker_single_thread

        worker_single_thread()
        token, routes, messages, previous = None, [], [], None
        for record in records:
            if isinstance(record, dict):
                if record["side"] == side:
                    token = record
            elif record[0] == "route":
                if record[1] == side:
                    routes.append(record)
            elif key_block(record[0])[0] != side:  # the other side's carry: on to its next step
                yield record
            elif isinstance(record[1], dict):  # this block's carry from its previous step
                previous = record[1]
            else:  # (block key, (ids, arrays)): rows shipped by the other side's last step
                messages.append(record[1])
        if token is None:
            return
        started = time.perf_counter()
        state = make_state(token, messages, previous)
        state.update(block=token["block"], seconds=time.perf_counter() - started)
        state["received"] = sum(len(ids) for ids, _ in messages)
        stats.add({token["block"]: summarize(state)})
        yield "state", state
        if carry:
            yield block_key(side, token["block"]), {name: state[name] for name in carry}
        for _, _, target, pos, ids in routes:
            yield target, (ids, {name: np.take(state[name], pos, axis=0) for name in fields})

    return step


def factor_fields(rank: int) -> dict[str, tuple[tuple, type]]:
    """What a step of a factor model ships of a block's state: name → (shape of a row, dtype),
    the float32 factors and bias a broadcast carries."""
    return {"factors": ((rank,), np.float32), "bias": ((), np.float32)}


def exchanged_block_fn(fields: dict[str, tuple[tuple, type]], block_fn):
    """``make_state`` of a solving step: open the block, place the shipped rows at its local
    columns (rows no block holds stay zero) and run ``block_fn(side, train, test, local,
    previous)`` (``previous``: the block's carry from its last step, or None)."""

    def make_state(token: dict, messages, previous) -> dict:
        train, test = _open_or_fail(token)
        col_ids = np.asarray(train.col_ids, dtype=np.int64)
        local = {
            name: np.zeros((len(col_ids), *shape), dtype) for name, (shape, dtype) in fields.items()
        }
        for ids, arrays in messages:
            pos = np.searchsorted(col_ids, ids)
            for name in fields:
                local[name][pos] = arrays[name]
        return block_fn(token["side"], train, test, local, previous)

    return make_state


def _shuffle_dependency(rdd):
    """The JVM ShuffleDependency that ``rdd`` (a ``partitionBy`` result) reads."""
    jrdd = rdd._jrdd.rdd()
    for _ in range(8):  # partitionBy wraps the shuffled RDD in a map or two
        dep = jrdd.dependencies().head()
        if dep.getClass().getName() == "org.apache.spark.ShuffleDependency":
            return dep
        jrdd = dep.rdd()
    raise MfsparkError("no shuffle found under a partitioned RDD; cannot run its map stage")


def _is_message(record) -> bool:
    return record[0] != "state"


def state_records(rdd):
    """The block states of a :meth:`BlockStore.step` result, brought to the driver one block
    per job (``toLocalIterator``): no single result is larger than a block."""
    return (r for kind, r in rdd.toLocalIterator() if kind == "state")


#: Input partitions per core below which the ratings are first spread evenly over the cores.
BALANCE_PARTITIONS = 4


def _balanced(ratings: DataFrame, parallelism: int) -> DataFrame:
    """``ratings`` spread over 2 partitions per core (hashed by (user, item)) when it has too
    few partitions to keep every core busy in the split, else as they are.

    A small Parquet input is read as a few partitions of unequal size (20M prepared ratings:
    three of train, two of test), and the split's pass from the JVM into Arrow runs one task
    per input partition: on 2 cores those five tasks left a core idle for a third of the
    stage. The extra shuffle of the ratings (about 2 s there) costs less than that idle core
    (repeated set-ups of those 20M ratings in one session: 19.0-20.6 s as read, 15.4-15.9 s
    spread). Blocks do not depend on the order their ratings arrive in, so this changes no
    result."""
    if ratings.rdd.getNumPartitions() >= BALANCE_PARTITIONS * parallelism:
        return ratings
    return ratings.repartition(2 * parallelism, C.USER_IDX, C.ITEM_IDX)


class BlockStore:
    """Train (and test) ratings cut once into user blocks and item blocks, kept on executors.

    ``train``/``test`` hold ``user_idx``, ``item_idx``, ``rating``; ``n_users``/``n_items``
    are the index sizes. After set-up the store knows the global mean and the sizes and,
    with ``per_entity`` (broadcast passes need them), every entity's block and train rating
    count, without a rating on the driver. Without ``per_entity`` (partitioned passes,
    :meth:`step`) the driver keeps nothing per entity.
    """

    def __init__(
        self,
        spark: SparkSession,
        train: DataFrame,
        test: DataFrame | None,
        n_users: int,
        n_items: int,
        width: int,
        num_user_blocks: int = 0,
        num_item_blocks: int = 0,
        per_entity: bool = True,
    ):
        started = time.perf_counter()
        self.spark = spark
        self.n_users, self.n_items = n_users, n_items
        parallelism = spark.sparkContext.defaultParallelism
        self.num_blocks = {USER: num_user_blocks or parallelism, ITEM: num_item_blocks or parallelism}
        n_user_blocks = self.num_blocks[USER]
        #: The partitions holding each side's blocks: block b is in partition b.
        self.partitions = {side: list(range(n)) for side, n in self.num_blocks.items()}
        self.store_dir = f"mfspark-blocks-{uuid.uuid4().hex[:12]}"
        ratings = [train.select(C.USER_IDX, C.ITEM_IDX, C.RATING, F.lit(False).alias("is_test"))]
        if test is not None:
            ratings.append(test.select(C.USER_IDX, C.ITEM_IDX, C.RATING, F.lit(True).alias("is_test")))
        pieces = _balanced(
            ratings[0].unionByName(ratings[1]) if len(ratings) == 2 else ratings[0], parallelism
        ).mapInArrow(_split_fn(n_user_blocks, self.num_blocks[ITEM]), PIECE_SCHEMA)
        self.num_partitions = max(self.num_blocks.values())
        shuffled = pieces.rdd.map(lambda r: (r[0], tuple(r[1:]))).partitionBy(
            self.num_partitions, _block_partition
        )
        # Blocks rebuilt from the shuffle output, only for a block whose stored files are lost.
        self.packed = shuffled.mapPartitions(_build_fn(width, None))
        # Build every block once, store it on its executor, cache the token that points there.
        self.tokens = shuffled.mapPartitions(
            _build_fn(width, self.store_dir), preservesPartitioning=True
        ).persist(StorageLevel.MEMORY_ONLY)
        #: (host, directory) of every stored block seen so far: what close() must remove.
        self.locations: set[tuple[str, str]] = set()
        self.per_entity = per_entity
        self._routes = None
        self._steps = 0
        self._checkpointed: list = []  # checkpointed messages, released by close()
        try:
            tokens = self.tokens if per_entity else self.tokens.map(_token_summary)
            self._set_up(tokens.collect(), n_users, n_items, started)
        except BaseException:
            self.close()  # blocks may already be stored: a failed set-up leaves nothing behind
            raise

    def _set_up(self, tokens: list[dict], n_users: int, n_items: int, started: float) -> None:
        self.locations.update((t["host"], t["dir"]) for t in tokens)
        per_block = [t for t in tokens if t["side"] == ITEM]
        self.counts: dict[str, np.ndarray] | None = None
        #: Each block's rows (global indices) in the order its results come back.
        self.block_rows: dict[str, dict[int, np.ndarray]] = {USER: {}, ITEM: {}}
        if self.per_entity:
            self.counts = {
                side: np.zeros(n, dtype=np.int64) for side, n in ((USER, n_users), (ITEM, n_items))
            }
            for token in tokens:
                self.counts[token["side"]][token["rows"]] = token["counts"]
                self.block_rows[token["side"]][token["block"]] = token["rows"]
        self.n_train = int(sum(t["n_train"] for t in per_block))
        if not self.n_train:
            raise MfsparkError("the training set is empty; nothing to fit")
        self.global_mean = sum(t["value_sum"] for t in per_block) / self.n_train
        self.n_test = int(sum(t["n_test"] for t in per_block))
        self.setup_seconds = time.perf_counter() - started
        log.info(
            "rating blocks cached: %d user blocks, %d item blocks, %s train and %s test ratings, "
            "global mean %.4f (%.1f s)",
            self.num_blocks[USER],
            self.num_blocks[ITEM],
            f"{self.n_train:,}",
            f"{self.n_test:,}",
            self.global_mean,
            self.setup_seconds,
        )

    @property
    def item_counts(self) -> np.ndarray | None:
        return self.counts[ITEM] if self.counts is not None else None

    def co_partitioned(self, *rdds):
        """The union of RDDs partitioned like the blocks: partition p holds partition p of
        each (Spark's partitioner-aware union: no shuffle), and prefers the executor that
        holds block p when the tokens are among them."""
        union = self.spark.sparkContext.union(list(rdds))
        if union.getNumPartitions() != self.num_partitions:  # pragma: no cover - a Spark change
            raise MfsparkError("block-partitioned RDDs lost their partitioner; cannot exchange")
        return union

    def routes(self):
        """For every block f and every block s of the other side: which rows of f (positions,
        global indices) s rates. Built once (one shuffle of column indices), cached."""
        if self._routes is None:
            requests = self.tokens.mapPartitions(_request_fn(self.num_blocks)).partitionBy(
                self.num_partitions, _block_partition
            )
            self._routes = (
                self.co_partitioned(self.tokens, requests)
                .mapPartitions(_route_fn, preservesPartitioning=True)
                .persist(StorageLevel.MEMORY_AND_DISK)
            )
        return self._routes

    def step(
        self,
        side: str,
        incoming,
        fields: tuple[str, ...],
        make_state,
        summarize,
        carry: tuple[str, ...] = (),
    ):
        """One exchange step over the blocks of ``side`` (module docstring): returns
        ``(states, outgoing, summaries)``.

        ``make_state(token, messages, previous)`` builds a block's new state (a dict holding
        ``rows`` and one row per entity in each of ``fields``) from the messages ``incoming``
        brings it (an RDD returned as ``outgoing`` by a step over the other side, or None) and
        from ``previous``: the entries named in ``carry`` of the block's state at this side's
        last step (None at the first), which travel in the shuffles — through the other side's
        step, which passes them on — rather than as a growing chain of cached RDDs (a chain of
        hundreds of steps would overflow the task serialiser). ``states`` (the cached
        ``("state", dict)`` records) keeps the state on the executor. In the same task the state
        sends every block of the other side exactly the rows of ``fields`` that block rates:
        ``outgoing``, the next step's ``incoming``, whose shuffle files are written by this
        step (one Spark stage per step). ``summarize(state)`` gives the small dict the driver
        receives per block (``summaries``, in block order); nothing per entity reaches it.
        """
        sc = self.spark.sparkContext
        stats = sc.accumulator({}, _Stats())
        parents = [self.tokens, self.routes()] + ([incoming] if incoming is not None else [])
        states = (
            self.co_partitioned(*parents)
            # not preservesPartitioning: the messages are keyed by their target block, so the
            # partitionBy below must really shuffle them
            .mapPartitions(_step_fn(side, fields, make_state, summarize, stats, carry))
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        outgoing = states.filter(_is_message).partitionBy(self.num_partitions, _block_partition)
        # Run only the map stage of the outgoing shuffle: it computes (and caches) the states
        # and writes the messages; the next step's tasks read them.
        sc._jsc.sc().submitMapStage(_shuffle_dependency(outgoing)).get()
        summaries = stats.value
        self._steps += 1
        if self._steps % LINEAGE_STEPS == 0:
            self._cut_lineage(outgoing)
        return states, outgoing, [summaries[b] for b in sorted(summaries)]

    def _cut_lineage(self, outgoing) -> None:
        """Checkpoint ``outgoing`` (the messages the next step reads), so the steps before it —
        their RDDs and shuffle files — can be released instead of piling up for the whole fit:
        to ``spark.checkpoint.dir`` when one is set (reliable: survives a lost executor; the
        previous checkpoint's files are then deleted), else locally on the executors (Spark's
        ``localCheckpoint``: a lost executor after it fails the fit)."""
        sc = self.spark.sparkContext
        if sc._jsc.sc().getCheckpointDir().isDefined():
            outgoing.checkpoint()
        else:
            outgoing.localCheckpoint()
        self._drop_checkpoints(keep=1)  # the steps since the last one may still need it
        self._checkpointed.append(outgoing)
        # A checkpoint is written by the job that computes the RDD (submitMapStage does not):
        # one JVM-only job over the shuffle output, no Python worker.
        outgoing._jrdd.count()
        # Spark's ContextCleaner removes the shuffles and RDDs no longer referenced once the JVM
        # collects them; the JVM sees them released when Python's handles are collected.
        gc.collect()
        sc._jvm.System.gc()

    def _drop_checkpoints(self, keep: int = 0) -> None:
        """Release all checkpoints but the last ``keep``: a local one's cached blocks, a
        reliable one's files."""
        drop = self._checkpointed[: max(0, len(self._checkpointed) - keep)]
        self._checkpointed = self._checkpointed[len(drop) :]
        sc = self.spark.sparkContext
        for rdd in drop:
            rdd.unpersist()
            name = rdd._jrdd.rdd().getCheckpointFile()
            if name.isDefined():
                path = sc._jvm.org.apache.hadoop.fs.Path(name.get())
                path.getFileSystem(sc._jsc.hadoopConfiguration()).delete(path, True)

    def run(self, side: str, payload, block_fn) -> list[dict]:
        """``block_fn(side, train, test, payload)`` on every block of ``side``; its dicts.

        ``payload`` (numpy arrays, a few numbers) is broadcast once and destroyed afterwards;
        ``block_fn`` must return a small dict (what the driver needs: solved rows, sums).
        Each returned dict also carries ``seconds``, the block's compute time.
        """
        sc = self.spark.sparkContext
        broadcast = sc.broadcast(payload)
        try:
            parts = sc.runJob(
                self.tokens, _run_stored_fn(side, block_fn, broadcast), self.partitions[side]
            )
            self.locations.update(p.pop("stored_at") for p in parts if "stored_at" in p)
            missing = [p["missing"] for p in parts if "missing" in p]
            if missing:
                log.warning(
                    "%s blocks %s ran away from their stored files; rebuilding them from the "
                    "shuffle output and solving them in memory instead (slower)",
                    side,
                    missing,
                )
                parts = [p for p in parts if "missing" not in p] + sc.runJob(
                    self.packed, _run_packed_fn(side, block_fn, broadcast), missing
                )
        finally:
            broadcast.destroy()
        return parts

    def rows_of(self, side: str, parts: list[dict]) -> np.ndarray:
        """The rows of ``parts`` (results of :meth:`run`), concatenated in their order."""
        rows = [self.block_rows[side][p["block"]] for p in parts]
        return np.concatenate(rows) if rows else np.empty(0, np.int32)

    def close(self, max_rounds: int = 5) -> None:
        """Delete the stored blocks on every host that holds some, and drop the cached tokens.

        Removal runs as plain tasks (not over the cached tokens, whose recomputation would
        store blocks again): each deletes the store directory under its executor's local
        root and every recorded block directory of its host. Tasks land wherever the
        scheduler puts them, so rounds with more tasks are run until every host that holds
        blocks has reported; a host not reached is logged with its directories.
        """
        sc = self.spark.sparkContext
        try:
            recorded: dict[str, list[str]] = {}
            for host, directory in self.locations:
                recorded.setdefault(host, []).append(directory)
            pending = set(recorded)
            executors = max(1, sc._jsc.sc().getExecutorMemoryStatus().size() - 1)
            tasks = max(executors, sc.defaultParallelism)
            for _ in range(max_rounds):
                reports = (
                    sc.parallelize(range(tasks), tasks)
                    .mapPartitions(_sweep_fn(self.store_dir, recorded))
                    .collect()
                )
                for host, remaining in reports:
                    if remaining:
                        log.warning("could not remove block files on %s: %s", host, remaining)
                    pending.discard(host)
                if not pending:
                    break
                tasks *= 2
            if pending:
                log.warning(
                    "no removal task reached host(s) %s; their block files remain: %s",
                    sorted(pending),
                    [d for h in sorted(pending) for d in recorded[h]],
                )
        finally:
            self.tokens.unpersist()
            if self._routes is not None:
                self._routes.unpersist()
            self._drop_checkpoints()
