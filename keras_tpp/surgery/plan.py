"""Plans: {producer path: removed output channels}, checked against the dependency graph.

An entry is a list of channel indices or a boolean keep-mask (True = kept), the form
:func:`keras_tpp.get_masks` returns; :func:`plan_from_masks` is the one place masks become a
plan. An entry for any producer of a coupled group applies to the whole group.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import keras
import numpy as np

from keras_tpp.graph import DependencyGraph

Plan = Mapping[str, Iterable[int]]


def plan_from_masks(masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn keep-masks {producer path: bool (N,), True = kept} into a plan of removed indices."""
    plan = {}
    for name, mask in masks.items():
        mask = np.asarray(keras.ops.convert_to_numpy(mask)).astype(bool).reshape(-1)
        plan[name] = np.flatnonzero(~mask)
    return plan


def entry_indices(key: str, entry: Any, size: int, path: str) -> np.ndarray:
    """One plan entry as sorted unique removed indices.

    An entry is either channel indices (integers) or a boolean keep-mask of length N
    (True = kept, False = removed), the form :func:`keras_tpp.get_masks` returns.
    """
    if entry is None or isinstance(entry, (str, bytes, Mapping)):
        raise ValueError(f"Plan entry '{key}' must be a list of channel indices or a boolean "
                         f"keep-mask, got {entry!r}.")
    try:
        values = np.asarray(keras.ops.convert_to_numpy(entry) if hasattr(entry, "shape")
                            else list(entry))
    except TypeError:
        raise ValueError(f"Plan entry '{key}' must be a list of channel indices or a boolean "
                         f"keep-mask, got {entry!r}.") from None
    if values.dtype == bool:
        if values.ndim != 1 or values.size != size:
            raise ValueError(
                f"Plan entry '{key}' is a boolean keep-mask of shape {values.shape}, but "
                f"'{path}' has {size} output channels: a keep-mask needs one entry per "
                "channel (True = kept, False = removed).")
        return np.flatnonzero(~values)
    if values.size and not (np.issubdtype(values.dtype, np.integer) or (
            np.issubdtype(values.dtype, np.floating)
            and np.all(np.isfinite(values)) and np.all(np.equal(np.mod(values, 1), 0)))):
        raise ValueError(f"Plan entry '{key}' must hold integer channel indices (or be a "
                         f"boolean keep-mask), got {values.tolist()}.")
    values = np.unique(values.astype(np.int64).reshape(-1))
    if values.size and (values[0] < 0 or values[-1] >= size):
        bad = int(values[0] if values[0] < 0 else values[-1])
        raise ValueError(
            f"Plan entry '{key}' removes channel {bad}, but '{path}' has "
            f"{size} output channels (0..{size - 1}).")
    return values


def resolve_plan(graph: DependencyGraph, plan: Plan) -> dict[int, np.ndarray]:
    """Validate a plan against the graph: {group id: sorted removed indices}."""
    if not isinstance(plan, Mapping):
        raise ValueError(f"A plan must map producer layer names to channel indices, got "
                         f"{type(plan).__name__}.")
    chosen: dict[int, tuple[str, np.ndarray]] = {}
    for key, indices in plan.items():
        if not isinstance(key, str):
            raise ValueError(f"Plan keys are layer names or 'outer/inner' paths, got {key!r}.")
        ref = graph.find(key)
        group = graph.group_of(ref)
        if group is None:
            raise ValueError(
                f"Layer '{ref.path_str}' ({type(ref.layer).__name__}) does not produce "
                "channels; a plan names producers (Conv, Dense, SeparableConv, ConvTranspose)."
            )
        values = entry_indices(key, indices, group.size, ref.path_str)
        if values.size == group.size:
            raise ValueError(f"Plan entry '{key}' removes all {group.size} channels of "
                             f"'{ref.path_str}'; at least one must be kept.")
        if values.size and not group.prunable:
            raise ValueError(f"Cannot prune '{ref.path_str}': its channel group {group.reason}.")
        if group.id in chosen:
            other, previous = chosen[group.id]
            if not np.array_equal(previous, values):
                raise ValueError(
                    f"Conflicting plan entries '{other}' and '{key}': the two layers are coupled"
                    f" (group '{group.name}') and must lose the same channels."
                )
        chosen[group.id] = (key, values)
    return {gid: values for gid, (_, values) in chosen.items() if values.size}


