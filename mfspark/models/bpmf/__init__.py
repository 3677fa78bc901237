"""Bayesian MF (BPMF with biases) by Gibbs sampling on the shared rating blocks.

:mod:`~mfspark.models.bpmf.kernels` (numpy: hyper-parameter, row and noise draws),
:mod:`~mfspark.models.bpmf.sampler` (the Gibbs loop and the single-process sampler),
:mod:`~mfspark.models.bpmf.spark` (the sampler on a :class:`mfspark.blocks.spark.BlockStore`),
:mod:`~mfspark.models.bpmf.posterior` (posterior mean + saved samples as Parquet, predictions
with a predictive sd), :mod:`~mfspark.models.bpmf.job` (the ``train_bpmf`` stage) and
:mod:`~mfspark.models.bpmf.ml` (the ``BayesianMF`` estimator).
"""
