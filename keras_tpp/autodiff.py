"""Backend-specific automatic differentiation behind one small interface.

keras.ops has no gradient API, so everything in keras_tpp that differentiates (the SNIP,
GraSP and SynFlow scores, the Jacobian metric) goes through the functions below, each
implemented per Keras backend and chosen by ``keras.backend.backend()``:

- :func:`value_and_grad`: a scalar function of Keras variables and its gradients w.r.t. them
  (TensorFlow: ``tf.GradientTape``; JAX: ``jax.value_and_grad`` of the function made pure
  with a ``keras.StatelessScope``; PyTorch: ``torch.autograd.grad`` w.r.t. fresh leaf
  tensors mapped to the variables by a ``keras.StatelessScope``);
- :func:`hessian_vector_product`: ∇_w (vᵀ ∇_w f) with v held constant (GraSP's H g;
  PyTorch: a first ``torch.autograd.grad`` with ``create_graph=True``, then a second);
- :func:`batch_jacobian`: per-example Jacobians ∂f(x)_b/∂x_b of a function of a batch
  whose examples are independent (TensorFlow: ``tape.batch_jacobian``; JAX: ``jax.jacrev``
  of the batch sum; PyTorch: one ``torch.autograd.grad`` of the batch sum per output entry);
- :func:`float64_scope`: a context in which float64 variables and tensors really are
  float64 (JAX truncates to float32 unless x64 is enabled; a no-op elsewhere. On PyTorch
  float64 tensors are float64, but Keras' torch matmul and mean compute them in float32:
  ``keras.backend.result_type`` maps float64 to float32 on every backend but TensorFlow);
- :func:`compiled`: a function of Keras variables compiled once, reading their current values
  at every call (TensorFlow: ``tf.function``; JAX: ``jax.jit`` of the function made pure;
  PyTorch: the function itself, run eagerly without recording gradients).

Other backends (Keras' numpy and openvino backends) get a NotImplementedError naming the
backend.

Results are NumPy arrays. Framework modules are imported inside the functions, never at
import of this module.

Example:
    >>> value, grads = keras_tpp.autodiff.value_and_grad(
    ...     lambda: keras.ops.sum(model(x) ** 2), model.trainable_variables)
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np

__all__ = ["SUPPORTED_BACKENDS", "batch_jacobian", "compiled", "float64_scope",
           "hessian_vector_product", "value_and_grad"]

#: Backends with an implementation of every function here.
SUPPORTED_BACKENDS = ("tensorflow", "jax", "torch")


def _backend(what: str) -> str:
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
        raise NotImplementedError(
            f"{what} needs automatic differentiation, implemented for the "
            f"{', '.join(SUPPORTED_BACKENDS)} backends; the current Keras backend is "
            f"{backend!r}.")
    return backend


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value))


def value_and_grad(fn: Callable[[], Any],
                   variables: Sequence[keras.Variable]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The value of a scalar function of Keras variables and its gradients w.r.t. them.

    ``fn`` takes no argument and reads the variables (e.g. calls a model). Its side effects
    on variables (BatchNormalization's moving statistics in training mode) take place on
    TensorFlow and are discarded on JAX and PyTorch; callers that need them undone restore
    the variables themselves. A variable ``fn`` does not depend on gets a zero gradient.

    Args:
        fn: ``() -> scalar tensor``.
        variables: the Keras variables to differentiate with respect to.

    Returns:
        (value, [gradient of each variable, of its shape]) as NumPy arrays.

    Example:
        >>> value, (g,) = value_and_grad(lambda: keras.ops.sum(v * v), [v])  # g = 2 v
    """
    backend = _backend("value_and_grad")
    variables = list(variables)
    if backend == "tensorflow":
        import tensorflow as tf

        values = [v.value for v in variables]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(values)
            value = fn()
        grads = tape.gradient(value, values, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return _numpy(value), [_numpy(g) for g in grads]
    if backend == "torch":
        import torch

        leaves = _torch_leaves(variables)
        with torch.enable_grad(), keras.StatelessScope(
                state_mapping=list(zip(variables, leaves))):
            value = keras.ops.convert_to_tensor(fn())
        return _numpy(value.detach()), _torch_grads(value, leaves, create_graph=False)
    import jax

    value, grads = jax.value_and_grad(_pure(fn, variables))([v.value for v in variables])
    return _numpy(value), [_numpy(g) for g in grads]


def hessian_vector_product(fn: Callable[[], Any], variables: Sequence[keras.Variable],
                           vectors: Sequence[Any]) -> list[np.ndarray]:
    """H v = ∇_w (vᵀ ∇_w f(w)) of a scalar function of Keras variables, v held constant.

    Args:
        fn: ``() -> scalar tensor`` reading the variables (see :func:`value_and_grad`).
        variables: the Keras variables w.
        vectors: v, one array per variable, of its shape.

    Returns:
        [the block of H v of each variable] as NumPy arrays.

    Example:
        >>> (hv,) = hessian_vector_product(lambda: keras.ops.sum(v ** 3), [v], [np.ones(3)])
    """
    backend = _backend("hessian_vector_product")
    variables = list(variables)
    if len(vectors) != len(variables):
        raise ValueError(f"hessian_vector_product needs one vector per variable: got "
                         f"{len(vectors)} vectors for {len(variables)} variables.")
    if backend == "tensorflow":
        import tensorflow as tf

        constants = [tf.constant(np.asarray(c), dtype=v.dtype) for c, v in zip(vectors, variables)]
        values = [v.value for v in variables]
        zero = tf.UnconnectedGradients.ZERO
        with tf.GradientTape(watch_accessed_variables=False) as outer:
            outer.watch(values)
            with tf.GradientTape(watch_accessed_variables=False) as inner:
                inner.watch(values)
                value = fn()
            grads = inner.gradient(value, values, unconnected_gradients=zero)
            product = tf.add_n([tf.reduce_sum(c * g) for c, g in zip(constants, grads)])
        return [_numpy(h) for h in outer.gradient(product, values, unconnected_gradients=zero)]
    if backend == "torch":
        import torch

        leaves = _torch_leaves(variables)
        with torch.enable_grad(), keras.StatelessScope(
                state_mapping=list(zip(variables, leaves))):
            value = keras.ops.convert_to_tensor(fn())
            grads = (torch.autograd.grad(value, leaves, create_graph=True, allow_unused=True)
                     if value.requires_grad else [None] * len(leaves))
            terms = [torch.sum(torch.as_tensor(np.asarray(c), dtype=g.dtype, device=g.device) * g)
                     for c, g in zip(vectors, grads) if g is not None and g.requires_grad]
            product = torch.stack(terms).sum() if terms else None
        if product is None:  # f is at most linear in the variables: H v = 0
            return [np.zeros_like(_numpy(leaf.detach())) for leaf in leaves]
        return _torch_grads(product, leaves, create_graph=False)
    import jax
    import jax.numpy as jnp

    constants = [jnp.asarray(np.asarray(c), dtype=v.value.dtype)
                 for c, v in zip(vectors, variables)]
    grad = jax.grad(_pure(fn, variables))

    def product(values: list) -> Any:
        return sum(jnp.sum(c * g) for c, g in zip(constants, grad(values)))

    return [_numpy(h) for h in jax.grad(product)([v.value for v in variables])]


def batch_jacobian(fn: Callable[[Any], Any], x: Any) -> np.ndarray:
    """Per-example Jacobians J_b = ∂fn(x)_b / ∂x_b of a batch function, examples independent.

    Computed with one vector–Jacobian product per output entry K (never a D × D object):
    peak memory about b · K · D floats plus one backward pass.

    Args:
        fn: x (b, *input_shape) → outputs (b, K); example b's outputs depend on x_b only
            (a model in inference mode).
        x: a float batch (b, *input_shape), array or backend tensor.

    Returns:
        J, a NumPy array (b, K, *input_shape).

    Example:
        >>> jac = batch_jacobian(lambda xb: model(xb, training=False), x[:8])
    """
    backend = _backend("batch_jacobian")
    if backend == "tensorflow":
        import tensorflow as tf

        xb = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(xb)
            out = fn(xb)
        return _numpy(tape.batch_jacobian(out, xb, experimental_use_pfor=False))
    if backend == "torch":
        import torch

        xb = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
        with torch.enable_grad():
            total = torch.sum(fn(xb), dim=0)  # (K,): row k = Σ_b out[b, k]
        rows = []
        for k in range(total.shape[0]):
            (row,) = torch.autograd.grad(total[k], xb, retain_graph=k + 1 < total.shape[0],
                                         allow_unused=True)
            rows.append(_numpy(torch.zeros_like(xb) if row is None else row))
        return np.stack(rows, axis=1)  # (b, K, ...)
    import jax
    import jax.numpy as jnp

    # jacrev of the batch sum: row k is Σ_b ∂out[b, k]/∂x = ∂out[b, k]/∂x_b per example.
    jac = jax.jacrev(lambda xb: jnp.sum(fn(xb), axis=0))(jnp.asarray(x))  # (K, b, ...)
    return np.moveaxis(_numpy(jac), 0, 1)


@contextlib.contextmanager
def float64_scope() -> Iterator[None]:
    """A context in which float64 Keras variables and tensors are really float64.

    JAX stores float64 as float32 unless its x64 mode is on: this enables it for the
    duration (variables created inside keep their dtype afterwards). Other backends: no-op
    (PyTorch keeps float64 tensors, though Keras' torch matmul and mean run in float32).

    Example:
        >>> with float64_scope():
        ...     copy = build_float64_copy(model)
    """
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    with jax.enable_x64(True):
        yield


def compiled(fn: Callable[[], Any], variables: Sequence[keras.Variable]) -> Callable[[], Any]:
    """``fn`` compiled once; every call evaluates it at the variables' current values.

    Eager evaluation of many small ops is slow on TensorFlow (one dispatch per op) and very
    slow on JAX (``ops.cond`` and friends compile their branches at every eager call).
    PyTorch: ``fn`` runs eagerly under ``torch.no_grad()`` (no graph is recorded; use
    :func:`value_and_grad` for gradients).

    Args:
        fn: ``() -> tensor`` that reads only ``variables`` (and constants).
        variables: every Keras variable ``fn`` reads. On JAX, a variable not listed is baked
            into the compiled function with its value at the first call.

    Returns:
        ``() -> tensor``.

    Example:
        >>> total = compiled(lambda: keras.ops.sum(v * v), [v])
        >>> float(total())
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, autograph=False)
    if backend == "jax":
        import jax

        variables = list(variables)
        jitted = jax.jit(_pure(fn, variables))
        return lambda: jitted([v.value for v in variables])
    if backend == "torch":
        import torch

        def run() -> Any:
            with torch.no_grad():
                return fn()

        return run
    return fn


def _torch_leaves(variables: list) -> list:
    """PyTorch: a detached copy of each variable's value that requires a gradient (a leaf of
    its own, so that non-trainable variables and the model's Parameters are left alone)."""
    return [keras.ops.convert_to_tensor(v.value).detach().clone().requires_grad_(True)
            for v in variables]


def _torch_grads(value: Any, leaves: list, create_graph: bool) -> list[np.ndarray]:
    """PyTorch: ∂value/∂leaf of every leaf as NumPy arrays; zero where value does not
    depend on the leaf."""
    import torch

    if not value.requires_grad:  # value does not depend on any leaf
        return [np.zeros_like(_numpy(leaf.detach())) for leaf in leaves]
    grads = torch.autograd.grad(value, leaves, create_graph=create_graph, allow_unused=True)
    return [_numpy((torch.zeros_like(leaf) if g is None else g).detach())
            for g, leaf in zip(grads, leaves)]


def _pure(fn: Callable[[], Any], variables: list) -> Callable[[list], Any]:
    """JAX: ``fn`` as a pure function of the variables' values (a StatelessScope maps each
    variable to the value passed in; other variables keep their current values)."""

    def pure(values: list) -> Any:
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn()

    return pure
