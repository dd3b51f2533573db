"""Retraining learning-rate schedules (SPEC §3, Le & Hua 2021) and the TPP fine-tuning recipe.

Every schedule here is a :class:`keras.optimizers.schedules.LearningRateSchedule` driven by the
optimizer's 0-based iteration count (``optimizer.iterations``), never by callback calls, so it
is exact under ``steps_per_execution > 1`` and distribution strategies.

Conventions (the same in the whole module):

* A boundary means *the first step (or 0-based epoch) that uses the new value*: "×0.1 at
  epoch 80" makes epoch 80, i.e. step ``80 * steps_per_epoch``, the first decayed step.
  (Keras' own ``PiecewiseConstantDecay`` names the *last* step with the old value instead;
  :func:`piecewise_schedule` converts.)
* Fractions of a step count (warm-up, milestones) are rounded to the nearest step
  (halves up).
* Steps past the retraining budget keep the schedule's last value.
* Learning rates are returned as float32 tensors.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import keras
from keras import ops

_PACKAGE = "keras_tpp"
_LRSchedule = keras.optimizers.schedules.LearningRateSchedule

#: TPP fine-tuning recipes of SPEC §1: epochs, boundary epochs; LR ×0.1 at each boundary.
TPP_FINETUNE_RECIPES: dict[str, dict[str, Any]] = {
    "cifar": {"epochs": 120, "boundaries": (60, 90)},
    "imagenet": {"epochs": 90, "boundaries": (30, 60, 75)},
}

RETRAINING_KINDS = ("ft", "lrw", "slr", "clr")


# ----------------------------------------------------------------------------- validation


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a positive number; got {value!r}.")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive finite number; got {value!r}.")
    return value


def _fraction(value: Any, name: str, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number in (0, 1); got {value!r}.")
    value = float(value)
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"`{name}` must lie in {interval}; got {value!r}.")
    return value


def _increasing(values: Any, name: str, *, integral: bool, positive: bool) -> list:
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


def _round_steps(x: float) -> int:
    """Round a (non-negative) fractional step count to the nearest step, halves up."""
    return int(math.floor(x + 0.5))


def _piecewise(step: Any, step_boundaries: Sequence[int], values: Sequence[float]) -> Any:
    """values[i] for step_boundaries[i-1] <= step < step_boundaries[i] (boundaries sorted)."""
    lr = ops.full_like(step, values[0], dtype="float32")
    for boundary, value in zip(step_boundaries, values[1:]):
        lr = ops.where(step >= boundary, ops.convert_to_tensor(value, "float32"), lr)
    return lr


def _cosine_ramp(step: Any, steps: int, start: float, end: float) -> Any:
    """Cosine ramp, start at step 0 → end at step ``steps``.

    start + (end − start)·(1 − cos(π·step/steps))/2.
    """
    frac = step / float(max(steps, 1))
    # (1 − cos x)/2 = sin²(x/2): no cancellation near the start.
    return start + (end - start) * ops.square(ops.sin(0.5 * math.pi * frac))


def _as_step(step: Any) -> Any:
    return ops.maximum(ops.cast(step, "float32"), 0.0)


# ------------------------------------------------------------------------ original schedule


@keras.saving.register_keras_serializable(package=_PACKAGE)
@dataclass(frozen=True)
class OriginalSchedule:
    """The step-decay schedule a model was (pre)trained with, described in epochs.

    η_orig(e) = initial_learning_rate · factor^#{b ∈ boundaries : e ≥ b} for 0-based epoch e.
    Default: SPEC §3's CIFAR schedule, 0.1 ×0.1 at epochs 80 and 120 over 160 epochs.
    """

    initial_learning_rate: float = 0.1
    boundaries: tuple = (80, 120)
    factor: float = 0.1
    epochs: int = 160

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "initial_learning_rate",
            _positive_float(self.initial_learning_rate, "initial_learning_rate"),
        )
        object.__setattr__(self, "factor", _positive_float(self.factor, "factor"))
        object.__setattr__(self, "epochs", _positive_int(self.epochs, "epochs"))
        bounds = _increasing(self.boundaries, "boundaries", integral=False, positive=True)
        if bounds and bounds[-1] >= self.epochs:
            raise ValueError(
                f"`boundaries` must lie inside the {self.epochs} epochs of the schedule; "
                f"got {list(self.boundaries)!r}."
            )
        object.__setattr__(self, "boundaries", tuple(bounds))

    def lr_at_epoch(self, epoch: float) -> float:
        """Learning rate during 0-based epoch ``epoch`` (float)."""
        n = sum(1 for b in self.boundaries if epoch >= b)
        return self.initial_learning_rate * self.factor**n

    @property
    def final_learning_rate(self) -> float:
        """Learning rate of the last epoch (0.001 for the default schedule)."""
        return self.lr_at_epoch(self.epochs - 1)

    def as_schedule(self, steps_per_epoch: int) -> "StepDecay":
        """This schedule as a step-based :class:`StepDecay`."""
        return StepDecay(
            self.initial_learning_rate, list(self.boundaries), self.factor, steps_per_epoch
        )

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "boundaries": list(self.boundaries),
            "factor": self.factor,
            "epochs": self.epochs,
        }

    @classmethod
    def from_config(cls, config: dict) -> "OriginalSchedule":
        return cls(**config)


# ------------------------------------------------------------------------------ schedules


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StepDecay(_LRSchedule):
    """Epoch-wise step decay on optimizer steps.

    η(step) = initial_learning_rate · factor^#{b : epoch ≥ b}, epoch = ⌊step / steps_per_epoch⌋.

    ``start_epoch`` shifts the clock: step s is read as epoch start_epoch + ⌊s/spe⌋
    (this is how :class:`LRRewinding` replays the tail of a schedule).
    """

    def __init__(
        self,
        initial_learning_rate: float = 0.1,
        boundaries: Sequence[float] = (80, 120),
        factor: float = 0.1,
        steps_per_epoch: int = 1,
        start_epoch: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.initial_learning_rate = _positive_float(
            initial_learning_rate, "initial_learning_rate"
        )
        self.boundaries = _increasing(boundaries, "boundaries", integral=False, positive=True)
        self.factor = _positive_float(factor, "factor")
        self.steps_per_epoch = _positive_int(steps_per_epoch, "steps_per_epoch")
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, numbers.Integral) or (
            start_epoch < 0
        ):
            raise ValueError(f"`start_epoch` must be a non-negative integer; got {start_epoch!r}.")
        self.start_epoch = int(start_epoch)
        self.name = name
        # Epoch e (integer) is decayed by boundary b iff start + e >= b iff e >= ceil(b - start).
        self._step_boundaries = [
            max(0, math.ceil(b - self.start_epoch)) * self.steps_per_epoch
            for b in self.boundaries
        ]
        self._values = [
            self.initial_learning_rate * self.factor**i for i in range(len(self.boundaries) + 1)
        ]

    def __call__(self, step: Any) -> Any:
        return _piecewise(_as_step(step), self._step_boundaries, self._values)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "boundaries": list(self.boundaries),
            "factor": self.factor,
            "steps_per_epoch": self.steps_per_epoch,
            "start_epoch": self.start_epoch,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LRRewinding(StepDecay):
    """LRW: replay the last T epochs of the original schedule, η(e) = η_orig(E − T + e).

    Args: the original schedule (initial LR, boundaries in epochs, factor, E =
    ``original_epochs``), the retraining budget T = ``budget_epochs`` (1 ≤ T ≤ E) and
    ``steps_per_epoch``. Epoch e = ⌊step / steps_per_epoch⌋.
    """

    def __init__(
        self,
        budget_epochs: int,
        steps_per_epoch: int,
        initial_learning_rate: float = 0.1,
        boundaries: Sequence[float] = (80, 120),
        factor: float = 0.1,
        original_epochs: int = 160,
        name: str | None = None,
    ) -> None:
        budget_epochs = _positive_int(budget_epochs, "budget_epochs")
        original_epochs = _positive_int(original_epochs, "original_epochs")
        if budget_epochs > original_epochs:
            raise ValueError(
                f"LR rewinding replays the last `budget_epochs` epochs of the original "
                f"schedule, so it needs budget_epochs <= original_epochs; got "
                f"budget_epochs={budget_epochs}, original_epochs={original_epochs}."
            )
        # Validate the original schedule itself (boundaries inside E, ...).
        OriginalSchedule(initial_learning_rate, tuple(boundaries), factor, original_epochs)
        super().__init__(
            initial_learning_rate,
            boundaries,
            factor,
            steps_per_epoch,
            start_epoch=original_epochs - budget_epochs,
            name=name,
        )
        self.budget_epochs = budget_epochs
        self.original_epochs = original_epochs

    @classmethod
    def from_original(
        cls, original: OriginalSchedule, budget_epochs: int, steps_per_epoch: int
    ) -> "LRRewinding":
        """LRW of ``original`` with a budget of ``budget_epochs`` epochs."""
        return cls(
            budget_epochs,
            steps_per_epoch,
            original.initial_learning_rate,
            list(original.boundaries),
            original.factor,
            original.epochs,
        )

    def get_config(self) -> dict:
        return {
            "budget_epochs": self.budget_epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "initial_learning_rate": self.initial_learning_rate,
            "boundaries": list(self.boundaries),
            "factor": self.factor,
            "original_epochs": self.original_epochs,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FineTuneSchedule(_LRSchedule):
    """FT: a constant learning rate, or piecewise constant over optimizer steps.

    Either ``learning_rate`` (default 0.001, the last LR of SPEC §3's original schedule; use
    :meth:`from_original` for another original schedule), or ``boundaries`` (steps, strictly
    increasing, each the first step of its new value) with ``values`` of length
    ``len(boundaries) + 1``: values[i] holds for boundaries[i−1] ≤ step < boundaries[i].
    """

    def __init__(
        self,
        learning_rate: float | None = None,
        boundaries: Sequence[int] | None = None,
        values: Sequence[float] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if boundaries is None:
            if values is not None:
                raise ValueError("`values` needs `boundaries` (in steps) as well.")
            lr = 0.001 if learning_rate is None else learning_rate
            self.learning_rate = _positive_float(lr, "learning_rate")
            self.boundaries = None
            self.values = None
            self._step_boundaries: list[int] = []
            self._values = [self.learning_rate]
        else:
            if learning_rate is not None:
                raise ValueError(
                    "Give either a constant `learning_rate` or `boundaries` with `values`, "
                    "not both."
                )
            self.boundaries = _increasing(boundaries, "boundaries", integral=True, positive=True)
            if values is None or len(values) != len(self.boundaries) + 1:
                raise ValueError(
                    f"`values` must have len(boundaries) + 1 = {len(self.boundaries) + 1} "
                    f"entries; got {values!r}."
                )
            self.values = [_positive_float(v, "values") for v in values]
            self.learning_rate = None
            self._step_boundaries = list(self.boundaries)
            self._values = list(self.values)
        self.name = name

    @classmethod
    def from_original(cls, original: OriginalSchedule) -> "FineTuneSchedule":
        """Constant FT at the last learning rate of ``original``."""
        return cls(learning_rate=original.final_learning_rate)

    def __call__(self, step: Any) -> Any:
        return _piecewise(_as_step(step), self._step_boundaries, self._values)

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "boundaries": None if self.boundaries is None else list(self.boundaries),
            "values": None if self.values is None else list(self.values),
            "name": self.name,
        }


def _warmup_steps(total_steps: int, warmup_fraction: float, min_rest: int, kind: str) -> int:
    """Warm-up length in steps; ValueError if the budget cannot hold warm-up and decay."""
    warmup = _round_steps(warmup_fraction * total_steps)
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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ScaledLRRestart(_LRSchedule):
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
        self.total_steps = _positive_int(total_steps, "total_steps")
        self.peak_learning_rate = _positive_float(peak_learning_rate, "peak_learning_rate")
        self.warmup_fraction = _fraction(warmup_fraction, "warmup_fraction", allow_zero=True)
        self.warmup_start = _positive_float(warmup_start, "warmup_start")
        self.milestones = _increasing(milestones, "milestones", integral=False, positive=True)
        if any(m >= 1 for m in self.milestones):
            raise ValueError(f"`milestones` must be fractions in (0, 1); got {milestones!r}.")
        self.factor = _positive_float(factor, "factor")
        self.name = name
        self.warmup_steps = _warmup_steps(self.total_steps, self.warmup_fraction, 1, "SLR")
        rest = self.total_steps - self.warmup_steps
        self._step_boundaries = [
            self.warmup_steps + _round_steps(m * rest) for m in self.milestones
        ]
        self._values = [
            self.peak_learning_rate * self.factor**i for i in range(len(self.milestones) + 1)
        ]

    def __call__(self, step: Any) -> Any:
        s = _as_step(step)
        warm = _cosine_ramp(s, self.warmup_steps, self.warmup_start, self.peak_learning_rate)
        after = _piecewise(s, self._step_boundaries, self._values)
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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class OneCycleLR(_LRSchedule):
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
        self.total_steps = _positive_int(total_steps, "total_steps")
        self.peak_learning_rate = _positive_float(peak_learning_rate, "peak_learning_rate")
        self.warmup_fraction = _fraction(warmup_fraction, "warmup_fraction", allow_zero=True)
        self.div_factor = _positive_float(div_factor, "div_factor")
        self.final_div_factor = _positive_float(final_div_factor, "final_div_factor")
        self.name = name
        self.warmup_steps = _warmup_steps(self.total_steps, self.warmup_fraction, 2, "CLR")
        self.start_learning_rate = self.peak_learning_rate / self.div_factor
        self.end_learning_rate = self.start_learning_rate / self.final_div_factor

    def __call__(self, step: Any) -> Any:
        s = ops.minimum(_as_step(step), float(self.total_steps - 1))
        peak, w = self.peak_learning_rate, self.warmup_steps
        warm = _cosine_ramp(s, w, self.start_learning_rate, peak)
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


# -------------------------------------------------------------------------------- helpers


def retraining_schedule(
    kind: str,
    *,
    original_lr: float = 0.1,
    original_boundaries: Sequence[float] = (80, 120),
    original_epochs: int = 160,
    factor: float = 0.1,
    budget_epochs: int,
    steps_per_epoch: int,
    **kwargs: Any,
) -> _LRSchedule:
    """A SPEC §3 retraining schedule for a budget of ``budget_epochs`` epochs.

    kind: "ft" (constant at the original schedule's last LR), "lrw" (LR rewinding), "slr"
    (scaled LR restarting: peak = original_lr, milestones = original boundaries / E, i.e. 50%
    and 75% by default) or "clr" (1-cycle, peak = original_lr). ``kwargs`` go to the class
    (:class:`FineTuneSchedule`, :class:`LRRewinding`, :class:`ScaledLRRestart`,
    :class:`OneCycleLR`), e.g. ``warmup_start=`` for SLR or ``learning_rate=`` for FT.
    """
    if not isinstance(kind, str) or kind.lower() not in RETRAINING_KINDS:
        raise ValueError(
            f"Unknown retraining schedule kind {kind!r}; valid kinds: "
            f"{', '.join(RETRAINING_KINDS)}."
        )
    kind = kind.lower()
    budget_epochs = _positive_int(budget_epochs, "budget_epochs")
    steps_per_epoch = _positive_int(steps_per_epoch, "steps_per_epoch")
    original = OriginalSchedule(original_lr, tuple(original_boundaries), factor, original_epochs)
    total_steps = budget_epochs * steps_per_epoch
    if kind == "ft":
        if not ({"boundaries", "values", "learning_rate"} & kwargs.keys()):
            kwargs["learning_rate"] = original.final_learning_rate
        return FineTuneSchedule(**kwargs)
    if kind == "lrw":
        return LRRewinding(
            budget_epochs,
            steps_per_epoch,
            original.initial_learning_rate,
            list(original.boundaries),
            original.factor,
            original.epochs,
            **kwargs,
        )
    if kind == "slr":
        kwargs.setdefault("milestones", [b / original.epochs for b in original.boundaries])
        kwargs.setdefault("factor", original.factor)
        return ScaledLRRestart(total_steps, original.initial_learning_rate, **kwargs)
    return OneCycleLR(total_steps, original.initial_learning_rate, **kwargs)


def piecewise_schedule(
    boundaries_epochs: Sequence[int], values: Sequence[float], steps_per_epoch: int
) -> keras.optimizers.schedules.PiecewiseConstantDecay:
    """Piecewise-constant LR given in epochs, as Keras' ``PiecewiseConstantDecay`` on steps.

    values[i] holds for 0-based epochs boundaries_epochs[i−1] ≤ epoch < boundaries_epochs[i]
    (len(values) = len(boundaries_epochs) + 1); epoch b starts at step b·steps_per_epoch,
    which is Keras' boundary b·steps_per_epoch − 1 (its boundaries are the last old step).
    """
    bounds = _increasing(boundaries_epochs, "boundaries_epochs", integral=True, positive=True)
    if not bounds:
        raise ValueError(
            "`boundaries_epochs` must name at least one epoch; for a constant learning rate "
            "pass a float to the optimizer or use FineTuneSchedule."
        )
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or (
        len(values) != len(bounds) + 1
    ):
        raise ValueError(
            f"`values` must have len(boundaries_epochs) + 1 = {len(bounds) + 1} entries; "
            f"got {values!r}."
        )
    vals = [_positive_float(v, "values") for v in values]
    spe = _positive_int(steps_per_epoch, "steps_per_epoch")
    return keras.optimizers.schedules.PiecewiseConstantDecay([b * spe - 1 for b in bounds], vals)


def tpp_finetune_schedule(
    steps_per_epoch: int, *, dataset: str = "cifar", initial_lr: float = 0.01
) -> keras.optimizers.schedules.PiecewiseConstantDecay:
    """SPEC §1 fine-tuning LR: CIFAR 120 epochs, ×0.1 at 60 and 90; ImageNet 90 epochs,
    ×0.1 at 30, 60 and 75. ``initial_lr`` 0.01 (the paper also uses 1e-3)."""
    if dataset not in TPP_FINETUNE_RECIPES:
        raise ValueError(
            f"Unknown dataset {dataset!r}; valid: {', '.join(TPP_FINETUNE_RECIPES)}."
        )
    lr = _positive_float(initial_lr, "initial_lr")
    bounds = TPP_FINETUNE_RECIPES[dataset]["boundaries"]
    values = [lr * 0.1**i for i in range(len(bounds) + 1)]
    return piecewise_schedule(bounds, values, steps_per_epoch)
