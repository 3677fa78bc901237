"""Item titles from a MovieLens item file (``data.items_path``), for the sample recommendations.

Formats, recognised from the file name:

* ``u.item`` (MovieLens 100K; any name ending in ``.item``): ``id|title|release date|…``,
  latin-1;
* ``movies.dat`` (1M/10M; any ``*.dat``): ``id::title::genres``, latin-1;
* ``movies.csv`` (20M/25M/latest; any ``*.csv``): header ``movieId,title,genres``, quoted
  fields, UTF-8.

Spark reads the file (it may be on a cluster file system) and only the titles of the ids asked
for come to the driver.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from mfspark.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemFormat:
    name: str
    options: dict
    id_col: str
    title_col: str
    genres_col: str | None


# quote "\u0000": no quoting (titles contain '"' and commas as plain text).
_UNQUOTED = {"quote": "\u0000", "header": "false", "encoding": "ISO-8859-1"}
ITEM_FORMATS = {
    "u.item": ItemFormat("u.item", {**_UNQUOTED, "sep": "|"}, "_c0", "_c1", None),
    "movies.dat": ItemFormat("movies.dat", {**_UNQUOTED, "sep": "::"}, "_c0", "_c1", "_c2"),
    "movies.csv": ItemFormat(
        "movies.csv",
        {"header": "true", "quote": '"', "escape": '"', "encoding": "UTF-8", "sep": ","},
        "movieId",
        "title",
        "genres",
    ),
}


def item_format(path: str) -> ItemFormat:
    """The format of an item file, from its name; a ConfigError names the accepted ones."""
    name = os.path.basename(path.rstrip("/")).lower()
    if name.endswith(".item"):
        return ITEM_FORMATS["u.item"]
    if name.endswith(".dat"):
        return ITEM_FORMATS["movies.dat"]
    if name.endswith(".csv"):
        return ITEM_FORMATS["movies.csv"]
    raise ConfigError(
        f"cannot tell the format of data.items_path={path} from its name; give a MovieLens "
        "u.item (pipe-separated), movies.dat (::) or movies.csv file"
    )


def preflight_items(path: str) -> None:
    """Before Spark starts: a local item file must exist and have a recognised name."""
    if not path:
        return
    item_format(path)
    if "://" not in path or path.startswith("file:"):
        local = path[len("file:") :] if path.startswith("file:") else path
        if not os.path.isfile(local):
            raise ConfigError(f"item file not found: data.items_path={path}; check the path")


def item_titles(spark: SparkSession, path: str, item_ids: list) -> dict[str, str]:
    """``{str(item_id): title}`` for the ids asked for (those in the file)."""
    if not path or not item_ids:
        return {}
    fmt = item_format(path)
    df = spark.read.options(**fmt.options).csv(path)
    missing = [c for c in (fmt.id_col, fmt.title_col) if c not in df.columns]
    if missing:
        log.warning("item file %s has no column %s; titles are not shown", path, missing[0])
        return {}
    wanted = sorted({str(i) for i in item_ids})
    cols = [F.trim(F.col(fmt.id_col)).alias("id"), F.col(fmt.title_col).alias("title")]
    if fmt.genres_col and fmt.genres_col in df.columns:
        cols.append(F.col(fmt.genres_col).alias("genres"))
    rows = df.select(*cols).where(F.col("id").isin(wanted)).collect()
    titles = {}
    for row in rows:
        r = row.asDict()
        title = (r["title"] or "").strip()
        genres = r.get("genres")
        if genres and genres != "(no genres listed)":
            title = f"{title} [{genres.replace('|', ', ')}]"
        titles[r["id"]] = title
    if not titles:
        log.warning("none of %d item ids was found in %s; titles are not shown", len(wanted), path)
    return titles
