"""Channel layouts: which atoms of channels a tensor's last axis carries, and the atoms'
union-find (coupled channels become one atom; an atom's taints make it unprunable)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from keras_tpp.graph.nodes import LayerRef


class Layout:
    """Which atoms a tensor's last axis carries.

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
    """A recorded layer call: its role and the layouts of its inputs and outputs.

    ``kind``: producer | follower | pass | merge | concat | barrier | unsupported.
    ``call`` holds (args, kwargs) of a keras.ops operation's call, tensors replaced by their
    layouts (its constants are needed to follow and slice channels); None for layers.
    """

    ref: LayerRef
    kind: str
    inputs: list[Layout]
    outputs: list[Layout]
    input_shapes: list[tuple]
    output_shapes: list[tuple]
    call: tuple | None = None


@dataclass(eq=False)
class Atom:
    """A block of channels created together (by one producer or one model input)."""

    size: int
    producer: LayerRef | None = None
    reasons: list[str] = field(default_factory=list)


class Atoms:
    """Union-find over atoms: coupled atoms share a root and are removed at the same indices."""

    def __init__(self) -> None:
        self.atoms: list[Atom] = []
        self._parent: list[int] = []

    def new(self, size: int, producer: LayerRef | None = None, reason: str | None = None) -> int:
        self.atoms.append(Atom(size, producer, [reason] if reason else []))
        self._parent.append(len(self._parent))
        return len(self._parent) - 1

    def find(self, atom: int) -> int:
        root = atom
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[atom] != root:
            self._parent[atom], atom = root, self._parent[atom]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def taint(self, layout: Layout, reason: str) -> None:
        """Mark every atom of ``layout`` unprunable for ``reason``."""
        for atom, _ in layout.segments:
            self.atoms[atom].reasons.append(reason)

    def couple(self, layouts: Sequence[Layout], where: str) -> Layout:
        """Make the same channel positions of several layouts one channel (same indices)."""
        first = layouts[0]
        sizes = [s for _, s in first.segments]
        compatible = all(
            [s for _, s in lay.segments] == sizes and lay.repeat == first.repeat
            for lay in layouts[1:]
        )
        if not compatible:
            reason = (f"is combined in '{where}' with tensors whose channels are grouped "
                      "differently")
            for lay in layouts:
                self.taint(lay, reason)
            return first.copy()
        for lay in layouts[1:]:
            for (a, _), (b, _) in zip(first.segments, lay.segments):
                self.union(a, b)
        return first.copy()

    def members(self) -> dict[int, list[int]]:
        """{root: [atoms]} for every atom."""
        result: dict[int, list[int]] = {}
        for atom in range(len(self.atoms)):
            result.setdefault(self.find(atom), []).append(atom)
        return result
