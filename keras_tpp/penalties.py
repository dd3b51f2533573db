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

Cost. With P of the N filters pruned, only the P × N block A = W_P Wᵀ of W Wᵀ is non-zero
in L_gram: by symmetry Σ_ij = Σ_{i∈P, all j} + Σ_{i kept, j∈P}, so
L_gram = (1/N²) · Σ_{i∈P} Σ_j A_ij² (1 − m_i m_j)² (1 + [j kept]). A wrapper knows P
(``num_pruned``), so :class:`GramPenalty` computes A only (P·N·K multiply-adds) and its
gradient (4/N²)(G∘Q)W explicitly ((2N − P)·P·K) instead of W Wᵀ (N²·K) and autodiff's 2·N²·K:
(3N − P)·P·K against 3·N²·K, 0.42× at P = N/2. The pruned rows are found in-graph from the
mask. The bounded weight needs the curvature bound H(W) of the whole W Wᵀ: an upper bound of
it from A and the kept filters' norms (N·K) decides whether the cap can bind at all, and only
then is the kept block W_K W_Kᵀ computed for the exact H(W). Values and first derivatives
equal the full formula's for every mask (more entries below 1 than P: the full W Wᵀ is used).
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
    return _capped_weight(weight, _curvature_bound_of_gram(gram), step_size, step_bound)


def _capped_weight(weight: Any, bound: Any, step_size: Any,
                   step_bound: float = STEP_BOUND) -> Any:
    """min(weight, step_bound / (η · bound)); ``weight`` unchanged where η <= 0."""
    eta = ops.cast(step_size, bound.dtype)
    denominator = eta * bound
    limit = step_bound / ops.maximum(denominator, 1e-30)
    capped = ops.minimum(weight, limit)
    return ops.where(denominator > 0, capped, weight)


#: GramPenalty computes the pruned rows only for filter matrices with at least this many
#: N²·K multiply-adds; below it the whole W Wᵀ is cheaper than the ~30 extra small ops
#: (ordering, gather, condition) of the pruned-rows path on a CPU (ResNet-56's convs have
#: N²·K <= 2.4 M). Both paths give the same values and gradients.
PRUNED_ROWS_MIN_SIZE = 1 << 22

#: The cheap curvature bound decides "the cap cannot bind" only below this fraction of the
#: step bound, so that float rounding in either bound never changes the outcome.
_CHEAP_BOUND_MARGIN = 1.0 - 1e-3


def _pruned_first(matrix: Any, keep_mask: Any) -> tuple[Any, Any]:
    """W and m with rows reordered by increasing mask value (pruned filters first).

    Args:
        matrix: filter matrix W, shape (N, K).
        keep_mask: m, shape (N,).
    Returns:
        (W[order], m[order]) of shapes (N, K) and (N,), m cast to W's dtype. The order is
        computed in-graph from the mask's current contents (no gradient through it).
    """
    mask = ops.cast(keep_mask, matrix.dtype)
    order = ops.argsort(mask)
    return ops.take(matrix, order, axis=0), ops.take(mask, order, axis=0)


def _pruned_block(ordered: Any, mask: Any, num_pruned: int) -> tuple[Any, Any]:
    """A = W_P Wᵀ and its (1 − m_i m_j)² weights for the first ``num_pruned`` rows.

    Args:
        ordered: W with its pruned rows first, shape (N, K).
        mask: m in the same order, shape (N,).
        num_pruned: P, static; 0 < P < N.
    Returns:
        (A, Q) both of shape (P, N): A_ij = w_i·w_j, Q_ij = (1 − m_i m_j)².
    """
    rows = ordered[:num_pruned]
    block = ops.matmul(rows, ops.transpose(ordered))
    weights = ops.square(1.0 - ops.outer(mask[:num_pruned], mask))
    return block, weights


def _pruned_gram_value(block: Any, weights: Any, num_pruned: int, n: int) -> Any:
    """L_gram from its P × N block: (1/N²) Σ_{i<P} Σ_j A_ij² Q_ij (1 + [j >= P]).

    Equals the full (1/N²) Σ_ij G_ij² (1 − m_i m_j)² whenever every row j >= P has m_j = 1:
    pairs of two such rows have weight 0, and G, Q are symmetric, so each pair (i, j) with
    one index below P and one not appears twice in the full sum (once in A, once mirrored)
    and each pair with both below P appears in A in both orders. Scalar.
    """
    terms = ops.square(block) * weights
    total = ops.sum(terms) + ops.sum(terms[:, num_pruned:])
    return total / float(n * n)


def _pruned_gram_gradient(block: Any, weights: Any, ordered: Any, num_pruned: int,
                          n: int) -> Any:
    """∂L_gram/∂W = (4/N²) (G∘Q) W, Q_ij = (1 − m_i m_j)², from the P × N block.

    With rows ordered pruned-first and Q zero between rows >= P: rows i < P are
    Σ_j A_ij Q_ij w_j ((A∘Q) W, P·N·K multiply-adds), rows i >= P are Σ_{j<P} A_ji Q_ji w_j
    ((A∘Q)_{:, P:}ᵀ W_P, (N−P)·P·K). Shape (N, K), in the pruned-first order.
    """
    product = block * weights
    pruned_rows = ops.matmul(product, ordered)
    kept_rows = ops.matmul(ops.transpose(product[:, num_pruned:]), ordered[:num_pruned])
    return ops.concatenate([pruned_rows, kept_rows], axis=0) * (4.0 / float(n * n))


def _pruned_curvature_bounds(block: Any, ordered: Any, num_pruned: int, n: int,
                             exact: bool) -> Any:
    """H(W) = 12 · min(‖G‖_F, max_i Σ_j |G_ij|) / N² from A = W_P Wᵀ, or an upper bound of it.

    With rows ordered pruned-first, G = [[A_PP, A_PK], [A_PKᵀ, G_KK]], G_KK = W_K W_Kᵀ.
    ``exact=True`` computes G_KK ((N−P)²·K multiply-adds): the value of
    :func:`gram_curvature_bound`, up to rounding. ``exact=False`` replaces G_KK by
    |w_i·w_j| <= ‖w_i‖‖w_j‖ (N·K): ‖G_KK‖_F <= Σ_j ‖w_j‖² and
    Σ_j |(G_KK)_ij| <= ‖w_i‖ Σ_j ‖w_j‖, an upper bound of H(W). No gradient. Scalar.
    """
    block = ops.stop_gradient(block)
    kept = ops.stop_gradient(ordered[num_pruned:])
    cross = block[:, num_pruned:]  # A_PK, (P, N − P)
    squares = ops.sum(ops.square(block)) + ops.sum(ops.square(cross))
    pruned_rows = ops.sum(ops.abs(block), axis=1)
    kept_cross = ops.sum(ops.abs(cross), axis=0)
    if exact:
        kept_gram = ops.matmul(kept, ops.transpose(kept))
        squares = squares + ops.sum(ops.square(kept_gram))
        kept_rows = kept_cross + ops.sum(ops.abs(kept_gram), axis=1)
    else:
        norms = ops.sqrt(ops.sum(ops.square(kept), axis=1))
        squares = squares + ops.square(ops.sum(ops.square(norms)))
        kept_rows = kept_cross + norms * ops.sum(norms)
    rows = ops.maximum(ops.max(pruned_rows), ops.max(kept_rows))
    return 12.0 * ops.minimum(ops.sqrt(squares), rows) / float(n * n)


def _full_weighted_gram(matrix: Any, keep_mask: Any, weight: Any, step_size: Any) -> Any:
    """weight' · L_gram from the whole W Wᵀ (N²·K): any mask; weight' = weight, or capped by
    the curvature bound when ``step_size`` is not None."""
    gram, masked = _masked_gram(matrix, keep_mask)
    n = ops.cast(ops.shape(masked)[0], masked.dtype)
    value = ops.sum(ops.square(masked)) / (n * n)
    if step_size is not None:
        weight = bounded_gram_weight(weight, gram, step_size)
    return weight * value


def _pruned_weighted_gram(matrix: Any, keep_mask: Any, weight: Any, step_size: Any,
                          num_pruned: int) -> Any:
    """weight' · L_gram from W_P Wᵀ only; exact when at most ``num_pruned`` mask entries
    are below 1 (the caller checks). 0 < num_pruned < N."""
    n = int(matrix.shape[0])
    ordered, mask = _pruned_first(matrix, keep_mask)
    # Value and gradient are computed explicitly, without differentiating through them: the
    # gradient costs (2N − P)·P·K instead of autodiff's 2·P·N·K. The returned
    # weight·L + Σ sg(weight·∂L/∂W)∘(W − sg(W)) has L's value and first derivative exactly
    # (W − sg(W) = 0); it has no second derivative (a training loss needs none).
    fixed = ops.stop_gradient(ordered)
    block, weights = _pruned_block(fixed, mask, num_pruned)
    value = _pruned_gram_value(block, weights, num_pruned, n)
    gradient = _pruned_gram_gradient(block, weights, fixed, num_pruned, n)
    if step_size is not None:
        weight = _pruned_bounded_weight(weight, block, fixed, step_size, num_pruned, n)
    return weight * value + ops.sum(ops.stop_gradient(weight * gradient) * (ordered - fixed))


def _pruned_bounded_weight(weight: Any, block: Any, ordered: Any, step_size: Any,
                           num_pruned: int, n: int) -> Any:
    """min(weight, 1 / (η · H(W))) (weight where η <= 0), H(W) computed only when a cheap
    upper bound of it says the cap may bind. Scalar, no gradient."""
    eta = ops.cast(step_size, block.dtype)
    cheap = _pruned_curvature_bounds(block, ordered, num_pruned, n, exact=False)
    # min(w, 1/(η·H)) = w whenever η·w·(an upper bound of H) <= 1: only otherwise is the
    # kept block needed for the exact H.
    may_bind = ops.logical_and(
        eta > 0, eta * weight * cheap > STEP_BOUND * _CHEAP_BOUND_MARGIN)
    weight = ops.cond(
        may_bind,
        lambda: _capped_weight(
            weight, _pruned_curvature_bounds(block, ordered, num_pruned, n, exact=True),
            eta),
        lambda: weight)
    return weight


def weighted_gram_penalty(matrix: Any, keep_mask: Any, weight: Any, step_size: Any = None,
                          num_pruned: int | None = None) -> Any:
    """weight · L_gram(W, m), the weight capped as in :func:`bounded_gram_weight` when
    ``step_size`` (η) is given; computed from the pruned filters' rows when possible.

    Args:
        matrix: filter matrix W, shape (N, K) with static N.
        keep_mask: m, shape (N,), 1 = kept; may change between calls (a variable).
        weight: c·λ, scalar.
        step_size: η (scalar, <= 0 = unknown), or None for the unbounded ("exact") weight.
        num_pruned: P, the number of filters the mask prunes (static), or None if unknown.
            With 0 <= P < N only W_P Wᵀ (P × N) is computed, in-graph from the mask's current
            contents: P·N·K multiply-adds (plus (N−P)²·K, without gradient, on steps where
            the curvature cap may bind) against N²·K. The result equals the full formula
            for any mask: if more than P entries are below 1, the full W Wᵀ is used.
    Returns:
        Scalar, same dtype as W.
    """
    matrix = ops.convert_to_tensor(matrix)
    weight = ops.cast(weight, matrix.dtype)
    n = int(matrix.shape[0])
    if num_pruned is None or not 0 <= num_pruned < n:
        return _full_weighted_gram(matrix, keep_mask, weight, step_size)
    mask = ops.cast(keep_mask, matrix.dtype)
    below_one = ops.sum(ops.cast(mask < 1.0, "int32"))
    if num_pruned == 0:
        def fast() -> Any:  # nothing pruned: 0, with a (zero) gradient like the formula's
            return ops.sum(matrix[:0])
    else:
        def fast() -> Any:
            return _pruned_weighted_gram(matrix, mask, weight, step_size, num_pruned)
    return ops.cond(below_one > num_pruned,
                    lambda: _full_weighted_gram(matrix, mask, weight, step_size), fast)


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

    Once told the number P of pruned filters (:meth:`set_num_pruned`; a PruningWrapper does
    it), the term is computed from W_P Wᵀ alone (see :func:`weighted_gram_penalty`): the same
    value and gradient for 0.42× the multiply-adds at P = N/2, with no second derivative;
    for filter matrices below :data:`PRUNED_ROWS_MIN_SIZE` multiply-adds the whole W Wᵀ is
    used (faster there).
    """

    def __init__(self, coefficient: float = 1000.0, axis: int = -1,
                 formulation: str = "bounded") -> None:
        super().__init__()
        self.coefficient = finite_float(coefficient, "gram_coefficient", minimum=0.0)
        self.axis = integer(axis, "axis")
        self.formulation = one_of(formulation, "gram_formulation", GRAM_FORMULATIONS)

    #: P, the number of filters the bound mask prunes, if known (set by
    #: :meth:`set_num_pruned`); then only W_P Wᵀ is computed, see
    #: :func:`weighted_gram_penalty`.
    num_pruned: int | None = None

    def set_num_pruned(self, num_pruned: int | None) -> "GramPenalty":
        """Declare how many filters the bound mask prunes (static; None = unknown);
        returns self. A wrong count costs speed, never accuracy."""
        self.num_pruned = None if num_pruned is None else int(num_pruned)
        return self

    def __call__(self, kernel: Any) -> Any:
        self._require_bound()
        matrix = filters.filter_matrix(kernel, self.axis)
        weight = self.coefficient * ops.cast(self._strength, matrix.dtype)
        step_size = self._step_size if self.formulation == "bounded" else None
        n, k = int(matrix.shape[0]), int(matrix.shape[1])
        num_pruned = self.num_pruned if n * n * k >= PRUNED_ROWS_MIN_SIZE else None
        return weighted_gram_penalty(matrix, self._keep_mask, weight, step_size, num_pruned)

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
