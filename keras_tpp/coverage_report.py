"""What pruning can reach in a model: every channel group, its width before and after, and
for each group left alone the reason.

:func:`coverage` builds the report for a model; :func:`keras_tpp.prepare` and
:func:`keras_tpp.prune` build one for what they did, attach it to the model they return
(``model.coverage_report``, not saved with the model) and warn (:class:`CoverageWarning`)
when they left groups alone for a reason other than reaching a model output or input.

Example::

    report = keras_tpp.coverage(model)
    print(report)                      # one row per channel group, then the MAC fraction
    report.prunable_macs_fraction      # e.g. 0.93
    [g.reason for g in report.unprunable]
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping

import keras

from keras_tpp import profiling
from keras_tpp.graph import DependencyGraph

#: Reasons that every model has (the classifier head reaches the output; channels coupled
#: with a model input): by design, not worth a warning.
STRUCTURAL = ("reaches the model output", "carries the model input")


class CoverageWarning(UserWarning):
    """prepare/prune left channel groups unpruned for reasons the user may want to know
    (unsupported layers or operations, channel normalizations, ...), or pruned through a
    channel normalization (``allow_renormalization=True``), which changes outputs."""


@dataclass
class GroupCoverage:
    """One channel group of a :class:`CoverageReport`.

    Attributes:
        name: the group's first producer (its path).
        producers: paths of all its producers (coupled by residual sums etc.).
        width: N, its channels.
        width_after: channels kept (N when nothing is removed).
        prunable: whether keras_tpp can remove its channels.
        reason: why not (None when prunable).
        renormalized: channel normalizations it is pruned through (allow_renormalization).
        macs: MACs (one example) of the layers whose cost this group's width changes.
    """

    name: str
    producers: list[str]
    width: int
    width_after: int
    prunable: bool
    reason: str | None = None
    renormalized: list[str] = field(default_factory=list)
    macs: int | None = None


@dataclass
class CoverageReport:
    """Which channel groups of a model are prunable, and why the others are not.

    Attributes:
        model: the model's name.
        groups: one :class:`GroupCoverage` per channel group, in graph order.
        unsupported: messages for the layers/operations keras_tpp could not follow.
        total_macs: MACs of one example (None when input sizes are unknown).
        prunable_macs: MACs of the layers a prunable group thins (as producer, consumer or
            per-channel follower), None when input sizes are unknown.
    """

    model: str
    groups: list[GroupCoverage]
    unsupported: list[str] = field(default_factory=list)
    total_macs: int | None = None
    prunable_macs: int | None = None

    @property
    def prunable(self) -> list[GroupCoverage]:
        """The groups keras_tpp can prune."""
        return [g for g in self.groups if g.prunable]

    @property
    def unprunable(self) -> list[GroupCoverage]:
        """The groups left alone, each with its reason."""
        return [g for g in self.groups if not g.prunable]

    @property
    def left_alone(self) -> list[GroupCoverage]:
        """Unprunable groups whose reason is not structural (model output / input)."""
        return [g for g in self.unprunable
                if not any(str(g.reason).startswith(s) for s in STRUCTURAL)]

    @property
    def prunable_macs_fraction(self) -> float | None:
        """prunable_macs / total_macs (None when unknown; 0 for a model without MACs)."""
        if self.total_macs is None or self.prunable_macs is None:
            return None
        return self.prunable_macs / self.total_macs if self.total_macs else 0.0

    def __str__(self) -> str:
        rows = [("group", "width", "after", "status")]
        for g in self.groups:
            status = "prunable" if g.prunable else f"unprunable: {g.reason}"
            if g.renormalized:
                status += f" (renormalized through {', '.join(g.renormalized)})"
            rows.append((g.name, str(g.width), str(g.width_after), status))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"Channel groups of model '{self.model}': {len(self.prunable)} prunable, "
                 f"{len(self.unprunable)} left alone"]
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
        fraction = self.prunable_macs_fraction
        if fraction is not None:
            lines.append(f"MACs in layers a prunable group thins: {self.prunable_macs:,} of "
                         f"{self.total_macs:,} ({100 * fraction:.1f}%)")
        for message in self.unsupported:
            lines.append(f"not followed: {message}")
        return "\n".join(lines)


def _known(shape: tuple) -> bool:
    return all(d is not None for d in shape[1:])


def build(graph: DependencyGraph,
          removed: Mapping[int, int] | None = None) -> CoverageReport:
    """The :class:`CoverageReport` of a dependency graph.

    Args:
        graph: the model's :class:`~keras_tpp.graph.DependencyGraph`.
        removed: {group id: number of channels removed} (default: none removed).
    Returns:
        The report; MACs come from the graph's recorded shapes (no extra pass over the
        model) and are None when some input size is unknown.

    Example::

        report = build(DependencyGraph(model, on_unsupported="report"))
    """
    removed = dict(removed or {})
    macs_of: dict[int, int] = {}  # id(layer) -> MACs over its calls
    total: int | None = 0
    for step in graph.steps:
        if not step.input_shapes or not step.output_shapes:
            continue
        layer = step.ref.layer
        if not isinstance(layer, keras.layers.Layer):
            continue
        if not (_known(step.input_shapes[0]) and _known(step.output_shapes[0])):
            if profiling.layer_macs(layer, (1,) * len(step.input_shapes[0]),
                                    (1,) * len(step.output_shapes[0])):
                total = None
            continue
        macs = profiling.layer_macs(layer, step.input_shapes[0], step.output_shapes[0])
        if macs:
            macs_of[id(layer)] = macs_of.get(id(layer), 0) + macs
            if total is not None:
                total += macs
    groups, thinned = [], set()
    for group in graph.groups:
        members = {id(r.layer) for r in group.producers} | {id(r.layer) for r in
                                                            group.followers}
        members |= {id(c.ref.layer) for c in group.consumers}
        if group.prunable:
            thinned |= members
        groups.append(GroupCoverage(
            name=group.producers[0].path_str,
            producers=[r.path_str for r in group.producers],
            width=group.size, width_after=group.size - int(removed.get(group.id, 0)),
            prunable=group.prunable, reason=group.reason,
            renormalized=[r.path_str for r in group.renormalized],
            macs=None if total is None else sum(macs_of.get(m, 0) for m in members)))
    prunable_macs = None if total is None else sum(macs_of.get(m, 0) for m in thinned)
    return CoverageReport(model=graph.model.name, groups=groups,
                          unsupported=list(graph.unsupported), total_macs=total,
                          prunable_macs=prunable_macs)


def coverage(model: keras.Model, *, allow_renormalization: bool = False) -> CoverageReport:
    """Which channel groups of ``model`` keras_tpp can prune, and why the others not.

    Args:
        model: a functional or Sequential model (read only).
        allow_renormalization: count groups through LayerNormalization over channels as
            prunable (see :func:`keras_tpp.prepare`).
    Returns:
        A :class:`CoverageReport`; ``print`` it for a table.

    Example::

        print(keras_tpp.coverage(keras.applications.MobileNetV3Small(weights=None)))
    """
    graph = DependencyGraph(model, on_unsupported="report",
                            allow_renormalization=allow_renormalization)
    return build(graph)


def warn(report: CoverageReport, what: str, *, renormalization: bool = True) -> None:
    """Warn (:class:`CoverageWarning`) about the groups ``what`` ("prepare", "prune") left
    alone for non-structural reasons, and (``renormalization``) about groups pruned through
    a channel normalization."""
    renormalized = [g for g in report.groups if g.renormalized and g.width_after < g.width
                    and renormalization]
    if renormalized:
        layers = sorted({name for g in renormalized for name in g.renormalized})
        warnings.warn(CoverageWarning(
            f"{what} prunes {len(renormalized)} channel group(s) of model '{report.model}' "
            f"through channel normalization ({', '.join(layers[:5])}"
            f"{', ...' if len(layers) > 5 else ''}) because allow_renormalization=True: the "
            "remaining channels are renormalized, so the model's outputs change (not an exact "
            "removal); fine-tune afterwards."), stacklevel=3)
    left = report.left_alone
    if not left:
        return
    fraction = report.prunable_macs_fraction
    share = "" if fraction is None else f"; {100 * fraction:.1f}% of MACs are in prunable layers"
    lines = [f"'{g.name}' ({g.width} channels): {g.reason}" for g in left[:8]]
    more = f"\n  ... and {len(left) - 8} more" if len(left) > 8 else ""
    warnings.warn(CoverageWarning(
        f"{what} left {len(left)} channel group(s) of model '{report.model}' unpruned{share} "
        "(the model's `coverage_report` attribute or keras_tpp.coverage(model) has the full "
        "table):\n  " + "\n  ".join(lines) + more), stacklevel=3)
