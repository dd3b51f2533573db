"""prepare: a new model whose prunable layers carry masks and the method's penalties.

    pmodel = keras_tpp.prepare(model, pruning_ratio=0.5, method="tpp")
    pmodel.compile(...); pmodel.fit(..., callbacks=[keras_tpp.TPPCallback(...)])

What comes after training (reading and applying masks, stripping the wrappers) is in
:mod:`keras_tpp.prepared`; removing channels is :mod:`keras_tpp.surgery`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import keras
import numpy as np

from keras_tpp import (
    cloning,
    coverage_report,
    filters,
    importance,
    methods,
    penalties,
    selection,
    validation,
)
from keras_tpp.graph import ChannelGroup, DependencyGraph
from keras_tpp.prepared import hold_masks_in_train_step
from keras_tpp.wrappers import PruningWrapper, find_wrappers, is_norm


@dataclass
class _GroupPlan:
    """What prepare does to one channel group: how many channels go, and its keep-mask."""

    group: ChannelGroup
    num_pruned: int
    keep_mask: np.ndarray  # (N,) bool; all True until GReg-2's schedule picks


def _with_granularity(spec: methods.PruningMethod,
                      granularity: str | None) -> methods.PruningMethod:
    """``spec`` at the requested mask granularity (pruning at initialization and lottery
    tickets offer both)."""
    if granularity is None or granularity == spec.granularity:
        return spec
    if granularity in spec.granularities:
        return type(spec)(**{**spec.get_config(), "granularity": granularity})
    offering = sorted(name for name in methods.names()
                      if methods.get_method(name).granularities)
    raise ValueError(f"Method '{spec.name}' prunes at granularity '{spec.granularity}'; "
                     f"granularity={granularity!r} applies to the methods that offer both "
                     f"({', '.join(repr(n) for n in offering)}).")


def _plan_groups(
    graph: DependencyGraph, ratios: dict[int, float], spec: methods.PruningMethod,
    seed: int | None, model: keras.Model, data: object = None,
) -> list[_GroupPlan]:
    by_id = {group.id: group for group in graph.groups}
    if spec.selection == "deferred":  # the schedule picks the filters later (GReg-2)
        counts = {gid: importance.num_pruned(by_id[gid].size, r) for gid, r in ratios.items()}
        return [_GroupPlan(by_id[gid], n, np.ones(by_id[gid].size, dtype=bool))
                for gid, n in sorted(counts.items()) if n]
    scores = None
    if spec.selection == "scores":
        paths = sorted({ref.path_str for gid in ratios for ref in by_id[gid].producers})
        scores = spec.channel_scores(model, paths, data)
    chosen = selection.choose_pruned(graph, ratios, spec.selection, seed=seed, scores=scores)
    return [_GroupPlan(by_id[gid], len(pruned), importance.keep_mask(by_id[gid].size, pruned))
            for gid, pruned in chosen.items()]


def prepare(
    model: keras.Model,
    pruning_ratio: selection.Ratio = 0.5,
    method: str | methods.PruningMethod = "tpp",
    *,
    layers: selection.Patterns = None,
    exclude: selection.Patterns = None,
    gram_coefficient: float = 1000.0,
    gram_formulation: str = "bounded",
    seed: int | None = None,
    on_unsupported: str = "report",
    allow_renormalization: bool = False,
    initial_ratio: float | None = None,
    initial_mask: str | None = None,
    data: object = None,
    granularity: str | None = None,
) -> keras.Model:
    """Return a new model whose prunable layers carry masks and the method's penalties.

    Args:
        model: a built Functional or Sequential model (nested functional models allowed).
            It is never modified.
        pruning_ratio: fraction of output channels to remove, in [0, 1): one float for every
            selected layer, or a mapping from layer-name patterns (fnmatch, e.g. "*_conv1")
            to ratios; only layers matched by some pattern are then pruned.
        method: a registered method's name (:func:`keras_tpp.methods.names`: "tpp",
            "greg1", "greg2", "l1", "random"; weight-level: "magnitude", the sparse-training
            methods "gmp", "granet", "rigl", lottery tickets "lottery"; pruning at
            initialization "snip", "grasp", "synflow", "random_init") or a
            :class:`keras_tpp.methods.PruningMethod`
            instance carrying the method's options (e.g. ``methods.GReg2(kept_strength=-2e-4)``).
            For weight-level methods ``pruning_ratio`` is the fraction of all prunable
            weights (every Conv/Dense kernel, first conv and classifier included) removed:
            at once ("magnitude"), or by the end of the pruning window (sparse training,
            driven by :class:`keras_tpp.SparseTrainingCallback`).
        layers: optional name patterns restricting which producers are pruned (default:
            every prunable Conv/Dense; a layer whose channels reach a model output, such as
            the classifier head, is never prunable).
        exclude: optional name patterns of producers to leave alone.
        gram_coefficient: c_gram of TPP's gram term (the paper's 1000).
        gram_formulation: "bounded" (default): the gram term's weight c·λ is capped per
            layer so that one optimizer step cannot overshoot (equal to the paper's term
            whenever the cap is not reached, e.g. at its learning rates); "exact": the
            paper's c·λ·L_gram unchanged. See :class:`keras_tpp.penalties.GramPenalty`.
        seed: seed of the "random" method's choice.
        on_unsupported: what to do about layers and keras.ops operations whose effect on
            channels is unknown (Lambda, custom layers, unmodelled operations): "report"
            (default) leaves the affected channel groups unpruned and lists them, with every
            other group left alone, in one :class:`keras_tpp.CoverageWarning` and in the
            returned model's ``coverage_report``; "skip" also warns once per such layer;
            "raise" raises :class:`keras_tpp.UnsupportedModelError` naming the first one.
            Naming an unprunable layer in ``layers=`` (or a ``pruning_ratio`` pattern) is
            always an error, with its reason.
        allow_renormalization: also prune channel groups that pass through a
            LayerNormalization over the channel axis (ConvNeXt's residual stream), slicing
            its γ and β, as Torch-Pruning does. Not exact: the remaining channels are
            renormalized, so outputs change (a warning says so); pass it to
            :func:`keras_tpp.shrink` too. Default False: such groups are left alone, with the
            reason.
        initial_ratio: sparse training only: s_i, the sparsity of a random initial mask
            (default 0 = dense-to-sparse for "gmp"/"granet"; "rigl" starts at
            ``pruning_ratio``).
        initial_mask: sparse training only: "erk" (default; Erdős–Rényi-kernel layer
            densities) or "uniform" spread of that initial mask; ``seed`` seeds it.
        data: pruning at initialization with a data-dependent score ("snip", "grasp"):
            ``(x, y)`` arrays or a ``tf.data.Dataset`` of (x, y) batches to score on.
        granularity: pruning at initialization and "lottery": "weight" (default) or
            "channel"; other methods have one granularity, which this must match if given.

    Layers whose outputs meet in a residual sum or concatenation-free coupling share one
    mask: the whole coupled group is pruned at the same channel indices, chosen by the
    members' combined L1 scores.

    Returns:
        A new Functional model of the same architecture in which each pruned producer and the
        batch norms that follow it are wrapped in :class:`PruningWrapper`, with the weights
        of ``model`` copied. Variables are created in the active tf.distribute scope.
        Channel-level methods attach ``coverage_report`` (a :class:`keras_tpp.CoverageReport`:
        every group, its width before and after, the reason for each group left alone and
        the fraction of MACs in prunable layers; not saved with the model).

    Example::

        pmodel = keras_tpp.prepare(keras.applications.MobileNetV3Small(weights=None), 0.3)
        print(pmodel.coverage_report)
    """
    spec = methods.get_method(method)
    cloning.check_functional(model, "keras_tpp.prepare")
    seed = selection.check_seed(seed)
    spec = _with_granularity(spec, granularity)
    if isinstance(spec, methods.PruningAtInit):
        spec.check_data(data)
    elif data is not None:
        raise ValueError(f"data= is for the data-dependent pruning-at-initialization scores "
                         f"('snip', 'grasp'); method '{spec.name}' does not use it.")
    if spec.granularity != "weight":  # raises on the sparse-training arguments
        spec = spec.configure(pruning_ratio, initial_ratio=initial_ratio,
                              initial_mask=initial_mask, seed=seed)
    if find_wrappers(model):
        raise ValueError(
            f"Model '{model.name}' is already prepared for pruning; call keras_tpp.strip() "
            "first to prepare it again.")
    gram_coefficient = validation.finite_float(gram_coefficient, "gram_coefficient",
                                               minimum=0.0)
    gram_formulation = validation.one_of(gram_formulation, "gram_formulation",
                                         penalties.GRAM_FORMULATIONS)
    if on_unsupported not in ("raise", "skip", "report"):
        raise ValueError(f"on_unsupported must be 'raise', 'skip' or 'report', got "
                         f"{on_unsupported!r}.")
    if spec.granularity == "weight":
        return _prepare_weight_masks(
            model, pruning_ratio, spec, layers, exclude,
            dict(initial_ratio=initial_ratio, initial_mask=initial_mask, seed=seed), data)
    graph = DependencyGraph(model, on_unsupported=on_unsupported,
                            allow_renormalization=allow_renormalization)
    ratios = selection.resolve_group_ratios(graph, pruning_ratio, layers=layers, exclude=exclude)
    plans = _plan_groups(graph, ratios, spec, seed, model, data)
    if not plans:
        raise ValueError(
            f"Nothing to prune in model '{model.name}': "
            f"{selection.nothing_to_prune_reason(graph, ratios)}. prepare() would return an "
            "unchanged copy; check pruning_ratio, layers= and exclude=.")

    # Producers get their group's mask. A batch norm gets one mask over all its channels:
    # behind a Concatenate it carries several groups, each at its offset.
    # The norm records which groups it carries where (``segments``), for methods that
    # choose masks later (GReg-2, lottery rounds).
    wrap: dict[int, tuple[_GroupPlan, np.ndarray]] = {}  # id(layer) -> (plan, keep-mask)
    segments: dict[int, list[tuple[str, int, int]]] = {}  # id(norm) -> (group, offset, size)
    for plan in plans:
        for ref in plan.group.producers:
            wrap[id(ref.layer)] = (plan, plan.keep_mask)
        for slot in plan.group.follower_slots:
            norm = slot.ref.layer
            if not is_norm(norm):
                continue
            if id(norm) not in wrap:
                wrap[id(norm)] = (plan, np.ones(int(norm.moving_mean.shape[0]), dtype=bool))
            wrap[id(norm)][1][slot.offset:slot.offset + plan.group.size] &= plan.keep_mask
            segments.setdefault(id(norm), []).append(
                (plan.group.producers[0].path_str, int(slot.offset), int(plan.group.size)))

    def make_wrapper(layer: keras.layers.Layer, copy: cloning.LayerCopier):
        entry = wrap.get(id(layer))
        if entry is None:
            return None
        plan, keep = entry
        producer = not is_norm(layer)
        return PruningWrapper(
            copy(layer),
            method=spec.name,
            method_options=spec.get_config(),
            gram_formulation=gram_formulation,
            gram_coefficient=gram_coefficient if (producer and spec.gram) else 0.0,
            l2_penalty=spec.l2 if producer else spec.norm_l2,
            num_pruned=int((~keep).sum()) if spec.selection != "deferred" else plan.num_pruned,
            group=plan.group.producers[0].path_str,
            segments=None if producer else segments[id(layer)],
        ), keep

    pmodel = _clone_wrapped(model, make_wrapper)
    report = coverage_report.build(graph, {plan.group.id: plan.num_pruned for plan in plans})
    coverage_report.warn(report, "prepare")
    pmodel.coverage_report = report
    return pmodel


def _clone_wrapped(model: keras.Model, make_wrapper) -> keras.Model:
    """A clone of ``model`` in which ``make_wrapper(layer, copy)`` → (PruningWrapper,
    keep-mask) or None wraps layers; each wrapper's mask is set once the clone is built."""
    masks = {}  # id(wrapper) -> keep-mask

    def replace(layer: keras.layers.Layer, copy: cloning.LayerCopier):
        made = make_wrapper(layer, copy)
        if made is None:
            return None
        wrapper, mask = made
        masks[id(wrapper)] = mask
        return wrapper

    pmodel = cloning.clone(model, replace=replace, compiled=True).model
    for wrapper in find_wrappers(pmodel):
        wrapper.keep_mask.assign(masks[id(wrapper)].astype("float32"))
    hold_masks_in_train_step(pmodel)  # JAX: the masks' constraints need the train step
    return pmodel


def _prepare_weight_masks(model: keras.Model, pruning_ratio: selection.Ratio,
                          spec: methods.PruningMethod, layers: selection.Patterns,
                          exclude: selection.Patterns, targets: dict,
                          data: object = None) -> keras.Model:
    """prepare() for a weight-level method: one mask of its kernel's shape per producer,
    from the method (magnitude: the smallest |w| masked, globally or per layer; sparse
    training: all ones, or a random mask at s_i, applied to the weights at once).
    ``targets`` are prepare's sparse-training arguments (initial_ratio, initial_mask, seed).
    """
    refs = selection.weight_layers(model, layers, exclude)
    ratio = selection.resolve_weight_ratios(refs, pruning_ratio)
    if isinstance(ratio, dict):
        refs = [ref for ref in refs if ref.path_str in ratio]
    spec = spec.configure(ratio, **targets)
    kernels = {ref.path_str: keras.ops.convert_to_numpy(filters.output_kernel(ref.layer))
               for ref in refs}
    keep = spec.initial_weight_masks(kernels, ratio, model=model, data=data) if refs else {}
    # Sparse training and lottery rounds remove weights later; the other methods now.
    largest = max(ratio.values()) if isinstance(ratio, dict) else ratio
    removes = largest > 0 if spec.prunes_after_prepare else any(
        not mask.all() for mask in keep.values())
    if not refs or not removes:
        raise ValueError(
            f"Nothing to prune in model '{model.name}': "
            f"{'no Conv or Dense layer is selected' if not refs else 'the pruning ratio is 0'}"
            ". prepare() would return an unchanged copy; check pruning_ratio, layers= and "
            "exclude=.")
    by_layer = {id(ref.layer): (ref.path_str, keep[ref.path_str]) for ref in refs}

    def make_wrapper(layer: keras.layers.Layer, copy: cloning.LayerCopier):
        entry = by_layer.get(id(layer))
        if entry is None:
            return None
        path, mask = entry
        return PruningWrapper(
            copy(layer), method=spec.name, method_options=spec.get_config(),
            granularity="weight", gram_coefficient=0.0, l2_penalty=False,
            num_pruned=int((~mask).sum()), group=path), mask

    pmodel = _clone_wrapped(model, make_wrapper)
    if isinstance(spec, (methods.SparseTrainingMethod, methods.PruningAtInit)):
        for wrapper in find_wrappers(pmodel):  # sparse from the first forward pass
            wrapper.zero_pruned()
            wrapper.enforce.assign(1.0)
    return pmodel
