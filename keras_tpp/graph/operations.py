"""How channels flow through keras.ops operations recorded in a functional graph.

Keras 3 records tensor arithmetic and keras.ops calls on symbolic tensors as operation nodes
(``x + 3.0`` is an ``Add`` operation of keras.ops' numpy module, named ``"numpy.Add"`` by
:func:`keras_tpp.keras_internals.operation_name`; ``keras.ops.relu6(x)`` is ``"nn.Relu6"``),
e.g. in MobileNetV3's hard-swish and ConvNeXt's residual sums. This module gives each such call the
:class:`~keras_tpp.layer_roles.Role` the dependency graph follows:

- *channel-wise* operations (activations, elementwise math, ``clip``, ``cast``, reductions over
  non-channel axes) whose other arguments are scalars or constants broadcast across channels
  (last axis 1): ``pass`` — channel ``c`` of the output depends on channel ``c`` of the input
  only;
- the same with a *per-channel constant* (last axis = C, e.g. ``x * scale`` with scale of shape
  (C,)): ``follower`` — surgery slices the constant with the channels;
- binary elementwise operations between two tensors with the same channels (``a + b``,
  ``keras.ops.multiply(a, b)``, ...): ``coupling``, like an ``Add`` layer;
- ``keras.ops.concatenate`` on the channel axis: ``offsets``, like a ``Concatenate`` layer;
- ``softmax``-like operations: followed, but their channels are unprunable;
- anything else: ``unknown``, with the operation's name and why.

Surgery evaluates these operations on constant probes to follow the value of removed
channels (:mod:`keras_tpp.surgery.constants`) and rebuilds them with their per-channel
constants sliced (:meth:`keras_tpp.surgery.edits.Surgeon.operation_arguments`).

Example::

    x = keras.layers.Conv2D(16, 3)(inputs)
    x = x * keras.ops.relu6(x + 3.0) * (1.0 / 6.0)   # hard-swish: pass, coupling, pass
    x = x * np.linspace(0.5, 1.5, 16)                 # per-channel constant: follower
"""
from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_tpp import keras_internals
from keras_tpp.graph.layout import Layout
from keras_tpp.layer_roles import Role

#: Channel-wise unary operations (besides their tensor, at most scalar or broadcast
#: constants): output channel c depends on input channel c only.
UNARY = frozenset({
    "nn.Relu", "nn.Relu6", "nn.Sigmoid", "nn.HardSigmoid", "nn.HardSilu", "nn.Silu",
    "nn.Gelu", "nn.Elu", "nn.Selu", "nn.Celu", "nn.LeakyRelu", "nn.Softplus", "nn.Softsign",
    "nn.SparsePlus", "nn.SparseSigmoid", "nn.Squareplus", "nn.LogSigmoid", "nn.HardTanh",
    "nn.HardShrink", "nn.SoftShrink", "nn.TanhShrink", "nn.Threshold",
    "numpy.Abs", "numpy.Absolute", "numpy.Fabs", "numpy.Negative", "numpy.Square",
    "numpy.Sqrt", "numpy.Cbrt", "numpy.Exp", "numpy.Exp2", "numpy.Expm1", "numpy.Log",
    "numpy.Log1p", "numpy.Log2", "numpy.Log10", "numpy.Sin", "numpy.Cos", "numpy.Tan",
    "numpy.Sinh", "numpy.Cosh", "numpy.Tanh", "numpy.Arctan", "numpy.Arcsinh", "numpy.Sign",
    "numpy.Floor", "numpy.Ceil", "numpy.Round", "numpy.Trunc", "numpy.Reciprocal",
    "numpy.Clip", "numpy.NanToNum", "numpy.Copy", "math.Erf", "math.Erfc", "math.Rsqrt",
    "core.Cast", "core.StopGradient",
})
#: Binary elementwise operations: a coupling between two tensors, or channel-wise with a
#: constant operand.
BINARY = frozenset({
    "numpy.Add", "numpy.Subtract", "numpy.Multiply", "numpy.Divide", "numpy.TrueDivide",
    "numpy.DivideNoNan", "numpy.Maximum", "numpy.Minimum", "numpy.Fmax", "numpy.Fmin",
    "numpy.Power", "numpy.FloorDivide", "numpy.Mod", "numpy.Fmod", "numpy.Hypot",
    "numpy.Arctan2", "numpy.Logaddexp",
})
#: Reductions: channel-wise when their axes leave the channel axis alone.
REDUCTIONS = frozenset({
    "numpy.Mean", "numpy.Sum", "numpy.Max", "numpy.Min", "numpy.Amax", "numpy.Amin",
    "numpy.Prod",
})
#: Operations that normalize across channels (followed, never pruned through).
CHANNEL_MIXING = frozenset({"nn.Softmax", "nn.LogSoftmax", "nn.Sparsemax"})
#: Operations that need a per-channel constant sliced, when they have one.
ELEMENTWISE = UNARY | BINARY


def is_operation(layer: Any) -> bool:
    """True for a keras.ops operation node (anything in a functional graph that is not a
    ``keras.layers.Layer``)."""
    return not isinstance(layer, keras.layers.Layer)


def describe(operation: Any) -> str:
    """``"keras.ops numpy.Add"`` (or the class name of an operation from elsewhere)."""
    name = keras_internals.operation_name(operation)
    return f"keras.ops {name}" if name else f"operation {type(operation).__name__}"


def constants(args: Any, kwargs: dict) -> list[Any]:
    """The non-tensor leaves of an operation call whose tensors are :class:`Layout`
    placeholders (numbers, arrays, backend tensors; None and strings skipped)."""
    leaves = list(keras.tree.flatten((args, kwargs)))
    return [leaf for leaf in leaves
            if not isinstance(leaf, (Layout, str, bytes, type(None), bool))
            and not isinstance(leaf, keras.KerasTensor)]


def as_array(value: Any) -> np.ndarray | None:
    """A constant as a numpy array, or None if it is not numeric."""
    try:
        if isinstance(value, (int, float, complex, np.ndarray, np.generic, list, tuple)):
            array = np.asarray(value)
        else:
            array = np.asarray(keras.ops.convert_to_numpy(value))
    except Exception:  # noqa: BLE001 - anything non-numeric
        return None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number)
                                     or array.dtype == bool):
        return None
    return array


def _axes(axis: Any, rank: int) -> set[int] | None:
    if axis is None:
        return None
    values = [axis] if isinstance(axis, int) else list(axis)
    return {int(a) % rank for a in values}


def op_role(operation: Any, path: str, args: Any, kwargs: dict, channels: int,
            input_shapes: list[tuple], output_shapes: list[tuple]) -> Role:
    """The :class:`~keras_tpp.layer_roles.Role` of one call of a keras.ops operation.

    Args:
        operation: the operation object of the node.
        path: its path in the model (for messages).
        args, kwargs: the call's arguments with its tensors replaced by layouts.
        channels: C, the last-axis size of its first tensor input.
        input_shapes, output_shapes: symbolic shapes (batch axis included).
    Returns:
        A Role; ``unknown`` roles carry a reason naming the operation.

    Example::

        op_role(add_op, "add_3", (Layout(...), 3.0), {}, 16, [(None, 8, 8, 16)],
                [(None, 8, 8, 16)])   # Role("pass")
    """
    name = keras_internals.operation_name(operation)
    what = describe(operation)
    rank = len(input_shapes[0]) if input_shapes else 0
    out_last = output_shapes[0][-1] if output_shapes and output_shapes[0] else None
    tensors = [leaf for leaf in keras.tree.flatten((args, kwargs)) if isinstance(leaf, Layout)]
    if name is None:
        return Role("unknown", reason="is an operation keras_tpp does not know how channels "
                                      "flow through")
    if name in CHANNEL_MIXING:
        return Role("pass", taint=f"goes through the {name.split('.')[-1].lower()} operation "
                                  f"'{path}' ({what}), which normalizes across channels or "
                                  "positions")
    if name == "numpy.Concatenate":
        return Role("offsets")
    if name in REDUCTIONS:
        axes = _axes(getattr(operation, "axis", None), rank)
        if axes is None or rank - 1 in axes or len(tensors) != 1:
            return Role("unknown", reason="is a reduction over the channel axis "
                                          f"(axis={getattr(operation, 'axis', None)})")
        if not getattr(operation, "keepdims", False) and len(axes) and max(axes) >= rank - 1:
            return Role("unknown", reason="is a reduction that moves the channel axis")
        return Role("pass")
    if name not in ELEMENTWISE:
        return Role("unknown", reason="is not modelled: keras_tpp follows elementwise "
                                      "operations, activations, reductions over non-channel "
                                      "axes and concatenation")
    if len(tensors) == 2:
        return Role("coupling")
    if len(tensors) != 1:
        return Role("unknown", reason=f"is an elementwise operation called on {len(tensors)} "
                                      "tensors")
    if out_last != channels:
        return Role("unknown", reason=f"outputs {out_last} channels for {channels} input "
                                      "channels (it broadcasts across channels)")
    per_channel = False
    for value in constants(args, kwargs):
        array = as_array(value)
        if array is None:
            return Role("unknown", reason="has a non-numeric argument of type "
                                          f"{type(value).__name__}")
        if array.ndim == 0 or array.size == 1 or array.shape[-1] == 1:
            continue  # a scalar, or broadcast across channels
        if array.shape[-1] == channels and array.ndim <= rank:
            per_channel = True
            continue
        return Role("unknown", reason=f"has a constant of shape {array.shape} that does not "
                                      f"broadcast along the {channels} channels")
    return Role("follower") if per_channel else Role("pass")


def sliced_arguments(args: Any, kwargs: dict, channels: int,
                     removed: np.ndarray) -> tuple[Any, dict]:
    """The call's arguments with every per-channel constant (a non-tensor argument whose
    last axis has ``channels`` entries, channels > 1) without the ``removed`` channels."""

    def cut(leaf: Any) -> Any:
        if isinstance(leaf, (keras.KerasTensor, str, bytes, bool, type(None))):
            return leaf
        array = as_array(leaf)
        if array is None or array.ndim == 0 or array.shape[-1] != channels or channels < 2:
            return leaf
        return np.delete(array, removed, axis=-1)

    return keras.tree.map_structure(cut, (args, kwargs))
