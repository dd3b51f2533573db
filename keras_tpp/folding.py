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

from keras_tpp import cloning, filters

_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


def _foldable_producer(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, _DEPTHWISE):
        return layer.activation in (None, keras.activations.linear)
    if not (filters.is_producer(layer) and not isinstance(
            layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D))):
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
        rank = len(layer.input.shape) if len(layer._inbound_nodes) == 1 else None
        if rank is None or axis is None or axis % rank != rank - 1:
            continue
        history = layer.input._keras_history
        producer = history.operation
        if (_foldable_producer(producer) and len(producer._inbound_nodes) == 1
                and len(producer._outbound_nodes) == 1):
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

    def replace(layer: keras.layers.Layer):
        if id(layer) in folded_norms:
            return keras.layers.Identity(name=layer.name)
        if id(layer) in producers:
            config = layer.get_config()
            config["use_bias"] = True
            return layer.__class__.from_config(config)
        return None

    folded = cloning.clone_replacing(model, replace, copy=False, compiled=False)
    _copy_folded(model, folded, producers)
    return folded


def _copy_folded(source: keras.Model, target: keras.Model,
                 producers: dict[int, keras.layers.BatchNormalization]) -> None:
    targets = {layer.name: layer for layer in target.layers}
    for src in source.layers:
        dst = targets.get(src.name)
        if dst is None or not src.weights:
            continue
        if isinstance(src, keras.Model):
            _copy_folded(src, dst, producers)
        elif isinstance(src, keras.layers.BatchNormalization) and isinstance(
                dst, keras.layers.Identity):
            continue
        elif id(src) in producers:
            scale, shift = _scale_shift(producers[id(src)])
            kernel = keras.ops.convert_to_numpy(src.kernel).astype("float64")
            if isinstance(src, _DEPTHWISE):  # (k..., C, multiplier): output channel c·m + j
                shape = kernel.shape
                kernel = kernel.reshape(shape[:-2] + (-1,)) * scale
                kernel = kernel.reshape(shape)
            else:
                axis = filters.output_axis(src)
                kernel = kernel * scale.reshape(filters.channel_broadcast_shape(kernel.shape, axis))
            bias = (keras.ops.convert_to_numpy(src.bias).astype("float64")
                    if src.use_bias else np.zeros_like(shift))
            dst.set_weights([kernel.astype("float32"), (bias * scale + shift).astype("float32")])
        else:
            dst.set_weights(src.get_weights())
