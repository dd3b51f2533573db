"""Model surgery: remove channels physically, or zero them in a copy.

A *plan* maps a producer layer's name (``"outer/inner"`` inside nested models) to the output
channel indices to remove; an entry for any producer of a coupled group applies to the whole
group (:mod:`keras_tpp.graph`).

- :func:`zero_channels` — the *masked model*: a copy whose planned producer filters and biases
  and the followers' per-channel parameters (BN γ, β, moving mean; depthwise kernel/bias;
  PReLU α) are zero, so that the removed channels are exactly zero after each follower.
- :func:`shrink` — the *thin model*: a plain functional Keras model without those channels
  (producers' filters, followers' parameters, consumers' input slices, Concatenate offsets,
  Flatten expansion). It computes what ``model`` computes when the planned producers output
  zero in the removed channels; a removed channel whose value is still non-zero where it
  reaches a consumer (BN β and moving statistics, a depthwise bias, sigmoid(0) = 0.5, a
  Rescaling offset) is folded exactly into the consumer's bias when the value is spatially
  constant and the consumer is a Dense or a convolution without zero padding on that input
  (1×1 or 'valid'); otherwise shrink refuses with a ValueError. On a masked model
  (``shrink(zero_channels(m, plan), plan)``, what :func:`prune` does) the thin model's
  outputs equal the masked model's.
- :func:`prune` — one-shot pruning by L1 norm (or at random) straight to a thin model.

The user's model is never modified; every check runs before anything is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import keras
import numpy as np

from keras_tpp import cloning, filters, selection
from keras_tpp.graph import (
    ChannelGroup,
    DependencyGraph,
    LayerRef,
    Layout,
    Step,
    iter_layers,
)

Plan = Mapping[str, Iterable[int]]

_L = keras.layers
_TRANSPOSE = (_L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose)
_SEPARABLE = (_L.SeparableConv1D, _L.SeparableConv2D)
_DEPTHWISE = (_L.DepthwiseConv1D, _L.DepthwiseConv2D)
# Pass-through layers that map a zero channel to zero and keep constants constant.
_ZERO_SAFE = tuple(
    cls for cls in (getattr(_L, n, None) for n in (
        "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
        "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
        "ActivityRegularization", "Identity", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
        "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D",
        "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GlobalAveragePooling1D",
        "GlobalAveragePooling2D", "GlobalAveragePooling3D", "ZeroPadding1D", "ZeroPadding2D",
        "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D",
        "UpSampling2D", "UpSampling3D", "RepeatVector", "Flatten", "Reshape", "Permute",
        "CenterCrop", "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
        "RandomCrop", "RandomContrast", "RandomBrightness",
    )) if cls is not None
)
_PADDING = (_L.ZeroPadding1D, _L.ZeroPadding2D, _L.ZeroPadding3D)


# ----------------------------------------------------------------------------------------
# Plans
# ----------------------------------------------------------------------------------------


def plan_from_masks(masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn keep-masks {producer path: bool (N,), True = kept} into a plan of removed indices."""
    plan = {}
    for name, mask in masks.items():
        mask = np.asarray(keras.ops.convert_to_numpy(mask)).astype(bool).reshape(-1)
        plan[name] = np.flatnonzero(~mask)
    return plan


def _entry_indices(key: str, entry: Any, size: int, path: str) -> np.ndarray:
    """One plan entry as sorted unique removed indices.

    An entry is either channel indices (integers) or a boolean keep-mask of length N
    (True = kept, False = removed), the form :func:`keras_tpp.get_masks` returns.
    """
    if entry is None or isinstance(entry, (str, bytes, Mapping)):
        raise ValueError(f"Plan entry '{key}' must be a list of channel indices or a boolean "
                         f"keep-mask, got {entry!r}.")
    try:
        values = np.asarray(keras.ops.convert_to_numpy(entry) if hasattr(entry, "shape")
                            else list(entry))
    except TypeError:
        raise ValueError(f"Plan entry '{key}' must be a list of channel indices or a boolean "
                         f"keep-mask, got {entry!r}.") from None
    if values.dtype == bool:
        if values.ndim != 1 or values.size != size:
            raise ValueError(
                f"Plan entry '{key}' is a boolean keep-mask of shape {values.shape}, but "
                f"'{path}' has {size} output channels: a keep-mask needs one entry per "
                "channel (True = kept, False = removed).")
        return np.flatnonzero(~values)
    if values.size and not (np.issubdtype(values.dtype, np.integer) or (
            np.issubdtype(values.dtype, np.floating)
            and np.all(np.isfinite(values)) and np.all(np.equal(np.mod(values, 1), 0)))):
        raise ValueError(f"Plan entry '{key}' must hold integer channel indices (or be a "
                         f"boolean keep-mask), got {values.tolist()}.")
    values = np.unique(values.astype(np.int64).reshape(-1))
    if values.size and (values[0] < 0 or values[-1] >= size):
        bad = int(values[0] if values[0] < 0 else values[-1])
        raise ValueError(
            f"Plan entry '{key}' removes channel {bad}, but '{path}' has "
            f"{size} output channels (0..{size - 1}).")
    return values


def _resolve_plan(graph: DependencyGraph, plan: Plan) -> dict[int, np.ndarray]:
    """Validate a plan against the graph: {group id: sorted removed indices}."""
    if not isinstance(plan, Mapping):
        raise ValueError(f"A plan must map producer layer names to channel indices, got "
                         f"{type(plan).__name__}.")
    chosen: dict[int, tuple[str, np.ndarray]] = {}
    for key, indices in plan.items():
        if not isinstance(key, str):
            raise ValueError(f"Plan keys are layer names or 'outer/inner' paths, got {key!r}.")
        ref = graph.find(key)
        group = graph.group_of(ref)
        if group is None:
            raise ValueError(
                f"Layer '{ref.path_str}' ({type(ref.layer).__name__}) does not produce "
                "channels; a plan names producers (Conv, Dense, SeparableConv, ConvTranspose)."
            )
        values = _entry_indices(key, indices, group.size, ref.path_str)
        if values.size == group.size:
            raise ValueError(f"Plan entry '{key}' removes all {group.size} channels of "
                             f"'{ref.path_str}'; at least one must be kept.")
        if values.size and not group.prunable:
            raise ValueError(f"Cannot prune '{ref.path_str}': its channels {group.reason}.")
        if group.id in chosen:
            other, previous = chosen[group.id]
            if not np.array_equal(previous, values):
                raise ValueError(
                    f"Conflicting plan entries '{other}' and '{key}': the two layers are coupled"
                    f" (group '{group.name}') and must lose the same channels."
                )
        chosen[group.id] = (key, values)
    return {gid: values for gid, (_, values) in chosen.items() if values.size}


def check_finite(model: keras.Model) -> None:
    """Raise ValueError naming the first layer whose weights hold NaN or infinity.

    Surgery on diverged weights would produce a model that silently outputs NaN; this is
    checked before anything is built.
    """
    for ref in iter_layers(model):
        for variable in ref.layer.weights:
            value = _np(variable)
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                bad = int(np.size(value) - np.isfinite(value).sum())
                raise ValueError(
                    f"Layer '{ref.path_str}' has {bad} non-finite value(s) (NaN or infinity) "
                    f"in '{variable.name}': training diverged. Restore the last finite "
                    "weights (a checkpoint or backup) before pruning surgery.")


# ----------------------------------------------------------------------------------------
# Per-layer edits
# ----------------------------------------------------------------------------------------


@dataclass
class _Edit:
    """What happens to one layer: channels removed at its output / input / own channels."""

    out: np.ndarray | None = None       # producer: removed output channels
    inputs: list[int] = field(default_factory=list)    # consumer: removed input channels
    own: list[int] = field(default_factory=list)       # follower: removed channels
    bias_delta: np.ndarray | None = None  # constant folded into a consumer's bias (N,)
    reshape_last: int | None = None     # Reshape: new last dim of target_shape


class _Surgeon:
    """Everything shrink and zero_channels need to know, computed before building."""

    def __init__(self, graph: DependencyGraph, removed: dict[int, np.ndarray]):
        self.graph = graph
        self.removed = removed
        self.edits: dict[int, _Edit] = {}
        self.refs: dict[int, LayerRef] = {}
        for gid, indices in removed.items():
            group = graph.groups[gid]
            for ref in group.producers:
                self._edit(ref).out = indices
            for slot in group.follower_slots:
                self._edit(slot.ref).own.extend(int(slot.offset + i) for i in indices)
            for slot in group.consumers:
                total = _input_channels(slot.ref.layer) // slot.repeat
                edit = self._edit(slot.ref)
                for p in range(slot.repeat):
                    edit.inputs.extend(int(p * total + slot.offset + i) for i in indices)

    def _edit(self, ref: LayerRef) -> _Edit:
        key = id(ref.layer)
        self.refs.setdefault(key, ref)
        return self.edits.setdefault(key, _Edit())

    def removed_in(self, atom: int) -> np.ndarray | None:
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

    # -- values of removed channels (exactness) -----------------------------------------------

    def propagate(self) -> None:
        """Follow the value each removed channel carries when its producers output zero, and
        plan the bias folds that keep the thin model exact (or raise)."""
        values: dict[int, list[np.ndarray | None]] = {}

        def get(layout: Layout) -> list[np.ndarray | None]:
            if id(layout) not in values:
                values[id(layout)] = [
                    None if self.removed_in(a) is None else np.zeros(len(self.removed_in(a)))
                    for a, _ in layout.segments
                ]
            return values[id(layout)]

        for step in self.graph.steps:
            layer = step.ref.layer
            if step.kind == "producer":
                self._fold(step, get(step.inputs[0]))
                outs = [None if self.removed_in(a) is None else
                        _activate(getattr(layer, "activation", None),
                                  np.zeros(len(self.removed_in(a))))
                        for a, _ in step.outputs[0].segments]
            elif step.kind == "follower":
                outs = self._follow(step, get(step.inputs[0]))
            elif step.kind == "pass":
                outs = self._pass(step, get(step.inputs[0]))
            elif step.kind == "merge":
                outs = _merge(layer, [get(x) for x in step.inputs])
            elif step.kind == "concat":
                outs = [v for x in step.inputs for v in get(x)]
            else:  # barrier / unsupported: nothing removed goes in or comes out
                continue
            for out in step.outputs:
                values[id(out)] = list(outs)
            if isinstance(layer, _L.Reshape):
                self._edit(step.ref).reshape_last = self.kept_channels(step.outputs[0])

    def _follow(self, step: Step, vals: list) -> list:
        layer = step.ref.layer
        out = []
        offset = 0
        for (atom, size), v in zip(step.inputs[0].segments, vals):
            idx = self.removed_in(atom)
            if v is None:
                out.append(None)
                offset += size
                continue
            ch = offset + idx
            offset += size
            if isinstance(layer, _L.BatchNormalization):
                w = _bn_params(layer)
                v = (v - w["mean"][ch]) / np.sqrt(w["var"][ch] + layer.epsilon) * w["gamma"][ch] \
                    + w["beta"][ch]
            elif isinstance(layer, _DEPTHWISE):
                kernel = _np(layer.kernel)  # (*k, C, 1)
                ksum = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(0)[:, 0]
                padded = layer.padding != "valid" and any(k > 1 for k in kernel.shape[:-2])
                v = np.where((v != 0) & padded, np.nan, v * ksum[ch])
                if layer.use_bias:
                    v = v + _np(layer.bias)[ch]
                v = _activate(layer.activation, v)
            elif isinstance(layer, _L.PReLU):
                alpha = _np(layer.alpha).reshape(-1, _np(layer.alpha).shape[-1])[:, ch]
                uniform = np.all(alpha == alpha[:1], axis=0)
                v = np.where(v >= 0, v, np.where(uniform, alpha[0] * v, np.nan))
            else:  # normalizations over channels are never pruned
                v = np.full_like(v, np.nan)
            out.append(v)
        return out

    def _pass(self, step: Step, vals: list) -> list:
        layer = step.ref.layer
        if all(v is None for v in vals):
            return [None] * len(step.outputs[0].segments)
        if isinstance(layer, _PADDING) or (
                isinstance(layer, _L.Resizing) and getattr(layer, "pad_to_aspect_ratio", False)):
            # Padding turns a non-zero constant into one that varies across positions.
            return [None if v is None else np.where(v == 0, 0.0, np.nan) for v in vals]
        if isinstance(layer, _ZERO_SAFE):
            if isinstance(layer, (_L.ReLU, _L.LeakyReLU, _L.ELU)):
                return [None if v is None else _activate(layer, v) for v in vals]
            return list(vals)
        if isinstance(layer, _L.Activation):
            return [None if v is None else _activate(layer.activation, v) for v in vals]
        if isinstance(layer, _L.Rescaling):
            scale, offset = float(np.asarray(layer.scale)), float(np.asarray(layer.offset))
            return [None if v is None else v * scale + offset for v in vals]
        if isinstance(layer, _L.Resizing):
            return list(vals)
        # Anything else (e.g. Normalization with scalar statistics): evaluate it.
        return [None if v is None else _evaluate(layer, step, v) for v in vals]

    def _fold(self, step: Step, vals: list) -> None:
        """Plan the bias correction for removed input channels carrying non-zero values."""
        layer = step.ref.layer
        layout = step.inputs[0]
        if all(v is None or not np.any(v) for v in vals):
            return
        total = _input_channels(layer) // layout.repeat
        delta = np.zeros(filters.num_filters(layer))
        offset = 0
        for (atom, size), v in zip(layout.segments, vals):
            idx = self.removed_in(atom)
            if v is not None and np.any(v != 0):
                group = self.graph.layout_group(atom)
                self._check_foldable(step, group, v)
                for p in range(layout.repeat):
                    rows = p * total + offset + idx
                    delta += _input_response(layer, rows).T @ v
            offset += size
        edit = self._edit(step.ref)
        if edit.bias_delta is not None and not np.allclose(edit.bias_delta, delta):
            raise ValueError(
                f"Cannot fold the removed channels into '{step.ref.path_str}': the layer is "
                "called several times with different constant inputs."
            )
        edit.bias_delta = delta

    def _check_foldable(self, step: Step, group: ChannelGroup, v: np.ndarray) -> None:
        layer = step.ref.layer
        where = f"Cannot remove channels of group '{group.name}' exactly:"
        if np.any(np.isnan(v)):
            raise ValueError(
                f"{where} where they reach '{step.ref.path_str}' they carry values that vary "
                "across positions (e.g. a non-zero constant after zero padding). Zero the "
                "group's followers first (zero_channels) or leave the group out of the plan."
            )
        if isinstance(layer, _L.Dense):
            return
        if isinstance(layer, _TRANSPOSE):
            why = "it is a transposed convolution, whose border outputs see fewer inputs"
        elif (layer.padding == "valid" or all(k == 1 for k in layer.kernel_size)):
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

    # -- weights ----------------------------------------------------------------------------------

    def new_weights(self, layer: keras.layers.Layer) -> list[np.ndarray] | None:
        """The layer's weights in the thin model (None: copy unchanged)."""
        edit = self.edits.get(id(layer))
        if edit is None or (edit.out is None and not edit.inputs and not edit.own
                            and edit.bias_delta is None):
            return None
        named = {id(v): v for v in layer.weights}
        arrays = {id(v): _np(v) for v in layer.weights}
        inputs = np.asarray(sorted(set(edit.inputs)), dtype=np.int64)
        own = np.asarray(sorted(set(edit.own)), dtype=np.int64)
        result = {}
        if filters.is_producer(layer):
            out_axis, in_axis = filters.output_axis(layer), filters.input_axis(layer)
            kernel_var = filters.output_kernel(layer)
            kernel = arrays[id(kernel_var)]
            if isinstance(layer, _SEPARABLE):
                dw = arrays[id(layer.depthwise_kernel)]
                mult = dw.shape[-1]
                rows = (inputs[:, None] * mult + np.arange(mult)[None, :]).reshape(-1)
                kernel = np.delete(kernel, rows, axis=in_axis)
                result[id(layer.depthwise_kernel)] = np.delete(dw, inputs, axis=-2)
            else:
                kernel = np.delete(kernel, inputs, axis=in_axis)
            bias = arrays[id(layer.bias)] if layer.use_bias else None
            if edit.bias_delta is not None:
                bias = (np.zeros(kernel.shape[out_axis]) if bias is None else bias) \
                    + edit.bias_delta
            if edit.out is not None:
                kernel = np.delete(kernel, edit.out, axis=out_axis)
                bias = None if bias is None else np.delete(bias, edit.out)
            result[id(kernel_var)] = kernel
            ordered = [result.get(id(v), arrays[id(v)]) for v in layer.weights
                       if not (layer.use_bias and v is layer.bias)]
            if bias is not None:
                ordered.append(bias.astype(kernel.dtype))
            return ordered
        for key, value in arrays.items():
            var = named[key]
            if isinstance(layer, _DEPTHWISE) and var is layer.kernel:
                result[key] = np.delete(value, own, axis=-2)
            elif value.ndim >= 1 and value.shape[-1] == _own_channels(layer):
                result[key] = np.delete(value, own, axis=-1)
            else:
                result[key] = value
        return [result[id(v)] for v in layer.weights]

    def new_config(self, layer: keras.layers.Layer) -> dict:
        config = layer.get_config()
        edit = self.edits.get(id(layer))
        if edit is None:
            return config
        if edit.out is not None:
            key = "units" if isinstance(layer, _L.Dense) else "filters"
            config[key] = int(config[key]) - len(edit.out)
        if edit.bias_delta is not None and not config.get("use_bias", True):
            config["use_bias"] = True
        if edit.reshape_last is not None:
            target = list(config["target_shape"])
            if target[-1] != -1:
                target[-1] = edit.reshape_last
            config["target_shape"] = tuple(target)
        return config


def _own_channels(layer: keras.layers.Layer) -> int:
    """Channel count of a follower (size of its per-channel parameter vectors)."""
    if isinstance(layer, _L.BatchNormalization):
        return int(layer.moving_mean.shape[-1])
    if isinstance(layer, _L.PReLU):
        return int(layer.alpha.shape[-1])
    if isinstance(layer, _DEPTHWISE):
        return int(layer.kernel.shape[-2])
    return -1


def _np(variable: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable))


def _bn_params(layer: keras.layers.BatchNormalization) -> dict[str, np.ndarray]:
    n = int(layer.moving_mean.shape[-1])
    return {
        "gamma": _np(layer.gamma).astype(np.float64) if layer.scale else np.ones(n),
        "beta": _np(layer.beta).astype(np.float64) if layer.center else np.zeros(n),
        "mean": _np(layer.moving_mean).astype(np.float64),
        "var": _np(layer.moving_variance).astype(np.float64),
    }


def _activate(fn: Any, v: np.ndarray) -> np.ndarray:
    """fn applied elementwise to a vector of constants (float64 in, float64 out)."""
    if fn is None:
        return v
    finite = np.where(np.isnan(v), 0.0, v)
    out = np.asarray(keras.ops.convert_to_numpy(
        fn(keras.ops.convert_to_tensor(finite[None, :].astype(np.float32)))), np.float64)[0]
    return np.where(np.isnan(v), np.nan, out)


def _evaluate(layer: keras.layers.Layer, step: Step, v: np.ndarray) -> np.ndarray:
    """Other pass-through layers (e.g. scalar Normalization): a removed channel stays exactly
    zero if it was zero and the layer maps an all-zero example to zero (checked numerically);
    any other value is marked unknown (NaN), which shrink refuses to fold."""
    shape = tuple(8 if d is None else d for d in step.input_shapes[0][1:])
    probe = np.zeros((1,) + shape, np.float32)
    out = _np(layer(probe, training=False))
    return np.where((v == 0) & np.all(out == 0), 0.0, np.nan)


def _merge(layer: keras.layers.Layer, inputs: list[list]) -> list:
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


def _input_channels(layer: keras.layers.Layer) -> int:
    """C_in of a consumer (for separable convs, the depthwise input channels)."""
    if isinstance(layer, _SEPARABLE):
        return int(layer.depthwise_kernel.shape[-2])
    kernel = filters.output_kernel(layer)
    return int(kernel.shape[filters.input_axis(layer)])


def _input_response(layer: keras.layers.Layer, rows: np.ndarray) -> np.ndarray:
    """R (len(rows), N): a unit constant in input channel ``rows[i]`` adds R[i] to the
    pre-activation outputs (kernel summed over its spatial taps)."""
    if isinstance(layer, _SEPARABLE):
        dw = _np(layer.depthwise_kernel).astype(np.float64)   # (*k, C, M)
        pw = _np(layer.pointwise_kernel).astype(np.float64)   # (1.., C*M, N)
        mult = dw.shape[-1]
        dsum = dw.reshape(-1, dw.shape[-2], mult).sum(0)      # (C, M)
        pw = pw.reshape(-1, pw.shape[-1])                     # (C*M, N)
        return np.stack([dsum[r] @ pw[r * mult:(r + 1) * mult] for r in rows])
    kernel = _np(filters.output_kernel(layer)).astype(np.float64)
    if isinstance(layer, _L.Dense):
        return kernel[rows]
    flat = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(0)  # (C_in, N)
    return flat[rows]


# ----------------------------------------------------------------------------------------
# Building the new models
# ----------------------------------------------------------------------------------------


def _clone(model: keras.Model, make_layer, input_tensors=None) -> keras.Model:
    return keras.models.clone_model(model, input_tensors=input_tensors,
                                    clone_function=make_layer)


def _layer_from_config(cls: type, config: dict, name: str, pending: dict[int, tuple],
                       original: keras.layers.Layer | None = None) -> keras.layers.Layer:
    """``cls.from_config(config)`` whose variables start as zeros (they are overwritten
    anyway; random initializers of large kernels dominate the surgery's time). The layer's
    own initializers are recorded in ``pending`` and put back by :func:`_restore_initializers`
    once it is built, so its config is unchanged."""
    if issubclass(cls, _L.Lambda) and original is not None:
        # A Lambda's Python function cannot be deserialized safely: reuse the function.
        return _L.Lambda(original.function, output_shape=original._output_shape,
                         mask=original.mask, arguments=original.arguments,
                         name=original.name, dtype=original.dtype_policy)
    keys = [k for k, v in config.items() if k.endswith("_initializer") and v is not None]
    fast = dict(config, **{k: "zeros" for k in keys})
    try:
        layer = cls.from_config(fast)
    except Exception as err:  # noqa: BLE001 - re-raised with the layer's name
        raise ValueError(f"Cannot rebuild layer '{name}' ({cls.__name__}) from its config: "
                         f"{err}") from err
    if keys:
        pending[id(layer)] = (layer, {k: keras.initializers.get(config[k]) for k in keys})
    return layer


def _restore_initializers(pending: dict[int, tuple]) -> None:
    for layer, initializers in pending.values():
        for key, initializer in initializers.items():
            if hasattr(layer, key):
                setattr(layer, key, initializer)
    pending.clear()


def _set_weights(new: keras.layers.Layer, values: list[np.ndarray], name: str) -> None:
    targets = new.weights
    if len(targets) != len(values) or any(
            tuple(t.shape) != tuple(v.shape) for t, v in zip(targets, values)):
        raise RuntimeError(
            f"Internal error: new weights of '{name}' do not match the rebuilt layer "
            f"({[tuple(v.shape) for v in values]} vs {[tuple(t.shape) for t in targets]})."
        )
    for target, value in zip(targets, values):
        target.assign(np.asarray(value).astype(target.dtype))


def _build_thin(surgeon: _Surgeon) -> keras.Model:
    graph = surgeon.graph
    new_of: dict[int, keras.layers.Layer] = {}
    pending: dict[int, tuple] = {}

    def make_layer(layer):
        if isinstance(layer, keras.Model):
            ref, layouts = graph.nested_inputs[id(layer)]
            originals = list(keras.tree.flatten(layer.inputs))
            new_inputs = [
                keras.Input(batch_shape=tuple(t.shape[:-1]) + (surgeon.kept_channels(lay),),
                            dtype=t.dtype, name=t.name)
                for t, lay in zip(originals, layouts)
            ]
            structure = keras.tree.pack_sequence_as(layer.input, new_inputs) \
                if not isinstance(layer, keras.Sequential) else new_inputs[0]
            new = _clone(layer, make_layer, structure)
        else:
            new = _layer_from_config(layer.__class__, surgeon.new_config(layer), layer.name,
                                     pending, layer)
        new_of[id(layer)] = new
        return new

    thin = _clone(graph.model, make_layer)
    _restore_initializers(pending)
    for ref in iter_layers(graph.model):
        layer = ref.layer
        if id(layer) not in new_of or not layer.weights:
            continue
        values = surgeon.new_weights(layer)
        if values is None:
            values = [_np(v) for v in layer.weights]
        _set_weights(new_of[id(layer)], values, ref.path_str)
    return thin


def _copy_model(model: keras.Model) -> tuple[keras.Model, dict[int, keras.layers.Layer]]:
    """An independent copy with the same weights, and {id(old layer): new layer}."""
    new_of: dict[int, keras.layers.Layer] = {}
    pending: dict[int, tuple] = {}

    def make_layer(layer):
        new = _layer_from_config(layer.__class__, layer.get_config(), layer.name, pending,
                                 layer)
        new_of[id(layer)] = new
        return new

    copy = keras.models.clone_model(model, clone_function=make_layer, recursive=True)
    _restore_initializers(pending)
    for ref in iter_layers(model):
        if id(ref.layer) in new_of and ref.layer.weights:
            _set_weights(new_of[id(ref.layer)], [_np(v) for v in ref.layer.weights],
                         ref.path_str)
    return copy, new_of


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------


def zero_channels(model: keras.Model, plan: Plan, *,
                  on_unsupported: str = "raise") -> keras.Model:
    """The masked model: a copy of ``model`` with the plan's channels zeroed.

    Sets to zero, for every planned channel, the producers' output filters and biases and
    each follower's per-channel parameters (BatchNormalization γ, β and moving mean;
    depthwise kernel and bias; PReLU α), so the channel is exactly zero after every follower
    in inference mode. Raises ValueError (nothing built) for invalid plans.
    """
    graph = DependencyGraph(model, on_unsupported=on_unsupported)
    removed = _resolve_plan(graph, plan)
    surgeon = _Surgeon(graph, removed)
    copy, new_of = _copy_model(model)
    copy = cloning.uncompiled(copy)
    for key, edit in surgeon.edits.items():
        new = new_of.get(key)
        if new is None:
            continue
        if edit.out is not None:
            kernel = filters.output_kernel(new)
            value = _np(kernel)
            index = [slice(None)] * value.ndim
            index[filters.output_axis(new)] = edit.out
            value[tuple(index)] = 0
            kernel.assign(value)
            if new.use_bias:
                bias = _np(new.bias)
                bias[edit.out] = 0
                new.bias.assign(bias)
        own = np.asarray(sorted(set(edit.own)), dtype=np.int64)
        if own.size:
            if isinstance(new, _L.BatchNormalization):
                variables = [v for v in (new.gamma if new.scale else None,
                                         new.beta if new.center else None,
                                         new.moving_mean) if v is not None]
                for var in variables:
                    value = _np(var)
                    value[own] = 0
                    var.assign(value)
            elif isinstance(new, _DEPTHWISE):
                value = _np(new.kernel)
                value[..., own, :] = 0
                new.kernel.assign(value)
                if new.use_bias:
                    bias = _np(new.bias)
                    bias[own] = 0
                    new.bias.assign(bias)
            elif isinstance(new, _L.PReLU):
                value = _np(new.alpha)
                value[..., own] = 0
                new.alpha.assign(value)
    return copy


def shrink(model: keras.Model, plan: Plan | None = None, *,
           on_unsupported: str = "raise") -> keras.Model:
    """The thin model: a plain functional Keras model without the plan's channels.

    Args:
        model: a functional/Sequential model (read only). With ``plan=None`` it must be a
            keras_tpp prepared model whose pruned channels are already zero (after
            :func:`keras_tpp.apply_masks` or the end of the pruning schedule): its masks
            give the plan, and the thin model's outputs equal the prepared model's.
        plan: {producer name or "outer/inner" path: output channel indices to remove, or a
            boolean keep-mask of length N (True = kept, False = removed), as
            :func:`keras_tpp.get_masks` returns}.
        on_unsupported: see :class:`keras_tpp.graph.DependencyGraph`.
    Returns:
        A new, uncompiled model computing what ``model`` computes with the planned
        producers' outputs zero (exactly the masked model's outputs when ``model`` is
        masked).
    Raises:
        ValueError: unknown names, out-of-range/duplicate-conflicting/all-channel entries,
            unprunable groups, removed channels whose non-zero value cannot be folded, or
            non-finite weights (checked first).
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"shrink expects a keras.Model, got {type(model).__name__}.")
    check_finite(model)
    if plan is None:
        from keras_tpp import workflow

        workflow.check_pruned_channels_zero(model)
        plan = plan_from_masks(workflow.get_masks(model))
        return shrink(workflow.strip(model), plan, on_unsupported=on_unsupported)
    graph = DependencyGraph(model, on_unsupported=on_unsupported)
    surgeon = _Surgeon(graph, _resolve_plan(graph, plan))
    surgeon.propagate()
    return cloning.uncompiled(_build_thin(surgeon))


def make_plan(
    model: keras.Model,
    pruning_ratio: float | Mapping[str, float],
    *,
    method: str = "l1",
    layers: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    seed: int | None = None,
    round_to: int | None = None,
    graph: DependencyGraph | None = None,
) -> dict[str, np.ndarray]:
    """Choose the channels :func:`prune` removes: {first producer's path: indices}.

    Each prunable group (restricted to groups with a producer matching one of the ``layers``
    fnmatch patterns, by name or "outer/inner" path) loses ceil(ratio·N) channels, at least
    one kept. ``pruning_ratio`` is a float or {pattern: ratio} (the first matching pattern
    wins; groups matching none are left alone); ``exclude`` patterns leave producers alone
    (a pattern that matches no producer is an error). ``method``: "l1" (importance.group_l1_scores,
    smallest first) or "random" (seeded uniform choice). ``round_to`` (optional)
    rounds each group's kept channel count up to a multiple of it (e.g. 8 or 16, which CPU
    and GPU kernels run faster on), so fewer channels than ceil(ratio·N) may be removed.
    """
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int)
                                 or round_to < 1):
        raise ValueError(f"round_to must be a positive integer or None, got {round_to!r}.")
    methods = ("l1", "random")
    if method not in methods:
        raise ValueError(f"Unknown method {method!r}; valid methods: {', '.join(methods)}.")
    seed = selection.check_seed(seed)
    graph = graph or DependencyGraph(model)
    ratios = selection.resolve_group_ratios(graph, pruning_ratio, layers=layers,
                                            exclude=exclude)
    chosen = selection.choose_pruned(graph, ratios, method, seed=seed, round_to=round_to)
    by_id = {group.id: group for group in graph.groups}
    return {by_id[gid].producers[0].path_str: indices for gid, indices in chosen.items()}


def prune(
    model: keras.Model,
    pruning_ratio: float | Mapping[str, float],
    *,
    method: str = "l1",
    layers: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    seed: int | None = None,
    round_to: int | None = None,
) -> keras.Model:
    """One-shot structured pruning straight to a thin model.

    Chooses channels with :func:`make_plan` (same arguments) and returns
    ``shrink(zero_channels(model, plan), plan)``.
    """
    check_finite(model)
    graph = DependencyGraph(model)
    plan = make_plan(model, pruning_ratio, method=method, layers=layers, exclude=exclude,
                     seed=seed, round_to=round_to, graph=graph)
    if not plan:
        ratios = selection.resolve_group_ratios(graph, pruning_ratio, layers=layers,
                                                exclude=exclude)
        raise ValueError(f"Nothing to prune in model '{model.name}': "
                         f"{selection.nothing_to_prune_reason(graph, ratios)}.")
    return shrink(zero_channels(model, plan), plan)


__all__ = ["zero_channels", "shrink", "prune", "make_plan", "plan_from_masks", "Plan"]
