"""One-shot magnitude pruning of individual weights (unstructured sparsity).

The smallest |w| among all prunable kernels (every Conv and Dense kernel, the first conv
and the classifier included, unless ``layers``/``exclude`` say otherwise) are masked at
prepare time, globally by default, and held at exactly zero from the first step; training
then fine-tunes the remaining weights. The result is a sparse model, not a thinner one:
:func:`keras_tpp.strip` gives it, :func:`keras_tpp.export` with ``sparse=True`` stores it
compactly.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from keras_tpp import controllers, sparsity
from keras_tpp.methods.base import PruningMethod
from keras_tpp.methods.registry import register
from keras_tpp.validation import one_of


def resolve_ranking(ranking: str | None, pruning_ratio: Any) -> str:
    """The ranking in force: as given, else "layer" for per-layer ratios, "global" for one;
    per-layer ratios with an explicit "global" ranking are a ValueError."""
    per_layer = isinstance(pruning_ratio, Mapping)
    if ranking == "global" and per_layer:
        raise ValueError("Per-pattern pruning ratios give every layer its own sparsity: they "
                         "need ranking='layer' (the default with a ratio mapping), not 'global'.")
    return ranking or ("layer" if per_layer else "global")


@register
class Magnitude(PruningMethod):
    """Weight-level magnitude pruning with the masks fixed at prepare time.

    Args:
        ranking: "global" (one threshold over all prunable kernels, the sparse-training
            papers' choice) or "layer" (every kernel loses the same fraction); default:
            "global" for one pruning ratio, "layer" for per-pattern ratios.
    """

    name = "magnitude"
    description = "one-shot magnitude pruning of individual weights (unstructured)"
    selection = "l1"
    granularity = "weight"

    def __init__(self, ranking: str | None = None) -> None:
        self.ranking = None if ranking is None else one_of(ranking, "ranking",
                                                           ("global", "layer"))

    def configure(self, pruning_ratio, *, initial_ratio=None, initial_mask=None, seed=None):
        super().configure(pruning_ratio, initial_ratio=initial_ratio,
                          initial_mask=initial_mask)
        return type(self)(ranking=resolve_ranking(self.ranking, pruning_ratio))

    def initial_weight_masks(self, kernels, pruning_ratio, *, model=None, data=None):
        ones = {path: np.ones(k.shape, dtype=bool) for path, k in kernels.items()}
        ranking = resolve_ranking(self.ranking, pruning_ratio)
        return sparsity.magnitude_masks(kernels, ones, pruning_ratio, ranking=ranking)

    def controller(self, wrappers, schedule):
        return controllers.OneShotController(wrappers, schedule)

    def last_step(self, schedule):
        return 0

    def get_config(self):
        return {"ranking": self.ranking}
