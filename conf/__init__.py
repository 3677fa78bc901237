"""The shipped configs; an installed mfspark has this directory as the package ``mfspark.conf``.

``conf/local.toml`` is the default ``--config`` of every job (``conf/benchmark.toml`` of the
benchmark job); ``conf/cluster.toml`` is an example for ``spark-submit``.
"""
