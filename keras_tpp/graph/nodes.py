"""The nodes of the dependency graph: layer references, consumer slots and channel groups."""
from __future__ import annotations

from dataclasses import dataclass, field

import keras


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
    # Channel normalizations (LayerNormalization over channels) the group is pruned through
    # because the user passed allow_renormalization=True: outputs change.
    renormalized: list[LayerRef] = field(default_factory=list)

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"unprunable: {self.reason}"
        names = ", ".join(p.path_str for p in self.producers)
        return f"ChannelGroup({self.id}, {self.name!r}, size={self.size}, [{names}], {state})"
