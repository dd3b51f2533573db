"""The one table of layer roles: how output channels flow through each Keras layer class.

Every module that needs to know what a layer does to channels reads it here: the dependency
graph (:mod:`keras_tpp.graph`), surgery (:mod:`keras_tpp.surgery`), filter layouts
(:mod:`keras_tpp.filters`), profiling, BN folding and OrthP. Supporting a new layer is one
call to :func:`register`.

Roles (``Role.kind``):

- ``producer`` — its own filters create the output channels (Conv, Dense, SeparableConv,
  ConvTranspose); its input channels are consumed (a kernel slice per input channel).
- ``follower`` — per-channel parameters along the way (BatchNormalization, depthwise conv
  with multiplier 1, PReLU); ``channel_weights`` names them with their channel axis.
- ``pass`` — channels go through unchanged in number and order (activations, pooling,
  dropout, padding, cropping, ...).
- ``coupling`` — element-wise merges (Add, Multiply, ...): the inputs' channels become one.
- ``offsets`` — channel concatenation: each input's channels at an offset.
- ``reshape`` — Flatten / Reshape keeping whole channel blocks (channel index ``p·C + c``).
- ``unprunable`` — channels reaching it cannot be removed; ``reason`` says why.
- ``unknown`` — keras_tpp cannot tell; ``reason`` says why (raise, or skip with a warning).

``taint`` (pass / follower / producer): the layer is followed, but channels through it are
unprunable for that reason. ``constants`` tells surgery what the layer does to a removed
channel that carries a per-channel constant: ``keep`` (unchanged), ``elementwise`` (apply
the layer to the constants), ``pads`` (a non-zero constant becomes position dependent),
``batchnorm`` / ``depthwise`` / ``prelu`` (their formulas), ``evaluate`` (zero stays zero
if the layer maps zeros to zeros; anything else is unknown), ``normalization`` (a channel
normalization pruned with ``allow_renormalization=True``: the removed channels are dropped
and the others renormalized, so outputs change by design).

``channel_config`` (followers) names config entries equal to the number of channels (e.g.
a per-channel scale layer's ``projection_dim``), reduced with the channels; ``renormalizes``
marks a ``taint`` that ``allow_renormalization=True`` lifts (LayerNormalization over the
channel axis: γ and β are sliced and the remaining channels renormalized).

Example — teach keras_tpp a per-channel scale layer::

    keras_tpp.layer_roles.register(
        MyScale, keras_tpp.layer_roles.Role(
            "follower", channel_weights={"scale": -1}, zero_weights=("scale",),
            constants="elementwise"))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

import keras

from keras_tpp import keras_internals

_L = keras.layers


def _classes(*names: str) -> tuple[type, ...]:
    return tuple(c for c in (getattr(_L, n, None) for n in names) if c is not None)


# Layer families, defined once for the whole package.
CONV = (_L.Conv1D, _L.Conv2D, _L.Conv3D)
TRANSPOSE = (_L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose)
SEPARABLE = (_L.SeparableConv1D, _L.SeparableConv2D)
DEPTHWISE = (_L.DepthwiseConv1D, _L.DepthwiseConv2D)
DENSE = (_L.Dense,)
PADDING = _classes("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D")
ACTIVATION_LAYERS = _classes("ReLU", "LeakyReLU", "ELU")
MERGE = (_L.Add, _L.Subtract, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum)
CHANNEL_MIXING_ACTIVATIONS = ("softmax", "log_softmax")

KINDS = ("producer", "follower", "pass", "coupling", "offsets", "reshape", "unprunable",
         "unknown")
CONSTANTS = ("keep", "elementwise", "pads", "batchnorm", "depthwise", "prelu", "evaluate",
             "normalization")


@dataclass(frozen=True)
class Role:
    """What a layer does to channels (see the module docstring).

    Args:
        kind: one of :data:`KINDS`.
        reason: why channels cannot be removed (``unprunable`` / ``unknown``).
        taint: followed, but channels through it become unprunable for this reason.
        constants: how surgery maps a removed channel's constant value (:data:`CONSTANTS`).
        channel_weights: follower weights sliced with the channels: {attribute: axis}.
        zero_weights: follower weights zeroed by ``zero_channels`` so that a removed
            channel is exactly zero after the layer.
        channel_config: follower config entries equal to its channel count (reduced by
            surgery with the channels), e.g. ``("projection_dim",)``.
        renormalizes: the ``taint`` is a channel normalization that
            ``allow_renormalization=True`` accepts (outputs then change).
    """

    kind: str
    reason: str | None = None
    taint: str | None = None
    constants: str = "evaluate"
    channel_weights: dict = field(default_factory=dict)
    zero_weights: tuple = ()
    channel_config: tuple = ()
    renormalizes: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Role kind must be one of {KINDS}, got {self.kind!r}.")
        if self.constants not in CONSTANTS:
            raise ValueError(f"Role constants must be one of {CONSTANTS}, got "
                             f"{self.constants!r}.")


#: A rule is a Role, or a function (layer, input rank, layer path) -> Role.
Rule = Union[Role, Callable[[keras.layers.Layer, int, str], Role]]
_TABLE: dict[type, Rule] = {}


def register(layer_class: type, rule: Rule) -> None:
    """Tell keras_tpp how channels flow through ``layer_class`` (and its subclasses).

    Args:
        layer_class: a ``keras.layers.Layer`` subclass.
        rule: a :class:`Role`, or ``f(layer, rank, path) -> Role`` when it depends on the
            layer's configuration (``rank``: rank of its first input, batch included).
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise ValueError(f"register() needs a keras.layers.Layer subclass, got {layer_class!r}.")
    if not (isinstance(rule, Role) or callable(rule)):
        raise ValueError(f"A rule is a Role or a function returning one, got {rule!r}.")
    _TABLE[layer_class] = rule


def unregister(layer_class: type) -> None:
    """Remove a rule added with :func:`register` (no error if there is none)."""
    _TABLE.pop(layer_class, None)


def role_of(layer: keras.layers.Layer, rank: int = 4, path: str | None = None) -> Role:
    """The :class:`Role` of ``layer`` (the most specific registered class wins)."""
    path = path or layer.name
    for cls in type(layer).__mro__:
        rule = _TABLE.get(cls)
        if rule is not None:
            return rule if isinstance(rule, Role) else rule(layer, rank, path)
    if isinstance(layer, _L.Lambda):
        return Role("unknown", reason="is a Lambda layer whose effect on channels is unknown")
    return Role("unknown", reason="is not a layer keras_tpp knows how channels flow through "
                                  "(custom or unsupported layer)")


def is_producer(layer: keras.layers.Layer) -> bool:
    """True for layers whose output channels are produced by their own filters."""
    return role_of(layer).kind == "producer"


# ----------------------------------------------------------------------------------------
# The rules for Keras' own layers
# ----------------------------------------------------------------------------------------


def _axes(axis, rank: int) -> set[int]:
    if axis is None:
        return set()
    values = [axis] if isinstance(axis, int) else list(axis)
    return {int(a) % rank for a in values}


def _activation_name(fn) -> str:
    return str(getattr(fn, "__name__", "")).lower()


def _is_scalar(value) -> bool:
    import numpy as np

    try:
        return np.size(np.asarray(value, dtype=np.float64)) == 1
    except (TypeError, ValueError):
        return False


def _is_depthwise_conv(layer) -> bool:
    """A Conv with groups = filters = input channels (one filter per channel, as ConvNeXt's
    ``Conv2D(C, 7, groups=C)``): per-channel, like a DepthwiseConv with multiplier 1."""
    groups = int(getattr(layer, "groups", 1))
    kernel = getattr(layer, "kernel", None)
    return (groups > 1 and groups == int(layer.filters) and kernel is not None
            and int(kernel.shape[-2]) == 1)


def _producer(layer, rank, path) -> Role:
    if isinstance(layer, CONV) and _is_depthwise_conv(layer):
        return Role("follower", constants="elementwise",
                    channel_weights={"kernel": -1, "bias": -1}, zero_weights=("kernel", "bias"),
                    channel_config=("filters", "groups"))
    if isinstance(layer, CONV) and int(getattr(layer, "groups", 1)) != 1:
        return Role("unprunable", reason=f"feeds grouped convolution '{path}' (groups="
                                         f"{layer.groups}), which keras_tpp does not slice")
    act = _activation_name(getattr(layer, "activation", None))
    taint = (f"goes through the {act} activation of '{path}', which mixes channels"
             if act in CHANNEL_MIXING_ACTIVATIONS else None)
    return Role("producer", taint=taint)


def _depthwise(layer, rank, path) -> Role:
    if int(layer.depth_multiplier) != 1:
        return Role("unprunable", reason=f"feeds DepthwiseConv '{path}' with "
                                         f"depth_multiplier={layer.depth_multiplier}")
    return Role("follower", constants="depthwise", channel_weights={"kernel": -2, "bias": -1},
                zero_weights=("kernel", "bias"))


def _batchnorm(layer, rank, path) -> Role:
    if _axes(layer.axis, rank) != {rank - 1}:
        return Role("unprunable", reason=f"feeds BatchNormalization '{path}' over axis "
                                         f"{layer.axis}, which normalizes across channels")
    return Role("follower", constants="batchnorm",
                channel_weights={n: -1 for n in ("gamma", "beta", "moving_mean",
                                                 "moving_variance")},
                zero_weights=("gamma", "beta", "moving_mean"))


def _prelu(layer, rank, path) -> Role:
    if layer.alpha.shape[-1] == 1:
        return Role("pass", constants="evaluate")  # alpha shared across channels
    return Role("follower", constants="prelu", channel_weights={"alpha": -1},
                zero_weights=("alpha",))


def _channel_normalization(layer, rank, path) -> Role:
    axes = _axes(getattr(layer, "axis", -1), rank)
    why = (f"goes through {type(layer).__name__} '{path}', which normalizes over channels: "
           "removing channels would change its statistics")
    if isinstance(layer, _L.LayerNormalization) and rank - 1 in axes:
        return Role("follower", taint=why + " (allow_renormalization=True prunes it anyway; "
                                            "outputs then change)",
                    constants="normalization", channel_weights={"gamma": -1, "beta": -1},
                    zero_weights=("gamma", "beta"), renormalizes=True)
    if isinstance(layer, _L.GroupNormalization) or rank - 1 in axes:
        return Role("follower", taint=why)
    return Role("pass")


def _normalization(layer, rank, path) -> Role:
    if rank - 1 in _axes(layer.axis, rank):
        return Role("pass", taint=f"goes through Normalization '{path}', whose per-channel "
                                  "statistics keras_tpp does not slice")
    return Role("pass")


def _rescaling(layer, rank, path) -> Role:
    if _is_scalar(layer.scale) and _is_scalar(layer.offset):
        return Role("pass", constants="elementwise")
    return Role("pass", taint=f"goes through Rescaling '{path}' with per-channel scale/offset, "
                              "which keras_tpp does not slice")


def _activation(layer, rank, path) -> Role:
    act = _activation_name(layer.activation)
    if act in CHANNEL_MIXING_ACTIVATIONS:
        return Role("pass", taint=f"goes through the {act} of '{path}', which mixes channels")
    return Role("pass", constants="elementwise")


def _permute(layer, rank, path) -> Role:
    if tuple(layer.dims)[-1] == rank - 1:
        return Role("pass", constants="keep")
    return Role("unprunable", reason=f"feeds Permute '{path}', which moves the channel axis")


def _resizing(layer, rank, path) -> Role:
    pads = getattr(layer, "pad_to_aspect_ratio", False)
    return Role("pass", constants="pads" if pads else "keep")


def _barrier(layer, rank, path) -> Role:
    return Role("unprunable", reason=f"feeds {type(layer).__name__} '{path}', whose channel "
                                     "mapping keras_tpp does not model")


def _softmax(layer, rank, path) -> Role:
    return Role("pass", taint=f"goes through Softmax '{path}', which normalizes across "
                              "positions or channels")


for _cls in CONV + TRANSPOSE + SEPARABLE + DENSE:
    register(_cls, _producer)
for _cls in DEPTHWISE:
    register(_cls, _depthwise)
register(_L.BatchNormalization, _batchnorm)
for _cls in keras_internals.scaled_sum_classes():  # InceptionResNetV2: x + r * scale
    register(_cls, Role("coupling"))
for _cls in keras_internals.layer_scale_classes():  # ConvNeXt's LayerScale: x * gamma
    register(_cls, Role("follower", constants="elementwise", channel_weights={"gamma": -1},
                        zero_weights=("gamma",), channel_config=("projection_dim",)))
register(_L.PReLU, _prelu)
for _cls in _classes("LayerNormalization", "GroupNormalization", "UnitNormalization"):
    register(_cls, _channel_normalization)
register(_L.Normalization, _normalization)
register(_L.Rescaling, _rescaling)
register(_L.Activation, _activation)
register(_L.Softmax, _softmax)
register(_L.Permute, _permute)
register(_L.Resizing, _resizing)
for _cls in (_L.Flatten, _L.Reshape):
    register(_cls, Role("reshape", constants="keep"))
for _cls in ACTIVATION_LAYERS:
    register(_cls, Role("pass", constants="elementwise"))
for _cls in PADDING:
    register(_cls, Role("pass", constants="pads"))
for _cls in _classes(
        "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
        "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
        "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
        "AveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
        "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
        "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D",
        "UpSampling3D", "RepeatVector", "CenterCrop", "RandomFlip", "RandomRotation",
        "RandomZoom", "RandomTranslation", "RandomCrop", "RandomContrast", "RandomBrightness"):
    register(_cls, Role("pass", constants="keep"))
for _cls in MERGE:
    register(_cls, Role("coupling"))
register(_L.Concatenate, Role("offsets"))
for _cls in _classes(
        "Embedding", "LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D",
        "ConvLSTM2D", "ConvLSTM3D", "MultiHeadAttention", "GroupQueryAttention", "Attention",
        "AdditiveAttention", "Dot", "EinsumDense", "Masking", "TimeDistributed",
        "CategoryEncoding", "Discretization", "Hashing", "StringLookup", "IntegerLookup",
        "TextVectorization", "HashedCrossing"):
    register(_cls, _barrier)
del _cls
