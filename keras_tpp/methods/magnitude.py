"""One-shot magnitude pruning of individual weights (unstructured sparsity).

The smallest |w| among all prunable kernels (every Conv and Dense kernel, the first conv
and the classifier included, unless ``layers``/``exclude`` say otherwise) are masked at
prepare time, globally by default, and held at exactly zero from the first step; training
then fine-tunes the remaining weights. The result is a sparse model, not a thinner one:
:func:`keras_tpp.strip` gives it, :func:`keras_tpp.export` with ``sparse=True`` stores it
compactly.
"""
from __future__ import annotations

import numpy as np

from keras_tpp import controllers, sparsity
from keras_tpp.methods.base import PruningMethod
from keras_tpp.methods.registry import register
from keras_tpp.validation import one_of


@register
class Magnitude(PruningMethod):
    """Weight-level magnitude pruning with the masks fixed at prepare time.

    Args:
        ranking: "global" (one threshold over all prunable kernels, the sparse-training
            papers' choice) or "layer" (every kernel loses the same fraction).
    """

    name = "magnitude"
    description = "one-shot magnitude pruning of individual weights (unstructured)"
    selection = "l1"
    granularity = "weight"

    def __init__(self, ranking: str = "global") -> None:
        self.ranking = one_of(ranking, "ranking", ("global", "layer"))

    def initial_weight_masks(self, kernels, pruning_ratio):
        ones = {path: np.ones(k.shape, dtype=bool) for path, k in kernels.items()}
        return sparsity.magnitude_masks(kernels, ones, pruning_ratio, ranking=self.ranking)

    def controller(self, wrappers, schedule):
        return controllers.OneShotController(wrappers, schedule)

    def last_step(self, schedule):
        return 0

    def get_config(self):
        return {"ranking": self.ranking}
