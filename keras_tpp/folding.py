"""Fold inference-mode BatchNormalization into the convolution or Dense layer before it.

For deployment: BN(x) = γ·(x − μ)/√(σ² + ε) + β is affine per channel, so after a producer
y = W∗x + b it can be absorbed: W' = W·s, b' = (b − μ)·s + β with s = γ/√(σ² + ε) per output
channel. The folded model has no BN layers there (they become ``keras.layers.Identity``, so
layer names and the graph are kept) and computes the same function in inference mode; it
must not be trained further (its BN would no longer normalize batches).

A BN is folded when it normalizes the last axis and its only input is a Conv1D/2D/3D,
DepthwiseConv1D/2D, Conv*Transpose or Dense whose output feeds nothing else and that has no
activation of its own. Everything else is left as it is.
"""
from __future__ import annotations

import keras
import numpy as np

from keras_tpp import cloning, filters, keras_internals, layer_roles

def _foldable_producer(layer: keras.layers.Layer) -> bool:
    """A producer (not separable) or depthwise conv without an activation of its own."""
    if not (isinstance(layer, layer_roles.DEPTHWISE) or (
            filters.is_producer(layer) and not isinstance(layer, layer_roles.SEPARABLE))):
        return False
    return layer.activation in (None, keras.activations.linear)


def _pairs(model: keras.Model) -> list[tuple[keras.layers.Layer, keras.layers.Layer]]:
    """(BN, producer) for every foldable producer → BN pair in ``model`` (recursive)."""
    pairs = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            pairs.extend(_pairs(layer))
            continue
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        axis = layer.axis if isinstance(layer.axis, int) else (
            layer.axis[0] if len(layer.axis) == 1 else None)
        single = keras_internals.inbound_node_count(layer) == 1
        rank = len(layer.input.shape) if single else None
        if rank is None or axis is None or axis % rank != rank - 1:
            continue
        producer = keras_internals.producing_layer(layer.input)
        if (producer is not None and _foldable_producer(producer)
                and keras_internals.inbound_node_count(producer) == 1
                and keras_internals.outbound_node_count(producer) == 1):
            pairs.append((layer, producer))
    return pairs


def _scale_shift(bn: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    mean = keras.ops.convert_to_numpy(bn.moving_mean).astype("float64")
    var = keras.ops.convert_to_numpy(bn.moving_variance).astype("float64")
    gamma = keras.ops.convert_to_numpy(bn.gamma).astype("float64") if bn.scale else 1.0
    beta = keras.ops.convert_to_numpy(bn.beta).astype("float64") if bn.center else 0.0
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale * np.ones_like(mean), beta - mean * scale


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """A new model with every foldable BatchNormalization folded into its producer.

    Args:
        model: a Functional or Sequential model (nested ones too); never modified.
    Returns:
        A plain, uncompiled Keras model computing ``model(x, training=False)``, for
        inference and export.
    """
    cloning.check_functional(model, "keras_tpp.fold_batchnorm")
    pairs = _pairs(model)
    folded_norms = {id(bn) for bn, _ in pairs}
    producers = {id(producer): bn for bn, producer in pairs}

    def replace(layer: keras.layers.Layer, copy: cloning.LayerCopier):
        if id(layer) in folded_norms:
            return keras.layers.Identity(name=layer.name)
        if id(layer) in producers:
            return copy(layer, dict(layer.get_config(), use_bias=True))
        return None

    def weights(layer: keras.layers.Layer) -> list[np.ndarray] | None:
        if id(layer) in folded_norms:
            return []
        if id(layer) in producers:
            return _folded_weights(layer, producers[id(layer)])
        return None

    return cloning.clone(model, replace=replace, weights=weights).model


def _folded_weights(producer: keras.layers.Layer,
                    bn: keras.layers.BatchNormalization) -> list[np.ndarray]:
    """[kernel·s, (bias − μ)·s + β] of a producer followed by ``bn`` (s = γ/√(σ² + ε))."""
    scale, shift = _scale_shift(bn)
    kernel = keras.ops.convert_to_numpy(producer.kernel).astype("float64")
    if isinstance(producer, layer_roles.DEPTHWISE):  # (k..., C, multiplier): channel c·m + j
        shape = kernel.shape
        kernel = (kernel.reshape(shape[:-2] + (-1,)) * scale).reshape(shape)
    else:
        axis = filters.output_axis(producer)
        kernel = kernel * scale.reshape(filters.channel_broadcast_shape(kernel.shape, axis))
    bias = (keras.ops.convert_to_numpy(producer.bias).astype("float64")
            if producer.use_bias else np.zeros_like(shift))
    return [kernel.astype("float32"), (bias * scale + shift).astype("float32")]
