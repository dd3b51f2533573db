"""Reference gradients for the tests, independent of keras_tpp.autodiff.

TensorFlow: ``tf.GradientTape`` on the variables' values; JAX: ``jax.grad`` of the model's
``stateless_call`` w.r.t. its trainable variables; PyTorch: ``torch.autograd.grad`` w.r.t.
the variables' own ``torch.nn.Parameter``s (keras_tpp.autodiff differentiates w.r.t. copies
mapped by a StatelessScope instead).
"""
from typing import Any, Callable

import keras
import numpy as np


def model_gradients(model: keras.Model, variables: list, x: Any,
                    loss_of_outputs: Callable[[Any], Any]) -> list[np.ndarray]:
    """Gradients of ``loss_of_outputs(model(x, training=False))`` w.r.t. ``variables`` (some
    of ``model.trainable_variables``), as NumPy arrays.

    Example:
        >>> (g,) = model_gradients(model, [model.get_layer("d").kernel], x, keras.ops.sum)
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = loss_of_outputs(model(x, training=False))
        return [g.numpy() for g in tape.gradient(value, [v.value for v in variables])]
    if keras.backend.backend() == "torch":
        import torch

        params = [v.value for v in variables]
        assert all(p.requires_grad for p in params), "trainable variables only"
        value = loss_of_outputs(model(x, training=False))
        return [g.detach().cpu().numpy() for g in torch.autograd.grad(value, params)]
    import jax

    trainable = list(model.trainable_variables)
    non_trainable = [v.value for v in model.non_trainable_variables]
    index = [next(i for i, t in enumerate(trainable) if t is v) for v in variables]

    def loss(values):
        outputs, _ = model.stateless_call(values, non_trainable, x, training=False)
        return loss_of_outputs(outputs)

    grads = jax.grad(loss)([v.value for v in trainable])
    return [np.asarray(grads[i]) for i in index]
