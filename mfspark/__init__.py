"""mfspark: latent-factor recommender models on Apache Spark.

Blocked ALS with user/item biases, autoencoder inputs and masked evaluation, as batch jobs
(``jobs/``) and as a ``pyspark.ml`` estimator (:class:`BiasedALS`).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["BiasedALS", "BiasedALSModel", "__version__"]


def __getattr__(name: str):
    # The estimator imports pyspark.ml; keep `import mfspark` light for numpy-only kernels.
    if name in ("BiasedALS", "BiasedALSModel"):
        from mfspark import ml

        return getattr(ml, name)
    raise AttributeError(f"module 'mfspark' has no attribute {name!r}")
