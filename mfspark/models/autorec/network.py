"""The AutoRec network in numpy on sparse rows: forward pass, masked loss and its gradient.

No Spark here, so the math is tested without a JVM.

A *row* is one item's ratings by all N users (I-AutoRec, ``by_item``) or one user's ratings of
all items (U-AutoRec, ``by_user``); N is the row width. With the input x ∈ R^N (missing = 0),
hidden size h, encoder E (N × h), hidden bias m (h), decoder D (N × h), output bias b (N):

    z = Eᵀx + m,   a = g(z)  (g = sigmoid by default),   x̂_c = D_c · a + b_c  (identity output)

    J = Σ_rows Σ_c∈Ω_row (x̂_c − y_c)²  +  (λ/2) (‖E‖² + ‖D‖²)

where Ω_row are the row's observed training cells and y their ratings. The biases are not
penalised. The input layer is a sparse × dense product (the CSR of a block's rows times E);
the output is needed, and differentiated, only at the observed cells: a gather
x̂_c = D_c · a + b_c over the (row, column) pairs, never an N-wide dense layer. With
S the CSR of residuals 2(x̂ − y) at the observed cells:

    ∂J/∂b = column sums of S,   ∂J/∂D = Sᵀ A,   ∂J/∂A = S D,   ∂J/∂Z = ∂J/∂A ⊙ g'(Z),
    ∂J/∂E = Xᵀ ∂J/∂Z,           ∂J/∂m = column sums of ∂J/∂Z    (+ λE, λD for the penalty)

Cost per block: five sparse × dense products, each (cells × h) multiply-adds; memory: the
block's dense (rows × h) activations plus (touched columns × h) for its gradient rows.

Parameters travel as one flat vector θ = [E, D, m, b] (see :class:`Shape`), which the
optimisers (:mod:`mfspark.models.autorec.optim`) update as a whole.

*Denoising* (input dropout p > 0): each input cell is zeroed with probability p and the kept
ones are scaled by 1/(1 − p) (so the expected input equals the clean one, which is what the
network sees when predicting); the loss stays on all observed training cells. Which cells are
dropped depends only on (seed, iteration, row, column) — a counter-based hash — so it does not
depend on how rows are grouped into blocks or partitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mfspark.blocks.random import _splitmix64, _to_unit

ACTIVATIONS = ("sigmoid", "tanh", "relu")

# Cells per chunk of the output gather: bounds the (cells × h) temporary.
GATHER_CHUNK = 16_384

# Streams of the keyed uniform numbers (so dropout and the validation split never coincide).
STREAM_VALIDATION = 1
STREAM_DROPOUT = 2


@dataclass(frozen=True)
class Shape:
    """Row width N and hidden size h; positions of E, D, m, b in the flat parameter vector."""

    width: int
    hidden: int

    @property
    def size(self) -> int:
        return 2 * self.width * self.hidden + self.hidden + self.width

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Views (E, D, m, b) into ``theta`` (no copies: writing a view writes θ)."""
        n, h = self.width, self.hidden
        nh = n * h
        return (
            theta[:nh].reshape(n, h),
            theta[nh : 2 * nh].reshape(n, h),
            theta[2 * nh : 2 * nh + h],
            theta[2 * nh + h :],
        )

    def weight_slice(self) -> slice:
        """The penalised part of θ (E and D)."""
        return slice(0, 2 * self.width * self.hidden)


def init_params(shape: Shape, seed: int, init_std: float, output_bias: float, dtype) -> np.ndarray:
    """θ₀: E, D ~ N(0, init_std²) from ``seed``; hidden bias 0; output bias ``output_bias``
    (the global train mean, so the first reconstruction is the mean and not 0)."""
    rng = np.random.default_rng(seed)
    theta = np.zeros(shape.size, dtype=dtype)
    w = shape.weight_slice()
    theta[w] = rng.normal(0.0, init_std, w.stop).astype(dtype)
    theta[2 * shape.width * shape.hidden + shape.hidden :] = output_bias
    return theta


def keyed_uniform(seed: int, stream: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """U[0, 1) numbers that depend only on (seed, stream, row, column) — not on any order."""
    r = np.asarray(rows, np.uint64)
    c = np.asarray(cols, np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(
            np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
            + np.uint64(stream) * np.uint64(0xD1B54A32D192ED03)
        )
        z = _splitmix64(_splitmix64(key ^ r) ^ c)
    return _to_unit(z)


def activate(z: np.ndarray, activation: str) -> np.ndarray:
    """g(z) in place."""
    if activation == "sigmoid":
        # 1/(1+e^{-z}), computed without overflow warnings for large |z|
        np.negative(z, out=z)
        np.exp(np.clip(z, -60, 60, out=z), out=z)
        z += 1.0
        np.reciprocal(z, out=z)
    elif activation == "tanh":
        np.tanh(z, out=z)
    elif activation == "relu":
        np.maximum(z, 0, out=z)
    else:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return z


def activation_slope(a: np.ndarray, activation: str) -> np.ndarray:
    """g'(z) expressed through a = g(z)."""
    if activation == "sigmoid":
        return a * (1.0 - a)
    if activation == "tanh":
        return 1.0 - a * a
    return (a > 0).astype(a.dtype)


@dataclass
class RowBlock:
    """Some rows of ``ae_inputs`` as CSR matrices over the full row width.

    ``inputs`` holds the training cells the network sees and is fitted to (the train cells
    minus the validation share), ``validation`` the held-back train cells (scored only, for
    early stopping), ``test`` the held-out test cells. ``row_idx`` is each row's idx.
    """

    row_idx: np.ndarray
    inputs: sp.csr_matrix
    validation: sp.csr_matrix
    test: sp.csr_matrix

    @property
    def n_rows(self) -> int:
        return len(self.row_idx)

    @classmethod
    def from_lists(
        cls,
        row_idx: np.ndarray,
        train_offsets: np.ndarray,
        train_cols: np.ndarray,
        train_values: np.ndarray,
        test_offsets: np.ndarray,
        test_cols: np.ndarray,
        test_values: np.ndarray,
        width: int,
        validation_fraction: float,
        seed: int,
        dtype,
    ) -> RowBlock:
        """Build from list-array pieces (offsets into flat column/value arrays, as Arrow
        stores ``train_indices``/``train_values``). A train cell is held back for validation
        when its keyed uniform (seed, row idx, column) is below ``validation_fraction``."""
        row_idx = np.asarray(row_idx, np.int64)
        n = len(row_idx)
        lengths = np.diff(train_offsets)
        rows = np.repeat(np.arange(n), lengths)
        if validation_fraction > 0:
            held = (
                keyed_uniform(seed, STREAM_VALIDATION, row_idx[rows], train_cols) < validation_fraction
            )
        else:
            held = np.zeros(len(train_cols), bool)

        def csr(keep: np.ndarray, cols: np.ndarray, values: np.ndarray, row_of: np.ndarray):
            counts = np.bincount(row_of[keep], minlength=n)
            indptr = np.zeros(n + 1, np.int64)
            np.cumsum(counts, out=indptr[1:])
            # Cells stay in ascending column order within a row (as stored), so every product
            # sums a row's cells in the same order whichever block the row is in.
            return sp.csr_matrix(
                (values[keep].astype(dtype), cols[keep].astype(np.int32), indptr), shape=(n, width)
            )

        test_rows = np.repeat(np.arange(n), np.diff(test_offsets))
        all_test = np.ones(len(test_cols), bool)
        return cls(
            row_idx,
            csr(~held, train_cols, train_values, rows),
            csr(held, train_cols, train_values, rows),
            csr(all_test, test_cols, test_values, test_rows),
        )


def hidden_layer(
    inputs: sp.csr_matrix, encoder: np.ndarray, hidden_bias: np.ndarray, activation: str
) -> np.ndarray:
    """A = g(X E + m) for the block's rows (rows × h): the sparse × dense input layer."""
    z = np.asarray(inputs @ encoder)
    z += hidden_bias
    return activate(z, activation)


def gather_output(
    hidden: np.ndarray,
    decoder: np.ndarray,
    output_bias: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    """x̂ at the cells (rows[k], cols[k]) only: D_col · a_row + b_col, in chunks of cells."""
    out = np.empty(len(rows), dtype=np.float64)
    for a in range(0, len(rows), GATHER_CHUNK):
        r, c = rows[a : a + GATHER_CHUNK], cols[a : a + GATHER_CHUNK]
        # In the weights' dtype (a float64 cast of the gathered rows would cost more than the
        # products); a sum of h terms in float32 is accurate to ~1e-6 relative.
        out[a : a + GATHER_CHUNK] = np.einsum(
            "ij,ij->i", np.take(hidden, r, axis=0), np.take(decoder, c, axis=0)
        )
    out += np.take(output_bias, cols)
    return out


def _cells(m: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(row position, column) of every stored cell, in storage order."""
    return np.repeat(np.arange(m.shape[0]), np.diff(m.indptr)), m.indices


def dropout_inputs(block: RowBlock, rate: float, seed: int, iteration: int) -> sp.csr_matrix:
    """The block's inputs with cells dropped (probability ``rate``) and the rest scaled by
    1/(1 − rate); the drop depends only on (seed, iteration, row idx, column)."""
    x = block.inputs
    if rate <= 0 or x.nnz == 0:
        return x
    rows, cols = _cells(x)
    u = keyed_uniform(seed * 1_000_003 + iteration, STREAM_DROPOUT, block.row_idx[rows], cols)
    data = np.where(u >= rate, x.data / (1.0 - rate), 0.0).astype(x.dtype)
    return sp.csr_matrix((data, x.indices, x.indptr), shape=x.shape)


@dataclass
class BlockTotals:
    """Sums over the rows of one or more blocks (they add up across blocks and partitions).

    ``loss`` is the data term of J at the (possibly corrupted) training inputs; the ``*_sse`` /
    ``*_n`` are squared errors and counts of the clean reconstruction at the training,
    validation and test cells; ``gradient`` (θ-shaped, without the penalty) is None when not
    asked for.
    """

    loss: float = 0.0
    train_sse: float = 0.0
    train_n: int = 0
    validation_sse: float = 0.0
    validation_n: int = 0
    test_sse: float = 0.0
    test_n: int = 0
    gradient: np.ndarray | None = None

    STATS = ("loss", "train_sse", "train_n", "validation_sse", "validation_n", "test_sse", "test_n")

    def add(self, other: BlockTotals) -> BlockTotals:
        """self += other (the gradient in place); returns self."""
        for name in self.STATS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.gradient is not None:
            if self.gradient is None:
                self.gradient = other.gradient
            else:
                self.gradient += other.gradient
        return self


def _sse(pred: np.ndarray, m: sp.csr_matrix) -> float:
    e = pred - m.data
    return float(e @ e)


def block_totals(
    theta: np.ndarray,
    shape: Shape,
    block: RowBlock,
    activation: str,
    *,
    gradient_out: np.ndarray | None = None,
    dropout: float = 0.0,
    seed: int = 0,
    iteration: int = 0,
    clip: tuple[float, float] | None = None,
) -> BlockTotals:
    """Loss of one block and, when ``gradient_out`` (θ-shaped) is given, its gradient added
    into ``gradient_out``; plus clean-reconstruction errors at train, validation and test cells.

    Predictions scored at validation and test cells are clipped to ``clip`` when given (the
    loss and gradient never are: they are the smooth objective).
    """
    encoder, decoder, hidden_bias, output_bias = shape.unpack(theta)
    out = BlockTotals()
    if block.n_rows == 0:
        return out
    x = block.inputs
    x_in = dropout_inputs(block, dropout, seed, iteration)
    a = hidden_layer(x_in, encoder, hidden_bias, activation)
    rows, cols = _cells(x)
    pred = gather_output(a, decoder, output_bias, rows, cols)
    resid = pred - x.data
    out.loss = float(resid @ resid)

    if gradient_out is not None:
        g_enc, g_dec, g_hb, g_ob = shape.unpack(gradient_out)
        dtype = gradient_out.dtype
        s = sp.csr_matrix(((2.0 * resid).astype(dtype), x.indices, x.indptr), shape=x.shape)
        g_ob += np.bincount(cols, weights=2.0 * resid, minlength=shape.width).astype(dtype)
        # Only the columns the block touches get gradient rows: compact them, multiply, scatter.
        touched, compact = np.unique(cols, return_inverse=True)
        s_compact = sp.csr_matrix(
            (s.data, compact.astype(np.int32), s.indptr), (x.shape[0], len(touched))
        )
        g_dec[touched] += np.asarray(s_compact.T @ a, dtype=dtype)
        d_a = np.asarray(s @ decoder)
        d_z = d_a * activation_slope(a, activation)
        g_hb += d_z.sum(axis=0, dtype=np.float64).astype(dtype)
        x_compact = sp.csr_matrix((x_in.data, compact.astype(np.int32), x_in.indptr), s_compact.shape)
        g_enc[touched] += np.asarray(x_compact.T @ d_z, dtype=dtype)
        out.gradient = gradient_out

    if dropout > 0:  # the clean reconstruction, for the reported errors
        a = hidden_layer(x, encoder, hidden_bias, activation)
        pred = gather_output(a, decoder, output_bias, rows, cols)
    out.train_sse, out.train_n = _sse(pred, x), x.nnz
    for name, m in (("validation", block.validation), ("test", block.test)):
        if m.nnz:
            p = gather_output(a, decoder, output_bias, *_cells(m))
            if clip is not None:
                np.clip(p, clip[0], clip[1], out=p)
            setattr(out, f"{name}_sse", _sse(p, m))
            setattr(out, f"{name}_n", m.nnz)
    return out


def predict_cells(
    theta: np.ndarray,
    shape: Shape,
    inputs: sp.csr_matrix,
    cells: sp.csr_matrix,
    activation: str,
    clip: tuple[float, float] | None = None,
) -> np.ndarray:
    """Reconstruction at the stored cells of ``cells`` (e.g. the test cells), from ``inputs``;
    in ``cells``' storage order."""
    encoder, decoder, hidden_bias, output_bias = shape.unpack(theta)
    if cells.nnz == 0:
        return np.zeros(0)
    a = hidden_layer(inputs, encoder, hidden_bias, activation)
    pred = gather_output(a, decoder, output_bias, *_cells(cells))
    if clip is not None:
        np.clip(pred, clip[0], clip[1], out=pred)
    return pred


def penalty(theta: np.ndarray, shape: Shape, l2: float) -> float:
    """(λ/2)(‖E‖² + ‖D‖²), accumulated in float64."""
    from mfspark.models.autorec.optim import dot

    w = theta[shape.weight_slice()]
    return 0.5 * l2 * dot(w, w)


def add_penalty_gradient(gradient: np.ndarray, theta: np.ndarray, shape: Shape, l2: float) -> None:
    """gradient += λ θ on the weights (E, D), in place."""
    w = shape.weight_slice()
    gradient[w] += (l2 * theta[w]).astype(gradient.dtype, copy=False)
