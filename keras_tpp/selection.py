"""Which channel groups to prune, at which ratio, and which of their channels.

Shared by :func:`keras_tpp.prepare` (masks) and :func:`keras_tpp.make_plan` /
:func:`keras_tpp.prune` (surgery plans), so that name patterns, ratios and errors mean the same
thing everywhere. Patterns are fnmatch patterns on a producer's name or its "outer/inner" path.
"""
from __future__ import annotations

import fnmatch
from typing import Iterable, Mapping, Union

import numpy as np

from keras_tpp import importance
from keras_tpp.graph import ChannelGroup, DependencyGraph

Ratio = Union[float, Mapping[str, float]]
Patterns = Union[str, Iterable[str], None]


def as_patterns(value: Patterns, what: str) -> list[str] | None:
    """None, one pattern or several → a list of patterns (None stays None)."""
    if value is None:
        return None
    patterns = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{what} must be a name pattern or a list of them, got {value!r}.")
    return patterns


def _matches(ref, pattern: str) -> bool:
    return fnmatch.fnmatchcase(ref.name, pattern) or fnmatch.fnmatchcase(ref.path_str, pattern)


def resolve_group_ratios(
    graph: DependencyGraph,
    pruning_ratio: Ratio,
    *,
    layers: Patterns = None,
    exclude: Patterns = None,
) -> dict[int, float]:
    """{group id: ratio} for the groups to prune; every pattern is checked first.

    ``pruning_ratio`` is one ratio for every prunable group, or {pattern: ratio} (the first
    pattern matching a producer wins; groups with no matching producer are left alone).
    ``layers`` restricts the choice to groups with a matching producer, ``exclude`` removes
    producers. A pattern that matches no producer, or only unprunable ones, is a ValueError
    naming the prunable layers or the reasons; so are different ratios for coupled layers.
    """
    producers = [(ref, g) for g in graph.groups for ref in g.producers]
    prunable = sorted({ref.name for ref, g in producers if g.prunable})

    def match(pattern: str, what: str) -> list:
        hits = [(ref, g) for ref, g in producers if _matches(ref, pattern)]
        usable = [(ref, g) for ref, g in hits if g.prunable]
        if not usable:
            if hits:
                reasons = "; ".join(f"'{r.name}': {g.reason}" for r, g in hits[:5])
                raise ValueError(
                    f"{what} '{pattern}' only matches unprunable layers ({reasons}).")
            raise ValueError(
                f"{what} '{pattern}' matches no producer layer. Prunable layers: "
                f"{', '.join(prunable) if prunable else '(none)'}.")
        return usable

    chosen: dict[str, tuple] = {}  # producer path -> (ref, group, ratio)
    if isinstance(pruning_ratio, Mapping):
        if not pruning_ratio:
            raise ValueError("pruning_ratio mapping is empty.")
        for pattern, ratio in pruning_ratio.items():
            ratio = importance.check_ratio(ratio)
            for ref, group in match(str(pattern), "pruning_ratio pattern"):
                chosen.setdefault(ref.path_str, (ref, group, ratio))
    else:
        ratio = importance.check_ratio(pruning_ratio)
        chosen = {ref.path_str: (ref, g, ratio) for ref, g in producers if g.prunable}
    if layers is not None:
        selected = {id(g) for p in as_patterns(layers, "layers")
                    for _, g in match(p, "layers pattern")}
        chosen = {k: v for k, v in chosen.items() if id(v[1]) in selected}
    for pattern in as_patterns(exclude, "exclude") or []:
        chosen = {k: v for k, v in chosen.items() if not _matches(v[0], pattern)}

    ratios: dict[int, float] = {}
    for ref, group, ratio in chosen.values():
        previous = ratios.get(group.id)
        if previous is not None and previous != ratio:
            members = ", ".join(r.name for r in group.producers)
            raise ValueError(
                f"Layers {members} share their output channels (a residual sum or another "
                f"coupling) and must be pruned with one ratio, got {previous} and {ratio}.")
        ratios[group.id] = ratio
    return ratios


def pruned_indices(
    group: ChannelGroup,
    ratio: float,
    method: str = "l1",
    *,
    seed: int | None = None,
    round_to: int | None = None,
) -> np.ndarray:
    """Sorted channel indices of ``group`` to remove.

    ceil(ratio·N) channels (at least one kept) with the smallest combined L1 scores
    (``method="l1"``) or chosen at random (``"random"``, seeded). ``round_to`` rounds the kept
    count up to a multiple of it (fewer channels removed), for kernels that prefer such widths.
    """
    count = importance.num_pruned(group.size, ratio)
    if round_to:
        kept = min(group.size, -(-(group.size - count) // round_to) * round_to)
        count = group.size - kept
    if method == "l1":
        return importance.lowest(
            importance.group_l1_scores([p.layer for p in group.producers]), count)
    if method == "random":
        return importance.random_indices(group.size, count, seed)
    raise ValueError(f"Unknown selection method {method!r}; valid: 'l1', 'random'.")
