"""What value a removed channel carries through the network, and the bias folds that keep
the thin model exact.

When its producers output zero, a removed channel is zero right after them; the layers that
follow may turn that zero into a per-channel constant (BN β and moving statistics, a
depthwise bias, f(0) ≠ 0 of an activation, a Rescaling offset). Where such a constant
reaches a consumer it is folded exactly into the consumer's bias, when the constant is the
same at every position and the consumer is a Dense or a convolution that mixes in no border
zeros (1×1 or 'valid'); otherwise surgery refuses with a ValueError. How each layer maps the
constants is its role's ``constants`` in :mod:`keras_tpp.layer_roles`; a value of NaN stands
for "varies across positions or unknown".
"""
from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_tpp import filters, layer_roles
from keras_tpp.graph import ChannelGroup, Layout, Step
from keras_tpp.surgery.edits import Surgeon, as_numpy, input_channels

_L = keras.layers
_FORMULA_MERGES = (_L.Concatenate,) + layer_roles.MERGE  # merges with a formula in _merge
Values = list  # one entry per layout segment: None (nothing removed) or (k,) float64


def propagate(surgeon: Surgeon) -> None:
    """Follow the value each removed channel carries when its producers output zero, and
    record the bias folds that keep the thin model exact (or raise) in ``surgeon.edits``."""
    values: dict[int, Values] = {}

    def get(layout: Layout) -> Values:
        if id(layout) not in values:
            values[id(layout)] = [
                None if surgeon.removed_in(a) is None else np.zeros(len(surgeon.removed_in(a)))
                for a, _ in layout.segments
            ]
        return values[id(layout)]

    for step in surgeon.graph.steps:
        layer = step.ref.layer
        if step.call is not None and step.kind in ("pass", "follower", "merge"):
            outs = _operation(surgeon, step, [get(x) for x in step.inputs])
        elif step.kind == "producer":
            _fold(surgeon, step, get(step.inputs[0]))
            outs = [None if surgeon.removed_in(a) is None else
                    _activate(getattr(layer, "activation", None),
                              np.zeros(len(surgeon.removed_in(a))))
                    for a, _ in step.outputs[0].segments]
        elif step.kind == "follower":
            outs = _follow(surgeon, step, get(step.inputs[0]))
        elif step.kind == "pass":
            outs = _pass(step, get(step.inputs[0]))
        elif step.kind == "merge" and not isinstance(layer, _FORMULA_MERGES):
            outs = _operation(surgeon, step, [get(x) for x in step.inputs])  # other couplings
        elif step.kind == "merge":
            outs = _merge(layer, [get(x) for x in step.inputs])
        elif step.kind == "concat":
            outs = [v for x in step.inputs for v in get(x)]
        else:  # barrier / unsupported: nothing removed goes in or comes out
            continue
        for out in step.outputs:
            values[id(out)] = list(outs)
        if isinstance(layer, _L.Reshape):
            surgeon.edit(step.ref).reshape_last = surgeon.kept_channels(step.outputs[0])


def _follow(surgeon: Surgeon, step: Step, vals: Values) -> Values:
    layer = step.ref.layer
    how = layer_roles.role_of(layer, len(step.input_shapes[0])).constants
    out = []
    offset = 0
    # The layer's weights, read once per call (a follower behind a Concatenate sees one
    # segment per concatenated tensor: reading them per segment was quadratic in DenseNets).
    params = _LazyParams(layer)
    for (atom, size), v in zip(step.inputs[0].segments, vals):
        idx = surgeon.removed_in(atom)
        if v is None:
            out.append(None)
            offset += size
            continue
        ch = offset + idx
        offset += size
        if how == "batchnorm":
            w = params.batchnorm()
            v = (v - w["mean"][ch]) / np.sqrt(w["var"][ch] + layer.epsilon) * w["gamma"][ch] \
                + w["beta"][ch]
        elif how == "depthwise":
            kernel = params.array("kernel")  # (*k, C, 1)
            ksum = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(0)[:, 0]
            padded = layer.padding != "valid" and any(k > 1 for k in kernel.shape[:-2])
            v = np.where((v != 0) & padded, np.nan, v * ksum[ch])
            if layer.use_bias:
                v = v + params.array("bias")[ch]
            v = _activate(layer.activation, v)
        elif how == "prelu":
            alpha = params.array("alpha")
            alpha = alpha.reshape(-1, alpha.shape[-1])[:, ch]
            uniform = np.all(alpha == alpha[:1], axis=0)
            v = np.where(v >= 0, v, np.where(uniform, alpha[0] * v, np.nan))
        elif how == "elementwise":
            v = _per_channel(layer, step, ch, v)
        elif how == "normalization":
            # Pruned through a channel normalization (allow_renormalization=True): the
            # removed channels are dropped before it, the others renormalized; nothing of
            # them remains to fold (outputs change by design, see layer_roles).
            v = np.zeros_like(v)
        else:
            v = _evaluate(layer, step, v)
        out.append(v)
    return out


def _pass(step: Step, vals: Values) -> Values:
    layer = step.ref.layer
    if all(v is None for v in vals):
        return [None] * len(step.outputs[0].segments)
    how = layer_roles.role_of(layer, len(step.input_shapes[0])).constants
    if how == "pads":  # padding turns a non-zero constant into one that varies by position
        return [None if v is None else np.where(v == 0, 0.0, np.nan) for v in vals]
    if how == "keep":
        return list(vals)
    if how == "elementwise":
        return _activate_each(layer, vals)
    zero_to_zero = _maps_zero_to_zero(layer, step)  # one evaluation for all segments
    return [None if v is None else _evaluate(layer, step, v, zero_to_zero) for v in vals]


def _fold(surgeon: Surgeon, step: Step, vals: Values) -> None:
    """Plan the bias correction for removed input channels carrying non-zero values."""
    layer = step.ref.layer
    layout = step.inputs[0]
    if all(v is None or not np.any(v) for v in vals):
        return
    total = input_channels(layer) // layout.repeat
    delta = np.zeros(filters.num_filters(layer))
    response = None  # R of every input channel, computed once (not per segment and copy)
    offset = 0
    for (atom, size), v in zip(layout.segments, vals):
        idx = surgeon.removed_in(atom)
        if v is not None and np.any(v != 0):
            _check_foldable(step, surgeon.graph.layout_group(atom), v)
            if response is None:
                response = _input_response(layer, np.arange(input_channels(layer)))
            for p in range(layout.repeat):
                rows = p * total + offset + idx
                delta += response[rows].T @ v
        offset += size
    edit = surgeon.edit(step.ref)
    if edit.bias_delta is not None and not np.allclose(edit.bias_delta, delta):
        raise ValueError(
            f"Cannot fold the removed channels into '{step.ref.path_str}': the layer is "
            "called several times with different constant inputs."
        )
    edit.bias_delta = delta


def _check_foldable(step: Step, group: ChannelGroup, v: np.ndarray) -> None:
    layer = step.ref.layer
    where = f"Cannot remove channels of group '{group.name}' exactly:"
    if np.any(np.isnan(v)):
        raise ValueError(
            f"{where} where they reach '{step.ref.path_str}' they carry values that vary "
            "across positions (e.g. a non-zero constant after zero padding). Zero the "
            "group's followers first (zero_channels) or leave the group out of the plan."
        )
    if isinstance(layer, layer_roles.DENSE):
        return
    if isinstance(layer, layer_roles.TRANSPOSE):
        why = "it is a transposed convolution, whose border outputs see fewer inputs"
    elif layer.padding == "valid" or all(k == 1 for k in layer.kernel_size):
        return
    else:
        why = (f"it uses padding='{layer.padding}' with kernel_size "
               f"{tuple(layer.kernel_size)}, which mixes in zeros at the borders")
    raise ValueError(
        f"{where} in the masked model they carry non-zero constants (up to "
        f"{float(np.max(np.abs(v))):.3g}; e.g. a BatchNormalization beta, a bias or "
        f"f(0) != 0 of an activation) where they reach '{step.ref.path_str}', and the "
        f"constant cannot be folded into its bias because {why}. Zero the group's "
        "followers first (zero_channels) or leave the group out of the plan."
    )


def _bn_params(layer: keras.layers.BatchNormalization) -> dict[str, np.ndarray]:
    n = int(layer.moving_mean.shape[-1])
    return {
        "gamma": as_numpy(layer.gamma).astype(np.float64) if layer.scale else np.ones(n),
        "beta": as_numpy(layer.beta).astype(np.float64) if layer.center else np.zeros(n),
        "mean": as_numpy(layer.moving_mean).astype(np.float64),
        "var": as_numpy(layer.moving_variance).astype(np.float64),
    }


def _activate(fn: Any, v: np.ndarray) -> np.ndarray:
    """fn applied elementwise to a vector of constants (float64 in, float64 out)."""
    if fn is None:
        return v
    finite = np.where(np.isnan(v), 0.0, v)
    out = np.asarray(keras.ops.convert_to_numpy(
        fn(keras.ops.convert_to_tensor(finite[None, :].astype(np.float32)))), np.float64)[0]
    return np.where(np.isnan(v), np.nan, out)


def _activate_each(fn: Any, vals: Values) -> Values:
    """:func:`_activate` of every segment's constants, evaluated once per distinct vector
    (behind a Concatenate many segments carry the same constants, e.g. all zeros)."""
    done: dict[tuple, np.ndarray] = {}
    out = []
    for v in vals:
        if v is None:
            out.append(None)
            continue
        key = (v.shape, v.dtype.str, v.tobytes())
        if key not in done:
            done[key] = _activate(fn, v)
        out.append(done[key].copy())
    return out


class _LazyParams:
    """A layer's weights as numpy arrays, each read at most once."""

    def __init__(self, layer: keras.layers.Layer):
        self.layer = layer
        self._arrays: dict[str, Any] = {}

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = as_numpy(getattr(self.layer, name))
        return self._arrays[name]

    def batchnorm(self) -> dict[str, np.ndarray]:
        if "_bn" not in self._arrays:
            self._arrays["_bn"] = _bn_params(self.layer)
        return self._arrays["_bn"]


def _probe_shape(step: Step) -> tuple:
    return (1,) + tuple(8 if d is None else d for d in step.input_shapes[0][1:])


def _per_channel(layer: keras.layers.Layer, step: Step, ch: np.ndarray,
                 v: np.ndarray) -> np.ndarray:
    """A per-channel layer applied to constants in channels ``ch`` (all other channels
    zero); NaN where the result is not the same at every position."""
    probe = np.zeros(_probe_shape(step), np.float32)
    probe[..., ch] = np.where(np.isnan(v), 0.0, v)
    out = as_numpy(layer(probe, training=False)).astype(np.float64)
    out = out.reshape(-1, out.shape[-1])[:, ch]
    uniform = np.all(out == out[:1], axis=0) & ~np.isnan(v)
    return np.where(uniform, out[0], np.nan)


def _operation(surgeon: Surgeon, step: Step, inputs: list[Values]) -> Values:
    """A channel-wise keras.ops operation (elementwise, with scalar, broadcast or per-channel
    constants, or between tensors of the same channels; reductions over positions), or a
    coupling layer without a formula here (InceptionResNetV2's scaled sum), applied to
    the removed channels' values: evaluated on probes holding the values in their channels
    (every other channel zero) with the call's own constants; NaN where a result is not the
    same at every position or an input is unknown."""
    if all(v is None for vals in inputs for v in vals):
        return [None] * len(step.outputs[0].segments)
    probes, unknown = [], None
    for layout, shape, vals in zip(step.inputs, step.input_shapes, inputs):
        probe = np.zeros((1,) + tuple(8 if d is None else d for d in shape[1:]), np.float32)
        flat_probe = probe.reshape(-1, probe.shape[-1])
        bad = np.zeros(probe.shape[-1], bool)
        offset = 0
        for (atom, size), v in zip(layout.segments, vals):
            if v is not None:
                chans = offset + surgeon.removed_in(atom)
                flat_probe[:, chans] = np.where(np.isnan(v), 0.0, v)
                bad[chans] = np.isnan(v)
            offset += size
        probes.append(probe)
        unknown = bad if unknown is None or unknown.shape != bad.shape else unknown | bad
    if step.call is None:  # a merging layer called on its list of tensors
        out = as_numpy(step.ref.layer(probes, training=False)).astype(np.float64)
    else:
        by_layout = {id(layout): probe for layout, probe in zip(step.inputs, probes)}
        args, kwargs = keras.tree.map_structure(
            lambda leaf: by_layout[id(leaf)] if isinstance(leaf, Layout) else leaf, step.call)
        out = as_numpy(step.ref.layer(*args, **kwargs)).astype(np.float64)
    out = out.reshape(-1, out.shape[-1])
    result, offset = [], 0
    for atom, size in step.outputs[0].segments:
        removed = surgeon.removed_in(atom)
        if removed is None:
            result.append(None)
        else:
            chans = offset + removed
            col = out[:, chans]
            uniform = np.all(col == col[:1], axis=0)
            if unknown is not None and unknown.shape[0] == out.shape[-1]:
                uniform &= ~unknown[chans]
            result.append(np.where(uniform, col[0], np.nan))
        offset += size
    return result


def _maps_zero_to_zero(layer: keras.layers.Layer, step: Step) -> bool:
    """Whether the layer maps an all-zero example (of the step's input shape) to zero."""
    out = as_numpy(layer(np.zeros(_probe_shape(step), np.float32), training=False))
    return bool(np.all(out == 0))


def _evaluate(layer: keras.layers.Layer, step: Step, v: np.ndarray,
              zero_to_zero: bool | None = None) -> np.ndarray:
    """Other layers (e.g. scalar Normalization): a removed channel stays exactly zero if it
    was zero and the layer maps an all-zero example to zero (checked numerically, unless
    ``zero_to_zero`` gives the answer); any other value is marked unknown (NaN), which
    surgery refuses to fold."""
    if zero_to_zero is None:
        zero_to_zero = _maps_zero_to_zero(layer, step)
    return np.where((v == 0) & zero_to_zero, 0.0, np.nan)


def _merge(layer: keras.layers.Layer, inputs: list[Values]) -> Values:
    out = []
    for seg_vals in zip(*inputs):
        if all(v is None for v in seg_vals):
            out.append(None)
            continue
        vs = [np.zeros_like(next(x for x in seg_vals if x is not None)) if v is None else v
              for v in seg_vals]
        if isinstance(layer, _L.Add):
            r = np.sum(vs, axis=0)
        elif isinstance(layer, _L.Subtract):
            r = vs[0] - vs[1]
        elif isinstance(layer, _L.Multiply):
            r = np.prod(np.where(np.isnan(vs), 1.0, vs), axis=0)
            zero = np.any(np.asarray(vs) == 0, axis=0)
            r = np.where(zero, 0.0, np.where(np.any(np.isnan(vs), axis=0), np.nan, r))
        elif isinstance(layer, _L.Average):
            r = np.mean(vs, axis=0)
        elif isinstance(layer, _L.Maximum):
            r = np.max(vs, axis=0)
        elif isinstance(layer, _L.Minimum):
            r = np.min(vs, axis=0)
        else:  # Concatenate along a spatial axis: uniform only if all parts agree
            r = np.where(np.all(np.asarray(vs) == vs[0], axis=0), vs[0], np.nan)
        out.append(r)
    return out


def _input_response(layer: keras.layers.Layer, rows: np.ndarray) -> np.ndarray:
    """R (len(rows), N): a unit constant in input channel ``rows[i]`` adds R[i] to the
    pre-activation outputs (kernel summed over its spatial taps)."""
    if isinstance(layer, layer_roles.SEPARABLE):
        dw = as_numpy(layer.depthwise_kernel).astype(np.float64)   # (*k, C, M)
        pw = as_numpy(layer.pointwise_kernel).astype(np.float64)   # (1.., C*M, N)
        mult = dw.shape[-1]
        dsum = dw.reshape(-1, dw.shape[-2], mult).sum(0)           # (C, M)
        pw = pw.reshape(-1, pw.shape[-1])                          # (C*M, N)
        return np.stack([dsum[r] @ pw[r * mult:(r + 1) * mult] for r in rows])
    kernel = as_numpy(filters.output_kernel(layer)).astype(np.float64)
    if isinstance(layer, layer_roles.DENSE):
        return kernel[rows]
    flat = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(0)  # (C_in, N)
    return flat[rows]
