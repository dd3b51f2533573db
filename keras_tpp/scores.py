"""Pruning scores of every prunable kernel: magnitude, SNIP, GraSP, SynFlow and random.

Each score function returns ``{layer path: np.ndarray of the kernel's shape}`` for the output
kernel (:func:`keras_tpp.filters.output_kernel`) of every Conv / Dense producer, first conv
and classifier included, or of those selected by ``layers=`` / ``exclude=`` (fnmatch
patterns on a layer's name or "outer/inner" path, as in :func:`keras_tpp.selection.
weight_layers`). Convention for all of them: **higher = keep**. :func:`top_masks` turns
scores into weight masks with an exact global count, :func:`filter_scores` sums them per
output filter for channel masks.

- :func:`magnitude`: |w|.
- :func:`snip` (Lee et al., ICLR 2019): |g ⊙ w|, g = ∂L/∂w on data.
- :func:`grasp` (Wang et al., ICLR 2020): the paper's score is S = −w ⊙ (H g) and it removes
  the HIGHEST S. This module returns **−S = w ⊙ (H g)**, so that keeping the highest
  returned scores removes the highest S, like every other score here.
- :func:`synflow` / :func:`synflow_masks` (Tanaka et al., NeurIPS 2020): data-free synaptic
  flow, one round / the iterative exponential schedule.
- :func:`random`: uniform random scores (random pruning with the same machinery).

The model is only read: SynFlow writes |w| into the model's variables for its forward pass
and puts the exact original values back (also when an error is raised). The gradient-based
scores (SNIP, GraSP, SynFlow) differentiate through :mod:`keras_tpp.autodiff` (TensorFlow
or JAX backend); a ``tf.data.Dataset`` as data needs TensorFlow installed.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator, Mapping

import keras
import numpy as np
from keras import ops

from keras_tpp import autodiff, filters, selection
from keras_tpp.sparsity.masks import _top_k, kept_count

Scores = dict[str, np.ndarray]
Loss = Callable[[Any, Any], Any]

__all__ = [
    "filter_scores", "grasp", "magnitude", "random", "snip", "synflow", "synflow_masks",
    "top_masks",
]


# ----------------------------------------------------------------------------------------
# Data-free scores
# ----------------------------------------------------------------------------------------


def magnitude(model: keras.Model, layers: selection.Patterns = None,
              exclude: selection.Patterns = None) -> Scores:
    """Magnitude scores |w| of the prunable kernels.

    Args:
        model: a built Keras model.
        layers: fnmatch pattern(s) choosing producers (default: all of them).
        exclude: fnmatch pattern(s) of producers to leave out.

    Returns:
        {layer path: |kernel|}, each of the output kernel's shape, the kernel's dtype.
    """
    return {ref.path_str: np.abs(_kernel_value(ref.layer))
            for ref in selection.weight_layers(model, layers, exclude)}


def random(model: keras.Model, seed: int | None = None, layers: selection.Patterns = None,
           exclude: selection.Patterns = None) -> Scores:
    """Uniform random scores in [0, 1), one independent draw per weight.

    The layers are drawn in :func:`keras_tpp.graph.iter_layers` order from one generator, so
    one seed gives the same scores on every call. Ranked per layer they give random pruning
    with chosen per-layer densities; ranked globally, about the same density everywhere.

    Args:
        model: a built Keras model.
        seed: a non-negative integer, or None for fresh entropy.
        layers: fnmatch pattern(s) choosing producers (default: all of them).
        exclude: fnmatch pattern(s) of producers to leave out.

    Returns:
        {layer path: float64 array of the kernel's shape}.
    """
    rng = np.random.default_rng(selection.check_seed(seed))
    return {ref.path_str: rng.random(tuple(filters.output_kernel(ref.layer).shape))
            for ref in selection.weight_layers(model, layers, exclude)}


# ----------------------------------------------------------------------------------------
# Data-dependent scores: SNIP and GraSP
# ----------------------------------------------------------------------------------------


def snip(
    model: keras.Model,
    x: Any = None,
    y: Any = None,
    *,
    loss: Loss | str | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
    training: bool = False,
    layers: selection.Patterns = None,
    exclude: selection.Patterns = None,
) -> Scores:
    """SNIP connection sensitivity S = |g ⊙ w|, g = ∂L/∂w, L the mean loss over the examples.

    Args:
        model: a built Keras model.
        x: inputs, shape (B, *input_shape) (or the model's input structure), or a
            ``tf.data.Dataset`` of ``(x, y)`` batches (then ``y`` is None).
        y: targets, shape (B, ...), e.g. integer labels (B,).
        loss: ``loss(y_true, y_pred)`` → per-example losses or their mean, a Keras loss
            object, or a Keras loss name. Default: the model's compiled loss when it was
            compiled with one loss; otherwise sparse categorical cross-entropy on logits
            (``from_logits=True``), or on probabilities when the model's last layer applies
            softmax.
        batch_size: examples per gradient computation for array inputs (default: all at
            once). Batches' gradients are averaged weighted by their number of examples, so
            the result is the gradient of the mean loss over all examples whatever the
            batching (for a dataset too: every batch, weighted by its size).
        steps: use at most this many batches (needed for an infinite dataset).
        training: call the model in training mode (batch statistics in BatchNormalization,
            dropout on); the BN moving statistics it updates are restored afterwards.
            Default: inference mode.
        layers: fnmatch pattern(s) choosing producers (default: all of them).
        exclude: fnmatch pattern(s) of producers to leave out.

    Returns:
        {layer path: float64 array of the kernel's shape}, S ≥ 0, higher = keep.
    """
    refs = selection.weight_layers(model, layers, exclude)
    batches = _batches("snip", x, y, batch_size, steps)
    loss_fn = _loss_for(model, loss)
    variables = [filters.output_kernel(ref.layer) for ref in refs]
    with _restored(model.non_trainable_variables if training else []):
        grads = _mean_gradients(model, batches, variables, loss_fn, 1.0, training)
    return {ref.path_str: np.abs(g * _kernel_value(ref.layer))
            for ref, g in zip(refs, grads)}


def grasp(
    model: keras.Model,
    x: Any = None,
    y: Any = None,
    *,
    temperature: float = 200.0,
    loss: Loss | str | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
    training: bool = False,
    layers: selection.Patterns = None,
    exclude: selection.Patterns = None,
) -> Scores:
    """GraSP keep-scores w ⊙ (H g): the NEGATED GraSP score, so that higher = keep.

    GraSP (Wang et al., 2020) scores S = −w ⊙ (H g) with g = ∂L/∂w and H g the Hessian–
    gradient product ∇_w(stop_gradient(g)ᵀ g), L the mean cross-entropy of the logits divided
    by ``temperature``, and removes the weights with the HIGHEST S. This function returns
    −S = w ⊙ (H g): keeping the highest returned scores (:func:`top_masks`) removes exactly
    the highest S. Scores are signed; rank them as they are, never by magnitude.

    g and H g are taken over the output kernels of all producers (the Hessian block of the
    Conv / Dense kernels, biases and BN parameters held fixed), whatever ``layers`` /
    ``exclude`` select, so a layer's scores do not depend on which others are returned.

    Args:
        model: a built Keras model that outputs logits.
        x: inputs (B, *input_shape), or a ``tf.data.Dataset`` of ``(x, y)`` batches.
        y: targets (B, ...), e.g. integer labels; None with a dataset.
        temperature: T > 0, the model's outputs are divided by it before the loss (200).
        loss: ``loss(y_true, logits / T)``; default sparse categorical cross-entropy from
            logits (the compiled loss is not used: GraSP is defined on tempered logits).
        batch_size: examples per gradient computation for arrays (default: all at once).
            g is the size-weighted mean of the batches' gradients (first pass), H g the
            size-weighted mean of the batches' Hessian–g products (second pass).
        steps: use at most this many batches.
        training: call the model in training mode (BN moving statistics restored afterwards).
        layers: fnmatch pattern(s) choosing producers (default: all of them).
        exclude: fnmatch pattern(s) of producers to leave out.

    Returns:
        {layer path: array of the kernel's shape and dtype}, signed, higher = keep.
    """
    temperature = _positive_float(temperature, "temperature")
    refs = selection.weight_layers(model, layers, exclude)
    every = selection.weight_layers(model)
    batches = list(_batches("grasp", x, y, batch_size, steps))
    if loss is None:
        if _ends_in_softmax(model):
            raise ValueError(
                "grasp divides logits by the temperature, but the model's last layer applies "
                "softmax: pass a model that outputs logits (e.g. the same layers without "
                "the softmax) or a `loss`.")
        loss_fn = _mean_of(_cross_entropy(from_logits=True))
    else:
        loss_fn = _loss_for(model, loss)
    variables = [filters.output_kernel(ref.layer) for ref in every]
    with _restored(model.non_trainable_variables if training else []):
        g = _mean_gradients(model, batches, variables, loss_fn, temperature, training)
        hg = _mean_hessian_products(model, batches, variables, loss_fn, temperature, training, g)
    by_path = {ref.path_str: h for ref, h in zip(every, hg)}
    return {ref.path_str: _kernel_value(ref.layer) * by_path[ref.path_str] for ref in refs}


# ----------------------------------------------------------------------------------------
# SynFlow
# ----------------------------------------------------------------------------------------

# Layers SynFlow can push a non-negative signal through so that the flow R stays a sum over
# input–output paths of products of |w|: positively homogeneous and sign preserving on x ≥ 0.
_FLOW_PASS = tuple(c for c in (getattr(keras.layers, n, None) for n in (
    "InputLayer", "Flatten", "Reshape", "Permute", "RepeatVector",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianDropout", "GaussianNoise", "AlphaDropout", "ActivityRegularization", "Identity",
    "Add", "Average", "Maximum", "Minimum", "Concatenate", "LeakyReLU", "ELU", "PReLU",
)) if c is not None)
_FLOW_WEIGHTED = tuple(c for c in (getattr(keras.layers, n, None) for n in (
    "Dense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
    "Conv3DTranspose", "SeparableConv1D", "SeparableConv2D", "DepthwiseConv1D",
    "DepthwiseConv2D",
)) if c is not None)
# Activations equal to c·x (c > 0) on x ≥ 0.
_FLOW_ACTIVATIONS = ("linear", "relu", "leaky_relu", "elu", "selu")
_FLOW_REFUSED = {
    "LayerNormalization": "normalizes each example by its own statistics (the flow is not a "
                          "product of |w| along paths)",
    "GroupNormalization": "normalizes each example by its own statistics",
    "UnitNormalization": "divides each example by its own norm",
    "Normalization": "subtracts and divides by data statistics (sign not preserved)",
    "Softmax": "softmax mixes channels and is not positively homogeneous",
    "Lambda": "is a Lambda layer whose sign behaviour is unknown",
    "MultiHeadAttention": "attention multiplies activations and applies softmax",
    "Attention": "attention multiplies activations and applies softmax",
    "AdditiveAttention": "attention applies tanh and softmax",
    "Subtract": "a difference of non-negative flows can be negative",
    "Multiply": "a product of flows is not positively homogeneous of degree 1",
    "Dot": "a product of flows is not positively homogeneous of degree 1",
    "Embedding": "looks up integer inputs (no all-ones input)",
}


def synflow(model: keras.Model, masks: Mapping[str, np.ndarray] | None = None,
            layers: selection.Patterns = None, exclude: selection.Patterns = None) -> Scores:
    """One round of SynFlow, data-free: S = |w ⊙ ∂R/∂w|, R = Σ outputs of the |w| network.

    The network is linearized: every kernel (depthwise and pointwise ones too) is replaced
    by |w|, BatchNormalization's γ by |γ| in inference mode (so it scales channel c by
    |γ_c| / √(σ²_c + ε)), and biases, BN's β and moving mean are set to zero, so that R is
    a sum over input–output paths of products of |w| (R = 1ᵀ|W_L|…|W_1|1 for a Dense chain);
    the input is all ones, one example per model input, in inference mode. The original
    values are written back exactly afterwards, also if an error is raised.

    Only layers that map non-negative inputs to non-negative outputs positively
    homogeneously are accepted (linear and ReLU-like activations, pooling, BN, Add /
    Concatenate / Maximum, reshapes, padding, dropout); any other layer (LayerNormalization,
    softmax, Lambda, attention, Subtract, Multiply, custom layers, ...) is a ValueError
    naming it, raised before any variable is changed. The computation runs in float64 (on a
    float64 copy of a float32 model: the path products of deep networks overflow float32);
    an overflow even there is a ValueError.

    Args:
        model: a built Keras model whose inputs have fully known shapes.
        masks: optional {layer path: bool array of the kernel's shape}; False positions are
            zero in the flow network (and score 0).
        layers: fnmatch pattern(s) choosing producers (default: all of them).
        exclude: fnmatch pattern(s) of producers to leave out.

    Returns:
        {layer path: float64 array of the kernel's shape}, S ≥ 0, higher = keep.
    """
    refs = selection.weight_layers(model, layers, exclude)
    _check_masks(masks, refs)
    with autodiff.float64_scope():
        flow_model, flow_refs = _float64_flow_model(model, layers, exclude)
        with _FlowNetwork(flow_model, flow_refs) as flow:
            return flow.scores(masks)


def synflow_masks(model: keras.Model, density: float, rounds: int = 100,
                  masks: Mapping[str, np.ndarray] | None = None,
                  layers: selection.Patterns = None,
                  exclude: selection.Patterns = None) -> dict[str, np.ndarray]:
    """Iterative SynFlow: masks keeping a fraction ``density`` of the selected weights.

    Round k = 1…n scores the masked flow network (masked weights zero, see :func:`synflow`)
    and keeps, among the still active weights, the ⌊ρ^(k/n)·N⌋ with the highest scores over
    all selected kernels together (N their total size, ρ = ``density``); the last round
    keeps exactly ⌊ρ·N⌋ (fewer only if ``masks`` starts with fewer active). Equal scores are
    kept in layer order, then position order. The model's values are restored at the end.

    Args:
        model: a built Keras model (see :func:`synflow` for the layers accepted).
        density: ρ in (0, 1], the fraction of weights kept at the end.
        rounds: n ≥ 1, scoring rounds (100 in the paper).
        masks: optional starting {layer path: bool mask}; masks only lose entries.
        layers: fnmatch pattern(s) choosing producers (default: all of them).
        exclude: fnmatch pattern(s) of producers to leave out.

    Returns:
        {layer path: bool array of the kernel's shape}, True = kept.
    """
    density = _positive_float(density, "density")
    if density > 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}.")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}.")
    refs = selection.weight_layers(model, layers, exclude)
    _check_masks(masks, refs)
    current = {ref.path_str: (np.ones(tuple(filters.output_kernel(ref.layer).shape), bool)
                              if masks is None or ref.path_str not in masks
                              else np.asarray(masks[ref.path_str], bool).copy())
               for ref in refs}
    with autodiff.float64_scope():
        flow_model, flow_refs = _float64_flow_model(model, layers, exclude)
        with _FlowNetwork(flow_model, flow_refs) as flow:
            for k in range(1, rounds + 1):
                scores = flow.scores(current)
                current = top_masks(scores, density ** (k / rounds), masks=current)
    return current


# ----------------------------------------------------------------------------------------
# From scores to masks
# ----------------------------------------------------------------------------------------


def top_masks(scores: Mapping[str, np.ndarray], density: float | Mapping[str, float],
              masks: Mapping[str, np.ndarray] | None = None,
              ranking: str = "global") -> dict[str, np.ndarray]:
    """Masks keeping the highest (signed) scores: exactly ⌊density·N⌋ weights.

    Unlike :func:`keras_tpp.sparsity.magnitude_masks` the scores are ranked as they are,
    not by magnitude (needed for GraSP's signed scores).

    Args:
        scores: {layer path: scores}, higher = keep.
        density: the fraction kept, one for all; with ``ranking="layer"`` also
            {layer path: density}.
        masks: optional {layer path: bool} of the eligible (still active) positions; masks
            only lose entries. Default: all positions.
        ranking: "global" ranks all layers together (N = total size), "layer" each layer on
            its own (N = its size).

    Returns:
        {layer path: bool array of the scores' shape}, True = kept; ties go to the earlier
        layer, then the earlier position.
    """
    if ranking not in ("global", "layer"):
        raise ValueError(f"ranking must be 'global' or 'layer', got {ranking!r}.")
    if isinstance(density, Mapping) and ranking != "layer":
        raise ValueError("Per-layer densities need ranking='layer'.")
    keys = list(scores)
    arrays = {k: np.asarray(scores[k], dtype=np.float64) for k in keys}
    eligible = {k: (np.ones(arrays[k].shape, bool) if masks is None
                    else np.asarray(masks[k], bool)) for k in keys}

    def check(d: float) -> float:
        d = float(d)
        if not 0.0 <= d <= 1.0 or math.isnan(d):
            raise ValueError(f"density must be in [0, 1], got {d!r}.")
        return d

    if ranking == "layer":
        return {k: _top_k(arrays[k], kept_count(arrays[k].size, 1.0 - check(
            density[k] if isinstance(density, Mapping) else density)), eligible[k])
            for k in keys}
    if not keys:
        return {}
    flat = np.concatenate([arrays[k].reshape(-1) for k in keys])
    allowed = np.concatenate([eligible[k].reshape(-1) for k in keys])
    keep = _top_k(flat, kept_count(flat.size, 1.0 - check(density)), allowed)
    bounds = np.cumsum([0] + [arrays[k].size for k in keys])
    return {k: keep[bounds[i]:bounds[i + 1]].reshape(arrays[k].shape)
            for i, k in enumerate(keys)}


def filter_scores(model: keras.Model, scores: Mapping[str, np.ndarray]) -> Scores:
    """Channel scores: each output filter's weight scores summed.

    Args:
        model: the model the scores were computed on.
        scores: {layer path: kernel-shaped scores}.

    Returns:
        {layer path: float64 array (N,)}, N the layer's output channels.
    """
    from keras_tpp.graph import iter_layers

    by_path = {ref.path_str: ref.layer for ref in iter_layers(model)}
    out = {}
    for path, score in scores.items():
        if path not in by_path or not filters.is_producer(by_path[path]):
            raise ValueError(f"'{path}' is not a Conv or Dense layer of model '{model.name}'.")
        score = np.asarray(score, dtype=np.float64)
        axis = filters.output_axis(by_path[path]) % score.ndim
        out[path] = np.moveaxis(score, axis, -1).reshape(-1, score.shape[axis]).sum(axis=0)
    return out


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _kernel_value(layer: keras.layers.Layer) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(filters.output_kernel(layer)))


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}.") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    return number


def _ends_in_softmax(model: keras.Model) -> bool:
    from keras_tpp.metrics import _ends_in_softmax as ends

    return ends(model)


def _require_autodiff(what: str) -> None:
    """NotImplementedError unless :mod:`keras_tpp.autodiff` supports the current backend."""
    backend = keras.backend.backend()
    if backend not in autodiff.SUPPORTED_BACKENDS:
        raise NotImplementedError(
            f"{what} needs gradients, implemented for the "
            f"{', '.join(autodiff.SUPPORTED_BACKENDS)} backends; the current Keras backend "
            f"is {backend!r}.")


def _is_tf_dataset(x: Any) -> bool:
    """Whether ``x`` is a tf.data.Dataset (without importing TensorFlow when it is not
    loaded: then nothing can be one)."""
    import sys

    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(x, tf.data.Dataset)


def _batches(what: str, x: Any, y: Any, batch_size: int | None,
             steps: int | None) -> Iterator[tuple[Any, Any]]:
    """(x, y) batches from arrays or a tf.data.Dataset of (x, y) elements (checked first)."""
    _require_autodiff(what)
    if x is None:
        raise ValueError(
            f"{what} is a data-dependent score: pass x and y (arrays, e.g. 10 examples per "
            f"class) or a tf.data.Dataset of (x, y) batches.")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                              or steps < 1):
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}.")
    if _is_tf_dataset(x):
        if y is not None:
            raise ValueError(f"{what}: pass y=None with a dataset (it yields (x, y) batches).")
        if batch_size is not None:
            raise ValueError(f"{what}: batch_size applies to arrays; a dataset is batched.")
        return _dataset_batches(what, x, steps)
    if y is None:
        raise ValueError(f"{what} needs targets: pass y (e.g. integer labels) with x.")
    if batch_size is not None and (isinstance(batch_size, bool)
                                   or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
    count = _num_examples(y)
    if count == 0:
        raise ValueError(f"{what} needs at least one example, got 0.")
    size = batch_size or count
    starts = list(range(0, count, size))[:steps]
    return iter([(keras.tree.map_structure(lambda a: a[s:s + size], x),
                  keras.tree.map_structure(lambda a: a[s:s + size], y)) for s in starts])


def _dataset_batches(what: str, dataset: Any, steps: int | None) -> Iterator[tuple[Any, Any]]:
    count = 0
    for element in dataset:
        if not isinstance(element, (tuple, list)) or len(element) != 2:
            raise ValueError(f"{what}: the dataset must yield (x, y) pairs, got an element "
                             f"with structure {keras.tree.map_structure(lambda _: '.', element)}.")
        if keras.backend.backend() == "tensorflow":
            yield element[0], element[1]
        else:  # tf.data yields TensorFlow tensors: hand NumPy arrays to the other backends
            yield (keras.tree.map_structure(np.asarray, element[0]),
                   keras.tree.map_structure(np.asarray, element[1]))
        count += 1
        if steps is not None and count >= steps:
            return
    if count == 0:
        raise ValueError(f"{what}: the dataset yielded no batch.")


def _num_examples(y: Any) -> int:
    return int(np.shape(keras.tree.flatten(y)[0])[0])


def _loss_for(model: keras.Model | None, loss: Loss | str | None) -> Callable[[Any, Any], Any]:
    """loss(y_true, y_pred) → the mean loss (a scalar tensor)."""
    if loss is not None:
        fn: Any = keras.losses.get(loss) if isinstance(loss, str) else loss
        if not callable(fn):
            raise ValueError(f"loss must be a callable, a Keras loss or its name, got {loss!r}.")
    elif model is not None and getattr(model, "compiled", False) and model.loss is not None:
        if isinstance(model.loss, (Mapping, list, tuple)):
            raise ValueError("The model was compiled with several losses; pass `loss` (one "
                             "callable on the model's outputs).")
        fn = keras.losses.get(model.loss) if isinstance(model.loss, str) else model.loss
    else:
        fn = _cross_entropy(from_logits=not (model is not None and _ends_in_softmax(model)))
    return _mean_of(fn)


def _mean_of(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """loss(y_true, y_pred) → the mean of ``fn``'s per-example losses (or of its scalar)."""
    return lambda y_true, y_pred: ops.mean(fn(y_true, y_pred))


def _cross_entropy(from_logits: bool) -> Callable[[Any, Any], Any]:
    """Per-example sparse categorical cross-entropy in the outputs' dtype (a Keras Loss
    object would cast float64 outputs to floatx)."""
    return lambda y_true, y_pred: keras.losses.sparse_categorical_crossentropy(
        y_true, y_pred, from_logits=from_logits)


def _forward_loss(model, loss_fn, xb, yb, temperature: float, training: bool):
    out = model(xb, training=training)
    if temperature != 1.0:
        out = keras.tree.map_structure(lambda o: o / temperature, out)
    return loss_fn(yb, out)


def _mean_gradients(model, batches: Iterable[tuple[Any, Any]], variables: list,
                    loss_fn, temperature: float, training: bool) -> list[np.ndarray]:
    """Σ_b n_b ∇L_b / Σ_b n_b over the batches, as numpy arrays."""
    _require_autodiff("the gradient scores")
    total, sums = 0, None
    for xb, yb in batches:
        _, grads = autodiff.value_and_grad(
            lambda: _forward_loss(model, loss_fn, xb, yb, temperature, training), variables)
        n = _num_examples(yb)
        grads = [np.asarray(g, dtype=np.float64) * n for g in grads]
        sums = grads if sums is None else [s + g for s, g in zip(sums, grads)]
        total += n
    return [(s / total).astype(_kernel_dtype(v)) for s, v in zip(sums, variables)]


def _mean_hessian_products(model, batches: Iterable[tuple[Any, Any]], variables: list, loss_fn,
                           temperature: float, training: bool,
                           g: list[np.ndarray]) -> list[np.ndarray]:
    """Σ_b n_b H_b g / Σ_b n_b with H_b g = ∇_w(gᵀ ∇_w L_b), g held constant."""
    _require_autodiff("grasp")
    total, sums = 0, None
    for xb, yb in batches:
        hg = autodiff.hessian_vector_product(
            lambda: _forward_loss(model, loss_fn, xb, yb, temperature, training), variables, g)
        n = _num_examples(yb)
        hg = [np.asarray(h, dtype=np.float64) * n for h in hg]
        sums = hg if sums is None else [s + h for s, h in zip(sums, hg)]
        total += n
    return [(s / total).astype(_kernel_dtype(v)) for s, v in zip(sums, variables)]


def _kernel_dtype(variable: Any) -> np.dtype:
    return np.dtype(keras.backend.standardize_dtype(variable.dtype))


class _restored:
    """Context manager: the variables' exact values are written back on exit."""

    def __init__(self, variables: Iterable[Any]) -> None:
        self._saved = [(v, np.array(ops.convert_to_numpy(v), copy=True)) for v in variables]

    def __enter__(self) -> "_restored":
        return self

    def __exit__(self, *exc: Any) -> None:
        for variable, value in self._saved:
            variable.assign(value)


def _check_masks(masks: Mapping[str, np.ndarray] | None, refs: list) -> None:
    if masks is None:
        return
    shapes = {ref.path_str: tuple(filters.output_kernel(ref.layer).shape) for ref in refs}
    for path, mask in masks.items():
        if path not in shapes:
            raise ValueError(f"masks has '{path}', not a selected Conv or Dense layer. "
                             f"Selected layers: {', '.join(shapes) or '(none)'}.")
        if tuple(np.shape(mask)) != shapes[path]:
            raise ValueError(f"The mask of '{path}' has shape {tuple(np.shape(mask))}, its "
                             f"kernel {shapes[path]}.")


def _flow_refusal(layer: keras.layers.Layer) -> str | None:
    """Why SynFlow cannot push a sign-free flow through ``layer`` (None if it can)."""
    for cls in type(layer).__mro__:
        if cls.__name__ in _FLOW_REFUSED and cls.__module__.startswith("keras"):
            return _FLOW_REFUSED[cls.__name__]
    if isinstance(layer, keras.layers.BatchNormalization):
        return None
    if isinstance(layer, _FLOW_WEIGHTED):
        if getattr(layer, "lora_enabled", False):
            return "has LoRA weights (the effective kernel is not |w|)"
        return _activation_refusal(getattr(layer, "activation", None))
    if isinstance(layer, keras.layers.ReLU):
        if layer.max_value is not None:
            return f"clips at max_value={layer.max_value} (not positively homogeneous)"
        if float(layer.threshold) != 0.0:
            return f"has threshold={layer.threshold} (not positively homogeneous)"
        return None
    if isinstance(layer, keras.layers.Activation):
        return _activation_refusal(layer.activation)
    if isinstance(layer, keras.layers.Rescaling):
        scale = np.asarray(layer.scale, dtype=np.float64)
        offset = np.asarray(layer.offset, dtype=np.float64)
        if np.any(offset != 0) or np.any(scale <= 0):
            return (f"rescales with scale={layer.scale}, offset={layer.offset}; only a "
                    f"positive scale without offset keeps the flow non-negative")
        return None
    if isinstance(layer, _FLOW_PASS):
        return None
    return ("is not a layer SynFlow knows to be sign preserving and positively homogeneous "
            "(custom or unsupported layer)")


def _activation_refusal(fn: Any) -> str | None:
    if fn is None:
        return None
    name = str(getattr(fn, "__name__", "")).lower()
    if name in _FLOW_ACTIVATIONS:
        return None
    return (f"applies the {name or repr(fn)} activation; SynFlow needs activations equal to "
            f"c·x (c > 0) on x ≥ 0 ({', '.join(_FLOW_ACTIVATIONS)})")


def _float64_flow_model(model: keras.Model, layers: selection.Patterns,
                        exclude: selection.Patterns) -> tuple[keras.Model, list]:
    """(model, its selected producers) in float64 for the flow computation: the model itself
    if all its floating weights are float64, else a float64 copy (path products over a deep
    network overflow float32: ResNet-50's R is inf in float32; the reference code runs in
    double). The copy has the same layer paths; ``model`` is never changed."""
    from keras_tpp import cloning

    if all(keras.backend.standardize_dtype(v.dtype) == "float64"
           for v in model.weights if "float" in keras.backend.standardize_dtype(v.dtype)):
        return model, selection.weight_layers(model, layers, exclude)

    def config(layer: keras.layers.Layer) -> dict:
        values = layer.get_config()
        if "dtype" in values:
            values["dtype"] = "float64"
        return values

    def weights(layer: keras.layers.Layer) -> list[np.ndarray]:
        return [np.asarray(w, dtype=np.float64) if np.issubdtype(np.asarray(w).dtype,
                                                                 np.floating) else w
                for w in layer.get_weights()]

    copy = cloning.clone(model, config=config, weights=weights).model
    return copy, selection.weight_layers(copy, layers, exclude)


class _FlowNetwork:
    """The model turned into SynFlow's |w| network while the context is open.

    Entering checks every layer (ValueError before any change), saves the exact values of
    the variables it changes, and writes the linearized ones; exiting writes the originals
    back, also after an error.
    """

    def __init__(self, model: keras.Model, refs: list) -> None:
        from keras_tpp.graph import iter_layers

        _require_autodiff("synflow")
        self.model = model
        self.refs = refs
        leaves = list(iter_layers(model))
        problems = [(ref, _flow_refusal(ref.layer)) for ref in leaves]
        problems = [(ref, why) for ref, why in problems if why]
        if problems:
            details = "; ".join(f"'{ref.path_str}' ({type(ref.layer).__name__}) {why}"
                                for ref, why in problems[:5])
            raise ValueError(
                f"SynFlow needs a network whose layers keep a non-negative signal non-negative "
                f"and scale with it (Conv/Dense with ReLU-like or linear activations, pooling, "
                f"BatchNormalization, Add/Concatenate, reshapes): {details}.")
        self.inputs = []
        for tensor in model.inputs:
            shape = tuple(tensor.shape[1:])
            if any(d is None for d in shape):
                raise ValueError(f"SynFlow feeds an all-ones input and needs fully known input "
                                 f"shapes; model '{model.name}' has input shape "
                                 f"{tuple(tensor.shape)}.")
            self.inputs.append(np.ones((1,) + shape, dtype=keras.backend.standardize_dtype(
                tensor.dtype)))
        # (variable, linearized value) for every variable the flow network changes.
        self._changes: list[tuple[Any, np.ndarray]] = []
        for ref in leaves:
            layer = ref.layer
            if isinstance(layer, keras.layers.BatchNormalization):
                for name, rule in (("gamma", np.abs), ("beta", np.zeros_like),
                                   ("moving_mean", np.zeros_like), ("moving_variance", np.abs)):
                    variable = getattr(layer, name, None)
                    if variable is not None:
                        self._changes.append((variable, rule(_value(variable))))
            elif isinstance(layer, _FLOW_WEIGHTED):
                bias = getattr(layer, "bias", None)
                for variable in layer.weights:
                    rule = np.zeros_like if variable is bias else np.abs
                    self._changes.append((variable, rule(_value(variable))))
        self.kernels = [filters.output_kernel(ref.layer) for ref in refs]
        linear = {id(v): value for v, value in self._changes}
        for kernel in self.kernels:
            if id(kernel) not in linear:  # a kernel outside layer.weights: still restored
                linear[id(kernel)] = np.abs(_value(kernel))
                self._changes.append((kernel, linear[id(kernel)]))
        self._abs_kernels = [linear[id(k)] for k in self.kernels]
        self._saved: _restored | None = None

    def __enter__(self) -> "_FlowNetwork":
        self._saved = _restored(v for v, _ in self._changes)
        try:
            for variable, value in self._changes:
                variable.assign(value)
        except BaseException:
            self._saved.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._saved is not None:
            self._saved.__exit__()

    def scores(self, masks: Mapping[str, np.ndarray] | None) -> Scores:
        """|w ⊙ ∂R/∂w| of the selected kernels with the masked positions at zero."""
        for ref, kernel, value in zip(self.refs, self.kernels, self._abs_kernels):
            if masks is not None and ref.path_str in masks:
                value = np.where(np.asarray(masks[ref.path_str], bool), value,
                                 np.zeros_like(value))
            kernel.assign(value)
        inputs = [ops.convert_to_tensor(a) for a in self.inputs]

        def total_flow() -> Any:
            outputs = self.model(inputs if len(inputs) > 1 else inputs[0], training=False)
            return ops.sum(ops.stack([ops.sum(ops.cast(o, "float64"))
                                      for o in keras.tree.flatten(outputs)]))

        flow, grads = autodiff.value_and_grad(total_flow, self.kernels)
        if not np.isfinite(float(flow)) or not all(np.all(np.isfinite(g)) for g in grads):
            raise ValueError(
                f"SynFlow's flow R = {float(flow)} overflowed the model's dtype "
                f"({keras.backend.standardize_dtype(self.kernels[0].dtype)}): the products of "
                f"|w| along paths are too large. Build the model in float64.")
        return {ref.path_str: np.abs(_value(k) * g)
                for ref, k, g in zip(self.refs, self.kernels, grads)}


def _value(variable: Any) -> np.ndarray:
    return np.array(ops.convert_to_numpy(variable), copy=True)
