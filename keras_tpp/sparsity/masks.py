"""Mask updates of sparse training on numpy arrays: magnitude pruning and regeneration.

Masks are boolean arrays of the kernel's shape, True = kept (active).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping

import numpy as np


def parallel_map(function: Callable[[Any], Any], items: Iterable[Any]) -> list:
    """``[function(x) for x in items]`` on one thread per CPU: numpy's element-wise ops and
    ``partition`` release the GIL, so independent layers run in parallel."""
    items = list(items)
    if len(items) < 2 or (os.cpu_count() or 1) < 2:
        return [function(x) for x in items]
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        return list(pool.map(function, items))


def kept_count(size: int, sparsity: float) -> int:
    """⌊(1 − s)·size⌋, the number of weights a sparsity ``s`` keeps, robust to rounding:
    (1 − 0.9)·1140 is 113.99999999999999 in floating point, and keeps 114."""
    return int(math.floor((1.0 - sparsity) * size + 1e-6))


def _kth_largest(candidates: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest of ``candidates`` (1 <= k <= size), which it reorders in place."""
    candidates.partition(candidates.size - k)
    return candidates[candidates.size - k]


def _top_k(scores: np.ndarray, k: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the ``k`` largest ``scores`` among the ``eligible`` positions (all by
    default); among equal scores the earlier positions win (a stable descending sort's
    choice). O(n): one ``partition`` of the eligible values.
    """
    flat = scores.reshape(-1)
    allowed = None if eligible is None else eligible.reshape(-1)
    candidates = flat.copy() if allowed is None else flat[allowed]
    k = max(0, min(int(k), candidates.size))
    if k == 0:
        return np.zeros(scores.shape, dtype=bool)
    if k == candidates.size:
        return (np.ones(scores.shape, dtype=bool) if allowed is None
                else allowed.copy().reshape(scores.shape))
    kth = _kth_largest(candidates, k)
    keep = flat > kth
    ties = flat == kth
    if allowed is not None:
        keep &= allowed
        ties &= allowed
    keep[np.flatnonzero(ties)[:k - int(np.count_nonzero(keep))]] = True
    return keep.reshape(scores.shape)


def magnitude_masks(weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                    sparsity: float | Mapping[str, float],
                    ranking: str = "global") -> dict[str, np.ndarray]:
    """Keep the largest |w| among the active weights, so that exactly ⌊(1 − s)·N⌋ stay.

    A mask only loses entries: where fewer than ⌊(1 − s)·N⌋ are active (e.g. a layer
    already sparser than ``s`` under ``ranking="layer"``), all active ones stay. Equal
    magnitudes are kept in layer order, then position order.

    Args:
        weights: {layer: kernel}.
        masks: {layer: current bool mask}.
        sparsity: s, the target fraction of all prunable weights removed; with
            ``ranking="layer"`` also {layer: s_l}, one target per layer.
        ranking: "global" pools every layer's weights (GraNet, GMP); "layer" applies s to
            each layer on its own.
    """
    if ranking not in ("global", "layer"):
        raise ValueError(f"ranking must be 'global' or 'layer', got {ranking!r}.")
    per_layer = isinstance(sparsity, Mapping)
    if per_layer and ranking != "layer":
        raise ValueError("Per-layer sparsities need ranking='layer'.")
    keys = list(weights)
    magnitudes = dict(zip(keys, parallel_map(lambda k: np.abs(weights[k]), keys)))
    if ranking == "layer":
        return dict(zip(keys, parallel_map(
            lambda k: _top_k(magnitudes[k], kept_count(
                magnitudes[k].size, sparsity[k] if per_layer else sparsity), masks[k]), keys)))
    # The active values only, each layer's compressed into its slice of one array.
    counts = [int(np.count_nonzero(masks[key])) for key in keys]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    pooled = np.empty(int(starts[-1]), dtype=np.result_type(*magnitudes.values()))
    parallel_map(lambda i: np.compress(masks[keys[i]].reshape(-1),
                                       magnitudes[keys[i]].reshape(-1),
                                       out=pooled[starts[i]:starts[i + 1]]), range(len(keys)))
    k = min(kept_count(sum(w.size for w in weights.values()), sparsity), pooled.size)
    if k == pooled.size:
        return {key: masks[key].copy() for key in keys}
    if k == 0:
        return {key: np.zeros(masks[key].shape, dtype=bool) for key in keys}
    kth = _kth_largest(pooled, k)
    out = dict(zip(keys, parallel_map(lambda key: (magnitudes[key] > kth) & masks[key], keys)))
    need = k - sum(int(np.count_nonzero(m)) for m in out.values())
    for key in keys:  # ties at the threshold: layer order, then position order
        if need <= 0:
            break
        ties = np.flatnonzero(((magnitudes[key] == kth) & masks[key]).reshape(-1))[:need]
        out[key].reshape(-1)[ties] = True
        need -= ties.size
    return out


def regenerate(weight: np.ndarray, gradient: np.ndarray, mask: np.ndarray,
               rate: float) -> tuple[np.ndarray, np.ndarray]:
    """One GraNet regeneration step on one layer: (new mask, new weight).

    Death: the n = ⌈rate·nnz⌉ active weights with the smallest |w| leave. Growth: the n
    inactive positions (those just removed included) with the largest |gradient| join. The
    active count is unchanged; grown weights start at 0, except a weight removed and grown
    back in the same step, which keeps its value. Ties go to the earlier position.
    """
    active = int(np.count_nonzero(mask))
    n = min(int(math.ceil(rate * active)), active)
    if n == 0:
        return mask.copy(), weight.copy()
    survivors = _top_k(np.abs(weight), active - n, mask)
    grown = _top_k(np.abs(gradient), n, ~survivors)
    new_mask = survivors | grown
    # Regrown weights that were inactive start at zero; dead ones are zero.
    new_weight = np.where(survivors | (grown & mask), weight, 0).astype(weight.dtype)
    return new_mask, new_weight
