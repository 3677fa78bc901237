"""Rating blocks shared by every model that solves one side given the other.

:mod:`mfspark.blocks.rows` — a block's ratings (column-tiled CSR) and its normal equations
(numpy); :mod:`mfspark.blocks.random` — randomness keyed by entity id;
:mod:`mfspark.blocks.spark` — ratings partitioned once into cached per-executor blocks, and the
broadcast/solve loop that runs a per-block function over one side.
"""
