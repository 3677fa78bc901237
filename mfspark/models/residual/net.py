"""A small multilayer perceptron in numpy: ReLU hidden layers, a linear output, squared loss
with L2 on the weights, Adam, minibatches, early stopping on a validation share.

No Spark here: the network is trained on the driver on a bounded set of feature rows (see
:mod:`mfspark.models.residual.job`) and applied per Arrow batch on the executors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetParams:
    hidden: tuple[int, ...] = (32, 16)
    learning_rate: float = 1e-3
    l2: float = 1e-4
    epochs: int = 30
    batch_size: int = 512
    patience: int = 3
    seed: int = 42


@dataclass
class MLP:
    """Weights and biases per layer, plus the input standardisation (mean, scale)."""

    mean: np.ndarray
    scale: np.ndarray
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    enabled: bool = True  # False: the network predicts 0 (it did not beat 0 on validation)

    @classmethod
    def initial(cls, features: np.ndarray, hidden, seed: int) -> MLP:
        mean = features.mean(axis=0, dtype=np.float64)
        scale = features.std(axis=0, dtype=np.float64)
        scale[~(scale > 0)] = 1.0  # a constant feature (e.g. no timestamps) stays 0
        rng = np.random.default_rng(seed)
        sizes = [features.shape[1], *hidden, 1]
        weights = [
            rng.normal(0.0, math.sqrt(2.0 / a), (a, b)) for a, b in zip(sizes, sizes[1:], strict=False)
        ]
        weights[-1] *= 0.1  # start near "no correction"
        biases = [np.zeros(b) for b in sizes[1:]]
        return cls(mean, scale, weights, biases)

    def forward(self, features: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """(activations of every layer, output)."""
        h = (np.asarray(features, np.float64) - self.mean) / self.scale
        acts = [h]
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = np.maximum(h @ w + b, 0.0)
            acts.append(h)
        return acts, (h @ self.weights[-1] + self.biases[-1])[:, 0]

    def predict(self, features: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        if not self.enabled or not len(features):
            return np.zeros(len(features))
        return np.concatenate(
            [self.forward(features[a : a + chunk])[1] for a in range(0, len(features), chunk)]
        )

    def copy(self) -> MLP:
        return MLP(
            self.mean, self.scale, [w.copy() for w in self.weights], [b.copy() for b in self.biases]
        )


@dataclass
class EpochRecord:
    epoch: int
    train_rmse: float
    validation_rmse: float


@dataclass
class NetResult:
    net: MLP
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    baseline_validation_rmse: float = 0.0  # RMSE of predicting 0 (no correction)


def _mse(net: MLP, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((net.predict(x) - y) ** 2)) if len(y) else 0.0


def train_mlp(
    features: np.ndarray,
    target: np.ndarray,
    is_validation: np.ndarray,
    params: NetParams,
) -> NetResult:
    """Fit the net on the rows not in ``is_validation``; keep the epoch with the lowest
    validation error; stop after ``patience`` epochs without improvement.

    The net is disabled (predicts 0) unless its best validation error is below that of
    predicting 0: a correction that does not help on held-out rows is not applied.
    """
    x_train, y_train = features[~is_validation], target[~is_validation]
    x_val, y_val = features[is_validation], target[is_validation]
    net = MLP.initial(x_train, params.hidden, params.seed)
    rng = np.random.default_rng(params.seed + 1)
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in (*net.weights, *net.biases)]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    zero_rmse = math.sqrt(float(np.mean(y_val**2))) if len(y_val) else 0.0
    best, best_mse, stale = net.copy(), float("inf"), 0
    result = NetResult(best, baseline_validation_rmse=zero_rmse)
    n = len(y_train)
    for epoch in range(1, params.epochs + 1):
        order = rng.permutation(n)
        for a in range(0, n, params.batch_size):
            idx = order[a : a + params.batch_size]
            acts, out = net.forward(x_train[idx])
            grad = (2.0 / len(idx)) * (out - y_train[idx])[:, None]  # d loss / d output
            grads_w, grads_b = [], []
            for layer in range(len(net.weights) - 1, -1, -1):
                grads_w.append(acts[layer].T @ grad + 2.0 * params.l2 * net.weights[layer])
                grads_b.append(grad.sum(axis=0))
                if layer:
                    grad = (grad @ net.weights[layer].T) * (acts[layer] > 0)
            step += 1
            params_and_grads = zip(
                (*net.weights, *net.biases), (*grads_w[::-1], *grads_b[::-1]), moments, strict=True
            )
            for p, g, (m, v) in params_and_grads:
                m *= beta1
                m += (1 - beta1) * g
                v *= beta2
                v += (1 - beta2) * g * g
                m_hat = m / (1 - beta1**step)
                v_hat = v / (1 - beta2**step)
                p -= params.learning_rate * m_hat / (np.sqrt(v_hat) + eps)
        val_mse = _mse(net, x_val, y_val) if len(y_val) else _mse(net, x_train, y_train)
        record = EpochRecord(epoch, math.sqrt(_mse(net, x_train, y_train)), math.sqrt(val_mse))
        result.history.append(record)
        log.info(
            "residual net epoch %d: train RMSE %.5f, validation RMSE %.5f (no correction: %.5f)",
            epoch,
            record.train_rmse,
            record.validation_rmse,
            zero_rmse,
        )
        if val_mse < best_mse:
            best, best_mse, stale, result.best_epoch = net.copy(), val_mse, 0, epoch
        else:
            stale += 1
            if stale >= params.patience:
                break
    if len(y_val) and best_mse >= zero_rmse**2:
        log.warning(
            "residual net: best validation RMSE %.5f does not beat no correction (%.5f); "
            "the network is disabled and the model equals its base",
            math.sqrt(best_mse),
            zero_rmse,
        )
        best.enabled = False
    result.net = best
    return result
