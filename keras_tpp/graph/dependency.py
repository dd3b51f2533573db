"""DependencyGraph: the channel groups of a functional or Sequential model.

Each layer call is classified by :func:`keras_tpp.layer_roles.role_of` and handled by the
rule for its role; see :mod:`keras_tpp.graph` for the vocabulary.
"""
from __future__ import annotations

import warnings
from typing import Any

import keras

from keras_tpp import filters, layer_roles
from keras_tpp.graph import operations
from keras_tpp.graph.layout import Atoms, Layout, Step
from keras_tpp.graph.nodes import (
    ChannelGroup,
    ConsumerRef,
    LayerRef,
    UnsupportedModelError,
)
from keras_tpp.graph.walk import CallSite, flat, graph_of, iter_layers, output_layer_names, walk


#: What the graph does about layers and operations it cannot follow.
ON_UNSUPPORTED = ("raise", "skip", "report")


def _lookup(index: dict, key: Any) -> list[LayerRef]:
    """``index[key]`` (a copy), or [] when absent or unhashable."""
    try:
        return list(index.get(key, ()))
    except TypeError:
        return []


class DependencyGraph:
    """Channel groups of a functional or Sequential model.

    Args:
        model: the model; it is read, never modified.
        on_unsupported: "raise" (default here) raises :class:`UnsupportedModelError` at the
            first layer or keras.ops operation keras_tpp cannot follow (Lambda, custom
            layers, unmodelled operations, channels_first); "skip" warns for each and marks
            every group that touches it unprunable; "report" marks them without a warning
            (the reasons are in the groups and in ``unsupported``; :func:`keras_tpp.prepare`
            and the surgery functions use it by default and report once).
        allow_renormalization: prune through LayerNormalization over the channel axis
            (slicing γ and β; the remaining channels are renormalized, so outputs change).
            By default such groups are unprunable, with the reason.

    Attributes:
        groups: the :class:`ChannelGroup` list, in the order of their first producer.
        steps: every leaf layer call with its role and channel layouts, in topological order.
        nested_inputs: {id(nested model): (its ref, the layouts of its inputs)}.
        unsupported: one message per layer or operation keras_tpp could not follow
            ("skip"/"report" modes).

    Example::

        graph = DependencyGraph(model, on_unsupported="report")
        print(graph.summary())
    """

    def __init__(self, model: keras.Model, *, on_unsupported: str = "raise",
                 allow_renormalization: bool = False):
        if on_unsupported not in ON_UNSUPPORTED:
            raise ValueError(
                f"on_unsupported must be 'raise', 'skip' or 'report', got {on_unsupported!r}."
            )
        if not isinstance(allow_renormalization, bool):
            raise ValueError(f"allow_renormalization must be True or False, got "
                             f"{allow_renormalization!r}.")
        if not isinstance(model, keras.Model):
            raise UnsupportedModelError(f"Expected a keras.Model, got {type(model).__name__}.")
        self.model = model
        self.on_unsupported = on_unsupported
        self.allow_renormalization = bool(allow_renormalization)
        self.unsupported: list[str] = []
        self._renormalized: list[tuple[LayerRef, Layout]] = []
        self.steps: list[Step] = []
        self._atoms = Atoms()
        self._slots: dict[int, Layout] = {}  # id(layer) -> layout at its channel input
        self._uses: list[tuple[str, LayerRef, Layout]] = []  # ("consumer"|"follower", ...)
        self._producer_atom: dict[int, int] = {}  # id(producer layer) -> atom
        inputs = []
        for tensor in flat(graph_of(model).inputs):
            size = int((tensor.shape[-1] if len(tensor.shape) else 1) or 0)
            atom = self._atoms.new(size, reason=f"carries the model input '{tensor.name}'")
            inputs.append(Layout(((atom, size),)))
        self.nested_inputs: dict[int, tuple[LayerRef, list[Layout]]] = {}
        outputs = walk(model, inputs, self._visit,
                       on_model=lambda ref, lays: self.nested_inputs.setdefault(
                           id(ref.layer), (ref, list(lays))))
        for layout, name in zip(outputs, output_layer_names(model)):
            self._atoms.taint(layout, f"reaches the model output '{name}'")
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
        return self._group_by_root.get(self._atoms.find(atom))

    def find(self, layer_or_name: Any) -> LayerRef:
        """The :class:`LayerRef` of a layer given as object, name, "outer/inner" or tuple.

        A path names exactly one layer; a bare name is accepted when no top-level layer has
        that path and exactly one nested layer has that name.
        """
        if isinstance(layer_or_name, LayerRef):
            layer_or_name = layer_or_name.path
        by_id, by_path, by_name = self._ref_index()
        if isinstance(layer_or_name, keras.layers.Layer):
            if id(layer_or_name) in by_id:
                return by_id[id(layer_or_name)]
            raise ValueError(f"Layer '{layer_or_name.name}' is not part of model "
                             f"'{self.model.name}'.")
        key = tuple(layer_or_name.split("/")) if isinstance(layer_or_name, str) \
            else tuple(layer_or_name)
        matches = _lookup(by_path, key)
        if not matches and len(key) == 1:
            matches = _lookup(by_name, key[0])
        if len(matches) == 1:
            return matches[0]
        name = "/".join(key)
        if not matches:
            raise ValueError(f"Model '{self.model.name}' has no layer named '{name}'.")
        paths = ", ".join(repr(m.path_str) for m in matches)
        raise ValueError(f"Layer name '{name}' is ambiguous in model '{self.model.name}' "
                         f"({paths}); use the full 'outer/inner' path.")

    def _ref_index(self) -> tuple[dict[int, LayerRef], dict[tuple, list[LayerRef]],
                                  dict[str, list[LayerRef]]]:
        """{id(layer): first ref}, {path: refs}, {name: refs} of every leaf layer, built
        once (find() is called once per plan entry: a scan per call was quadratic)."""
        if getattr(self, "_refs_indexed", None) is None:
            by_id: dict[int, LayerRef] = {}
            by_path: dict[tuple, list[LayerRef]] = {}
            by_name: dict[str, list[LayerRef]] = {}
            for ref in self._all_refs:
                by_id.setdefault(id(ref.layer), ref)
                by_path.setdefault(ref.path, []).append(ref)
                by_name.setdefault(ref.name, []).append(ref)
            self._refs_indexed = (by_id, by_path, by_name)
        return self._refs_indexed

    def layout_group(self, atom: int) -> ChannelGroup | None:
        """The group a layout segment's atom belongs to (None for input-only channels)."""
        return self._group_by_root.get(self._atoms.find(atom))

    def summary(self) -> str:
        """One line per group."""
        return "\n".join(repr(g) for g in self.groups)

    # -- recording ------------------------------------------------------------------------

    def _record(self, site: CallSite, kind: str, outputs: list[Layout]) -> list[Layout]:
        call = (site.args, site.kwargs) if operations.is_operation(site.ref.layer) else None
        self.steps.append(Step(site.ref, kind, list(site.inputs), outputs,
                               site.input_shapes, site.output_shapes, call))
        return outputs

    def _slot(self, site: CallSite, layout: Layout) -> Layout:
        """Couple the channel inputs of every call of a shared layer."""
        key = id(site.ref.layer)
        if key in self._slots:
            self._atoms.couple([self._slots[key], layout], site.ref.path_str)
            return self._slots[key]
        self._slots[key] = layout
        return layout

    def _fresh(self, site: CallSite, reason: str) -> list[Layout]:
        outs = []
        for shape in site.output_shapes:
            size = int(shape[-1] or 0) if shape else 1
            outs.append(Layout(((self._atoms.new(size, reason=reason), size),)))
        return outs

    # -- one rule per role ----------------------------------------------------------------

    def _visit(self, site: CallSite) -> list[Layout]:
        layer = site.ref.layer
        if operations.is_operation(layer):
            return self._operation(site)
        if getattr(layer, "data_format", None) == "channels_first":
            return self._unknown(site, "uses data_format='channels_first'; keras_tpp "
                                       "supports channels_last only")
        if any(not isinstance(x, Layout) for x in site.inputs) or not site.inputs:
            return self._unknown(site, "takes inputs keras_tpp cannot follow")
        role = layer_roles.role_of(layer, len(site.input_shapes[0]), site.ref.path_str)
        handler = {
            "producer": self._producer, "follower": self._follower, "pass": self._pass,
            "coupling": self._merge, "offsets": self._concat, "reshape": self._reshape,
        }.get(role.kind)
        if handler is None:
            if role.kind == "unprunable":
                return self._barrier(site, role.reason)
            return self._unknown(site, role.reason)
        return handler(site, role)

    def _operation(self, site: CallSite) -> list[Layout]:
        """A keras.ops operation node: its role from :mod:`keras_tpp.graph.operations`."""
        if not site.inputs or any(not isinstance(x, Layout) for x in site.inputs):
            return self._unknown(site, "takes inputs keras_tpp cannot follow")
        role = operations.op_role(site.ref.layer, site.ref.path_str, site.args, site.kwargs,
                                  site.inputs[0].channels * site.inputs[0].repeat,
                                  site.input_shapes, site.output_shapes)
        if role.kind == "unknown":
            return self._unknown(site, role.reason)
        if role.kind == "follower" and site.inputs[0].repeat != 1:
            return self._barrier(site, f"reaches '{site.ref.path_str}' after a Flatten/Reshape, "
                                       "where its per-channel constant cannot be sliced")
        handler = {"follower": self._follower, "pass": self._pass, "coupling": self._merge,
                   "offsets": self._concat}[role.kind]
        return handler(site, role)

    def _barrier(self, site: CallSite, why: str) -> list[Layout]:
        for lay in site.inputs:
            self._atoms.taint(lay, why)
        return self._record(site, "barrier", self._fresh(site, why))

    def _unknown(self, site: CallSite, why: str) -> list[Layout]:
        ref = site.ref
        if operations.is_operation(ref.layer):
            message = (f"Operation '{ref.path_str}' ({operations.describe(ref.layer)}) {why}.")
            reason = (f"passes through operation '{ref.path_str}' "
                      f"({operations.describe(ref.layer)}) whose effect on channels is unknown")
        else:
            message = f"Layer '{ref.path_str}' ({type(ref.layer).__name__}) {why}."
            reason = (f"passes through {type(ref.layer).__name__} layer '{ref.path_str}' whose "
                      "effect on channels is unknown")
        if self.on_unsupported == "raise":
            raise UnsupportedModelError(message)
        self.unsupported.append(message)
        if self.on_unsupported == "skip":
            warnings.warn(message + " Channels through it are not pruned.", stacklevel=4)
        for lay in site.inputs:
            self._atoms.taint(lay, reason)
        return self._record(site, "unsupported", self._fresh(site, reason))

    def _producer(self, site: CallSite, role: layer_roles.Role) -> list[Layout]:
        layer = site.ref.layer
        if len(site.inputs) != 1:
            raise UnsupportedModelError(
                f"Layer '{site.ref.path_str}' is called on {len(site.inputs)} tensors.")
        if self._slot(site, site.inputs[0]) is site.inputs[0]:
            self._uses.append(("consumer", site.ref, site.inputs[0]))
        size = filters.num_filters(layer)
        atom = self._producer_atom.get(id(layer))  # a shared producer: same filters
        if atom is None:
            atom = self._atoms.new(size, producer=site.ref)
            self._producer_atom[id(layer)] = atom
        out = Layout(((atom, size),))
        if role.taint:
            self._atoms.taint(out, role.taint)
        return self._record(site, "producer", [out])

    def _follower(self, site: CallSite, role: layer_roles.Role) -> list[Layout]:
        x = site.inputs[0]
        if x.repeat != 1:
            self._atoms.taint(x, f"reaches '{site.ref.path_str}' after a Flatten/Reshape, where "
                                 "its per-channel parameters are repeated per position")
        if role.taint and role.renormalizes and self.allow_renormalization:
            self._renormalized.append((site.ref, x))
        elif role.taint:
            self._atoms.taint(x, role.taint)
        if self._slot(site, x) is x:
            self._uses.append(("follower", site.ref, x))
        return self._record(site, "follower", [x.copy()])

    def _pass(self, site: CallSite, role: layer_roles.Role) -> list[Layout]:
        x = site.inputs[0]
        if role.taint:
            self._atoms.taint(x, role.taint)
        outs = []
        for shape in site.output_shapes:
            last = shape[-1] if shape else None
            if last is not None and last != x.channels * x.repeat and last % x.channels == 0:
                outs.append(x.with_repeat(last // x.channels))
            else:
                outs.append(x.copy())
        return self._record(site, "pass", outs)

    def _reshape(self, site: CallSite, role: layer_roles.Role) -> list[Layout]:
        x = site.inputs[0]
        last = site.output_shapes[0][-1] if site.output_shapes[0] else None
        channels = x.channels
        if last is None or channels == 0 or last % channels:
            return self._barrier(site, f"feeds '{site.ref.path_str}', a reshape that splits "
                                       "the channel axis")
        return self._record(site, "pass", [x.with_repeat(last // channels)])

    def _merge(self, site: CallSite, role: layer_roles.Role | None = None) -> list[Layout]:
        out_last = site.output_shapes[0][-1]
        full = [lay for lay, shape in zip(site.inputs, site.input_shapes)
                if shape[-1] == out_last]
        if len(full) != len(site.inputs):
            for lay in site.inputs:
                self._atoms.taint(lay, f"is combined in '{site.ref.path_str}' with a tensor "
                                       "broadcast across channels")
        if not full:
            return self._barrier(site, "merges incompatible shapes")
        return self._record(site, "merge", [self._atoms.couple(full, site.ref.path_str)])

    def _concat(self, site: CallSite, role: layer_roles.Role) -> list[Layout]:
        rank = len(site.output_shapes[0])
        if int(getattr(site.ref.layer, "axis", -1)) % rank != rank - 1:
            return self._record(site, "merge", [self._atoms.couple(site.inputs,
                                                                   site.ref.path_str)])
        if any(lay.repeat != 1 for lay in site.inputs):
            return self._barrier(site, f"is concatenated in '{site.ref.path_str}' after a "
                                       "Flatten/Reshape")
        segments = tuple(seg for lay in site.inputs for seg in lay.segments)
        return self._record(site, "concat", [Layout(segments)])

    # -- groups -----------------------------------------------------------------------------

    def _finish(self) -> None:
        atoms = self._atoms.atoms
        for root, members in self._atoms.members().items():
            producers = [atoms[a].producer for a in members if atoms[a].producer]
            if not producers:
                continue
            reasons = [r for a in members for r in atoms[a].reasons]
            reasons.sort(key=lambda r: not r.startswith("reaches the model output"))
            self._group_by_root[root] = ChannelGroup(
                id=-1, name=producers[0].name, size=atoms[root].size, producers=producers,
                prunable=not reasons, reason=reasons[0] if reasons else None)
        for role, ref, layout in self._uses:
            offset = 0
            for atom, size in layout.segments:
                group = self.layout_group(atom)
                if group is not None:
                    slot = ConsumerRef(ref, offset, layout.repeat)
                    if role == "consumer":
                        group.consumers.append(slot)
                    else:
                        group.follower_slots.append(slot)
                        if all(f is not ref for f in group.followers):
                            group.followers.append(ref)
                offset += size
        for ref, layout in self._renormalized:
            for atom, _ in layout.segments:
                group = self.layout_group(atom)
                if group is not None and all(r is not ref for r in group.renormalized):
                    group.renormalized.append(ref)
        order = {id(step.ref.layer): i for i, step in reversed(list(enumerate(self.steps)))}
        self.groups = sorted(self._group_by_root.values(),
                             key=lambda g: order.get(id(g.producers[0].layer), 0))
        for i, group in enumerate(self.groups):
            group.id = i
        self._all_refs = list(iter_layers(self.model))
