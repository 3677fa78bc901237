"""Top-K recommendations for every user, similar items, and ranking metrics (the ``recommend``
stage).

**What a list is.** For a biased factor model the score of item j for user i is its predicted
rating μ + b_i + c_j + w_iᵀu_j, *unclipped* (clipping to the rating range would tie every
item predicted above the top of the scale). A user's list holds the K highest-scoring
candidate items in descending order; equal scores are ordered by ascending item index
(``item_idx`` of ``prepared/items``). With ``recommend.exclude_seen`` the items the user
rated in train are never listed. Candidates are the items with at least one training rating
(the model knows nothing about the others), or ``recommend.candidate_items``. A user without
training ratings gets the model's fallback, μ + c_j: items by bias. The ``popularity``
baseline scores an item by its number of training ratings (same order and exclusion rules).

**How it runs.** Users are cut into ``recommend.num_blocks`` blocks by ``user_idx`` modulo
the block count. Each input partition of (user, seen item) pairs — one marker per user to
rank, plus, with exclusion, the user's train items — is packed in numpy into one byte array
per block it touches, and those few large values go through one shuffle whose partitions are
exactly the blocks (the ratings themselves, their values and the user × item score matrix
are never shuffled). Each block task builds its users' seen-item lists as a CSR and runs
:func:`mfspark.topk.top_k` with the model's vectors broadcast: one dense matrix product per
chunk of users, a top-K selection whose ties go to the lower item index, the seen items
masked out. The lists come back as a few byte arrays per chunk, unpacked into rows by
``mapInArrow``, so the output stays distributed. A user's list depends only on their own
vector and seen items: the result is identical for any number of blocks.

**Similar items** (``recommend.similar_items``): the same machinery with items as rows and
the unit-normalised item factors on both sides — each item's K most cosine-similar other
items (the item itself is its only "seen" entry). Items whose factor vector is zero (no
training ratings) have no cosine and are left out.

**Ranking metrics** (``metrics/ranking``), per model at K, over the users who have a list and
at least one relevant test rating (rating ≥ ``recommend.relevance_threshold``); R_u is the set
of the user's relevant test items (also those the model cannot recommend, e.g. items without
training ratings), hits are the listed items in R_u, rank r counted from 1:

* precision = |hits| / K;  recall = |hits| / |R_u|;  hit_rate = 1 if any hit;
* MAP@K: Σ_hits (hits at ranks ≤ r) / r, divided by min(|R_u|, K);
* NDCG@K: Σ_hits 1/log(r + 1), divided by Σ_{r=1..min(|R_u|,K)} 1/log(r + 1);
* MRR: 1 / rank of the first hit (0 without a hit);
* coverage: distinct listed items over the candidate catalogue (``n_users``: users listed).

Precision, recall, MAP and NDCG are the definitions of Spark's ``RankingEvaluator``
(``precisionAtK``, ``recallAtK``, ``meanAveragePrecisionAtK``, ``ndcgAtK``) with binary
relevance; the tests check equality with it. They are computed by joins and one aggregation:
no per-user list reaches the driver.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mfspark import columns as C
from mfspark.blocks.rows import USER
from mfspark.blocks.spark import keyed_pieces
from mfspark.config import Config
from mfspark.errors import ConfigError, InputError
from mfspark.io import HadoopFS, join, staged_outputs, update_manifest
from mfspark.models.factors import BiasedMF
from mfspark.topk import seen_csr, top_k

log = logging.getLogger(__name__)

POPULARITY = "popularity"
MODELS_DIR = "models"
#: Generic columns of :func:`rank_frame`: a row (user, or item) and a column (item, or user).
ROW, COL = "row_idx", "col_idx"
# Rows ranked per output piece (one pickled tuple of byte arrays travels per piece).
ROWS_PER_PIECE = 16_384

PIECE_SCHEMA = T.StructType(
    [
        T.StructField("part", T.IntegerType(), False),
        T.StructField("rows", T.BinaryType(), False),
        T.StructField("cols", T.BinaryType(), False),
    ]
)
LIST_PIECE_SCHEMA = T.StructType(
    [T.StructField(n, T.BinaryType(), False) for n in ("rows", "ranks", "cols", "scores")]
)
RANKED_SCHEMA = T.StructType(
    [
        T.StructField(ROW, T.IntegerType(), False),
        T.StructField(C.RANK, T.IntegerType(), False),
        T.StructField(COL, T.IntegerType(), False),
        T.StructField(C.SCORE, T.DoubleType(), False),
    ]
)


# -- scorers -------------------------------------------------------------------------------
@dataclass
class Scorer:
    """What a block task needs (broadcast): score(i, j) = row_offset[i] + col_offset[j] +
    row_vecs[i]ᵀ col_vecs[j] over the candidate columns ``col_index`` (ascending)."""

    row_vecs: np.ndarray  # (n_rows, r) float64, by row idx
    row_offset: np.ndarray  # (n_rows,) float64: constant per row, added to the key for the score
    col_vecs: np.ndarray  # (m, r) float64, candidate columns
    col_offset: np.ndarray  # (m,) float64
    col_index: np.ndarray  # (m,) int64 global index of each candidate column, ascending

    @property
    def n_candidates(self) -> int:
        return len(self.col_index)


def trained(counts: np.ndarray | None, n: int) -> np.ndarray:
    """Indices with at least one training rating (all of them when counts are unknown)."""
    return np.arange(n) if counts is None else np.flatnonzero(np.asarray(counts) > 0)


def factor_scorer(params: BiasedMF, side: str = USER, candidates: np.ndarray | None = None) -> Scorer:
    """A biased factor model's scores with rows on ``side`` (``USER``: users ranking items;
    ``ITEM``: items ranking users): μ + b_row + c_col + w_rowᵀu_col, unclipped. Candidates
    default to the columns with training ratings."""
    users = (params.user_factors, params.user_bias, params.user_counts)
    items = (params.item_factors, params.item_bias, params.item_counts)
    (rf, rb, _), (cf, cb, cc) = (users, items) if side == USER else (items, users)
    cols = trained(cc, len(cb)) if candidates is None else np.unique(candidates)
    return Scorer(
        np.asarray(rf, np.float64),
        float(params.global_mean) + np.asarray(rb, np.float64),
        np.asarray(cf, np.float64)[cols],
        np.asarray(cb, np.float64)[cols],
        cols.astype(np.int64),
    )


def popularity_scorer(item_counts: np.ndarray, n_users: int, candidates: np.ndarray) -> Scorer:
    """Most-rated items first: score = the item's number of training ratings."""
    cols = np.unique(candidates).astype(np.int64)
    return Scorer(
        np.zeros((n_users, 0)),
        np.zeros(n_users),
        np.zeros((len(cols), 0)),
        np.asarray(item_counts, np.float64)[cols],
        cols,
    )


def cosine_scorer(item_factors: np.ndarray, candidates: np.ndarray) -> Scorer:
    """Cosine similarity of item factors; candidates with a zero vector are dropped."""
    f = np.asarray(item_factors, np.float64)
    norms = np.linalg.norm(f, axis=1)
    unit = np.divide(f, norms[:, None], out=np.zeros_like(f), where=norms[:, None] > 0)
    cols = np.unique(candidates)
    cols = cols[norms[cols] > 0].astype(np.int64)
    return Scorer(unit, np.zeros(len(f)), unit[cols], np.zeros(len(cols)), cols)


# -- distributed top-K ------------------------------------------------------------------------
def _split_fn(num_blocks: int):
    """mapInArrow: (row, col) pairs of an input partition → one piece per block (row mod n)."""
    schema = pa.schema(
        [
            pa.field(f.name, pa.int32() if f.name == "part" else pa.binary(), False)
            for f in PIECE_SCHEMA.fields
        ]
    )

    def split(batches):
        parts = [b for b in batches if b.num_rows]
        if not parts:
            return
        table = pa.Table.from_batches(parts)
        rows = table.column(ROW).to_numpy().astype(np.int32, copy=False)
        cols = table.column(COL).to_numpy().astype(np.int32, copy=False)
        yield from keyed_pieces(rows % num_blocks, (rows, cols), schema)

    return split


def _positions(index: np.ndarray, size: int) -> np.ndarray:
    """A lookup table: ``table[v]`` is the position of ``v`` in ``index`` (ascending), or −1,
    for 0 ≤ v < max(size, max(index) + 1)."""
    table = np.full(max(size, int(index.max(initial=-1)) + 1), -1, dtype=np.int32)
    table[index] = np.arange(len(index))
    return table


def _rank_fn(broadcast, k: int):
    """mapPartitions: a block's pieces → its rows' top-K lists, as byte arrays per piece."""

    def rank(records):
        from mfspark.session import worker_single_thread

        worker_single_thread()
        pieces = [value for _, value in records]
        if not pieces:
            return
        rows = np.concatenate([np.frombuffer(p[0], dtype=np.int32) for p in pieces])
        cols = np.concatenate([np.frombuffer(p[1], dtype=np.int32) for p in pieces])
        scorer: Scorer = broadcast.value
        targets = np.unique(rows[cols < 0])  # the rows to rank; the rest are seen pairs
        # Seen pairs → (target position, candidate position) by lookup tables (−1: not one).
        pairs = cols >= 0
        seen_rows, seen_cols = rows[pairs], cols[pairs]
        row_pos = _positions(targets, int(seen_rows.max(initial=-1)) + 1)
        col_pos = _positions(scorer.col_index, int(seen_cols.max(initial=-1)) + 1)
        pos, cpos = row_pos[seen_rows], col_pos[seen_cols]
        ok = (pos >= 0) & (cpos >= 0)
        indptr, seen = seen_csr(len(targets), pos[ok], cpos[ok])
        del rows, cols, pieces, seen_rows, seen_cols, pos, cpos, ok
        for a in range(0, len(targets), ROWS_PER_PIECE):
            b = min(a + ROWS_PER_PIECE, len(targets))
            block_rows = targets[a:b]
            found = top_k(
                scorer.row_vecs[block_rows],
                scorer.col_vecs,
                scorer.col_offset,
                k,
                indptr[a : b + 1] - indptr[a],
                seen[indptr[a] : indptr[b]],
            )
            row_idx = block_rows[found.row]
            yield (
                row_idx.astype(np.int32).tobytes(),
                found.rank.astype(np.int32).tobytes(),
                scorer.col_index[found.col].astype(np.int32).tobytes(),
                (found.key + scorer.row_offset[row_idx]).tobytes(),
            )

    return rank


def _explode(batches):
    """mapInArrow: list pieces (byte arrays) → one row per (row, rank)."""
    for batch in batches:
        for i in range(batch.num_rows):
            arrays = [
                np.frombuffer(batch.column(j)[i].as_py(), dtype=dtype)
                for j, dtype in enumerate((np.int32, np.int32, np.int32, np.float64))
            ]
            yield pa.RecordBatch.from_arrays(
                [pa.array(a) for a in arrays], names=[ROW, C.RANK, COL, C.SCORE]
            )


@dataclass
class Ranked:
    """Lazily computed top-K lists (``row_idx``, ``rank``, ``col_idx``, ``score``); ``close()``
    releases the broadcast scorer once the lists are written."""

    frame: DataFrame
    broadcast: object

    def close(self) -> None:
        self.broadcast.unpersist()


def rank_frame(
    spark: SparkSession,
    rows: DataFrame,
    seen: DataFrame | None,
    scorer: Scorer,
    k: int,
    num_blocks: int = 0,
) -> Ranked:
    """Top-``k`` lists of every row of ``rows`` (a ``row_idx`` column), excluding ``seen``
    (``row_idx``, ``col_idx`` pairs; pairs of rows not in ``rows`` are ignored).

    Row and column indices are global (the scorer's ``row_vecs`` index and ``col_index``).
    """
    nb = num_blocks or spark.sparkContext.defaultParallelism
    pairs = rows.select(F.col(ROW).cast("int").alias(ROW), F.lit(-1).cast("int").alias(COL))
    if seen is not None:
        pairs = pairs.unionByName(
            seen.select(F.col(ROW).cast("int").alias(ROW), F.col(COL).cast("int").alias(COL))
        )
    pieces = pairs.mapInArrow(_split_fn(nb), PIECE_SCHEMA)
    blocks = pieces.rdd.map(lambda r: (r[0], (r[1], r[2]))).partitionBy(nb, lambda part: part)
    broadcast = spark.sparkContext.broadcast(scorer)
    lists = blocks.mapPartitions(_rank_fn(broadcast, k))
    frame = spark.createDataFrame(lists, LIST_PIECE_SCHEMA).mapInArrow(_explode, RANKED_SCHEMA)
    return Ranked(frame, broadcast)


def index_frame(spark: SparkSession, idx: np.ndarray, name: str = ROW) -> DataFrame:
    """A one-column DataFrame of indices (built from Arrow, no Python rows)."""
    return spark.createDataFrame(pa.table({name: pa.array(np.asarray(idx, np.int32))}))


# -- ranking metrics ----------------------------------------------------------------------------
def ideal_dcg(k: int) -> list[float]:
    """Σ_{r=1..n} 1/log(r + 1) for n = 1..k (the ideal DCG of n relevant items)."""
    return list(np.cumsum([1.0 / math.log(r + 1) for r in range(1, k + 1)]))


def ranking_metrics(
    recommendations: DataFrame,
    test: DataFrame,
    k: int,
    threshold: float,
    n_catalogue: int,
    model: str,
) -> list[dict]:
    """``metrics/ranking`` rows of one model (definitions in the module docstring).

    ``recommendations``: ``user_id``, ``rank``, ``item_id``; ``test``: ``user_id``,
    ``item_id``, ``rating``. A few joins and two aggregations; only the averages reach the
    driver.
    """
    u, i, r = C.USER_ID, C.ITEM_ID, C.RANK
    top = recommendations.where(F.col(r) <= k).select(u, i, r)
    relevant = test.where(F.col(C.RATING) >= threshold).select(u, i).distinct()
    listed = top.select(u).distinct()
    n_rel = relevant.groupBy(u).agg(F.count(F.lit(1)).alias("n_rel")).join(listed, u)
    hits = top.join(relevant, [u, i]).withColumn(
        "nth", F.row_number().over(Window.partitionBy(u).orderBy(r))
    )
    per_hit = hits.groupBy(u).agg(
        F.count(F.lit(1)).alias("n_hit"),
        F.sum(F.col("nth") / F.col(r)).alias("ap_sum"),
        F.sum(1.0 / F.log(F.col(r) + 1.0)).alias("dcg"),
        F.min(r).alias("first"),
    )
    cut = F.least(F.col("n_rel"), F.lit(k))
    ideal = F.element_at(F.array(*[F.lit(v) for v in ideal_dcg(k)]), cut.cast("int"))
    users = n_rel.join(per_hit, u, "left").fillna(0, ["n_hit", "ap_sum", "dcg"])
    per_user = {
        "precision": F.col("n_hit") / F.lit(float(k)),
        "recall": F.col("n_hit") / F.col("n_rel"),
        "ndcg": F.col("dcg") / ideal,
        "map": F.col("ap_sum") / cut,
        "mrr": F.coalesce(1.0 / F.col("first"), F.lit(0.0)),
        "hit_rate": (F.col("n_hit") > 0).cast("double"),
    }
    totals = users.agg(
        F.count(F.lit(1)).alias("n"), *[F.avg(expr).alias(name) for name, expr in per_user.items()]
    ).first()
    listing = top.agg(F.countDistinct(u).alias("users"), F.countDistinct(i).alias("items")).first()
    rows = [
        {"model": model, "k": k, "metric": name, "value": totals[name], "n_users": int(totals["n"])}
        for name in per_user
    ]
    rows.append(
        {
            "model": model,
            "k": k,
            "metric": "coverage",
            "value": listing["items"] / n_catalogue if n_catalogue else None,
            "n_users": int(listing["users"]),
        }
    )
    return rows


def write_ranking(spark: SparkSession, stage, output: str, rows: list[dict]) -> None:
    """Stage ``metrics/ranking``: other models' rows already there, plus ``rows`` (whose models'
    old rows are replaced)."""
    names = C.RANKING_SCHEMA.names
    new = spark.createDataFrame([tuple(row[n] for n in names) for row in rows], C.RANKING_SCHEMA)
    final = join(output, C.METRICS_RANKING)
    if HadoopFS(spark).exists(final):
        models = sorted({row["model"] for row in rows})
        old = spark.read.parquet(final).where(~F.col("model").isin(models))
        new = old.select(*[F.col(f.name).cast(f.dataType) for f in C.RANKING_SCHEMA.fields]).unionByName(
            new
        )
    stage.write(new.coalesce(1), C.METRICS_RANKING)


def format_ranking(rows: list[dict]) -> str:
    models = list(dict.fromkeys(r["model"] for r in rows))
    value = {(r["model"], r["metric"]): r["value"] for r in rows}
    k = rows[0]["k"] if rows else 0
    header = f"{'model':<16}" + "".join(f"{m + '@' + str(k):>13}" for m in C.RANKING_METRICS)
    lines = [header]
    for m in models:
        cells = [value.get((m, metric)) for metric in C.RANKING_METRICS]
        lines.append(f"{m:<16}" + "".join(f"{'n/a':>13}" if v is None else f"{v:13.4f}" for v in cells))
    return "\n".join(lines)


# -- the stage ----------------------------------------------------------------------------------
def preflight_recommend(cfg: Config, earlier_stages: tuple = ()) -> None:
    """Checks that need no Spark: a local users file that does not exist."""
    path = cfg.recommend.users_path
    if path and "://" not in path and not os.path.exists(path):
        raise InputError(f"recommend.users_path {path} does not exist; give a file of user ids")


def model_names(spark: SparkSession, output: str, wanted: list) -> list[str]:
    """The factor models under ``<output>/models/`` (those with the Parquet factor layout)."""
    fs = HadoopFS(spark)
    found = sorted(
        os.path.basename(os.path.dirname(p.rstrip("/")))
        for p in fs.glob(join(output, MODELS_DIR, "*", "metadata"))
        if fs.exists(join(os.path.dirname(p.rstrip("/")), "item_factors"))
    )
    if not wanted:
        if not found:
            log.warning(
                "no trained factor model under %s; recommending with the popularity baseline only",
                join(output, MODELS_DIR),
            )
        return [*found, POPULARITY]
    missing = [m for m in wanted if m != POPULARITY and m not in found]
    if missing:
        raise InputError(
            f"recommend.models lists {missing[0]!r} but there is no factor model at "
            f"{join(output, MODELS_DIR, str(missing[0]))} (found: {', '.join(found) or 'none'}); "
            "train it first or fix recommend.models"
        )
    return list(dict.fromkeys(str(m) for m in wanted))


def _index_arrays(df: DataFrame, idx_col: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids as strings, n_train) arrays indexed by ``idx_col`` of an entity table."""
    table = df.select(
        F.col(idx_col),
        F.col(C.USER_ID if idx_col == C.USER_IDX else C.ITEM_ID).cast("string").alias("id"),
        C.N_TRAIN,
    ).toArrow()
    idx = table.column(idx_col).to_numpy()
    n = int(idx.max()) + 1 if len(idx) else 0
    ids = np.empty(n, dtype=object)
    ids[idx] = table.column("id").to_numpy(zero_copy_only=False)
    counts = np.zeros(n, dtype=np.int64)
    counts[idx] = table.column(C.N_TRAIN).to_numpy()
    return ids, counts


def candidate_items(item_ids: np.ndarray, item_counts: np.ndarray, wanted: list) -> np.ndarray:
    """Item indices that may be recommended: items with training ratings, or those of
    ``wanted`` (ids); an unknown id is an error, a listed item without ratings is dropped."""
    trained_items = np.flatnonzero(item_counts > 0)
    if not wanted:
        return trained_items
    position = {v: j for j, v in enumerate(item_ids)}
    wanted = list(dict.fromkeys(str(w) for w in wanted))
    unknown = [w for w in wanted if w not in position]
    if unknown:
        raise InputError(
            f"{len(unknown)} of recommend.candidate_items are not items of the prepared dataset "
            f"(e.g. {unknown[0]!r}); fix the list"
        )
    idx = np.array(sorted(position[w] for w in wanted), dtype=np.int64)
    untrained = idx[item_counts[idx] == 0]
    if len(untrained):
        log.warning(
            "%d of recommend.candidate_items have no training ratings and are not recommended",
            len(untrained),
        )
    return idx[item_counts[idx] > 0]


def read_user_ids(spark: SparkSession, path: str) -> DataFrame:
    """Distinct user ids (as strings, column ``user_id``) from a text file or Parquet."""
    if not HadoopFS(spark).exists(path):
        raise InputError(f"recommend.users_path {path} does not exist; give a file of user ids")
    if path.rstrip("/").endswith(".parquet") or os.path.isdir(path):
        df = spark.read.parquet(path)
        col = C.USER_ID if C.USER_ID in df.columns else df.columns[0] if len(df.columns) == 1 else None
        if col is None:
            raise InputError(f"{path} has no {C.USER_ID} column (columns: {', '.join(df.columns)})")
        ids = df.select(F.col(col).cast("string").alias(C.USER_ID))
    else:
        ids = spark.read.text(path).select(F.trim("value").alias(C.USER_ID))
        ids = ids.where((F.col(C.USER_ID) != "") & (F.col(C.USER_ID) != C.USER_ID))
    return ids.where(F.col(C.USER_ID).isNotNull()).distinct()


def users_to_rank(spark: SparkSession, users: DataFrame, path: str) -> tuple[DataFrame, DataFrame, dict]:
    """(rows to rank (``row_idx``), unknown ids (``user_id`` string), counts)."""
    unknown_empty = spark.createDataFrame([], T.StructType([T.StructField(C.USER_ID, T.StringType())]))
    if not path:
        return (
            users.select(F.col(C.USER_IDX).alias(ROW)),
            unknown_empty,
            {"requested": None, "unknown": 0},
        )
    ids = read_user_ids(spark, path)
    known = users.select(F.col(C.USER_ID).cast("string").alias(C.USER_ID), F.col(C.USER_IDX).alias(ROW))
    matched = ids.join(known, C.USER_ID)
    unknown = ids.join(known, C.USER_ID, "left_anti")
    n_requested, n_unknown = ids.count(), unknown.count()
    if n_requested == n_unknown:
        raise InputError(
            f"none of the {n_requested} user ids in {path} is a user of the prepared dataset; "
            "check recommend.users_path"
        )
    if n_unknown:
        log.warning(
            "%d of %d user ids in %s are not users of the prepared dataset; recommending for the "
            "other %d, unknown ids written to %s",
            n_unknown,
            n_requested,
            path,
            n_requested - n_unknown,
            C.RECOMMENDATIONS_UNKNOWN_USERS,
        )
    return matched.select(ROW), unknown, {"requested": n_requested, "unknown": n_unknown}


def with_ids(
    ranked: DataFrame, row_ids: DataFrame, col_ids: DataFrame, names: tuple[str, str, str, str]
) -> DataFrame:
    """Replace ``row_idx``/``col_idx`` by original ids: ``names`` = (row id, rank, col id, score)."""
    rows = row_ids.toDF("_rid", ROW)
    cols = col_ids.toDF("_cid", COL)
    return (
        ranked.join(rows, ROW)
        .join(F.broadcast(cols), COL)
        .select(
            F.col("_rid").alias(names[0]),
            F.col(C.RANK).alias(names[1]),
            F.col("_cid").alias(names[2]),
            F.col(C.SCORE).alias(names[3]),
        )
    )


def _check_model(name: str, params: BiasedMF, n_users: int, n_items: int, path: str) -> None:
    if (len(params.user_bias), len(params.item_bias)) != (n_users, n_items):
        raise InputError(
            f"model {name} at {path} has {len(params.user_bias)} users x {len(params.item_bias)} items "
            f"but the prepared dataset {n_users} x {n_items}; retrain it on this prepared dataset"
        )


def run_recommend(cfg: Config, spark: SparkSession) -> dict:
    """The ``recommend`` stage: lists per model, optional similar items, ranking metrics."""
    from mfspark.models.factor_model import FactorModel
    from mfspark.prepare import Prepared

    started = time.time()
    rc, out = cfg.recommend, cfg.output.path
    preflight_recommend(cfg)
    prepared = Prepared.load(spark, out)
    names = model_names(spark, out, rc.models)
    item_ids, item_counts = _index_arrays(prepared.items, C.ITEM_IDX)
    user_ids, _ = _index_arrays(prepared.users, C.USER_IDX)
    n_users, n_items = len(user_ids), len(item_ids)
    candidates = candidate_items(item_ids, item_counts, rc.candidate_items)
    if rc.k > len(candidates):
        raise ConfigError(
            f"recommend.k ({rc.k}) is larger than the catalogue ({len(candidates)} items that can be "
            "recommended); lower recommend.k"
        )
    rows, unknown, requested = users_to_rank(spark, prepared.users, rc.users_path)
    seen = (
        prepared.train.select(F.col(C.USER_IDX).alias(ROW), F.col(C.ITEM_IDX).alias(COL))
        if rc.exclude_seen
        else None
    )
    if rc.users_path and seen is not None:
        seen = seen.join(F.broadcast(rows), ROW, "left_semi")
    user_index = prepared.users.select(C.USER_ID, C.USER_IDX)
    item_index = prepared.items.select(C.ITEM_ID, C.ITEM_IDX)
    test = prepared.test.select(C.USER_ID, C.ITEM_ID, C.RATING)
    has_test = bool(test.limit(1).count())
    metrics, entry = [], {"k": rc.k, "exclude_seen": rc.exclude_seen, "users": requested, "models": {}}
    with staged_outputs(spark, out) as stage:
        for name in names:
            t = time.time()
            if name == POPULARITY:
                scorer, params = popularity_scorer(item_counts, n_users, candidates), None
            else:
                path = join(out, MODELS_DIR, name)
                params = FactorModel.load(spark, path).params
                _check_model(name, params, n_users, n_items, path)
                scorer = factor_scorer(params, USER, candidates)
            ranked = rank_frame(spark, rows, seen, scorer, rc.k, rc.num_blocks)
            target = f"{C.RECOMMENDATIONS}/model={name}"
            try:
                stage.write(
                    with_ids(
                        ranked.frame, user_index, item_index, (C.USER_ID, C.RANK, C.ITEM_ID, C.SCORE)
                    ),
                    target,
                )
            finally:
                ranked.close()
            written = spark.read.parquet(stage.path(target))
            info = {"seconds": round(time.time() - t, 3)}
            if has_test:
                rows_m = ranking_metrics(
                    written, test, rc.k, rc.relevance_threshold, len(candidates), name
                )
                metrics += rows_m
                info["metrics"] = {m["metric"]: m["value"] for m in rows_m}
            if rc.similar_items and params is not None:
                info["similar_items_seconds"] = _similar_items(
                    spark, stage, name, params, candidates, item_index, rc
                )
            entry["models"][name] = info
            log.info("recommend %s: lists for every requested user in %.1f s", name, info["seconds"])
        stage.write(unknown.coalesce(1), C.RECOMMENDATIONS_UNKNOWN_USERS)
        if metrics:
            write_ranking(spark, stage, out, metrics)
    if metrics:
        log.info(
            "ranking metrics at K=%d (relevant: test rating >= %g):\n%s",
            rc.k,
            rc.relevance_threshold,
            format_ranking(metrics),
        )
    else:
        log.warning("the prepared test set is empty: no ranking metrics")
    entry["seconds"] = round(time.time() - started, 3)
    update_manifest(spark, out, "recommend", entry, cfg)
    return entry


def _similar_items(spark, stage, name: str, params: BiasedMF, candidates, item_index, rc) -> float:
    started = time.time()
    scorer = cosine_scorer(params.item_factors, candidates)
    rows = index_frame(spark, scorer.col_index)
    seen = rows.select(ROW, F.col(ROW).alias(COL))  # an item is not similar to itself
    ranked = rank_frame(spark, rows, seen, scorer, rc.k, rc.num_blocks)
    try:
        stage.write(
            with_ids(
                ranked.frame,
                item_index,
                item_index,
                (C.ITEM_ID, C.RANK, C.SIMILAR_ITEM_ID, C.SIMILARITY),
            ),
            f"{C.SIMILAR_ITEMS}/model={name}",
        )
    finally:
        ranked.close()
    return round(time.time() - started, 3)
