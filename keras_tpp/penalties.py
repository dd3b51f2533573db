"""TPP's penalties (SPEC §1) as pure functions and as registered Keras regularizers.

The functions take tensors and return scalars; the regularizers read the keep-mask and the
strength λ from non-trainable variables that a :class:`~keras_tpp.wrappers.PruningWrapper`
binds to them, so the values can change between steps without retracing.

- Gram term:   L_gram = (1/N²) · Σ_ij [(W Wᵀ)_ij · (1 − m_i m_j)]²,  W of shape (N, K).
- Masked L2:   (λ/2) · Σ_{j pruned} ‖x_j‖² + (λ_kept/2) · Σ_{j kept} ‖x_j‖²,
  for kernels (per output filter), biases and batch-norm γ/β (per channel).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
from keras import ops

from keras_tpp import filters

_PACKAGE = "keras_tpp"


def gram_penalty(matrix: Any, keep_mask: Any) -> Any:
    """(1/N²) Σ_ij [(W Wᵀ)_ij (1 − m_i m_j)]² for W of shape (N, K) and m of shape (N,).

    Kept–kept entries (including the kept diagonal) contribute nothing.
    """
    matrix = ops.convert_to_tensor(matrix)
    mask = ops.cast(keep_mask, matrix.dtype)
    gram = ops.matmul(matrix, ops.transpose(matrix))
    off_kept = 1.0 - ops.outer(mask, mask)
    n = ops.cast(ops.shape(matrix)[0], matrix.dtype)
    return ops.sum(ops.square(gram * off_kept)) / (n * n)


def channel_sums_of_squares(x: Any, axis: int = -1) -> Any:
    """Σ of x² over every axis but ``axis``: one value per channel, shape (N,)."""
    x = ops.convert_to_tensor(x)
    rank = len(x.shape)
    axes = tuple(i for i in range(rank) if i != axis % rank)
    squares = ops.square(x)
    return ops.sum(squares, axis=axes) if axes else squares


def masked_l2(
    x: Any, keep_mask: Any, strength: Any, kept_strength: Any = 0.0, axis: int = -1
) -> Any:
    """(λ/2)·Σ_{pruned} ‖x_j‖² + (λ_kept/2)·Σ_{kept} ‖x_j‖² over channels along ``axis``."""
    per_channel = channel_sums_of_squares(x, axis)
    mask = ops.cast(keep_mask, per_channel.dtype)
    pruned = ops.sum(per_channel * (1.0 - mask))
    kept = ops.sum(per_channel * mask)
    return 0.5 * (ops.cast(strength, pruned.dtype) * pruned
                  + ops.cast(kept_strength, kept.dtype) * kept)


class _BoundRegularizer(keras.regularizers.Regularizer):
    """Base for regularizers that read a keep-mask and strengths from bound variables."""

    def __init__(self) -> None:
        self._keep_mask = None
        self._strength = None
        self._kept_strength = None

    def bind(self, keep_mask: Any, strength: Any, kept_strength: Any = None) -> "_BoundRegularizer":
        """Attach the variables read at each call; returns self."""
        self._keep_mask = keep_mask
        self._strength = strength
        self._kept_strength = kept_strength
        return self

    def _require_bound(self) -> None:
        if self._keep_mask is None:
            raise ValueError(
                f"{type(self).__name__} is not bound to a keep-mask: it is attached by "
                "keras_tpp.prepare() through a PruningWrapper and is not meant to be used "
                "as a layer's kernel_regularizer directly."
            )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GramPenalty(_BoundRegularizer):
    """coefficient · λ · L_gram on a producer's kernel (SPEC §1's decorrelation term).

    Args:
        coefficient: c_gram, 1000 by default.
        axis: axis of the kernel that indexes output filters (-1 for Conv/Dense).
    """

    def __init__(self, coefficient: float = 1000.0, axis: int = -1) -> None:
        super().__init__()
        self.coefficient = float(coefficient)
        self.axis = int(axis)

    def __call__(self, kernel: Any) -> Any:
        self._require_bound()
        matrix = filters.filter_matrix(kernel, self.axis)
        value = gram_penalty(matrix, self._keep_mask)
        return self.coefficient * ops.cast(self._strength, value.dtype) * value

    def get_config(self) -> dict:
        return {"coefficient": self.coefficient, "axis": self.axis}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedL2(_BoundRegularizer):
    """(λ/2)·Σ_{pruned} ‖x_j‖² (+ (λ_kept/2)·Σ_{kept} ‖x_j‖²) on kernels, biases, γ, β.

    Args:
        axis: axis of the weight that indexes channels.
    """

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        self.axis = int(axis)

    def __call__(self, x: Any) -> Any:
        self._require_bound()
        kept_strength = 0.0 if self._kept_strength is None else self._kept_strength
        return masked_l2(x, self._keep_mask, self._strength, kept_strength, self.axis)

    def get_config(self) -> dict:
        return {"axis": self.axis}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RegularizerSum(keras.regularizers.Regularizer):
    """Sum of several regularizers on one weight (a user's L2 plus TPP's penalties)."""

    def __init__(self, regularizers: Sequence[Callable]) -> None:
        self.regularizers = [keras.regularizers.get(r) for r in regularizers if r is not None]

    def __call__(self, x: Any) -> Any:
        total = None
        for regularizer in self.regularizers:
            value = regularizer(x)
            total = value if total is None else total + value
        return total if total is not None else ops.zeros(())

    def get_config(self) -> dict:
        return {"regularizers": [keras.regularizers.serialize(r) for r in self.regularizers]}

    @classmethod
    def from_config(cls, config: dict) -> "RegularizerSum":
        return cls([keras.regularizers.deserialize(r) for r in config["regularizers"]])
