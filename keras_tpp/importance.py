"""Filter importance scores and the choice of which filters to prune.

Scores are numpy arrays of shape (N,), one per output channel; a higher score means more
important. Selection turns scores and a pruning ratio into the sorted indices to remove.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import keras
import numpy as np

from keras_tpp import filters


def l1_scores(layer: keras.layers.Layer) -> np.ndarray:
    """Mean |w| of each output filter of a producer layer, shape (N,)."""
    matrix = keras.ops.convert_to_numpy(filters.layer_filter_matrix(layer))
    return np.abs(matrix).mean(axis=1)


def group_l1_scores(layers: Sequence[keras.layers.Layer]) -> np.ndarray:
    """Scores of channels shared by several producers (coupled by a residual sum).

    Each producer's L1 scores are divided by their mean, so that members of different
    scales weigh equally, then averaged. Shape (N,).
    """
    if not layers:
        raise ValueError("group_l1_scores needs at least one producer layer.")
    per_layer = []
    for layer in layers:
        scores = l1_scores(layer)
        scale = scores.mean()
        per_layer.append(scores / scale if scale > 0 else scores)
    return np.mean(per_layer, axis=0)


def num_pruned(num_channels: int, ratio: float) -> int:
    """ceil(ratio·N), capped so that at least one channel is kept."""
    check_ratio(ratio)
    return min(int(math.ceil(ratio * num_channels - 1e-9)), num_channels - 1)


def lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """Sorted indices of the ``count`` lowest scores (ties broken by index)."""
    order = np.argsort(np.asarray(scores), kind="stable")
    return np.sort(order[:count]).astype(np.int64)


def random_indices(num_channels: int, count: int, seed: int | None = None) -> np.ndarray:
    """Sorted indices of ``count`` channels chosen uniformly at random (seeded)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_channels, size=count, replace=False)).astype(np.int64)


def keep_mask(num_channels: int, pruned: np.ndarray) -> np.ndarray:
    """Boolean keep-mask (N,) with False at the pruned indices."""
    mask = np.ones(num_channels, dtype=bool)
    mask[np.asarray(pruned, dtype=int)] = False
    return mask


def check_ratio(ratio: float) -> float:
    """Validate a pruning ratio in [0, 1); returns it as float."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise ValueError(f"A pruning ratio must be a number in [0, 1), got {ratio!r}.")
    value = float(ratio)
    if not 0.0 <= value < 1.0 or math.isnan(value):
        raise ValueError(f"A pruning ratio must be in [0, 1), got {ratio!r}.")
    return value
