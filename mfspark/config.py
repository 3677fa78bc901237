"""One typed, frozen, validated configuration for every job.

Configs are TOML files (``conf/local.toml`` is the embedded default) plus repeatable
``--set section.key=value`` overrides. Values of overrides are parsed as TOML literals
(``3``, ``0.1``, ``true``, ``["by_item"]``); anything that is not a TOML literal is taken as
a bare string (``--set data.path=../u.data``). Keys under ``spark.conf`` are Spark property
names: ``--set spark.conf.spark.sql.shuffle.partitions=8``.

An unknown key or a bad value raises :class:`~mfspark.errors.ConfigError` naming the key and
what it allows.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from mfspark import jobs
from mfspark.errors import ConfigError


def default_config_file(name: str = "local.toml"):
    """The shipped config file ``conf/NAME`` (a ``Path``, or a ``Traversable`` inside a zip).

    The repository's ``conf/`` directory is the only copy: a wheel installs it as the package
    ``mfspark.conf``. In a source checkout (installed editable or only on ``sys.path``) the
    ``conf/`` beside the ``mfspark`` directory is read directly, so a checkout never reads the
    files of another installed copy.
    """
    beside = Path(__file__).resolve().parent.parent / "conf" / name
    if beside.is_file():
        return beside
    try:
        return importlib.resources.files("mfspark.conf") / name
    except ModuleNotFoundError:  # neither a checkout nor an installed package: report the path
        return beside


DEFAULT_CONFIG = default_config_file()

DATA_FORMATS = (
    "auto",
    "movielens-100k",
    "movielens-dat",
    "movielens-csv",
    "csv",
    "parquet",
    "synthetic",
)
SPLIT_METHODS = ("random", "user", "time", "predefined")
REG_SCALINGS = ("none", "count")
ID_TYPES = ("auto", "long", "string")
AE_ORIENTATIONS = ("by_item", "by_user")


def _doc(text: str, **kw: Any) -> dict[str, Any]:
    return {"doc": text, **kw}


@dataclass(frozen=True)
class SparkConfig:
    master: str = field(
        default="local[*]",
        metadata=_doc(
            "Spark master for `python jobs/...` runs. Ignored under `spark-submit`, "
            "where the cluster's master and resources always win."
        ),
    )
    app_name: str = field(default="mfspark", metadata=_doc("Spark application name."))
    conf: dict = field(
        default_factory=dict,
        metadata=_doc(
            'Spark properties, e.g. `spark.conf."spark.driver.memory" = "4g"`. Under '
            "`spark-submit` a property already set by the submit command is kept."
        ),
    )


@dataclass(frozen=True)
class DataConfig:
    format: str = field(
        default="auto",
        metadata=_doc(
            "Input format: `auto` (synthetic when `path` is empty, else guessed from the "
            "file name), `movielens-100k`, `movielens-dat`, `movielens-csv`, `csv`, "
            "`parquet`, `synthetic`.",
            choices=DATA_FORMATS,
        ),
    )
    path: str = field(
        default="",
        metadata=_doc("Ratings file or directory (for `predefined` splits: the train file)."),
    )
    test_path: str = field(default="", metadata=_doc('Test file for `split.method = "predefined"`.'))
    rating_min: float = field(default=0.5, metadata=_doc("Lowest valid rating."))
    rating_max: float = field(default=5.0, metadata=_doc("Highest valid rating."))
    max_rejected_fraction: float = field(
        default=0.01,
        metadata=_doc("Fail when more than this fraction of input rows is rejected.", min=0.0, max=1.0),
    )
    delimiter: str = field(default=",", metadata=_doc("Field delimiter (`csv` only)."))
    header: bool = field(
        default=True, metadata=_doc("Whether each `csv` file starts with a header line.")
    )
    columns: list = field(
        default_factory=lambda: ["user_id", "item_id", "rating", "timestamp"],
        metadata=_doc("Field names in file order for a `csv` without header."),
    )
    user_col: str = field(default="user_id", metadata=_doc("User id column (`csv`, `parquet`)."))
    item_col: str = field(default="item_id", metadata=_doc("Item id column (`csv`, `parquet`)."))
    rating_col: str = field(default="rating", metadata=_doc("Rating column (`csv`, `parquet`)."))
    timestamp_col: str = field(
        default="timestamp",
        metadata=_doc("Timestamp column (`csv`, `parquet`); empty when there is none."),
    )
    items_path: str = field(
        default="",
        metadata=_doc(
            "Optional item metadata file for item titles in the report: MovieLens `u.item`, "
            "`movies.dat` or `movies.csv` (recognised from the name)."
        ),
    )
    id_type: str = field(
        default="auto",
        metadata=_doc(
            "Type of original ids for `csv`: `long`, `string`, or `auto` (long when every id "
            "is an integer). MovieLens formats have integer ids; parquet keeps its own.",
            choices=ID_TYPES,
        ),
    )


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = field(default=10_000, metadata=_doc("Number of users.", min=1))
    n_items: int = field(default=3_000, metadata=_doc("Number of items.", min=1))
    n_ratings: int = field(default=1_000_000, metadata=_doc("Exact number of ratings.", min=1))
    rank: int = field(default=10, metadata=_doc("Rank of the planted factors.", min=0))
    noise: float = field(default=0.8, metadata=_doc("Noise standard deviation.", min=0.0))
    seed: int = field(default=42, metadata=_doc("Seed: same seed, same data."))
    global_mean: float = field(default=3.55, metadata=_doc("Planted global mean."))
    user_bias_sd: float = field(default=0.45, metadata=_doc("Sd of user biases.", min=0.0))
    item_bias_sd: float = field(default=0.55, metadata=_doc("Sd of item biases.", min=0.0))
    factor_sd: float = field(
        default=0.45,
        metadata=_doc("Sd of the planted interaction term wᵀu (before rounding).", min=0.0),
    )
    min_user_ratings: int = field(
        default=20, metadata=_doc("Fewest ratings per user (MovieLens: 20).", min=1)
    )
    activity_exponent: float = field(
        default=1.4,
        metadata=_doc("Pareto tail index of user activity (smaller: heavier tail).", min=0.1),
    )
    popularity_exponent: float = field(
        default=1.0, metadata=_doc("Zipf exponent of item popularity.", min=0.0)
    )
    rating_step: float = field(
        default=0.5,
        metadata=_doc(
            "Ratings are rounded to this grid, counted from data.rating_min (MovieLens "
            "10M/20M: 0.5, 100k/1M: 1); 0 keeps them continuous.",
            min=0.0,
        ),
    )


@dataclass(frozen=True)
class SplitConfig:
    method: str = field(
        default="random",
        metadata=_doc("`random`, `user`, `time` or `predefined`.", choices=SPLIT_METHODS),
    )
    test_fraction: float = field(
        default=0.1, metadata=_doc("Fraction of ratings held out.", min=0.0, max=1.0)
    )
    seed: int = field(default=42, metadata=_doc("Seed of the hash that assigns ratings."))


@dataclass(frozen=True)
class ALSConfig:
    rank: int = field(default=10, metadata=_doc("Number of latent factors k.", min=1))
    max_iter: int = field(default=15, metadata=_doc("Maximum ALS iterations.", min=1))
    reg: float = field(default=15.0, metadata=_doc("λ_f, penalty on factors.", min=0.0))
    reg_bias: float = field(default=3.0, metadata=_doc("λ_b, penalty on biases.", min=0.0))
    reg_scaling: str = field(
        default="none",
        metadata=_doc(
            "`none`: plain L2 (MAP of probabilistic MF); `count`: λ times the row's rating "
            "count (ALS-WR, as Spark's ALS).",
            choices=REG_SCALINGS,
        ),
    )
    num_user_blocks: int = field(
        default=0, metadata=_doc("User blocks; 0 = Spark's default parallelism.", min=0)
    )
    num_item_blocks: int = field(
        default=0, metadata=_doc("Item blocks; 0 = Spark's default parallelism.", min=0)
    )
    seed: int = field(default=42, metadata=_doc("Seed of the initial factors (per entity)."))
    tol: float = field(
        default=1e-4,
        metadata=_doc("Stop when the relative change of the objective J is below this.", min=0.0),
    )
    init_std: float = field(default=0.1, metadata=_doc("Sd of the initial item factors.", min=0.0))
    clip_predictions: bool = field(
        default=True,
        metadata=_doc(
            "Clip predictions to the range of the training ratings (e.g. 1-5 for MovieLens 100K)."
        ),
    )
    gram_strategy: str = field(
        default="auto",
        metadata=_doc(
            "How the per-row normal equations are formed and solved: `compiled` (one "
            "compiled pass per row: gather, Gram matrix, Cholesky solve; numba), `sparse` "
            "(numpy: packed outer products, CSR x dense), `dense` (numpy: gathered rows, "
            "batched BLAS-3) or `auto` (compiled: the fastest at every rank measured by "
            "benchmarks/kernels.py). Same results up to float rounding.",
            choices=("auto", "compiled", "sparse", "dense"),
        ),
    )
    exchange: str = field(
        default="auto",
        metadata=_doc(
            "How a half-step gets the fixed side's factors: `broadcast` (the whole side, through "
            "the driver, to every executor), `partitioned` (each block is shipped only the rows it "
            "rates, executor to executor; nothing per entity passes through the driver) or `auto` "
            "(broadcast while a side fits als.max_broadcast_mb and spark.driver.maxResultSize).",
            choices=("auto", "broadcast", "partitioned"),
        ),
    )
    max_broadcast_mb: float = field(
        default=2048.0,
        metadata=_doc(
            "Largest side of factors broadcast (MB): above it `auto` exchanges partitioned, and "
            "`broadcast` is refused before training.",
            min=0.0,
        ),
    )
    checkpoint_interval: int = field(
        default=0,
        metadata=_doc(
            "Save the training state every N iterations under `<output.path>/checkpoints/als/` "
            "(Parquet, atomic; deleted after a successful run); 0 = off.",
            min=0,
        ),
    )
    resume: bool = field(
        default=False,
        metadata=_doc(
            "Continue from the last checkpoint (same result as an uninterrupted run); refused "
            "if settings other than `max_iter` or the prepared data differ. No checkpoint: "
            "starts afresh."
        ),
    )


@dataclass(frozen=True)
class BPMFConfig:
    rank: int = field(default=10, metadata=_doc("Number of latent factors k.", min=1))
    burn_in: int = field(
        default=40,
        metadata=_doc("Gibbs sweeps discarded at the start (must be below `samples`).", min=0),
    )
    samples: int = field(
        default=200,
        metadata=_doc(
            "Gibbs sweeps in total, burn-in included; every `thin`-th sweep after the burn-in "
            "is averaged.",
            min=1,
        ),
    )
    thin: int = field(default=1, metadata=_doc("Keep every thin-th sweep after burn-in.", min=1))
    beta0: float = field(
        default=2.0, metadata=_doc("β₀ of the Normal-Wishart hyper-prior (> 0).", min=0.0)
    )
    nu0: float = field(
        default=0.0,
        metadata=_doc("ν₀ (degrees of freedom) of the Wishart; 0 means rank + 1.", min=0.0),
    )
    w0_scale: float = field(
        default=1.0, metadata=_doc("W₀ = w0_scale · I, the Wishart scale (> 0).", min=0.0)
    )
    noise_precision: float = field(
        default=1.0,
        metadata=_doc(
            "Noise precision α = 1/σ² (> 0): its value when `sample_noise` is false, else "
            "its starting value.",
            min=0.0,
        ),
    )
    sample_noise: bool = field(
        default=True,
        metadata=_doc("Draw α each sweep from its Gamma posterior (false: keep it fixed)."),
    )
    noise_shape: float = field(default=1.0, metadata=_doc("Shape a₀ of α's Gamma prior (> 0).", min=0.0))
    noise_rate: float = field(default=1.0, metadata=_doc("Rate b₀ of α's Gamma prior (> 0).", min=0.0))
    seed: int = field(default=42, metadata=_doc("Seed of the initial values and every draw."))
    saved_samples: int = field(
        default=20,
        metadata=_doc(
            "Kept samples written whole to `models/bpmf/samples` (evenly spread over the kept "
            "sweeps) for later scoring and the predictive sd of new pairs.",
            min=1,
        ),
    )
    init_std: float = field(default=0.1, metadata=_doc("Sd of the initial factors.", min=0.0))
    num_user_blocks: int = field(
        default=0, metadata=_doc("User blocks; 0 = Spark's default parallelism.", min=0)
    )
    num_item_blocks: int = field(
        default=0, metadata=_doc("Item blocks; 0 = Spark's default parallelism.", min=0)
    )
    exchange: str = field(
        default="auto",
        metadata=_doc(
            "How a pass gets the fixed side's sample, as als.exchange: `broadcast` (the chain on "
            "the driver), `partitioned` (the chain stays on the executors, one state per block; "
            "each block is shipped only the rows it rates) or `auto` (broadcast while a side "
            "fits als.max_broadcast_mb and spark.driver.maxResultSize). Same draws either way.",
            choices=("auto", "broadcast", "partitioned"),
        ),
    )
    clip_predictions: bool = field(
        default=True,
        metadata=_doc("Clip the predictive mean to the range of the training ratings."),
    )


@dataclass(frozen=True)
class SVDConfig:
    rank: int = field(
        default=10,
        metadata=_doc("Singular triplets k kept; at most the smaller matrix dimension.", min=1),
    )
    oversampling: int = field(
        default=10,
        metadata=_doc(
            "Extra random directions p: the subspace iterated has k + p columns (capped at the "
            "smaller dimension).",
            min=0,
        ),
    )
    power_iterations: int = field(
        default=4,
        metadata=_doc(
            "Subspace (power) iterations q after the first range sketch; each costs one pass "
            "over the user blocks and one over the item blocks.",
            min=0,
        ),
    )
    seed: int = field(default=42, metadata=_doc("Seed of the random test matrix (per item)."))
    reg_bias: float = field(
        default=3.0,
        metadata=_doc("λ_b of the ridge bias baseline removed before the decomposition.", min=0.0),
    )
    bias_iterations: int = field(
        default=5,
        metadata=_doc("Alternating user/item bias steps of the baseline.", min=1),
    )
    clip_predictions: bool = field(
        default=True,
        metadata=_doc("Clip predictions to the range of the training ratings."),
    )
    num_user_blocks: int = field(
        default=0, metadata=_doc("User blocks; 0 = Spark's default parallelism.", min=0)
    )
    num_item_blocks: int = field(
        default=0, metadata=_doc("Item blocks; 0 = Spark's default parallelism.", min=0)
    )


RESIDUAL_BASES = ("als", "svd")
BLEND_MEMBERS = ("als", "svd", "residual", "bpmf", "autorec", "autorec_user")


@dataclass(frozen=True)
class ResidualConfig:
    base: str = field(
        default="als",
        metadata=_doc(
            "Base model whose errors the network learns (refitted per fold with its own section's "
            "settings).",
            choices=RESIDUAL_BASES,
        ),
    )
    hidden_layers: list = field(
        default_factory=lambda: [32, 16],
        metadata=_doc("Sizes of the network's ReLU hidden layers."),
    )
    learning_rate: float = field(default=1e-3, metadata=_doc("Adam step size.", min=0.0))
    l2: float = field(default=1e-4, metadata=_doc("L2 penalty on the network's weights.", min=0.0))
    epochs: int = field(default=30, metadata=_doc("Most passes over the training rows.", min=1))
    batch_size: int = field(default=512, metadata=_doc("Rows per Adam step.", min=1))
    patience: int = field(
        default=3,
        metadata=_doc("Stop after this many epochs without a lower validation error.", min=1),
    )
    folds: int = field(
        default=5,
        metadata=_doc("K: the base is refitted K times for out-of-fold residuals.", min=2),
    )
    validation_fraction: float = field(
        default=0.1,
        metadata=_doc("Share of the out-of-fold rows held out for early stopping.", min=0.0, max=0.5),
    )
    max_train_rows: int = field(
        default=2_000_000,
        metadata=_doc(
            "Most feature rows collected to the driver to train the network (a hash sample of "
            "train when larger; 2M rows x 2k+7 float32 is about 0.2 GB at rank 10).",
            min=1,
        ),
    )
    seed: int = field(default=42, metadata=_doc("Seed of the folds, the sample and the network."))


@dataclass(frozen=True)
class BlendConfig:
    models: list = field(
        default_factory=list,
        metadata=_doc(
            "Members; empty = every blendable model whose test predictions are under "
            "`predictions/model=<name>/`.",
            choices=BLEND_MEMBERS,
        ),
    )
    validation_fraction: float = field(
        default=0.1,
        metadata=_doc("Share of train held out (by hash) to fit the weights.", min=0.0, max=0.5),
    )
    l2: float = field(
        default=1.0, metadata=_doc("Ridge penalty on the weights (not the intercept).", min=0.0)
    )
    seed: int = field(default=42, metadata=_doc("Seed of the validation hash."))


@dataclass(frozen=True)
class AutoencoderConfig:
    orientations: list = field(
        default_factory=lambda: ["by_item", "by_user"],
        metadata=_doc("Which inputs to build: `by_item`, `by_user` or both.", choices=AE_ORIENTATIONS),
    )


AUTOREC_ORIENTATIONS = ("by_item", "by_user")
AUTOREC_ACTIVATIONS = ("sigmoid", "tanh", "relu")
AUTOREC_OPTIMIZERS = ("lbfgs", "rprop")
PRECISIONS = ("float32", "float64")


@dataclass(frozen=True)
class AutoRecConfig:
    orientation: str = field(
        default="by_item",
        metadata=_doc(
            "`by_item`: I-AutoRec, one row per item over all users (model `autorec`); "
            "`by_user`: U-AutoRec, one row per user over all items (model `autorec_user`).",
            choices=AUTOREC_ORIENTATIONS,
        ),
    )
    hidden: int = field(default=500, metadata=_doc("Hidden units h.", min=1))
    activation: str = field(
        default="sigmoid",
        metadata=_doc(
            "Hidden activation g (the output layer is the identity).", choices=AUTOREC_ACTIVATIONS
        ),
    )
    l2: float = field(
        default=300.0,
        metadata=_doc(
            "λ of the weight penalty (λ/2)(‖E‖² + ‖D‖²), against a sum (not mean) of squared "
            "errors over the observed train cells.",
            min=0.0,
        ),
    )
    input_dropout: float = field(
        default=0.0,
        metadata=_doc(
            "Share of input cells zeroed each iteration (kept ones scaled by 1/(1-p)); 0 = plain "
            "AutoRec, > 0 = denoising. Must be in [0, 1).",
            min=0.0,
        ),
    )
    optimizer: str = field(
        default="lbfgs",
        metadata=_doc("Full-batch optimiser: `lbfgs` or `rprop` (iRprop-).", choices=AUTOREC_OPTIMIZERS),
    )
    lbfgs_history: int = field(
        default=5, metadata=_doc("Curvature pairs L-BFGS keeps (driver memory: 2 |θ| each).", min=1)
    )
    rprop_initial_step: float = field(
        default=1e-3, metadata=_doc("Rprop's initial per-weight step.", min=0.0)
    )
    epochs: int = field(
        default=200,
        metadata=_doc("Most iterations (each a full pass over the rows; L-BFGS may take a few).", min=1),
    )
    tol: float = field(
        default=1e-6,
        metadata=_doc("Stop when the relative change of the objective J is below this.", min=0.0),
    )
    validation_fraction: float = field(
        default=0.1,
        metadata=_doc(
            "Share of the train cells held back (keyed by seed, row and column) to choose the "
            "iteration to keep; 0 disables early stopping (the last iteration is kept).",
            min=0.0,
            max=0.5,
        ),
    )
    patience: int = field(
        default=20,
        metadata=_doc("Stop when the validation RMSE has not improved for this many iterations.", min=1),
    )
    seed: int = field(
        default=42, metadata=_doc("Seed of the initial weights, the validation cells and dropout.")
    )
    init_std: float = field(default=0.03, metadata=_doc("Sd of the initial weights.", min=0.0))
    precision: str = field(
        default="float32",
        metadata=_doc(
            "Weights, gradients and optimiser state: `float32` (half the memory) or `float64`.",
            choices=PRECISIONS,
        ),
    )
    num_partitions: int = field(
        default=0,
        metadata=_doc("Partitions of the cached row blocks; 0 = Spark's default parallelism.", min=0),
    )
    block_cells: int = field(
        default=1_000_000,
        metadata=_doc("Train cells per row block (bounds a task's working arrays).", min=1),
    )
    clip_predictions: bool = field(
        default=True,
        metadata=_doc("Clip predictions to the range of the training ratings."),
    )


@dataclass(frozen=True)
class EvaluateConfig:
    predictions_path: str = field(
        default="",
        metadata=_doc(
            "Long predictions to score (user_idx or user_id, item, prediction); default: every "
            "model's `<output.path>/predictions/model=<name>`."
        ),
    )
    reconstruction_path: str = field(
        default="",
        metadata=_doc(
            "Row-vector reconstructions to score instead (row idx, array<float> over the "
            "other side), e.g. an autoencoder's output."
        ),
    )
    reconstruction_orientation: str = field(
        default="by_item",
        metadata=_doc(
            "Rows of the reconstruction are items (`by_item`) or users (`by_user`).",
            choices=AE_ORIENTATIONS,
        ),
    )
    reconstruction_column: str = field(
        default="reconstruction",
        metadata=_doc("Array column of the reconstruction dataset (values over the other side's idx)."),
    )
    model_name: str = field(
        default="",
        metadata=_doc(
            "Score only this model's `predictions/model=<name>` (default: every model there); "
            "with `predictions_path` or `reconstruction_path`, the name in `metrics/summary.model` "
            "(default: the scored directory's name)."
        ),
    )
    activity_buckets: list = field(
        default_factory=lambda: [1, 20, 50, 200, 1000],
        metadata=_doc(
            "Lower edges of the user-activity segments (train ratings per user), strictly "
            "increasing: [1, 20] gives `activity_1_19` and `activity_20_plus`."
        ),
    )


@dataclass(frozen=True)
class RecommendConfig:
    k: int = field(
        default=10, metadata=_doc("Length K of every top-K list (and of the ranking metrics).", min=1)
    )
    models: list = field(
        default_factory=list,
        metadata=_doc(
            "Models to recommend with: names of factor models under `<output.path>/models/` and "
            "`popularity` (most-rated unseen items). Empty: every factor model found there, plus "
            "`popularity`."
        ),
    )
    users_path: str = field(
        default="",
        metadata=_doc(
            "Users to recommend for: a text file with one user id per line, or Parquet with a "
            "`user_id` column. Empty: every user of the prepared dataset. Unknown ids are counted "
            "and written to `recommendations_unknown_users`."
        ),
    )
    exclude_seen: bool = field(
        default=True, metadata=_doc("Never recommend an item the user rated in train.")
    )
    relevance_threshold: float = field(
        default=4.0,
        metadata=_doc("A test rating at or above this is relevant (for `metrics/ranking`)."),
    )
    candidate_items: list = field(
        default_factory=list,
        metadata=_doc("Item ids that may be recommended. Empty: every item with training ratings."),
    )
    similar_items: bool = field(
        default=False,
        metadata=_doc(
            "Also write `similar_items`: per item the K most cosine-similar items (item factors)."
        ),
    )
    num_blocks: int = field(
        default=0,
        metadata=_doc(
            "Blocks of users (items for similar items) scored as one task each; 0 = Spark's "
            "default parallelism. Results do not depend on it.",
            min=0,
        ),
    )


@dataclass(frozen=True)
class BenchmarkConfig:
    systems: list = field(
        default_factory=lambda: ["mllib", "mfspark", "numpy"],
        metadata=_doc(
            "Systems to run.", choices=("mllib", "mfspark", "mfspark_partitioned", "numpy", "bpmf")
        ),
    )
    tune: bool = field(
        default=True,
        metadata=_doc(
            "Choose each system's regularisation on a validation split of train (grids below, "
            "extended x2 past an edge up to 3 times when the best value is there); "
            "false: use `benchmark.mllib_reg` and `als.reg`."
        ),
    )
    mllib_reg_grid: list = field(
        default_factory=lambda: [0.025, 0.05, 0.1, 0.2],
        metadata=_doc("regParam values tried for Spark MLlib ALS (count-scaled, ALS-WR)."),
    )
    mfspark_reg_grid: list = field(
        default_factory=lambda: [2.0, 4.0, 8.0, 15.0, 30.0],
        metadata=_doc(
            "`als.reg` values tried for mfspark (and numpy, the same model) with plain L2 "
            '(`reg_scaling = "none"`, biases penalised by `als.reg_bias`).'
        ),
    )
    mfspark_count_reg_grid: list = field(
        default_factory=lambda: [0.025, 0.05, 0.1, 0.2],
        metadata=_doc(
            '`als.reg` values tried with `reg_scaling = "count"` (λ on factors and biases, '
            "ALS-WR as MLlib); the better of the two scalings is used. Empty: plain L2 only."
        ),
    )
    mllib_reg: float = field(
        default=0.05, metadata=_doc("MLlib regParam when `benchmark.tune` is false.", min=0.0)
    )
    validation_fraction: float = field(
        default=0.1, metadata=_doc("Share of train held out for choosing reg.", min=0.01, max=0.5)
    )
    reuse_prepared: bool = field(
        default=True,
        metadata=_doc(
            "Reuse `<output.path>/prepared` when its manifest shows the same data, synthetic "
            "and split settings; otherwise run the prepare stage first."
        ),
    )
    recommend: bool = field(
        default=False,
        metadata=_doc(
            "Also time top-K recommendation for every user (K = `recommend.k`): MLlib's "
            "`recommendForAllUsers` on its model vs mfspark's lists on its model, with and "
            "without seen-item exclusion (needs the `mllib` and `mfspark` systems)."
        ),
    )


PIPELINE_STAGES = jobs.STAGES  # every job that can be a stage, in run order (mfspark/jobs.py)


@dataclass(frozen=True)
class PipelineConfig:
    stages: list = field(
        default_factory=lambda: list(jobs.DEFAULT_STAGES),
        metadata=_doc("Stages `jobs/pipeline.py` runs, in this order.", choices=PIPELINE_STAGES),
    )


@dataclass(frozen=True)
class OutputConfig:
    path: str = field(default="output", metadata=_doc("Directory (or URI) for all outputs."))


@dataclass(frozen=True)
class LogConfig:
    level: str = field(
        default="INFO",
        metadata=_doc("Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    )


@dataclass(frozen=True)
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    als: ALSConfig = field(default_factory=ALSConfig)
    bpmf: BPMFConfig = field(default_factory=BPMFConfig)
    svd: SVDConfig = field(default_factory=SVDConfig)
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    autorec: AutoRecConfig = field(default_factory=AutoRecConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with some keys of one section changed (validated like a file)."""
        raw = self.to_dict()
        raw[section] = {**raw[section], **changes}
        return from_dict(raw)

    @property
    def resolved_format(self) -> str:
        """`data.format`, with `auto` resolved from `data.path`."""
        from mfspark.readers import detect_format

        return detect_format(self.data)


_SECTION_TYPES = {
    "spark": SparkConfig,
    "data": DataConfig,
    "synthetic": SyntheticConfig,
    "split": SplitConfig,
    "als": ALSConfig,
    "bpmf": BPMFConfig,
    "svd": SVDConfig,
    "residual": ResidualConfig,
    "blend": BlendConfig,
    "autoencoder": AutoencoderConfig,
    "autorec": AutoRecConfig,
    "evaluate": EvaluateConfig,
    "recommend": RecommendConfig,
    "benchmark": BenchmarkConfig,
    "pipeline": PipelineConfig,
    "output": OutputConfig,
    "log": LogConfig,
}


_FIELD_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


def _type_name(tp: Any) -> str:
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }.get(tp, str(tp))


@dataclass(frozen=True)
class _Override:
    """A ``--set`` value that parsed as a non-string TOML literal, with the text as typed.

    A string key takes the text (``--set output.path=2024`` is the path "2024", not an error);
    every other key takes the parsed value.
    """

    value: Any
    text: str


def _coerce(section: str, f: dataclasses.Field, value: Any) -> Any:
    key = f"{section}.{f.name}"
    # `from __future__ import annotations` keeps field types as their names.
    tp = _FIELD_TYPES[f.type]
    if isinstance(value, _Override):
        value = value.text if tp is str else value.value
    ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(
            f"config key {key} must be {_type_name(tp)}, got {value!r}; "
            f"fix it in the config file or with --set {key}=..."
        )
    meta = f.metadata
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"config key {key} must be a finite number, got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"config key {key} must be >= {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"config key {key} must be <= {meta['max']}, got {value!r}")
    choices = meta.get("choices")
    if choices is not None:
        values = value if tp is list else [value]
        bad = [v for v in values if v not in choices]
        if bad:
            raise ConfigError(
                f"config key {key} does not allow {bad[0]!r}; allowed: {', '.join(choices)}"
            )
    if tp is dict:
        value = {k: _spark_value(f"{key}.{k}", v) for k, v in _flatten(value).items()}
    if tp is list:
        value = list(value)
    return value


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    """``{"spark": {"executor": {"memory": "4g"}}}`` → ``{"spark.executor.memory": "4g"}``.

    An unquoted dotted key in a TOML ``[spark.conf]`` table is a nested table; Spark
    property names are the dotted path.
    """
    flat: dict[str, Any] = {}
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{name}."))
        else:
            flat[name] = v
    return flat


def _spark_value(key: str, value: Any) -> str:
    if isinstance(value, _Override):  # a Spark property gets the text as typed ("1e3", "08")
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ConfigError(f"config key {key} must be a string, number or boolean, got {value!r}")


def _build_section(name: str, raw: Any) -> Any:
    cls = _SECTION_TYPES[name]
    if not isinstance(raw, dict):
        raise ConfigError(f"config section [{name}] must be a table, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {name}.{unknown[0]}; keys in [{name}] are: " + ", ".join(fields)
        )
    return cls(**{k: _coerce(name, fields[k], v) for k, v in raw.items()})


def from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from nested dicts (missing keys take defaults)."""
    unknown = sorted(set(raw) - set(_SECTION_TYPES))
    if unknown:
        raise ConfigError(
            f"unknown config section [{unknown[0]}]; sections are: " + ", ".join(_SECTION_TYPES)
        )
    cfg = Config(**{name: _build_section(name, sec) for name, sec in raw.items()})
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: Config) -> None:
    d = cfg.data
    if not d.rating_min < d.rating_max:
        raise ConfigError(
            f"data.rating_min ({d.rating_min}) must be below data.rating_max ({d.rating_max})"
        )
    if cfg.split.method == "predefined" and not d.test_path:
        raise ConfigError(
            'split.method = "predefined" needs data.test_path (the test file); '
            "set it with --set data.test_path=PATH"
        )
    if d.test_path and cfg.split.method != "predefined":
        raise ConfigError(
            'data.test_path is only used by split.method = "predefined"; '
            "set --set split.method=predefined or remove data.test_path"
        )
    if len(d.delimiter) != 1:
        raise ConfigError(f"data.delimiter must be one character, got {d.delimiter!r}")
    if not cfg.output.path:
        raise ConfigError("output.path must not be empty")
    _check_bpmf(cfg.bpmf)
    if not all(
        isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in cfg.residual.hidden_layers
    ):
        raise ConfigError(
            "residual.hidden_layers must be a list of positive integers, got "
            f"{cfg.residual.hidden_layers!r}"
        )
    if len(set(cfg.blend.models)) != len(cfg.blend.models) or len(cfg.blend.models) == 1:
        raise ConfigError(
            "blend.models must name two or more different models (or be empty), got "
            f"{cfg.blend.models!r}"
        )
    rc = cfg.recommend
    n_candidates = len({str(i) for i in rc.candidate_items})
    if rc.candidate_items and rc.k > n_candidates:
        raise ConfigError(
            f"recommend.k ({rc.k}) is larger than the {n_candidates} distinct "
            "recommend.candidate_items; lower recommend.k or list more items"
        )
    if not 0 <= cfg.autorec.input_dropout < 1:
        raise ConfigError(
            f"config key autorec.input_dropout must be in [0, 1), got {cfg.autorec.input_dropout}"
        )
    if cfg.split.method in ("random", "user", "time") and not 0 < cfg.split.test_fraction < 1:
        raise ConfigError(
            f"split.test_fraction must be strictly between 0 and 1 for split.method = "
            f"{cfg.split.method!r}, got {cfg.split.test_fraction}"
        )


def _check_bpmf(b: BPMFConfig) -> None:
    for key in ("beta0", "w0_scale", "noise_precision", "noise_shape", "noise_rate"):
        if getattr(b, key) <= 0:
            raise ConfigError(
                f"config key bpmf.{key} must be > 0 (a precision or prior parameter), "
                f"got {getattr(b, key)!r}"
            )
    if b.nu0 and b.nu0 <= b.rank:
        raise ConfigError(
            f"config key bpmf.nu0 must be 0 (rank + 1) or above bpmf.rank={b.rank} for a proper "
            f"Wishart prior, got {b.nu0!r}"
        )
    if b.burn_in >= b.samples:
        raise ConfigError(
            f"config key bpmf.burn_in ({b.burn_in}) must be below bpmf.samples ({b.samples}), the "
            "total number of sweeps; raise bpmf.samples or lower bpmf.burn_in"
        )
    if b.samples - b.burn_in < b.thin:
        raise ConfigError(
            f"config key bpmf.thin ({b.thin}) keeps no sample of the {b.samples - b.burn_in} "
            "sweeps after burn-in; lower bpmf.thin or raise bpmf.samples"
        )


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` into its key path and value (a TOML literal or a string)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} must look like section.key=value")
    key, value_text = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if len(parts) < 2 or not all(parts[:2]):
        raise ConfigError(f"--set {text!r} must look like section.key=value")
    if parts[0] == "spark" and parts[1] == "conf":
        if len(parts) < 3:
            raise ConfigError(
                "--set spark.conf.<property>=value needs a property, "
                "e.g. spark.conf.spark.sql.shuffle.partitions=8"
            )
        path = ["spark", "conf", ".".join(parts[2:])]
    elif len(parts) != 2:
        raise ConfigError(f"--set {text!r}: keys have two parts, section.key")
    else:
        path = parts
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text
    return path, value


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple = (), default=None
) -> Config:
    """Read a TOML config, apply ``--set`` overrides, validate.

    Without ``path``: ``default`` (a file from :func:`default_config_file`), else
    ``conf/local.toml``.
    """
    path = Path(path) if path else (default or DEFAULT_CONFIG)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; pass an existing file with --config")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for text in overrides:
        keys, value = parse_override(text)
        if not isinstance(value, str):  # keep the text for string keys (see _Override)
            value = _Override(value, text.split("=", 1)[1].strip())
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {k} is not a table")
        node[keys[-1]] = value
    return from_dict(raw)


def reference() -> list[tuple[str, Any, str]]:
    """(key, default, doc) for every config key, in section order: the README's reference."""
    rows = []
    for name, cls in _SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            rows.append((f"{name}.{f.name}", default, f.metadata.get("doc", "")))
    return rows


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def reference_markdown() -> str:
    """The config reference as a Markdown table (the README embeds exactly this)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, doc in reference():
        shown = "—" if default is None else f"`{_toml_literal(default)}`"
        meaning = doc.replace("|", "\\|")
        lines.append(f"| `{key}` | {shown} | {meaning} |")
    return "\n".join(lines)
