"""TPP's penalties as pure functions and as registered Keras regularizers.

The functions take tensors and return scalars; the regularizers read the keep-mask, the
strength λ and the optimizer's step size η from non-trainable variables that a
:class:`~keras_tpp.wrappers.PruningWrapper` binds to them, so the values can change between
steps without retracing.

- Gram term:   L_gram = (1/N²) · Σ_ij [(W Wᵀ)_ij · (1 − m_i m_j)]²,  W of shape (N, K),
  weighted c·λ ("exact"), or min(c·λ, 1 / (η · H(W))) ("bounded", the default; see
  :func:`gram_curvature_bound` and :class:`GramPenalty`).
- Masked L2:   (λ/2) · Σ_{j pruned} ‖x_j‖² + (λ_kept/2) · Σ_{j kept} ‖x_j‖²,
  for kernels (per output filter), biases and batch-norm γ/β (per channel).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
from keras import ops

from keras_tpp import filters
from keras_tpp.validation import finite_float, integer, one_of

_PACKAGE = "keras_tpp"

#: Formulations of the gram term's weight (see :class:`GramPenalty`).
GRAM_FORMULATIONS = ("bounded", "exact")

#: The bounded formulation keeps η · (curvature of the weighted gram term) <= this. Gradient
#: descent on a quadratic is stable below 2; heavy-ball momentum β below 2(1+β); Nesterov
#: momentum β below 2(1+β)/(1+2β) (1.36 at β = 0.9). 1 is inside all three.
STEP_BOUND = 1.0


def _masked_gram(matrix: Any, keep_mask: Any) -> tuple[Any, Any]:
    matrix = ops.convert_to_tensor(matrix)
    mask = ops.cast(keep_mask, matrix.dtype)
    gram = ops.matmul(matrix, ops.transpose(matrix))
    return gram, gram * (1.0 - ops.outer(mask, mask))


def gram_penalty(matrix: Any, keep_mask: Any) -> Any:
    """(1/N²) Σ_ij [(W Wᵀ)_ij (1 − m_i m_j)]² for W of shape (N, K) and m of shape (N,).

    Kept–kept entries (including the kept diagonal) contribute nothing.
    """
    _, masked = _masked_gram(matrix, keep_mask)
    n = ops.cast(ops.shape(masked)[0], masked.dtype)
    return ops.sum(ops.square(masked)) / (n * n)


def _curvature_bound_of_gram(gram: Any) -> Any:
    gram = ops.stop_gradient(gram)
    n = ops.cast(ops.shape(gram)[0], gram.dtype)
    frobenius = ops.sqrt(ops.sum(ops.square(gram)))
    gershgorin = ops.max(ops.sum(ops.abs(gram), axis=1))
    return 12.0 * ops.minimum(frobenius, gershgorin) / (n * n)


def gram_curvature_bound(matrix: Any) -> Any:
    """H(W) = 12 · min(‖G‖_F, max_i Σ_j |G_ij|) / N², G = W Wᵀ, with no gradient.

    An upper bound of the largest eigenvalue of the Hessian of :func:`gram_penalty` at W,
    for any keep-mask: along a direction D,

        d²L_gram[D, D] = (2/N²) Σ_ij M_ij (d_i·w_j + w_i·d_j)² + (4/N²) tr((G∘M) D Dᵀ)
                       <= (8/N²) ‖W‖₂² ‖D‖² + (4/N²) ‖W‖₂² ‖D‖²,

    with M = 1 − m mᵀ (G∘M = G − PGP with P = diag(m), so xᵀ(G∘M)x <= xᵀGx), and both
    ‖G‖_F and the largest absolute row sum bound ‖W‖₂² = λ_max(G). It is attained when one
    pruned filter dominates W (L = ‖w‖⁴/N² has curvature 12‖w‖²/N² along w).
    """
    gram, _ = _masked_gram(matrix, ops.ones((ops.shape(matrix)[0],)))
    return _curvature_bound_of_gram(gram)


def bounded_gram_weight(weight: Any, gram: Any, step_size: Any,
                        step_bound: float = STEP_BOUND) -> Any:
    """min(weight, step_bound / (η · H(W))) from the gram matrix G = W Wᵀ (no gradient).

    ``weight`` is c·λ. A step size η <= 0 means "unknown": the weight is returned unchanged.
    """
    bound = _curvature_bound_of_gram(gram)
    eta = ops.cast(step_size, gram.dtype)
    denominator = eta * bound
    limit = step_bound / ops.maximum(denominator, 1e-30)
    capped = ops.minimum(weight, limit)
    return ops.where(denominator > 0, capped, weight)


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
        self._step_size = None

    def bind(self, keep_mask: Any, strength: Any, kept_strength: Any = None,
             step_size: Any = None) -> "_BoundRegularizer":
        """Attach the variables read at each call; returns self.

        ``step_size`` (η, the optimizer's learning rate, 0 = unknown) is read by the
        bounded gram term only.
        """
        self._keep_mask = keep_mask
        self._strength = strength
        self._kept_strength = kept_strength
        self._step_size = step_size
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
    """TPP's decorrelation term w · L_gram on a producer's kernel.

    L_gram = (1/N²) Σ_ij [(W Wᵀ)_ij (1 − m_i m_j)]², W the (N, K) filter matrix.

    Args:
        coefficient: c_gram, 1000 by default (Wang & Fu, 2023).
        axis: axis of the kernel that indexes output filters (-1 for Conv/Dense).
        formulation: how the weight w is set:

            - ``"exact"``: w = c·λ, the paper's penalty.
            - ``"bounded"`` (default): w = min(c·λ, 1 / (η · H(W))), where η is the
              optimizer's learning rate (bound by the PruningCallback; 0 = unknown, then
              w = c·λ) and H(W) = 12·min(‖G‖_F, max row sum |G|)/N² is an upper bound of the
              curvature of L_gram at the current weights (:func:`gram_curvature_bound`),
              computed without gradient. One gradient step of the penalty then moves no
              direction by more than its own distance to the local quadratic minimum
              (η · w · H <= 1), so the term cannot make SGD diverge (with or without
              momentum); when η · c · λ · H(W) <= 1 — e.g. SGD at the paper's LR 1e-3 with
              H(W) <= 1, true of the paper's layers — it equals the exact penalty.
    """

    def __init__(self, coefficient: float = 1000.0, axis: int = -1,
                 formulation: str = "bounded") -> None:
        super().__init__()
        self.coefficient = finite_float(coefficient, "gram_coefficient", minimum=0.0)
        self.axis = integer(axis, "axis")
        self.formulation = one_of(formulation, "gram_formulation", GRAM_FORMULATIONS)

    def __call__(self, kernel: Any) -> Any:
        self._require_bound()
        matrix = filters.filter_matrix(kernel, self.axis)
        gram, masked = _masked_gram(matrix, self._keep_mask)
        n = ops.cast(ops.shape(masked)[0], masked.dtype)
        value = ops.sum(ops.square(masked)) / (n * n)
        weight = self.coefficient * ops.cast(self._strength, value.dtype)
        if self.formulation == "bounded" and self._step_size is not None:
            weight = bounded_gram_weight(weight, gram, self._step_size)
        return weight * value

    def get_config(self) -> dict:
        return {"coefficient": self.coefficient, "axis": self.axis,
                "formulation": self.formulation}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedL2(_BoundRegularizer):
    """(λ/2)·Σ_{pruned} ‖x_j‖² (+ (λ_kept/2)·Σ_{kept} ‖x_j‖²) on kernels, biases, γ, β.

    Args:
        axis: axis of the weight that indexes channels.
    """

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        self.axis = integer(axis, "axis")

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
