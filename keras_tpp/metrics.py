"""Trainability metric of TPP (Wang & Fu, ICLR 2023): singular values of the input–output Jacobian (JSV).

For each example x, J = ∂logits/∂x reshaped to K × D (K logits, D = number of input
entries). Its min(K, D) singular values all equal 1 under perfect dynamical isometry; the
mean JSV over a few batches is the number TPP reports (MLP-7-Linear: L1 0.004, OrthP 1.0).
"""
from __future__ import annotations

import math
import warnings
import weakref
from typing import Any, Callable

import keras
import numpy as np
from keras import ops

from keras_tpp import autodiff

_DEFAULT_BATCH_SIZE = 32


def jacobian_singular_values(
    model: Callable[..., Any],
    x: Any,
    *,
    batch_size: int | None = None,
    logits_fn: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Per-example singular values of J = ∂logits/∂x and their summary statistics.

    Args:
        model: a Keras model (called with ``training=False``) or any callable x → outputs.
        x: inputs, array-like of shape (B, *input_shape); one input tensor only.
        batch_size: examples per Jacobian computation (default 32). Peak memory is about
            batch_size · K · D floats for J plus one backward pass of the model.
        logits_fn: maps the model's outputs to the logits tensor (batch, K), e.g.
            ``lambda outs: outs["logits"]`` for a multi-output model. The metric is defined on
            logits: for a model ending in softmax, pass a sub-model ending before the softmax.

    Returns:
        dict with
          "singular_values": np.ndarray (B, min(K, D)), float64, each row sorted descending;
          "mean", "std" (population), "min", "max": floats over all B·min(K, D) values.

    J is computed with K vector–Jacobian products per batch (TensorFlow: a tf.while_loop of
    gradients in a tf.function; JAX: ``jax.jacrev`` of the batch sum, jit-compiled for Keras
    models; PyTorch: one ``torch.autograd.grad`` of the batch sum per output, eager; see
    :mod:`keras_tpp.autodiff`), never with a D × D object. Examples must be
    independent (inference mode), which holds for ``training=False`` Keras models.

    Example:
        >>> stats = keras_tpp.metrics.jacobian_singular_values(model, x_test[:64])
        >>> stats["mean"]  # 1.0 under dynamical isometry
    """
    backend = keras.backend.backend()
    if backend not in autodiff.SUPPORTED_BACKENDS:
        raise NotImplementedError(
            f"jacobian_singular_values needs automatic differentiation, implemented for the "
            f"{', '.join(autodiff.SUPPORTED_BACKENDS)} backends; the current Keras backend is "
            f"{backend!r}."
        )
    if not callable(model):
        raise ValueError(f"`model` must be a Keras model or a callable; got {type(model)!r}.")
    if logits_fn is not None and not callable(logits_fn):
        raise ValueError(f"`logits_fn` must be callable; got {logits_fn!r}.")
    if batch_size is None:
        batch_size = _DEFAULT_BATCH_SIZE
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
    if isinstance(x, (list, tuple, dict)):
        raise ValueError(
            "`x` must be a single array of shape (B, *input_shape); models with several inputs "
            "are not supported."
        )
    x = ops.convert_to_tensor(x)
    if not str(x.dtype).startswith(("float", "bfloat")):
        x = ops.cast(x, keras.backend.floatx())
    if len(x.shape) < 2 or x.shape[0] == 0:
        raise ValueError(
            f"`x` must have shape (B, *input_shape) with B ≥ 1 examples; got {tuple(x.shape)}."
        )
    if logits_fn is None and _ends_in_softmax(model):
        warnings.warn(
            "The model's last layer applies softmax; the JSV metric is defined on logits. "
            "Pass a sub-model ending before the softmax (or `logits_fn`).",
            stacklevel=2,
        )

    batch_jacobian = _jacobian_fn(model, logits_fn)
    _check_logits(_forward(model, logits_fn, x[:1]))

    num_examples = int(x.shape[0])
    input_size = math.prod(int(d) for d in x.shape[1:])
    chunks = []
    for start in range(0, num_examples, batch_size):
        xb = x[start : start + batch_size]
        jac = batch_jacobian(xb)  # (b, K, *input_shape)
        jac = ops.reshape(jac, (int(jac.shape[0]), int(jac.shape[1]), input_size))
        sv = ops.svd(jac, full_matrices=False, compute_uv=False)  # (b, min(K, D))
        chunks.append(np.asarray(ops.convert_to_numpy(sv), dtype=np.float64))
    singular_values = np.concatenate(chunks, axis=0)
    return {
        "singular_values": singular_values,
        "mean": float(singular_values.mean()),
        "std": float(singular_values.std()),
        "min": float(singular_values.min()),
        "max": float(singular_values.max()),
    }


# Compiled per-batch Jacobian functions, one per model (logits_fn=None only), so that
# repeated calls (e.g. monitoring every epoch) do not retrace. The functions hold the
# model weakly, so the cache never keeps a model alive.
_JACOBIAN_FNS: "weakref.WeakKeyDictionary[Any, Callable[[Any], Any]]" = (
    weakref.WeakKeyDictionary()
)


def _forward(model: Any, logits_fn: Callable[[Any], Any] | None, xb: Any) -> Any:
    out = model(xb, training=False) if isinstance(model, keras.layers.Layer) else model(xb)
    return logits_fn(out) if logits_fn is not None else out


def _jacobian_fn(model: Any, logits_fn: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """xb (b, *input_shape) → J (b, K, *input_shape), compiled and cached when possible.

    TensorFlow: a tf.function of ``tape.batch_jacobian`` (variables are read when it runs).
    JAX: for a Keras layer or model, ``jax.jit`` of ``jax.jacrev`` over its
    ``stateless_call`` with the current weights passed as arguments (so a cached function
    never sees stale weights); for any other callable, :func:`keras_tpp.autodiff.
    batch_jacobian` uncompiled. Other backends: :func:`~keras_tpp.autodiff.batch_jacobian`.
    """
    backend = keras.backend.backend()
    cacheable = logits_fn is None and _cacheable(model)
    if cacheable and model in _JACOBIAN_FNS:
        return _JACOBIAN_FNS[model]
    model_ref = weakref.ref(model) if cacheable else (lambda: model)
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(reduce_retracing=True)
        def batch_jacobian(xb):
            with tf.GradientTape() as tape:
                tape.watch(xb)
                logits = _forward(model_ref(), logits_fn, xb)
            # One VJP per logit in a while-loop: memory of a single backward pass.
            return tape.batch_jacobian(logits, xb, experimental_use_pfor=False)
    elif backend == "jax" and isinstance(model, keras.layers.Layer):
        import jax
        import jax.numpy as jnp

        def logits_of(trainable, non_trainable, xb):
            target = model_ref()
            kwargs = {"training": False} if isinstance(target, keras.Model) else {}
            out, _ = target.stateless_call(trainable, non_trainable, xb, **kwargs)
            return logits_fn(out) if logits_fn is not None else out

        @jax.jit
        def compiled(trainable, non_trainable, xb):
            jac = jax.jacrev(lambda x: jnp.sum(logits_of(trainable, non_trainable, x), axis=0))(xb)
            return jnp.moveaxis(jac, 0, 1)  # (K, b, ...) -> (b, K, ...)

        def batch_jacobian(xb):
            target = model_ref()
            return compiled([v.value for v in target.trainable_variables],
                            [v.value for v in target.non_trainable_variables], xb)
    else:
        def batch_jacobian(xb):
            return autodiff.batch_jacobian(lambda t: _forward(model_ref(), logits_fn, t), xb)

    if cacheable:
        _JACOBIAN_FNS[model] = batch_jacobian
    return batch_jacobian


def _cacheable(obj: Any) -> bool:
    """Whether ``obj`` can key a WeakKeyDictionary (weakly referenceable and hashable)."""
    try:
        weakref.ref(obj)
        hash(obj)
    except TypeError:
        return False
    return True


def _check_logits(out: Any) -> None:
    """ValueError unless ``out`` is one tensor of shape (batch, K)."""
    if isinstance(out, (list, tuple, dict)):
        raise ValueError(
            "The model returns several outputs; jacobian_singular_values needs a logits output "
            "of rank 2 (batch, K): pass `logits_fn` to pick it."
        )
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) != 2:
        raise ValueError(
            f"jacobian_singular_values needs a logits output of rank 2 (batch, K); the model "
            f"output has shape {shape}. Flatten or select the logits (e.g. with `logits_fn`)."
        )


def _ends_in_softmax(model: Any) -> bool:
    """Best-effort check whether a Keras model's last layer applies softmax."""
    layers = getattr(model, "layers", None)
    outputs = getattr(model, "outputs", None) or []
    if not layers or len(outputs) > 1:  # multi-output: last layer need not be an output
        return False
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    return getattr(last, "activation", None) is keras.activations.softmax
