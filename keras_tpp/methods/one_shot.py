"""One-shot pruning: L1 norm (Li et al., ICLR 2017) and random filter choice.

The masks are chosen at prepare time and applied at the first training step, with no
penalty; training then fine-tunes the remaining network.
"""
from __future__ import annotations

from keras_tpp import controllers
from keras_tpp.methods.base import PruningMethod
from keras_tpp.methods.registry import register


@register
class L1(PruningMethod):
    """One-shot L1-norm pruning: the smallest mean |w| filters go at the first step."""

    name = "l1"
    description = "one-shot L1-norm pruning (Li et al., ICLR 2017)"
    selection = "l1"

    def controller(self, wrappers, schedule):
        return controllers.OneShotController(wrappers, schedule)

    def last_step(self, schedule):
        return 0


@register
class Random(L1):
    """One-shot random pruning with the same per-layer ratios (seeded at prepare)."""

    name = "random"
    description = "one-shot random filter pruning with the same per-layer ratios"
    selection = "random"
