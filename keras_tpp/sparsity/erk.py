"""Erdős–Rényi-kernel (ERK) initial densities and random masks of exact size.

Layer l with kernel shape (d₁, …, d_k) gets density ε·p_l, p_l = (Σ d_i)/(Π d_i) (for a conv
(kh + kw + C_in + C_out)/(kh·kw·C_in·C_out)): small layers denser, large ones sparser. ε is
solved so the kept weights total (1 − s)·N; a layer with ε·p_l > 1 is made dense and ε is
solved again over the others until none exceeds 1.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from keras_tpp.sparsity.masks import kept_count
from keras_tpp.validation import finite_float


def erk_densities(shapes: Mapping[str, Sequence[int]], sparsity: float) -> dict[str, float]:
    """{layer: density} with Σ density·size = (1 − sparsity)·Σ size.

    Args:
        shapes: {layer path: kernel shape}.
        sparsity: the overall fraction of weights removed, in [0, 1).
    """
    sparsity = finite_float(sparsity, "sparsity", minimum=0.0, maximum=1.0,
                            exclusive_maximum=True)
    if not shapes:
        raise ValueError("erk_densities needs at least one kernel shape.")
    sizes = {k: int(np.prod(s)) for k, s in shapes.items()}
    raw = {k: float(np.sum(s)) / sizes[k] for k, s in shapes.items()}
    budget = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        rest = [k for k in shapes if k not in dense]
        remaining = budget - sum(sizes[k] for k in dense)
        epsilon = remaining / sum(raw[k] * sizes[k] for k in rest)
        over = {k for k in rest if epsilon * raw[k] > 1.0}
        if not over:
            break
        dense |= over
    return {k: 1.0 if k in dense else epsilon * raw[k] for k in shapes}


def exact_counts(sizes: Mapping[str, int], densities: Mapping[str, float],
                 total: int) -> dict[str, int]:
    """Per-layer kept counts ≈ density·size (largest remainders) that sum to ``total``."""
    wanted = {k: densities[k] * sizes[k] for k in sizes}
    counts = {k: min(sizes[k], int(np.floor(v))) for k, v in wanted.items()}
    order = sorted(sizes, key=lambda k: counts[k] - wanted[k])  # most under-served first
    i = 0
    while sum(counts.values()) < total:
        key = order[i % len(order)]
        if counts[key] < sizes[key]:
            counts[key] += 1
        i += 1
    return counts


def random_masks(shapes: Mapping[str, Sequence[int]], sparsity: float, kind: str = "erk",
                 seed: int | None = None) -> dict[str, np.ndarray]:
    """Random boolean masks (True = kept) with exactly ⌊(1 − sparsity)·N⌋ kept in total.

    ``kind`` "erk" spreads them by :func:`erk_densities`, "uniform" gives every layer the same
    density; positions are uniform at random within each layer (seeded).
    """
    if kind not in ("erk", "uniform"):
        raise ValueError(f"initial_mask must be 'erk' or 'uniform', got {kind!r}.")
    sizes = {k: int(np.prod(s)) for k, s in shapes.items()}
    densities = erk_densities(shapes, sparsity) if kind == "erk" else {
        k: 1.0 - sparsity for k in shapes}
    total = kept_count(sum(sizes.values()), sparsity)
    counts = exact_counts(sizes, densities, total)
    rng = np.random.default_rng(seed)
    masks = {}
    for key, shape in shapes.items():
        flat = np.zeros(sizes[key], dtype=bool)
        flat[rng.choice(sizes[key], size=counts[key], replace=False)] = True
        masks[key] = flat.reshape(tuple(shape))
    return masks
