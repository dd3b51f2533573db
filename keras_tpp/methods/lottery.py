"""Lottery tickets: iterative magnitude pruning (IMP) with rewinding, weight or channel level.

``prepare(model, 0.9, method="lottery")`` gives a dense model (all masks ones) whose target
sparsity is 0.9 (``granularity="channel"``: whose target is removing 90 % of each selected
layer's channels). Each training round is driven by :class:`keras_tpp.PruningCallback`, which
holds the masked weights at zero after every step (as for ``"magnitude"``); between rounds
:func:`keras_tpp.lottery.lottery_round` removes ``rate`` of the remaining weights by
magnitude and rewinds the survivors to a snapshot taken by
:class:`keras_tpp.lottery.RewindPoint`. See :mod:`keras_tpp.lottery` for the loop.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from keras_tpp import controllers
from keras_tpp.methods.base import PruningMethod
from keras_tpp.methods.magnitude import resolve_ranking
from keras_tpp.methods.registry import register
from keras_tpp.penalty_schedule import PenaltySchedule
from keras_tpp.validation import finite_float, one_of


def check_rate(rate: Any, name: str = "rate") -> float:
    """``rate`` as a float in the open interval (0, 1), else ValueError naming ``name``."""
    return finite_float(rate, name, minimum=0.0, maximum=1.0, exclusive_minimum=True,
                        exclusive_maximum=True)


def _target(value: Any) -> float:
    return finite_float(value, "pruning_ratio", minimum=0.0, maximum=1.0,
                        exclusive_maximum=True)


@register
class Lottery(PruningMethod):
    """Iterative magnitude pruning with rewinding (Frankle & Carbin, ICLR 2019; Frankle et
    al., ICML 2020), weight or channel level.

    The masks start all ones; every call of :func:`keras_tpp.lottery.lottery_round` removes
    ``rate`` of the remaining weights (or channels), never going beyond the target given to
    :func:`keras_tpp.prepare` as ``pruning_ratio`` (stored here as ``final_ratio``).

    Args:
        rate: fraction of the REMAINING weights (channels) removed per round, in (0, 1); the
            papers' 0.2 gives sparsity 1 − 0.8^L after L rounds.
        ranking: weight level: "global" (one |w| threshold over every masked kernel, the
            papers' choice) or "layer" (every kernel loses ``rate`` of its own remaining
            weights); default: "global" for one pruning ratio, "layer" for per-pattern
            ratios. Channel level: always per channel group ("layer"), like L1 pruning.
        final_ratio: the target, set by :func:`keras_tpp.prepare` from ``pruning_ratio``:
            one float, or {layer path (weight level) or pattern (channel level): target}.
        granularity: "weight" (default: individual weights, a sparse model) or "channel"
            (whole output channels, ranked by the L1 norm of each group's remaining filters;
            a thin model after :func:`keras_tpp.shrink`).

    Example:
        >>> pmodel = keras_tpp.prepare(model, 0.9, method=keras_tpp.methods.Lottery(rate=0.2))
    """

    name = "lottery"
    description = "iterative magnitude pruning with rewinding (lottery tickets)"
    granularity = "weight"
    granularities = ("weight", "channel")
    selection = "deferred"
    prunes_after_prepare = True  # dense at prepare, weights removed between rounds

    def __init__(self, rate: float = 0.2, ranking: str | None = None,
                 final_ratio: float | Mapping[str, float] | None = None,
                 granularity: str = "weight") -> None:
        self.rate = check_rate(rate)
        self.granularity = one_of(granularity, "granularity", self.granularities)
        self.ranking = None if ranking is None else one_of(ranking, "ranking",
                                                           ("global", "layer"))
        if self.granularity == "channel" and self.ranking == "global":
            raise ValueError(
                "Channel-level lottery rounds rank the channels of each group by their L1 "
                "norm (ranking='layer'), as channel pruning does; ranking='global' applies to "
                "granularity='weight'.")
        if isinstance(final_ratio, Mapping):
            final_ratio = {str(k): _target(v) for k, v in final_ratio.items()}
        elif final_ratio is not None:
            final_ratio = _target(final_ratio)
        self.final_ratio = final_ratio

    def configure(self, pruning_ratio: Any, *, initial_ratio: float | None = None,
                  initial_mask: str | None = None, seed: int | None = None) -> "Lottery":
        """A copy with prepare's target sparsity; the masks always start dense."""
        if initial_ratio is not None or initial_mask is not None:
            raise ValueError(
                "Method 'lottery' starts dense and prunes between training rounds "
                "(keras_tpp.lottery.lottery_round): initial_ratio and initial_mask do not "
                "apply to it.")
        ranking = ("layer" if self.granularity == "channel"
                   else resolve_ranking(self.ranking, pruning_ratio))
        return type(self)(rate=self.rate, ranking=ranking, final_ratio=pruning_ratio,
                          granularity=self.granularity)

    def initial_weight_masks(self, kernels: dict[str, np.ndarray], pruning_ratio: Any, *,
                             model: Any = None, data: Any = None) -> dict[str, np.ndarray]:
        """All ones: the first round trains the dense network."""
        return {path: np.ones(k.shape, dtype=bool) for path, k in kernels.items()}

    def controller(self, wrappers: Any, schedule: Any) -> controllers.Controller:
        if not isinstance(schedule, PenaltySchedule):
            raise ValueError(
                "Method 'lottery' trains each round with keras_tpp.PruningCallback() (which "
                "holds the masked weights at zero) and prunes between rounds with "
                f"keras_tpp.lottery.lottery_round, not with {type(schedule).__name__}-based "
                "callbacks such as SparseTrainingCallback.")
        if isinstance(wrappers, dict):
            wrappers = list(wrappers.values())
        return controllers.OneShotController(wrappers, schedule)

    def last_step(self, schedule: Any) -> int:
        return 0

    def get_config(self) -> dict[str, Any]:
        return {"rate": self.rate, "ranking": self.ranking, "final_ratio": self.final_ratio,
                "granularity": self.granularity}
