"""Where a layer keeps its filters: kernel layouts of the layers that produce channels.

A *producer* is a layer whose output channels are each computed by one filter of its own
kernel (Conv*, Dense, SeparableConv*, Conv*Transpose). For each producer this module names
the kernel that holds the output filters, the axis of that kernel that indexes output
channels, and the axis that indexes input channels, and turns a kernel into the filter
matrix W: shape (N, K), one row per output channel.

Everything here is pure layout knowledge; importance scores, penalties and surgery all use it.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_tpp import layer_roles

_TRANSPOSE_TYPES = layer_roles.TRANSPOSE
_SEPARABLE_TYPES = layer_roles.SEPARABLE


def is_producer(layer: keras.layers.Layer) -> bool:
    """True for layers whose output channels are produced by their own filters (the
    ``producer`` role of :mod:`keras_tpp.layer_roles`; grouped convolutions are not)."""
    return layer_roles.is_producer(layer)


def output_kernel_name(layer: keras.layers.Layer) -> str:
    """Attribute name of the kernel holding the output filters ('kernel' or 'pointwise_kernel')."""
    if isinstance(layer, _SEPARABLE_TYPES):
        return "pointwise_kernel"
    return "kernel"


def output_kernel(layer: keras.layers.Layer) -> Any:
    """The variable holding ``layer``'s output filters."""
    return getattr(layer, output_kernel_name(layer))


def output_axis(layer: keras.layers.Layer) -> int:
    """Axis of :func:`output_kernel` indexing output channels (negative index)."""
    if isinstance(layer, _TRANSPOSE_TYPES):
        return -2
    return -1


def input_axis(layer: keras.layers.Layer) -> int:
    """Axis of :func:`output_kernel` indexing input channels (negative index).

    For separable convolutions this is the input axis of the pointwise kernel, i.e. the
    depthwise outputs; surgery handles the depthwise kernel separately.
    """
    if isinstance(layer, _TRANSPOSE_TYPES):
        return -1
    if isinstance(layer, keras.layers.Dense):
        return 0
    return -2


def num_filters(layer: keras.layers.Layer) -> int:
    """Number of output channels N of a producer."""
    return int(output_kernel(layer).shape[output_axis(layer)])


def filter_matrix(kernel: Any, axis: int = -1) -> Any:
    """Reshape a kernel to its filter matrix W, shape (N, K), one row per output channel.

    Args:
        kernel: tensor or variable, e.g. (kh, kw, C_in, N) for Conv2D or (C_in, N) for Dense.
        axis: axis of ``kernel`` indexing the N output channels.
    Returns:
        Tensor of shape (N, K) with K = kernel.size / N.
    """
    kernel = ops.convert_to_tensor(kernel)
    rank = len(kernel.shape)
    moved = ops.moveaxis(kernel, axis % rank, 0)
    return ops.reshape(moved, (moved.shape[0], -1))


def layer_filter_matrix(layer: keras.layers.Layer) -> Any:
    """Filter matrix (N, K) of a built producer layer."""
    return filter_matrix(output_kernel(layer), output_axis(layer))


def channel_broadcast_shape(kernel_shape: tuple, axis: int) -> tuple:
    """Shape that broadcasts a per-channel vector of length N along ``axis`` of a kernel."""
    rank = len(kernel_shape)
    shape = [1] * rank
    shape[axis % rank] = kernel_shape[axis % rank]
    return tuple(shape)
