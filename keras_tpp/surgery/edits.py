"""Per-layer edits of a plan: which output, input and own channels each layer loses, and
the layer's config and weights in the thin model.

:class:`Surgeon` is built from the dependency graph and the resolved plan, before anything
is built; :mod:`~keras_tpp.surgery.constants` adds the bias folds that keep the thin model
exact, and :mod:`~keras_tpp.surgery.api` rebuilds the model with the results.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Iterator

import keras
import numpy as np

from keras_tpp import filters, layer_roles
from keras_tpp.graph import DependencyGraph, LayerRef, Layout, operations


#: {id(variable): (variable, its value)} while :func:`reading_once` is active, else None.
_READ_CACHE: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "keras_tpp_surgery_read_cache", default=None)


@contextlib.contextmanager
def reading_once() -> Iterator[None]:
    """Within this context, :func:`as_numpy` reads each Keras variable from its backend once.

    Surgery reads most weights two or three times (the finiteness check, the values of
    removed channels, the thin weights); nothing assigns to the model's variables in
    between. Example: ``with reading_once(): check_finite(model); thin = _shrink(...)``.
    """
    token = _READ_CACHE.set({})
    try:
        yield
    finally:
        _READ_CACHE.reset(token)


def as_numpy(variable: Any) -> np.ndarray:
    """A variable's value (or a tensor's) as a numpy array (a copy)."""
    cache = _READ_CACHE.get()
    if cache is None or not isinstance(variable, keras.Variable):
        return np.array(keras.ops.convert_to_numpy(variable))
    entry = cache.get(id(variable))
    if entry is None or entry[0] is not variable:
        entry = cache[id(variable)] = (variable, np.asarray(keras.ops.convert_to_numpy(variable)))
    return np.array(entry[1])


def input_channels(layer: keras.layers.Layer) -> int:
    """C_in of a consumer (for separable convs, the depthwise input channels)."""
    if isinstance(layer, layer_roles.SEPARABLE):
        return int(layer.depthwise_kernel.shape[-2])
    kernel = filters.output_kernel(layer)
    return int(kernel.shape[filters.input_axis(layer)])


def channel_variables(layer: keras.layers.Layer) -> list[tuple[Any, int]]:
    """(variable, channel axis) of a follower's per-channel weights (its role's
    ``channel_weights``), skipping those the layer does not have (e.g. BN without γ)."""
    role = layer_roles.role_of(layer)
    found = []
    for attribute, axis in role.channel_weights.items():
        variable = getattr(layer, attribute, None)
        if variable is not None and hasattr(variable, "assign"):
            found.append((variable, axis))
    return found


def zero_variables(layer: keras.layers.Layer) -> list[tuple[Any, int]]:
    """(variable, channel axis) that ``zero_channels`` zeroes in a follower."""
    names = layer_roles.role_of(layer).zero_weights
    axes = layer_roles.role_of(layer).channel_weights
    return [(getattr(layer, n), axes.get(n, -1)) for n in names
            if getattr(layer, n, None) is not None]


def delete(value: np.ndarray, indices: np.ndarray, axis: int) -> np.ndarray:
    """``value`` without ``indices`` along ``axis``."""
    return np.delete(value, indices, axis=axis % value.ndim)


@dataclass
class Edit:
    """What happens to one layer: channels removed at its output / input / own channels."""

    out: np.ndarray | None = None       # producer: removed output channels
    inputs: list[int] = field(default_factory=list)    # consumer: removed input channels
    own: list[int] = field(default_factory=list)       # follower: removed channels
    bias_delta: np.ndarray | None = None  # constant folded into a consumer's bias (N,)
    reshape_last: int | None = None     # Reshape: new last dim of target_shape

    @property
    def empty(self) -> bool:
        return (self.out is None and not self.inputs and not self.own
                and self.bias_delta is None)


class Surgeon:
    """Everything shrink and zero_channels need to know, computed before building.

    Args:
        graph: the model's dependency graph.
        removed: {group id: sorted removed channel indices} (a resolved plan).
    """

    def __init__(self, graph: DependencyGraph, removed: dict[int, np.ndarray]):
        self.graph = graph
        self.removed = removed
        self.edits: dict[int, Edit] = {}
        self.refs: dict[int, LayerRef] = {}
        for gid, indices in removed.items():
            group = graph.groups[gid]
            for ref in group.producers:
                self.edit(ref).out = indices
            for slot in group.follower_slots:
                self.edit(slot.ref).own.extend(int(slot.offset + i) for i in indices)
            for slot in group.consumers:
                total = input_channels(slot.ref.layer) // slot.repeat
                edit = self.edit(slot.ref)
                for p in range(slot.repeat):
                    edit.inputs.extend(int(p * total + slot.offset + i) for i in indices)

    def edit(self, ref: LayerRef) -> Edit:
        """The (possibly new) edit of a layer."""
        key = id(ref.layer)
        self.refs.setdefault(key, ref)
        return self.edits.setdefault(key, Edit())

    def removed_in(self, atom: int) -> np.ndarray | None:
        """Removed indices of the group a layout atom belongs to (None: nothing removed)."""
        group = self.graph.layout_group(atom)
        if group is None:
            return None
        return self.removed.get(group.id)

    def kept_channels(self, layout: Layout) -> int:
        """Last-axis size of a tensor with this layout in the thin model."""
        kept = 0
        for atom, size in layout.segments:
            gone = self.removed_in(atom)
            kept += size - (0 if gone is None else len(gone))
        return kept * layout.repeat

    # -- the thin model's layers --------------------------------------------------------------

    def new_weights(self, layer: keras.layers.Layer) -> list[np.ndarray] | None:
        """The layer's weights in the thin model (None: copy unchanged)."""
        edit = self.edits.get(id(layer))
        if edit is None or edit.empty:
            return None
        if filters.is_producer(layer):
            return self._producer_weights(layer, edit)
        own = np.asarray(sorted(set(edit.own)), dtype=np.int64)
        sliced = {id(v): delete(as_numpy(v), own, axis) for v, axis in channel_variables(layer)}
        # (not sliced.get(id(v), as_numpy(v)): that would read every variable twice)
        return [sliced[id(v)] if id(v) in sliced else as_numpy(v) for v in layer.weights]

    def _producer_weights(self, layer: keras.layers.Layer, edit: Edit) -> list[np.ndarray]:
        arrays = {id(v): as_numpy(v) for v in layer.weights}
        inputs = np.asarray(sorted(set(edit.inputs)), dtype=np.int64)
        out_axis, in_axis = filters.output_axis(layer), filters.input_axis(layer)
        kernel_var = filters.output_kernel(layer)
        kernel = arrays[id(kernel_var)]
        result = {}
        if isinstance(layer, layer_roles.SEPARABLE):
            dw = arrays[id(layer.depthwise_kernel)]
            mult = dw.shape[-1]
            rows = (inputs[:, None] * mult + np.arange(mult)[None, :]).reshape(-1)
            kernel = delete(kernel, rows, in_axis)
            result[id(layer.depthwise_kernel)] = delete(dw, inputs, -2)
        else:
            kernel = delete(kernel, inputs, in_axis)
        bias = arrays[id(layer.bias)] if layer.use_bias else None
        if edit.bias_delta is not None:
            bias = (np.zeros(kernel.shape[out_axis]) if bias is None else bias) + edit.bias_delta
        if edit.out is not None:
            kernel = delete(kernel, edit.out, out_axis)
            bias = None if bias is None else np.delete(bias, edit.out)
        result[id(kernel_var)] = kernel
        ordered = [result.get(id(v), arrays[id(v)]) for v in layer.weights
                   if not (layer.use_bias and v is layer.bias)]
        if bias is not None:
            ordered.append(bias.astype(kernel.dtype))
        return ordered

    def new_config(self, layer: keras.layers.Layer) -> dict:
        """The layer's config in the thin model."""
        config = layer.get_config()
        edit = self.edits.get(id(layer))
        if edit is None:
            return config
        if edit.out is not None:
            key = "units" if isinstance(layer, layer_roles.DENSE) else "filters"
            config[key] = int(config[key]) - len(edit.out)
        if edit.bias_delta is not None and not config.get("use_bias", True):
            config["use_bias"] = True
        if edit.own and not operations.is_operation(layer):
            removed = len(set(edit.own))
            for key in layer_roles.role_of(layer).channel_config:
                config[key] = int(config[key]) - removed
        if edit.reshape_last is not None:
            target = list(config["target_shape"])
            if target[-1] != -1:
                target[-1] = edit.reshape_last
            config["target_shape"] = tuple(target)
        return config

    def operation_arguments(self, operation: Any, args: tuple,
                            kwargs: dict) -> tuple[tuple, dict]:
        """The arguments of a keras.ops operation's call in the thin model: its per-channel
        constants without the removed channels (other arguments unchanged)."""
        edit = self.edits.get(id(operation))
        if edit is None or not edit.own:
            return args, kwargs
        channels = self._operation_channels().get(id(operation))
        if channels is None:
            return args, kwargs
        own = np.asarray(sorted(set(edit.own)), dtype=np.int64)
        return operations.sliced_arguments(args, kwargs, channels, own)

    def _operation_channels(self) -> dict[int, int]:
        """{id(operation): channels of its input} for the operations with per-channel
        constants (followers)."""
        if not hasattr(self, "_op_channels"):
            self._op_channels = {id(step.ref.layer): step.inputs[0].channels
                                 for step in self.graph.steps
                                 if step.call is not None and step.kind == "follower"}
        return self._op_channels

    # -- the masked model's values ----------------------------------------------------------------

    def zeroed_weights(self, layer: keras.layers.Layer) -> list[np.ndarray] | None:
        """The layer's weights with the plan's channels zeroed (None: unchanged)."""
        edit = self.edits.get(id(layer))
        if edit is None:
            return None
        values = {id(v): as_numpy(v) for v in layer.weights}
        if edit.out is not None and filters.is_producer(layer):
            kernel = values[id(filters.output_kernel(layer))]
            index = [slice(None)] * kernel.ndim
            index[filters.output_axis(layer) % kernel.ndim] = edit.out
            kernel[tuple(index)] = 0
            if layer.use_bias:
                values[id(layer.bias)][edit.out] = 0
        own = np.asarray(sorted(set(edit.own)), dtype=np.int64)
        if own.size and not filters.is_producer(layer):
            for variable, axis in zero_variables(layer):
                value = values[id(variable)]
                index = [slice(None)] * value.ndim
                index[axis % value.ndim] = own
                value[tuple(index)] = 0
        return [values[id(v)] for v in layer.weights]
