"""Which channel groups to prune, at which ratio, and which of their channels.

Shared by :func:`keras_tpp.prepare` (masks) and :func:`keras_tpp.make_plan` /
:func:`keras_tpp.prune` (surgery plans), so that name patterns, ratios and errors mean the same
thing everywhere. Patterns are fnmatch patterns on a producer's name or its "outer/inner" path.
"""
from __future__ import annotations

import fnmatch
import numbers
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
    if isinstance(value, str):
        patterns = [value]
    elif isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        patterns = list(value)
    else:
        patterns = None
    if patterns is None or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{what} must be a name pattern or a list of them, got {value!r}.")
    if not patterns:
        raise ValueError(f"{what} is empty; pass None to use the default.")
    return patterns


def check_seed(seed: object) -> int | None:
    """A seed is None or a non-negative integer (not a bool); returns it as int."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}.")
    return int(seed)


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
        if not any(_matches(ref, pattern) for ref, _ in producers):
            raise ValueError(
                f"exclude pattern '{pattern}' matches no producer layer. Producer layers: "
                f"{', '.join(sorted(ref.path_str for ref, _ in producers)) or '(none)'}.")
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


def weight_layers(model, layers: Patterns = None, exclude: Patterns = None) -> list:
    """The producers (Conv/Dense kernels, first conv and classifier included) whose weights a
    weight-level method masks: every one, or those matching ``layers``, minus ``exclude``.

    A pattern that matches no producer is a ValueError naming the producers. Returns
    :class:`~keras_tpp.graph.LayerRef` s.
    """
    from keras_tpp import filters
    from keras_tpp.graph import iter_layers

    producers = [ref for ref in iter_layers(model) if filters.is_producer(ref.layer)]
    names = ", ".join(ref.path_str for ref in producers) or "(none)"

    def matching(pattern: str, what: str) -> list:
        hits = [ref for ref in producers if _matches(ref, pattern)]
        if not hits:
            raise ValueError(f"{what} '{pattern}' matches no Conv or Dense layer. Producer "
                             f"layers: {names}.")
        return hits

    chosen = producers
    if layers is not None:
        keep = {id(ref) for p in as_patterns(layers, "layers") for ref in matching(p, "layers pattern")}
        chosen = [ref for ref in chosen if id(ref) in keep]
    for pattern in as_patterns(exclude, "exclude") or []:
        gone = {id(ref) for ref in matching(pattern, "exclude pattern")}
        chosen = [ref for ref in chosen if id(ref) not in gone]
    return chosen


def resolve_weight_ratios(refs: list, pruning_ratio: Ratio) -> Union[float, dict[str, float]]:
    """The pruning ratio of weight-level methods over the selected producers ``refs``: one
    float for all of them, or {layer path: ratio} from {pattern: ratio} (the first matching
    pattern wins; producers no pattern matches are left alone). A pattern that matches no
    selected producer is a ValueError naming them."""
    if not isinstance(pruning_ratio, Mapping):
        return importance.check_ratio(pruning_ratio)
    if not pruning_ratio:
        raise ValueError("pruning_ratio mapping is empty.")
    ratios: dict[str, float] = {}
    for pattern, ratio in pruning_ratio.items():
        ratio = importance.check_ratio(ratio)
        hits = [ref for ref in refs if _matches(ref, str(pattern))]
        if not hits:
            names = ", ".join(ref.path_str for ref in refs) or "(none)"
            raise ValueError(f"pruning_ratio pattern '{pattern}' matches no selected Conv or "
                             f"Dense layer. Selected layers: {names}.")
        for ref in hits:
            ratios.setdefault(ref.path_str, ratio)
    return ratios


def choose_pruned(
    graph: DependencyGraph,
    ratios: Mapping[int, float],
    method: str = "l1",
    *,
    seed: int | None = None,
    round_to: int | None = None,
    scores: Mapping[str, np.ndarray] | None = None,
) -> dict[int, np.ndarray]:
    """{group id: sorted indices to remove} for every group in ``ratios`` that loses any.

    ``method="scores"`` ranks channels by ``scores`` ({producer path: (N,) channel scores,
    higher = keep}, e.g. a pruning-at-initialization score summed per filter).

    The one place that turns ratios into channels, for :func:`keras_tpp.prepare` and
    :func:`keras_tpp.make_plan`: groups are visited in graph order and the "random" method
    draws each group's seed from one generator seeded with ``seed``, so the same seed picks
    the same channels everywhere.
    """
    rng = np.random.default_rng(check_seed(seed))
    chosen = {}
    for group in graph.groups:
        if group.id not in ratios:
            continue
        indices = pruned_indices(group, ratios[group.id], method,
                                 seed=int(rng.integers(2**31 - 1)), round_to=round_to,
                                 scores=scores)
        if len(indices):
            chosen[group.id] = indices
    return chosen


def nothing_to_prune_reason(graph: DependencyGraph, ratios: Mapping[int, float]) -> str:
    """Why ``ratios`` removes no channel: for the error raised when nothing would change."""
    if any(g.prunable for g in graph.groups):
        if ratios and all(r == 0 for r in ratios.values()):
            return "the pruning ratio is 0"
        return ("every selected layer is too small to lose a channel at this ratio (at "
                "least one channel is always kept)")
    reasons = "; ".join(f"'{g.producers[0].path_str}': {g.reason}" for g in graph.groups[:5])
    return f"no layer is prunable ({reasons or 'the model has no Conv or Dense layer'})"


def pruned_indices(
    group: ChannelGroup,
    ratio: float,
    method: str = "l1",
    *,
    seed: int | None = None,
    round_to: int | None = None,
    scores: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Sorted channel indices of ``group`` to remove.

    ceil(ratio·N) channels (at least one kept) with the smallest combined L1 scores
    (``method="l1"``), the smallest given ``scores`` (``"scores"``: {producer path: (N,)},
    members' scores mean-normalized and averaged as for L1), or chosen at random
    (``"random"``, seeded). ``round_to`` rounds the kept count up to a multiple of it (fewer
    channels removed), for kernels that prefer such widths.
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
    if method == "scores":
        if scores is None:
            raise ValueError("Selection by 'scores' needs the channel scores.")
        members = []
        for ref in group.producers:
            values = np.asarray(scores[ref.path_str], dtype="float64")
            scale = np.abs(values).mean()
            members.append(values / scale if scale > 0 else values)
        return importance.lowest(np.mean(members, axis=0), count)
    raise ValueError(f"Unknown selection method {method!r}; valid: 'l1', 'random', 'scores'.")
