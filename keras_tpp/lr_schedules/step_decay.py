"""Step-decay schedules: the original schedule, StepDecay, LR rewinding and fine-tuning."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import keras

from keras_tpp.lr_schedules.steps import (
    PACKAGE,
    LRSchedule,
    as_step,
    increasing,
    piecewise,
    positive_float,
    positive_int,
)


@keras.saving.register_keras_serializable(package=PACKAGE)
@dataclass(frozen=True)
class OriginalSchedule:
    """The step-decay schedule a model was (pre)trained with, described in epochs.

    η_orig(e) = initial_learning_rate · factor^#{b ∈ boundaries : e ≥ b} for 0-based epoch e.
    Default: Le & Hua's original CIFAR schedule, 0.1 ×0.1 at epochs 80 and 120 over 160 epochs.
    """

    initial_learning_rate: float = 0.1
    boundaries: tuple = (80, 120)
    factor: float = 0.1
    epochs: int = 160

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "initial_learning_rate",
            positive_float(self.initial_learning_rate, "initial_learning_rate"),
        )
        object.__setattr__(self, "factor", positive_float(self.factor, "factor"))
        object.__setattr__(self, "epochs", positive_int(self.epochs, "epochs"))
        bounds = increasing(self.boundaries, "boundaries", integral=False, positive=True)
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class StepDecay(LRSchedule):
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
        self.initial_learning_rate = positive_float(
            initial_learning_rate, "initial_learning_rate"
        )
        self.boundaries = increasing(boundaries, "boundaries", integral=False, positive=True)
        self.factor = positive_float(factor, "factor")
        self.steps_per_epoch = positive_int(steps_per_epoch, "steps_per_epoch")
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
        return piecewise(as_step(step), self._step_boundaries, self._values)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "boundaries": list(self.boundaries),
            "factor": self.factor,
            "steps_per_epoch": self.steps_per_epoch,
            "start_epoch": self.start_epoch,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
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
        budget_epochs = positive_int(budget_epochs, "budget_epochs")
        original_epochs = positive_int(original_epochs, "original_epochs")
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
        cls, original: OriginalSchedule, budget_epochs: int, steps_per_epoch: int,
        **kwargs: Any,
    ) -> "LRRewinding":
        """LRW of ``original`` with a budget of ``budget_epochs`` epochs."""
        return cls(
            budget_epochs,
            steps_per_epoch,
            original.initial_learning_rate,
            list(original.boundaries),
            original.factor,
            original.epochs,
            **kwargs,
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class FineTuneSchedule(LRSchedule):
    """FT: a constant learning rate, or piecewise constant over optimizer steps.

    Either ``learning_rate`` (default 0.001, the last LR of Le & Hua's original schedule; use
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
            self.learning_rate = positive_float(lr, "learning_rate")
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
            self.boundaries = increasing(boundaries, "boundaries", integral=True, positive=True)
            if values is None or len(values) != len(self.boundaries) + 1:
                raise ValueError(
                    f"`values` must have len(boundaries) + 1 = {len(self.boundaries) + 1} "
                    f"entries; got {values!r}."
                )
            self.values = [positive_float(v, "values") for v in values]
            self.learning_rate = None
            self._step_boundaries = list(self.boundaries)
            self._values = list(self.values)
        self.name = name

    @classmethod
    def from_original(cls, original: OriginalSchedule) -> "FineTuneSchedule":
        """Constant FT at the last learning rate of ``original``."""
        return cls(learning_rate=original.final_learning_rate)

    def __call__(self, step: Any) -> Any:
        return piecewise(as_step(step), self._step_boundaries, self._values)

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "boundaries": None if self.boundaries is None else list(self.boundaries),
            "values": None if self.values is None else list(self.values),
            "name": self.name,
        }
