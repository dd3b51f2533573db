"""Surgery's public functions: zero_channels, shrink, make_plan, prune (see
:mod:`keras_tpp.surgery`)."""
from __future__ import annotations

import glob
import warnings
from typing import TYPE_CHECKING, Iterable, Mapping

import keras
import numpy as np

from keras_tpp import cloning, prepared, selection
from keras_tpp.graph import DependencyGraph, iter_layers
from keras_tpp.surgery.constants import propagate
from keras_tpp.surgery.edits import Surgeon, as_numpy, reading_once
from keras_tpp.surgery.plan import Plan, plan_from_masks, resolve_plan

if TYPE_CHECKING:
    from keras_tpp.latency import LatencyTable


def check_finite(model: keras.Model) -> None:
    """Raise ValueError naming the first layer whose weights hold NaN or infinity.

    Surgery on diverged weights would produce a model that silently outputs NaN; this is
    checked before anything is built.
    """
    for ref in iter_layers(model):
        for variable in ref.layer.weights:
            value = as_numpy(variable)
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                bad = int(np.size(value) - np.isfinite(value).sum())
                raise ValueError(
                    f"Layer '{ref.path_str}' has {bad} non-finite value(s) (NaN or infinity) "
                    f"in '{variable.name}': training diverged. Restore the last finite "
                    "weights (a checkpoint or backup) before pruning surgery.")



def _renormalization_warning(graph: DependencyGraph, removed: Mapping[int, np.ndarray],
                             what: str) -> None:
    """Warn when a plan prunes channels through a channel normalization (opt-in)."""
    layers = sorted({ref.path_str for gid in removed for ref in graph.groups[gid].renormalized})
    if layers:
        from keras_tpp.coverage_report import CoverageWarning

        warnings.warn(CoverageWarning(
            f"{what} removes channels that pass through channel normalization "
            f"({', '.join(layers[:5])}{', ...' if len(layers) > 5 else ''}) because "
            "allow_renormalization=True: the remaining channels are renormalized, so the "
            "thin model's outputs differ from the original's (not an exact removal)."),
            stacklevel=3)


def zero_channels(model: keras.Model, plan: Plan, *, on_unsupported: str = "report",
                  allow_renormalization: bool = False) -> keras.Model:
    """The masked model: a copy of ``model`` with the plan's channels zeroed.

    Sets to zero, for every planned channel, the producers' output filters and biases and
    each follower's per-channel parameters (BatchNormalization γ, β and moving mean;
    depthwise kernel and bias; PReLU α), so the channel is exactly zero after every follower
    in inference mode (LayerNormalization γ and β when ``allow_renormalization=True``).
    Raises ValueError (nothing built) for invalid plans.
    """
    graph = DependencyGraph(model, on_unsupported=on_unsupported,
                            allow_renormalization=allow_renormalization)
    surgeon = Surgeon(graph, resolve_plan(graph, plan))
    return cloning.clone(model, weights=surgeon.zeroed_weights).model


def shrink(model: keras.Model, plan: Plan | None = None, *,
           on_unsupported: str = "report", allow_renormalization: bool = False) -> keras.Model:
    """The thin model: a plain functional Keras model without the plan's channels.

    Args:
        model: a functional/Sequential model (read only). With ``plan=None`` it must be a
            keras_tpp prepared model whose pruned channels are already zero (after
            :func:`keras_tpp.apply_masks` or the end of the pruning schedule): its masks
            give the plan, and the thin model's outputs equal the prepared model's.
        plan: {producer name or "outer/inner" path: output channel indices to remove, or a
            boolean keep-mask of length N (True = kept, False = removed), as
            :func:`keras_tpp.get_masks` returns}.
        on_unsupported: see :class:`keras_tpp.graph.DependencyGraph`; by default ("report")
            layers and operations keras_tpp cannot follow only make the groups through
            them unprunable (a plan that names such a group is a ValueError with the reason).
        allow_renormalization: allow removing channels that pass through LayerNormalization
            over channels (γ, β sliced). Not exact: the remaining channels are renormalized,
            so outputs change (a :class:`keras_tpp.CoverageWarning` says so).
    Returns:
        A new, uncompiled model computing what ``model`` computes with the planned
        producers' outputs zero (exactly the masked model's outputs when ``model`` is
        masked, except through channel normalizations pruned with
        ``allow_renormalization=True``).
    Raises:
        ValueError: unknown names, out-of-range/duplicate-conflicting/all-channel entries,
            unprunable groups, removed channels whose non-zero value cannot be folded, or
            non-finite weights (checked first).
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"shrink expects a keras.Model, got {type(model).__name__}.")
    with reading_once():  # each weight leaves the backend once
        check_finite(model)
        if plan is None:
            prepared.check_pruned_channels_zero(model)
            plan = plan_from_masks(prepared.get_masks(model))
            model = prepared.strip(model)  # the same weights: already checked
        return _shrink(model, plan, on_unsupported, allow_renormalization)


def _shrink(model: keras.Model, plan: Plan, on_unsupported: str = "report",
            allow_renormalization: bool = False, graph: DependencyGraph | None = None,
            what: str = "shrink") -> keras.Model:
    """shrink() after its checks of the weights (the plan is checked here)."""
    graph = graph or DependencyGraph(model, on_unsupported=on_unsupported,
                                     allow_renormalization=allow_renormalization)
    surgeon = Surgeon(graph, resolve_plan(graph, plan))
    propagate(surgeon)
    _renormalization_warning(graph, surgeon.removed, what)
    return _build_thin(surgeon)


def _build_thin(surgeon: Surgeon) -> keras.Model:
    """Rebuild the graph's model with the surgeon's configs and weights."""
    graph = surgeon.graph

    def input_shapes(model: keras.Model) -> list[tuple] | None:
        if model is graph.model:
            return None
        _, layouts = graph.nested_inputs[id(model)]
        return [tuple(t.shape[:-1]) + (surgeon.kept_channels(layout),)
                for t, layout in zip(keras.tree.flatten(model.inputs), layouts)]

    return cloning.clone(graph.model, config=surgeon.new_config, input_shapes=input_shapes,
                         weights=surgeon.new_weights,
                         call_args=surgeon.operation_arguments).model


def make_plan(
    model: keras.Model,
    pruning_ratio: float | Mapping[str, float] | None = None,
    *,
    method: str = "l1",
    layers: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    seed: int | None = None,
    round_to: int | str | None = None,
    graph: DependencyGraph | None = None,
    on_unsupported: str = "report",
    allow_renormalization: bool = False,
    latency_table: LatencyTable | None = None,
    target_latency: float | None = None,
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
    Groups keras_tpp cannot prune are left out (``on_unsupported="raise"`` raises at the
    first layer or operation it cannot follow); ``allow_renormalization=True`` also prunes
    groups through LayerNormalization over channels (outputs change).

    Latency-aware options (see :mod:`keras_tpp.latency`): ``round_to="auto"`` with
    ``latency_table=keras_tpp.latency_table(model)`` keeps, per group, the measured width at
    least as large as the requested kept count that ran fastest; ``target_latency=r`` (instead
    of ``pruning_ratio``, with ``latency_table``) chooses per-group widths whose predicted
    latency is at most r × the dense model's with the least L1 mass removed
    (:func:`keras_tpp.latency.latency_widths`; ``method`` then must be "l1").
    """
    if round_to is not None and round_to != "auto" and (
            isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a positive integer, 'auto' or None, got "
                         f"{round_to!r}.")
    if (pruning_ratio is None) == (target_latency is None):
        raise ValueError("make_plan needs exactly one of pruning_ratio and target_latency.")
    if (round_to == "auto" or target_latency is not None) and latency_table is None:
        raise ValueError("round_to='auto' and target_latency need latency_table="
                         "keras_tpp.latency_table(model).")
    methods = ("l1", "random")
    if method not in methods:
        raise ValueError(f"Unknown method {method!r}; valid methods: {', '.join(methods)}.")
    seed = selection.check_seed(seed)
    graph = graph or DependencyGraph(model, on_unsupported=on_unsupported,
                                     allow_renormalization=allow_renormalization)
    if target_latency is not None:
        from keras_tpp import latency

        if method != "l1" or round_to is not None:
            raise ValueError("target_latency chooses widths by L1 mass among the table's "
                             "measured widths: use method='l1' and round_to=None.")
        widths = latency.latency_widths(model, latency_table, target_latency, layers=layers,
                                        exclude=exclude, graph=graph)
        pruning_ratio = {
            glob.escape(ref.path_str): (g.size - widths[ref.path_str]) / g.size
            for g in graph.groups for ref in g.producers[:1] if ref.path_str in widths}
        if not pruning_ratio:
            return {}
        layers = exclude = None
    ratios = selection.resolve_group_ratios(graph, pruning_ratio, layers=layers,
                                            exclude=exclude)
    if round_to == "auto":
        from keras_tpp import latency

        ratios = latency.auto_round_ratios(graph, ratios, latency_table)
        round_to = None
    elif latency_table is not None and target_latency is None:
        raise ValueError("latency_table is only used with round_to='auto' or target_latency.")
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
    on_unsupported: str = "report",
    allow_renormalization: bool = False,
) -> keras.Model:
    """One-shot structured pruning straight to a thin model.

    Chooses channels with :func:`make_plan` (same arguments) and returns
    ``shrink(zero_channels(model, plan), plan)``. Every prunable group is pruned; the groups
    left alone (with their reasons) are in the thin model's ``coverage_report``
    (:class:`keras_tpp.CoverageReport`), and a :class:`keras_tpp.CoverageWarning` lists
    those left alone for a reason other than reaching a model output.

    Example::

        thin = keras_tpp.prune(model, 0.3)
        print(thin.coverage_report)
    """
    from keras_tpp import coverage_report

    check_finite(model)
    graph = DependencyGraph(model, on_unsupported=on_unsupported,
                            allow_renormalization=allow_renormalization)
    plan = make_plan(model, pruning_ratio, method=method, layers=layers, exclude=exclude,
                     seed=seed, round_to=round_to, graph=graph)
    if not plan:
        ratios = selection.resolve_group_ratios(graph, pruning_ratio, layers=layers,
                                                exclude=exclude)
        raise ValueError(f"Nothing to prune in model '{model.name}': "
                         f"{selection.nothing_to_prune_reason(graph, ratios)}.")
    masked = zero_channels(model, plan, on_unsupported="report",
                           allow_renormalization=allow_renormalization)
    thin = _shrink(masked, plan, "report", allow_renormalization, what="prune")
    removed = {graph.group_of(key).id: len(indices) for key, indices in plan.items()}
    report = coverage_report.build(graph, removed)
    coverage_report.warn(report, "prune", renormalization=False)
    thin.coverage_report = report
    return thin


