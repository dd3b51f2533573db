"""GReg-1 and GReg-2 — Neural Pruning via Growing Regularization (Wang et al., ICLR 2021).

GReg-1 grows an L2 penalty on L1-chosen filters, per layer, until λ reaches the ceiling or
the EMA of mean|w_kept| / mean|w_pruned| reaches ``stop_ratio``. GReg-2 first grows a
uniform L2 on every filter (``pick_delta`` per interval up to ``pick_ceiling``), picks the
smallest filters then, and pushes them as GReg-1 while the kept ones get ``kept_strength``.
"""
from __future__ import annotations

from keras_tpp import controllers
from keras_tpp.methods.base import PruningMethod
from keras_tpp.methods.registry import register
from keras_tpp.validation import finite_float


@register
class GReg1(PruningMethod):
    """GReg-1: a growing L2 on L1-chosen filters with a per-layer stop.

    Args:
        stop_ratio: a layer stops growing when the EMA of mean|w_kept| / mean|w_pruned|
            reaches this (1000).
        ema_momentum: momentum of that EMA (0.9), updated once per interval.
    """

    name = "greg1"
    description = "GReg-1: growing L2 on L1-chosen filters (Wang et al., ICLR 2021)"
    selection = "l1"
    l2 = True

    def __init__(self, stop_ratio: float = 1000.0, ema_momentum: float = 0.9) -> None:
        self.stop_ratio = finite_float(stop_ratio, "stop_ratio", minimum=1.0,
                                       exclusive_minimum=True)
        self.ema_momentum = finite_float(ema_momentum, "ema_momentum", minimum=0.0,
                                         maximum=1.0, exclusive_maximum=True)

    def _options(self) -> dict:
        return {"stop_ratio": self.stop_ratio, "ema_momentum": self.ema_momentum}

    def controller(self, wrappers, schedule):
        return controllers.GRegController(wrappers, schedule, picking=False, **self._options())

    def get_config(self):
        return self._options()


@register
class GReg2(GReg1):
    """GReg-2: a growing uniform L2 picks the filters, then pushes them.

    Args:
        stop_ratio, ema_momentum: as for :class:`GReg1`.
        pick_delta, pick_ceiling: the uniform λ grows by ``pick_delta`` every interval
            until it reaches ``pick_ceiling`` (1e-5, 1e-2); then the filters are picked.
        kept_strength: constant λ on kept filters while pushing (−1e-4: a slight negative
            L2 that restores their magnitude).
    """

    name = "greg2"
    description = "GReg-2: growing uniform L2 picks the filters, then pushes them"
    selection = "deferred"

    def __init__(self, stop_ratio: float = 1000.0, ema_momentum: float = 0.9,
                 pick_delta: float = 1e-5, pick_ceiling: float = 1e-2,
                 kept_strength: float = -1e-4) -> None:
        super().__init__(stop_ratio, ema_momentum)
        self.pick_ceiling = finite_float(pick_ceiling, "pick_ceiling", minimum=0.0,
                                         exclusive_minimum=True)
        self.pick_delta = finite_float(pick_delta, "pick_delta", minimum=0.0,
                                       exclusive_minimum=True, maximum=self.pick_ceiling)
        self.kept_strength = finite_float(kept_strength, "kept_strength")

    def _options(self) -> dict:
        return {**super()._options(), "pick_delta": self.pick_delta,
                "pick_ceiling": self.pick_ceiling, "kept_strength": self.kept_strength}

    def controller(self, wrappers, schedule):
        return controllers.GRegController(wrappers, schedule, picking=True, **self._options())

    def last_step(self, schedule):
        pick_end = controllers.picking_steps(schedule.interval, self.pick_delta,
                                             self.pick_ceiling)
        return pick_end + schedule.end_step
