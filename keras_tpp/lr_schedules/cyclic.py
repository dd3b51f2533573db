"""Schedules with a warm-up: scaled LR restarting (SLR) and the 1-cycle policy (CLR)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import keras
from keras import ops

from keras_tpp.lr_schedules.steps import (
    PACKAGE,
    LRSchedule,
    as_step,
    cosine_ramp,
    fraction,
    increasing,
    piecewise,
    positive_float,
    positive_int,
    round_steps,
)


def _warmup_steps(total_steps: int, warmup_fraction: float, min_rest: int, kind: str) -> int:
    """Warm-up length in steps; ValueError if the budget cannot hold warm-up and decay."""
    warmup = round_steps(warmup_fraction * total_steps)
    if warmup_fraction > 0 and warmup < 1:
        raise ValueError(
            f"{kind}: a budget of total_steps={total_steps} is too short for a warm-up of "
            f"{warmup_fraction:.0%} of the steps (it rounds to 0 steps); use more steps."
        )
    if total_steps - warmup < min_rest:
        raise ValueError(
            f"{kind}: a budget of total_steps={total_steps} leaves {total_steps - warmup} "
            f"step(s) after a warm-up of {warmup}; at least {min_rest} needed."
        )
    return warmup


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScaledLRRestart(LRSchedule):
    """SLR: the original schedule's shape compressed into ``total_steps`` steps.

    W = round(warmup_fraction·N) warm-up steps ramp the LR from ``warmup_start`` to
    ``peak_learning_rate`` by a cosine ramp (start at step 0, peak at step W); then the LR is
    peak·factor^i after the i-th milestone, milestone m sitting at step W + round(m·(N − W))
    (defaults: ×0.1 at 50% and 75% of the steps after the warm-up).
    """

    def __init__(
        self,
        total_steps: int,
        peak_learning_rate: float = 0.1,
        warmup_fraction: float = 0.1,
        warmup_start: float = 0.001,
        milestones: Sequence[float] = (0.5, 0.75),
        factor: float = 0.1,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.total_steps = positive_int(total_steps, "total_steps")
        self.peak_learning_rate = positive_float(peak_learning_rate, "peak_learning_rate")
        self.warmup_fraction = fraction(warmup_fraction, "warmup_fraction", allow_zero=True)
        self.warmup_start = positive_float(warmup_start, "warmup_start")
        self.milestones = increasing(milestones, "milestones", integral=False, positive=True)
        if any(m >= 1 for m in self.milestones):
            raise ValueError(f"`milestones` must be fractions in (0, 1); got {milestones!r}.")
        self.factor = positive_float(factor, "factor")
        self.name = name
        self.warmup_steps = _warmup_steps(self.total_steps, self.warmup_fraction, 1, "SLR")
        rest = self.total_steps - self.warmup_steps
        self._step_boundaries = [
            self.warmup_steps + round_steps(m * rest) for m in self.milestones
        ]
        self._values = [
            self.peak_learning_rate * self.factor**i for i in range(len(self.milestones) + 1)
        ]

    def __call__(self, step: Any) -> Any:
        s = as_step(step)
        warm = cosine_ramp(s, self.warmup_steps, self.warmup_start, self.peak_learning_rate)
        after = piecewise(s, self._step_boundaries, self._values)
        return ops.where(s < self.warmup_steps, warm, after)

    def get_config(self) -> dict:
        return {
            "total_steps": self.total_steps,
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_fraction": self.warmup_fraction,
            "warmup_start": self.warmup_start,
            "milestones": list(self.milestones),
            "factor": self.factor,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class OneCycleLR(LRSchedule):
    """CLR: one cycle over ``total_steps`` (N) optimizer steps.

    start = peak / div_factor, end = start / final_div_factor (defaults: 1e-3 and 1e-5 for
    peak 0.1). W = round(warmup_fraction·N) warm-up steps: cosine ramp start → peak (peak at
    step W); then cosine decay peak → end, reaching ``end`` at the last step N − 1:
    η(s) = end + (peak − end)·(1 + cos(π·(s − W)/(N − 1 − W)))/2.
    """

    def __init__(
        self,
        total_steps: int,
        peak_learning_rate: float = 0.1,
        warmup_fraction: float = 0.1,
        div_factor: float = 100.0,
        final_div_factor: float = 100.0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.total_steps = positive_int(total_steps, "total_steps")
        self.peak_learning_rate = positive_float(peak_learning_rate, "peak_learning_rate")
        self.warmup_fraction = fraction(warmup_fraction, "warmup_fraction", allow_zero=True)
        self.div_factor = positive_float(div_factor, "div_factor")
        self.final_div_factor = positive_float(final_div_factor, "final_div_factor")
        self.name = name
        self.warmup_steps = _warmup_steps(self.total_steps, self.warmup_fraction, 2, "CLR")
        self.start_learning_rate = self.peak_learning_rate / self.div_factor
        self.end_learning_rate = self.start_learning_rate / self.final_div_factor

    def __call__(self, step: Any) -> Any:
        s = ops.minimum(as_step(step), float(self.total_steps - 1))
        peak, w = self.peak_learning_rate, self.warmup_steps
        warm = cosine_ramp(s, w, self.start_learning_rate, peak)
        t = (s - w) / float(self.total_steps - 1 - w)
        # (1 + cos x)/2 = cos²(x/2): no cancellation near the end of the cycle.
        decay = self.end_learning_rate + (peak - self.end_learning_rate) * ops.square(
            ops.cos(0.5 * math.pi * t)
        )
        return ops.where(s < w, warm, decay)

    def get_config(self) -> dict:
        return {
            "total_steps": self.total_steps,
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_fraction": self.warmup_fraction,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "name": self.name,
        }
