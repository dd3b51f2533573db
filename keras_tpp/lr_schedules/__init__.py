"""Retraining learning-rate schedules (Le & Hua, ICLR 2021) and the TPP fine-tuning recipe.

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

from typing import Any, Sequence

import keras

from keras_tpp.lr_schedules.cyclic import OneCycleLR, ScaledLRRestart
from keras_tpp.lr_schedules.step_decay import (
    FineTuneSchedule,
    LRRewinding,
    OriginalSchedule,
    StepDecay,
)
from keras_tpp.lr_schedules.steps import LRSchedule, increasing, positive_float, positive_int

#: TPP's fine-tuning recipes (Wang & Fu, ICLR 2023): epochs, boundary epochs; LR ×0.1 at each boundary.
TPP_FINETUNE_RECIPES: dict[str, dict[str, Any]] = {
    "cifar": {"epochs": 120, "boundaries": (60, 90)},
    "imagenet": {"epochs": 90, "boundaries": (30, 60, 75)},
}

RETRAINING_KINDS = ("ft", "lrw", "slr", "clr")


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
) -> LRSchedule:
    """A retraining schedule of Le & Hua (ICLR 2021) for a budget of ``budget_epochs`` epochs.

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
    budget_epochs = positive_int(budget_epochs, "budget_epochs")
    steps_per_epoch = positive_int(steps_per_epoch, "steps_per_epoch")
    original = OriginalSchedule(original_lr, tuple(original_boundaries), factor, original_epochs)
    total_steps = budget_epochs * steps_per_epoch
    if kind == "ft":
        if not ({"boundaries", "values", "learning_rate"} & kwargs.keys()):
            kwargs["learning_rate"] = original.final_learning_rate
        return FineTuneSchedule(**kwargs)
    if kind == "lrw":
        return LRRewinding.from_original(original, budget_epochs, steps_per_epoch, **kwargs)
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
    bounds = increasing(boundaries_epochs, "boundaries_epochs", integral=True, positive=True)
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
    vals = [positive_float(v, "values") for v in values]
    spe = positive_int(steps_per_epoch, "steps_per_epoch")
    return keras.optimizers.schedules.PiecewiseConstantDecay([b * spe - 1 for b in bounds], vals)


def tpp_finetune_schedule(
    steps_per_epoch: int, *, dataset: str = "cifar", initial_lr: float = 0.01
) -> keras.optimizers.schedules.PiecewiseConstantDecay:
    """TPP's fine-tuning LR: CIFAR 120 epochs, ×0.1 at 60 and 90; ImageNet 90 epochs,
    ×0.1 at 30, 60 and 75. ``initial_lr`` 0.01 (the paper also uses 1e-3)."""
    if dataset not in TPP_FINETUNE_RECIPES:
        raise ValueError(
            f"Unknown dataset {dataset!r}; valid: {', '.join(TPP_FINETUNE_RECIPES)}."
        )
    lr = positive_float(initial_lr, "initial_lr")
    bounds = TPP_FINETUNE_RECIPES[dataset]["boundaries"]
    values = [lr * 0.1**i for i in range(len(bounds) + 1)]
    return piecewise_schedule(bounds, values, steps_per_epoch)

__all__ = [
    "FineTuneSchedule", "LRRewinding", "OneCycleLR", "OriginalSchedule", "RETRAINING_KINDS",
    "ScaledLRRestart", "StepDecay", "TPP_FINETUNE_RECIPES", "piecewise_schedule",
    "retraining_schedule", "tpp_finetune_schedule",
]
