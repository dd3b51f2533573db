"""The channel dependency graph of a functional or Sequential Keras model.

Removing output channel ``c`` of a convolution is only possible if every layer that sees that
channel is changed with it: the batch norm behind it, the depthwise conv after that, the other
convolutions whose outputs are *added* to it (a residual sum couples them: they must lose the
same indices), and the input slices of the layers that consume it. This module follows each
channel from the layers that produce it to the layers that consume it and collects them in
:class:`ChannelGroup` objects.

Vocabulary (one group = one set of N channels that can only be removed together):

- *producers* — layers whose output filters create the channels (:func:`filters.is_producer`:
  Conv1D/2D/3D, Dense, SeparableConv, ConvTranspose). Several producers when coupled by
  Add/Subtract/Multiply/Average/Maximum/Minimum or a spatial Concatenate.
- *followers* — layers with per-channel parameters on the way (BatchNormalization,
  DepthwiseConv with depth_multiplier 1, PReLU, LayerNormalization over channels, ...).
- *consumers* — layers whose input channels include the group: a slice of their kernel goes.
  ``offset`` places the group in the consumer's input channels (after a Concatenate) and
  ``repeat`` counts the positions each channel takes after Flatten/Reshape (input index
  ``p·C_total + offset + i`` for ``p < repeat``, C_total the channels before flattening).

Channels pass unchanged through activations, dropout, pooling, padding, cropping, up-sampling,
scalar rescaling, reshapes that keep the channel axis last, and nested functional models.
A group is *unprunable* (with a ``reason``) when it reaches a model output, is coupled with a
model input, or touches a layer whose channel mapping keras_tpp does not model.

Implementation note: Keras has no public API for a functional model's call graph, so this
module reads its nodes (``_nodes_by_depth``, ``node.arguments``, ``Sequential._functional``);
everything else in keras_tpp uses the graph through this module only.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np

from keras_tpp import filters

try:  # Keras 3 keeps the functional model class out of its public namespace.
    from keras.src.models.functional import Functional as _Functional
except ImportError:  # pragma: no cover - future Keras layouts
    _Functional = keras.Model


class UnsupportedModelError(ValueError):
    """The model (or one of its layers) has a structure keras_tpp cannot follow."""


@dataclass(eq=False)
class LayerRef:
    """A layer somewhere in a (possibly nested) model.

    ``path`` holds the layer names from the top model down, e.g. ``("backbone", "conv1")``.
    """

    layer: keras.layers.Layer
    path: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def path_str(self) -> str:
        """The path joined with '/', e.g. ``"backbone/conv1"``."""
        return "/".join(self.path)

    def __repr__(self) -> str:
        return f"LayerRef({self.path_str!r}, {type(self.layer).__name__})"


@dataclass(eq=False)
class ConsumerRef:
    """A layer whose input channels include a group's channels.

    ``offset``: first input channel of the group among the consumer's C_total input channels;
    ``repeat``: how many positions each channel occupies (Flatten/Reshape before a Dense).
    """

    ref: LayerRef
    offset: int
    repeat: int = 1

    def __repr__(self) -> str:
        return f"ConsumerRef({self.ref.path_str!r}, offset={self.offset}, repeat={self.repeat})"


@dataclass(eq=False)
class ChannelGroup:
    """N channels that must be removed together (same indices in every member)."""

    id: int
    name: str
    size: int
    producers: list[LayerRef] = field(default_factory=list)
    followers: list[LayerRef] = field(default_factory=list)
    consumers: list[ConsumerRef] = field(default_factory=list)
    prunable: bool = True
    reason: str | None = None
    # Followers with their place in the follower's channels (several groups share a
    # BatchNormalization behind a Concatenate); same order as ``followers``.
    follower_slots: list[ConsumerRef] = field(default_factory=list)

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"unprunable: {self.reason}"
        names = ", ".join(p.path_str for p in self.producers)
        return f"ChannelGroup({self.id}, {self.name!r}, size={self.size}, [{names}], {state})"


# ----------------------------------------------------------------------------------------
# Walking the call graph
# ----------------------------------------------------------------------------------------


@dataclass(eq=False)
class CallSite:
    """One call of a leaf layer (or a nested model) during a walk of the graph.

    ``inputs``/``outputs`` hold the values the walker associated with the call's flattened
    input and output tensors; ``input_shapes``/``output_shapes`` the symbolic shapes.
    """

    ref: LayerRef
    args: tuple
    kwargs: dict
    inputs: list[Any]
    input_shapes: list[tuple]
    output_shapes: list[tuple]


def is_functional(model: Any) -> bool:
    """True for functional models and built Sequential models."""
    return isinstance(model, keras.Sequential) or isinstance(model, _Functional)


def _graph_of(model: keras.Model, path: tuple[str, ...]) -> Any:
    """The functional graph behind ``model`` (a Sequential's inner functional model)."""
    if isinstance(model, keras.Sequential):
        inner = getattr(model, "_functional", None)
        if inner is None:
            where = "/".join(path) or model.name
            raise UnsupportedModelError(
                f"Sequential model '{where}' is not built; give it an Input (or call it once) "
                "so that its layers have known shapes."
            )
        return inner
    if isinstance(model, _Functional):
        return model
    where = "/".join(path) or model.name
    raise UnsupportedModelError(
        f"Model '{where}' is a subclassed model ({type(model).__name__}); keras_tpp can only "
        "follow the channels of functional and Sequential models, whose layer graph is known."
    )


def _flat(structure: Any) -> list[Any]:
    return list(keras.tree.flatten(structure))


def _shape(tensor: Any) -> tuple:
    return tuple(tensor.shape)


def walk(
    model: keras.Model,
    inputs: Sequence[Any],
    visit: Callable[[CallSite], Sequence[Any]],
    path: tuple[str, ...] = (),
    on_model: Callable[[LayerRef, list[Any]], None] | None = None,
) -> list[Any]:
    """Run ``visit`` on every leaf layer call of ``model`` in topological order.

    ``inputs`` are arbitrary values standing for the model's flattened inputs; ``visit``
    receives a :class:`CallSite` whose ``inputs`` are the values of the call's flattened
    input tensors and returns one value per output tensor. Nested functional/Sequential
    models are walked recursively (their calls get longer paths). Returns the values of the
    model's flattened outputs. ``on_model(ref, values)`` (optional) is told the input values
    of every nested model call before it is walked.
    """
    graph = _graph_of(model, path)
    values: dict[int, Any] = {}
    graph_inputs = _flat(graph.inputs)
    if len(graph_inputs) != len(inputs):
        raise UnsupportedModelError(
            f"Model '{'/'.join(path) or model.name}' expects {len(graph_inputs)} inputs, "
            f"got {len(inputs)}."
        )
    for tensor, value in zip(graph_inputs, inputs):
        values[id(tensor)] = value
    by_depth = graph._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            in_tensors = list(node.input_tensors)
            if any(id(t) not in values for t in in_tensors):
                continue  # not on a path from the inputs
            args, kwargs = node.arguments.fill_in(values)
            layer = node.operation
            ref = LayerRef(layer, path + (layer.name,))
            site_inputs = [values[id(t)] for t in in_tensors]
            if isinstance(layer, keras.Model):
                if on_model is not None:
                    on_model(ref, site_inputs)
                outs = walk(layer, site_inputs, visit, ref.path, on_model)
            else:
                site = CallSite(
                    ref=ref,
                    args=args,
                    kwargs=kwargs,
                    inputs=site_inputs,
                    input_shapes=[_shape(t) for t in in_tensors],
                    output_shapes=[_shape(t) for t in node.outputs],
                )
                outs = list(visit(site))
            if len(outs) != len(node.outputs):
                raise UnsupportedModelError(
                    f"Layer '{ref.path_str}' returned {len(outs)} values for "
                    f"{len(node.outputs)} outputs."
                )
            for tensor, value in zip(node.outputs, outs):
                values[id(tensor)] = value
    result = []
    for tensor in _flat(graph.outputs):
        if id(tensor) not in values:
            raise UnsupportedModelError(
                f"Output '{tensor.name}' of model '{model.name}' is not computed from its inputs."
            )
        result.append(values[id(tensor)])
    return result


def output_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers that produce the model's outputs (one per output)."""
    graph = _graph_of(model, ())
    names = []
    for tensor in _flat(graph.outputs):
        history = getattr(tensor, "_keras_history", None)
        names.append(history[0].name if history else str(tensor.name))
    return names


def iter_layers(model: keras.Model, path: tuple[str, ...] = ()) -> Iterator[LayerRef]:
    """Every leaf layer of a (nested) model with its path, depth first."""
    for layer in model.layers:
        ref = LayerRef(layer, path + (layer.name,))
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer, ref.path)
        else:
            yield ref


# ----------------------------------------------------------------------------------------
# Channel layouts
# ----------------------------------------------------------------------------------------


class Layout:
    """Which groups a tensor's last axis carries.

    ``segments`` is a tuple of (atom, size): the channels of the tensor, in order, are the
    concatenation of the atoms' channels; ``repeat`` > 1 after Flatten/Reshape, when the last
    axis holds ``repeat`` copies of that sequence (index ``p·C + c``).
    (A plain class on purpose: Keras' tree utilities must treat it as a leaf.)
    """

    __slots__ = ("segments", "repeat")

    def __init__(self, segments: tuple[tuple[int, int], ...], repeat: int = 1):
        self.segments = tuple(segments)
        self.repeat = int(repeat)

    @property
    def channels(self) -> int:
        """C: channels of one copy (without the repeat)."""
        return sum(size for _, size in self.segments)

    def with_repeat(self, repeat: int) -> "Layout":
        return Layout(self.segments, repeat)

    def copy(self) -> "Layout":
        return Layout(self.segments, self.repeat)

    def __repr__(self) -> str:
        return f"Layout({list(self.segments)}, repeat={self.repeat})"


@dataclass(eq=False)
class Step:
    """A recorded layer call: its role and the layouts of its inputs and outputs."""

    ref: LayerRef
    kind: str  # producer | follower | pass | merge | concat | barrier | unsupported
    inputs: list[Layout]
    outputs: list[Layout]
    input_shapes: list[tuple]
    output_shapes: list[tuple]


@dataclass(eq=False)
class _Atom:
    size: int
    producer: LayerRef | None = None
    reasons: list[str] = field(default_factory=list)


# Layer classes by role. Anything not listed is unknown (UnsupportedModelError).
_L = keras.layers
_PASS = tuple(
    cls
    for cls in (
        getattr(_L, name, None)
        for name in (
            "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
            "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
            "ActivityRegularization", "Identity", "MaxPooling1D", "MaxPooling2D",
            "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
            "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
            "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
            "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D",
            "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "RepeatVector",
            "Resizing", "CenterCrop", "RandomFlip", "RandomRotation", "RandomZoom",
            "RandomTranslation", "RandomCrop", "RandomContrast", "RandomBrightness",
        )
    )
    if cls is not None
)
_MERGE = (_L.Add, _L.Subtract, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum)
_BARRIER = tuple(
    cls
    for cls in (
        getattr(_L, name, None)
        for name in (
            "Embedding", "LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D",
            "ConvLSTM2D", "ConvLSTM3D", "MultiHeadAttention", "GroupQueryAttention",
            "Attention", "AdditiveAttention", "Dot", "EinsumDense", "Masking",
            "TimeDistributed", "CategoryEncoding", "Discretization", "Hashing",
            "StringLookup", "IntegerLookup", "TextVectorization", "HashedCrossing",
        )
    )
    if cls is not None
)
_DEPTHWISE = (_L.DepthwiseConv1D, _L.DepthwiseConv2D)
_CHANNEL_MIXING_ACTIVATIONS = ("softmax", "log_softmax")


def _activation_name(fn: Any) -> str:
    return str(getattr(fn, "__name__", "")).lower()


def _axes(axis: Any, rank: int) -> set[int]:
    if axis is None:
        return set()
    values = [axis] if isinstance(axis, int) else list(axis)
    return {int(a) % rank for a in values}


def _is_scalar(value: Any) -> bool:
    try:
        return np.size(np.asarray(value, dtype=np.float64)) == 1
    except (TypeError, ValueError):
        return False


class DependencyGraph:
    """Channel groups of a functional or Sequential model (see the module docstring).

    Args:
        model: the model; it is read, never modified.
        on_unsupported: "raise" (default) raises :class:`UnsupportedModelError` at the first
            layer keras_tpp cannot follow (Lambda, custom and ops layers, channels_first);
            "skip" warns instead and marks every group that touches it unprunable.
    """

    def __init__(self, model: keras.Model, *, on_unsupported: str = "raise"):
        if on_unsupported not in ("raise", "skip"):
            raise ValueError(
                f"on_unsupported must be 'raise' or 'skip', got {on_unsupported!r}."
            )
        if not isinstance(model, keras.Model):
            raise UnsupportedModelError(
                f"Expected a keras.Model, got {type(model).__name__}."
            )
        self.model = model
        self.on_unsupported = on_unsupported
        self.steps: list[Step] = []
        self._atoms: list[_Atom] = []
        self._parent: list[int] = []
        self._slots: dict[int, Layout] = {}  # id(layer) -> layout at its channel input
        self._uses: list[tuple[str, LayerRef, Layout]] = []  # ("consumer"|"follower", ...)
        self._producer_atom: dict[int, int] = {}  # id(producer layer) -> atom

        graph = _graph_of(model, ())
        inputs = []
        for tensor in _flat(graph.inputs):
            size = tensor.shape[-1] if len(tensor.shape) else 1
            atom = self._new_atom(int(size or 0), reason=f"carries the model input '{tensor.name}'")
            inputs.append(Layout(((atom, int(size or 0)),)))
        # id(nested model) -> (its ref, the layouts of its flattened inputs)
        self.nested_inputs: dict[int, tuple[LayerRef, list[Layout]]] = {}
        outputs = walk(model, inputs, self._visit,
                       on_model=lambda ref, lays: self.nested_inputs.setdefault(
                           id(ref.layer), (ref, list(lays))))
        for layout, name in zip(outputs, output_layer_names(model)):
            self._taint(layout, f"reaches the model output '{name}'")
        self.output_layouts: list[Layout] = outputs
        self.groups: list[ChannelGroup] = []
        self._group_by_root: dict[int, ChannelGroup] = {}
        self._finish()

    # -- public queries -------------------------------------------------------------------

    def group_of(self, layer_or_name: Any) -> ChannelGroup | None:
        """The group whose producers include this layer (a Layer, name, "a/b" path or tuple);
        None if the layer is not a producer. Unknown names raise ValueError."""
        ref = self.find(layer_or_name)
        atom = self._producer_atom.get(id(ref.layer))
        if atom is None:
            return None
        return self._group_by_root.get(self._find(atom))

    def find(self, layer_or_name: Any) -> LayerRef:
        """The :class:`LayerRef` of a layer given as object, name, "outer/inner" or tuple."""
        if isinstance(layer_or_name, LayerRef):
            layer_or_name = layer_or_name.path
        if isinstance(layer_or_name, keras.layers.Layer):
            for ref in self._all_refs:
                if ref.layer is layer_or_name:
                    return ref
            raise ValueError(f"Layer '{layer_or_name.name}' is not part of model "
                             f"'{self.model.name}'.")
        if isinstance(layer_or_name, str):
            key = tuple(layer_or_name.split("/"))
        else:
            key = tuple(layer_or_name)
        matches = [r for r in self._all_refs if r.path == key]
        if not matches and len(key) == 1:
            matches = [r for r in self._all_refs if r.name == key[0]]
        if len(matches) == 1:
            return matches[0]
        name = "/".join(key)
        if not matches:
            raise ValueError(f"Model '{self.model.name}' has no layer named '{name}'.")
        paths = ", ".join(repr(m.path_str) for m in matches)
        raise ValueError(f"Layer name '{name}' is ambiguous in model '{self.model.name}' "
                         f"({paths}); use the full 'outer/inner' path.")

    def layout_group(self, atom: int) -> ChannelGroup | None:
        """The group a layout segment's atom belongs to (None for input-only channels)."""
        return self._group_by_root.get(self._find(atom))

    def summary(self) -> str:
        """One line per group."""
        return "\n".join(repr(g) for g in self.groups)

    # -- union-find over atoms ------------------------------------------------------------

    def _new_atom(self, size: int, producer: LayerRef | None = None,
                  reason: str | None = None) -> int:
        self._atoms.append(_Atom(size, producer, [reason] if reason else []))
        self._parent.append(len(self._parent))
        return len(self._parent) - 1

    def _find(self, atom: int) -> int:
        root = atom
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[atom] != root:
            self._parent[atom], atom = root, self._parent[atom]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def _taint(self, layout: Layout, reason: str) -> None:
        for atom, _ in layout.segments:
            self._atoms[atom].reasons.append(reason)

    def _couple(self, layouts: Sequence[Layout], ref: LayerRef) -> Layout:
        """Make the same channel positions of several layouts one channel (same indices)."""
        first = layouts[0]
        sizes = [s for _, s in first.segments]
        compatible = all(
            [s for _, s in lay.segments] == sizes and lay.repeat == first.repeat
            for lay in layouts[1:]
        )
        if not compatible:
            reason = (f"is combined in '{ref.path_str}' with tensors whose channels are "
                      "grouped differently")
            for lay in layouts:
                self._taint(lay, reason)
            return first.copy()
        for lay in layouts[1:]:
            for (a, _), (b, _) in zip(first.segments, lay.segments):
                self._union(a, b)
        return first.copy()

    # -- per-call rules ---------------------------------------------------------------------

    def _record(self, site: CallSite, kind: str, outputs: list[Layout]) -> list[Layout]:
        self.steps.append(Step(site.ref, kind, list(site.inputs), outputs,
                               site.input_shapes, site.output_shapes))
        return outputs

    def _slot(self, site: CallSite, layout: Layout) -> Layout:
        """Couple the channel inputs of every call of a shared layer."""
        key = id(site.ref.layer)
        if key in self._slots:
            self._couple([self._slots[key], layout], site.ref)
            return self._slots[key]
        self._slots[key] = layout
        return layout

    def _fresh(self, site: CallSite, reason: str) -> list[Layout]:
        outs = []
        for shape in site.output_shapes:
            size = int(shape[-1] or 0) if shape else 1
            outs.append(Layout(((self._new_atom(size, reason=reason), size),)))
        return outs

    def _barrier(self, site: CallSite, why: str) -> list[Layout]:
        for lay in site.inputs:
            self._taint(lay, why)
        return self._record(site, "barrier", self._fresh(site, why))

    def _unsupported(self, site: CallSite, why: str) -> list[Layout]:
        ref = site.ref
        message = f"Layer '{ref.path_str}' ({type(ref.layer).__name__}) {why}."
        if self.on_unsupported == "raise":
            raise UnsupportedModelError(message)
        warnings.warn(message + " Channels through it are not pruned.", stacklevel=4)
        reason = (f"passes through {type(ref.layer).__name__} layer '{ref.path_str}' whose "
                  "effect on channels is unknown")
        for lay in site.inputs:
            self._taint(lay, reason)
        return self._record(site, "unsupported", self._fresh(site, reason))

    def _visit(self, site: CallSite) -> list[Layout]:
        layer = site.ref.layer
        name = site.ref.path_str
        cls = type(layer).__name__
        if not isinstance(layer, keras.layers.Layer):
            return self._unsupported(site, "is a keras.ops operation, not a layer; keras_tpp "
                                           "cannot tell how it treats channels")
        if getattr(layer, "data_format", None) == "channels_first":
            return self._unsupported(site, "uses data_format='channels_first'; keras_tpp "
                                           "supports channels_last only")
        if any(not isinstance(x, Layout) for x in site.inputs) or not site.inputs:
            return self._unsupported(site, "takes inputs keras_tpp cannot follow")
        rank = len(site.input_shapes[0])
        x = site.inputs[0]

        if filters.is_producer(layer):
            self._consumer(site, x)
            size = filters.num_filters(layer)
            atom = self._producer_atom.get(id(layer))  # a shared producer: same filters
            if atom is None:
                atom = self._new_atom(size, producer=site.ref)
                self._producer_atom[id(layer)] = atom
            out = Layout(((atom, size),))
            act = _activation_name(getattr(layer, "activation", None))
            if act in _CHANNEL_MIXING_ACTIVATIONS:
                self._taint(out, f"goes through the {act} activation of '{name}', which "
                                 "mixes channels")
            return self._record(site, "producer", [out])

        if isinstance(layer, (_L.Conv1D, _L.Conv2D, _L.Conv3D)):  # grouped convolution
            return self._barrier(site, f"feeds grouped convolution '{name}' (groups="
                                       f"{layer.groups}), which keras_tpp does not slice")
        if isinstance(layer, _DEPTHWISE):
            if int(layer.depth_multiplier) != 1:
                return self._barrier(site, f"feeds DepthwiseConv '{name}' with "
                                           f"depth_multiplier={layer.depth_multiplier}")
            return self._follower(site, x)
        if isinstance(layer, _L.BatchNormalization):
            if _axes(layer.axis, rank) != {rank - 1}:
                return self._barrier(site, f"feeds BatchNormalization '{name}' over axis "
                                           f"{layer.axis}, which normalizes across channels")
            return self._follower(site, x)
        if isinstance(layer, _L.PReLU):
            if layer.alpha.shape[-1] == 1 and (site.input_shapes[0][-1] or 0) != 1:
                return self._pass(site, x)  # alpha shared across channels
            return self._follower(site, x)
        if isinstance(layer, (_L.LayerNormalization, _L.GroupNormalization,
                              _L.UnitNormalization)):
            axes = _axes(getattr(layer, "axis", -1), rank)
            if isinstance(layer, _L.GroupNormalization) or rank - 1 in axes:
                return self._follower(site, x, taint=(
                    f"goes through {cls} '{name}', which normalizes over channels: removing "
                    "channels would change its statistics"))
            return self._pass(site, x)
        if isinstance(layer, _L.Normalization):
            if rank - 1 in _axes(layer.axis, rank):
                return self._pass(site, x, taint=(
                    f"goes through Normalization '{name}', whose per-channel statistics "
                    "keras_tpp does not slice"))
            return self._pass(site, x)
        if isinstance(layer, _L.Rescaling):
            if _is_scalar(layer.scale) and _is_scalar(layer.offset):
                return self._pass(site, x)
            return self._pass(site, x, taint=(
                f"goes through Rescaling '{name}' with per-channel scale/offset, which "
                "keras_tpp does not slice"))
        if isinstance(layer, _L.Activation):
            act = _activation_name(layer.activation)
            if act in _CHANNEL_MIXING_ACTIVATIONS:
                return self._pass(site, x, taint=f"goes through the {act} of '{name}', "
                                                 "which mixes channels")
            return self._pass(site, x)
        if isinstance(layer, _L.Softmax):
            return self._pass(site, x, taint=f"goes through Softmax '{name}', which "
                                             "normalizes across positions or channels")
        if isinstance(layer, _L.Permute):
            if tuple(layer.dims)[-1] == rank - 1:
                return self._pass(site, x)
            return self._barrier(site, f"feeds Permute '{name}', which moves the channel axis")
        if isinstance(layer, (_L.Flatten, _L.Reshape)):
            return self._reshape(site, x)
        if isinstance(layer, _PASS):
            return self._pass(site, x)
        if isinstance(layer, _MERGE):
            return self._merge(site)
        if isinstance(layer, _L.Concatenate):
            return self._concat(site)
        if isinstance(layer, _BARRIER):
            return self._barrier(site, f"feeds {cls} '{name}', whose channel mapping keras_tpp "
                                       "does not model")
        if isinstance(layer, _L.Lambda):
            return self._unsupported(site, "is a Lambda layer whose effect on channels is "
                                           "unknown")
        return self._unsupported(site, "is not a layer keras_tpp knows how channels flow "
                                       "through (custom or unsupported layer)")

    def _consumer(self, site: CallSite, x: Layout) -> None:
        if len(site.inputs) != 1:
            raise UnsupportedModelError(
                f"Layer '{site.ref.path_str}' is called on {len(site.inputs)} tensors.")
        slot = self._slot(site, x)
        if slot is x:
            self._uses.append(("consumer", site.ref, x))

    def _follower(self, site: CallSite, x: Layout, taint: str | None = None) -> list[Layout]:
        if x.repeat != 1:
            self._taint(x, f"reaches '{site.ref.path_str}' after a Flatten/Reshape, where its "
                           "per-channel parameters are repeated per position")
        if taint:
            self._taint(x, taint)
        slot = self._slot(site, x)
        if slot is x:
            self._uses.append(("follower", site.ref, x))
        return self._record(site, "follower", [x.copy()])

    def _pass(self, site: CallSite, x: Layout, taint: str | None = None) -> list[Layout]:
        if taint:
            self._taint(x, taint)
        outs = []
        for shape in site.output_shapes:
            last = shape[-1] if shape else None
            if last is not None and last != x.channels * x.repeat and last % x.channels == 0:
                outs.append(x.with_repeat(last // x.channels))
            else:
                outs.append(x.copy())
        return self._record(site, "pass", outs)

    def _reshape(self, site: CallSite, x: Layout) -> list[Layout]:
        last = site.output_shapes[0][-1] if site.output_shapes[0] else None
        channels = x.channels
        if last is None or channels == 0 or last % channels:
            return self._barrier(site, f"feeds '{site.ref.path_str}', a reshape that splits "
                                       "the channel axis")
        return self._record(site, "pass", [x.with_repeat(last // channels)])

    def _merge(self, site: CallSite) -> list[Layout]:
        out_last = site.output_shapes[0][-1]
        full = [lay for lay, shape in zip(site.inputs, site.input_shapes)
                if shape[-1] == out_last]
        if len(full) != len(site.inputs):
            for lay in site.inputs:
                self._taint(lay, f"is combined in '{site.ref.path_str}' with a tensor "
                                 "broadcast across channels")
        if not full:
            return self._barrier(site, "merges incompatible shapes")
        return self._record(site, "merge", [self._couple(full, site.ref)])

    def _concat(self, site: CallSite) -> list[Layout]:
        rank = len(site.output_shapes[0])
        if int(site.ref.layer.axis) % rank != rank - 1:
            return self._record(site, "merge", [self._couple(site.inputs, site.ref)])
        if any(lay.repeat != 1 for lay in site.inputs):
            return self._barrier(site, f"is concatenated in '{site.ref.path_str}' after a "
                                       "Flatten/Reshape")
        segments = tuple(seg for lay in site.inputs for seg in lay.segments)
        return self._record(site, "concat", [Layout(segments)])

    # -- groups -----------------------------------------------------------------------------

    def _finish(self) -> None:
        members: dict[int, list[int]] = {}
        for atom in range(len(self._atoms)):
            members.setdefault(self._find(atom), []).append(atom)
        for root, atoms in members.items():
            producers = [self._atoms[a].producer for a in atoms if self._atoms[a].producer]
            if not producers:
                continue
            reasons = [r for a in atoms for r in self._atoms[a].reasons]
            reasons.sort(key=lambda r: not r.startswith("reaches the model output"))
            group = ChannelGroup(
                id=-1,
                name=producers[0].name,
                size=self._atoms[root].size,
                producers=producers,
                prunable=not reasons,
                reason=reasons[0] if reasons else None,
            )
            self._group_by_root[root] = group
        for role, ref, layout in self._uses:
            offset = 0
            for atom, size in layout.segments:
                group = self._group_by_root.get(self._find(atom))
                if group is not None:
                    slot = ConsumerRef(ref, offset, layout.repeat)
                    if role == "consumer":
                        group.consumers.append(slot)
                    else:
                        group.follower_slots.append(slot)
                        if all(f is not ref for f in group.followers):
                            group.followers.append(ref)
                offset += size
        order = {id(step.ref.layer): i for i, step in reversed(list(enumerate(self.steps)))}
        self.groups = sorted(self._group_by_root.values(),
                             key=lambda g: order.get(id(g.producers[0].layer), 0))
        for i, group in enumerate(self.groups):
            group.id = i
        self._all_refs = list(iter_layers(self.model))
