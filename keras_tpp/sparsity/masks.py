"""Mask updates of sparse training on numpy arrays: magnitude pruning and regeneration.

Masks are boolean arrays of the kernel's shape, True = kept (active).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np


def kept_count(size: int, sparsity: float) -> int:
    """⌊(1 − s)·size⌋, the number of weights a sparsity ``s`` keeps, robust to rounding:
    (1 − 0.9)·1140 is 113.99999999999999 in floating point, and keeps 114."""
    return int(math.floor((1.0 - sparsity) * size + 1e-6))


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` largest scores; among equal scores the earlier positions win.

    O(n) (one ``np.partition``), the same choice as a stable descending sort: ~0.2 s for
    ResNet-50's 25 M weights.
    """
    flat = scores.reshape(-1)
    n = flat.size
    k = max(0, min(int(k), n))
    if k == n:
        return np.ones(scores.shape, dtype=bool)
    if k == 0:
        return np.zeros(scores.shape, dtype=bool)
    kth = np.partition(flat, n - k)[n - k]  # the k-th largest value
    keep = flat > kth
    ties = np.flatnonzero(flat == kth)[:k - int(keep.sum())]
    keep[ties] = True
    return keep.reshape(scores.shape)


def magnitude_masks(weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                    sparsity: float, ranking: str = "global") -> dict[str, np.ndarray]:
    """Keep the largest |w| among the active weights, so that exactly ⌊(1 − s)·N⌋ stay.

    A mask only loses entries: where fewer than ⌊(1 − s)·N⌋ are active (e.g. a layer
    already sparser than ``s`` under ``ranking="layer"``), all active ones stay.

    Args:
        weights: {layer: kernel}.
        masks: {layer: current bool mask}; inactive weights rank below every active one.
        sparsity: s, the target fraction of all prunable weights removed.
        ranking: "global" pools every layer's weights (GraNet, GMP); "layer" applies s to
            each layer on its own.
    """
    if ranking not in ("global", "layer"):
        raise ValueError(f"ranking must be 'global' or 'layer', got {ranking!r}.")
    # Inactive weights score -1 so they never outrank an active one (|w| >= 0).
    scores = {k: np.where(masks[k], np.abs(weights[k]), np.float32(-1.0)) for k in weights}
    if ranking == "layer":
        return {k: _top_k(v, kept_count(v.size, sparsity)) & masks[k]
                for k, v in scores.items()}
    keys = list(scores)
    pooled = np.concatenate([scores[k].reshape(-1) for k in keys])
    keep = _top_k(pooled, kept_count(pooled.size, sparsity))
    out, start = {}, 0
    for key in keys:
        size = scores[key].size
        out[key] = keep[start:start + size].reshape(scores[key].shape) & masks[key]
        start += size
    return out


def regenerate(weight: np.ndarray, gradient: np.ndarray, mask: np.ndarray,
               rate: float) -> tuple[np.ndarray, np.ndarray]:
    """One GraNet regeneration step on one layer: (new mask, new weight).

    Death: the n = ⌈rate·nnz⌉ active weights with the smallest |w| leave. Growth: the n
    inactive positions (those just removed included) with the largest |gradient| join. The
    active count is unchanged; grown weights start at 0, except a weight removed and grown
    back in the same step, which keeps its value.
    """
    active = int(mask.sum())
    n = min(int(math.ceil(rate * active)), active)
    if n == 0:
        return mask.copy(), weight.copy()
    survivors = _top_k(np.where(mask, np.abs(weight), -1.0), active - n)
    candidates = np.where(survivors, -1.0, np.abs(gradient))
    grown = _top_k(candidates, n)
    new_mask = survivors | grown
    new_weight = np.where(grown & ~mask, 0.0, weight)   # regrown at zero ...
    new_weight = np.where(new_mask, new_weight, 0.0)    # ... and the dead ones at zero
    return new_mask, new_weight.astype(weight.dtype)
