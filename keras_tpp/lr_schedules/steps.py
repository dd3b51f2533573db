"""Validation and step arithmetic shared by the learning-rate schedules."""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import keras
from keras import ops

from keras_tpp import validation

PACKAGE = "keras_tpp"
LRSchedule = keras.optimizers.schedules.LearningRateSchedule


def positive_int(value: Any, name: str) -> int:
    """An integer >= 1 (bools rejected)."""
    return validation.positive_int(value, f"`{name}`")


def positive_float(value: Any, name: str) -> float:
    """A finite number > 0."""
    return validation.finite_float(value, f"`{name}`", minimum=0.0, exclusive_minimum=True)


def fraction(value: Any, name: str, *, allow_zero: bool) -> float:
    """A number in (0, 1), or [0, 1) with ``allow_zero``."""
    return validation.finite_float(value, f"`{name}`", minimum=0.0, maximum=1.0,
                                   exclusive_minimum=not allow_zero, exclusive_maximum=True)


def increasing(values: Any, name: str, *, integral: bool, positive: bool) -> list:
    """Validate a strictly increasing sequence of numbers; returns it as a list."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"`{name}` must be a list of numbers; got {values!r}.")
    out = []
    for v in values:
        kind = numbers.Integral if integral else numbers.Real
        if isinstance(v, bool) or not isinstance(v, kind):
            what = "integers" if integral else "numbers"
            raise ValueError(f"`{name}` must contain {what}; got {values!r}.")
        if (positive and v <= 0) or (not positive and v < 0):
            sign = "positive" if positive else "non-negative"
            raise ValueError(f"`{name}` must be {sign}; got {values!r}.")
        out.append(int(v) if integral else float(v))
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"`{name}` must be strictly increasing; got {values!r}.")
    return out


def round_steps(x: float) -> int:
    """Round a (non-negative) fractional step count to the nearest step, halves up."""
    return int(math.floor(x + 0.5))


def piecewise(step: Any, step_boundaries: Sequence[int], values: Sequence[float]) -> Any:
    """values[i] for step_boundaries[i-1] <= step < step_boundaries[i] (boundaries sorted)."""
    lr = ops.full_like(step, values[0], dtype="float32")
    for boundary, value in zip(step_boundaries, values[1:]):
        lr = ops.where(step >= boundary, ops.convert_to_tensor(value, "float32"), lr)
    return lr


def cosine_ramp(step: Any, steps: int, start: float, end: float) -> Any:
    """Cosine ramp, start at step 0 → end at step ``steps``.

    start + (end − start)·(1 − cos(π·step/steps))/2.
    """
    frac = step / float(max(steps, 1))
    # (1 − cos x)/2 = sin²(x/2): no cancellation near the start.
    return start + (end - start) * ops.square(ops.sin(0.5 * math.pi * frac))


def as_step(step: Any) -> Any:
    return ops.maximum(ops.cast(step, "float32"), 0.0)
