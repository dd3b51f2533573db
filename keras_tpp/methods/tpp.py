"""TPP — Trainability Preserving Pruning (Wang & Fu, ICLR 2023).

Filters chosen by L1 norm at prepare time; a gram decorrelation term on the producers'
kernels plus an L2 term on the pruned filters, biases and batch-norm γ/β, all grown by the
shared :class:`~keras_tpp.penalty_schedule.PenaltySchedule`, held, then pruned.
"""
from __future__ import annotations

from keras_tpp import controllers
from keras_tpp.methods.base import PruningMethod
from keras_tpp.methods.registry import register


@register
class TPP(PruningMethod):
    """TPP: gram + L2 + batch-norm penalties on L1-chosen filters, grown on a schedule."""

    name = "tpp"
    description = "Trainability Preserving Pruning (Wang & Fu, ICLR 2023)"
    selection = "l1"
    gram = True
    l2 = True
    norm_l2 = True

    def controller(self, wrappers, schedule):
        return controllers.GrowingController(wrappers, schedule)
