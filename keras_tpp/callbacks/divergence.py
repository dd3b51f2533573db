"""Divergence detection for the pruning callback: non-finite losses and weights.

:class:`DivergenceGuard` checks the model's weights when the logged loss is non-finite and
every ``check_interval`` steps; it keeps a copy of the last weights found finite and raises
:class:`NonFiniteError` naming the first layer with non-finite values (pruned layers first).
Under mixed precision a non-finite loss with finite weights is a step the loss scaler
skipped, and training goes on.
"""
from __future__ import annotations

import math

import keras
import numpy as np

from keras_tpp import keras_internals
from keras_tpp.validation import non_negative_int


class NonFiniteError(ValueError):
    """Training produced a non-finite loss or non-finite weights.

    Attributes:
        layer: name of the first layer with non-finite weights (pruned layers are searched
            first), or None when only the loss is non-finite.
        variable: path of that layer's first non-finite variable, or None.
        strength: λ when it was detected.
        iteration: train step when it was detected.
        last_finite_iteration: train step of the last finite weights kept by the callback
            (None if none were kept).
    """

    def __init__(self, message: str, *, layer: str | None, variable: str | None,
                 strength: float, iteration: int, last_finite_iteration: int | None) -> None:
        super().__init__(message)
        self.layer = layer
        self.variable = variable
        self.strength = strength
        self.iteration = iteration
        self.last_finite_iteration = last_finite_iteration


def _finite(value: np.ndarray) -> bool:
    """Whether every entry is finite (a sum is non-finite if any entry is; rarely overflows)."""
    if value.dtype.kind not in "fc":
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(value, dtype=np.float64)):
            return True
    return bool(np.all(np.isfinite(value)))


class DivergenceGuard:
    """Watches one training run for non-finite values.

    Args:
        check_interval: check every weight every this many train steps (0: only when the
            logged loss is non-finite). One check copies the weights to host memory.
        keep_last_finite: keep a copy of the weights at each check that finds them finite.
    """

    def __init__(self, check_interval: int = 100, keep_last_finite: bool = True) -> None:
        if not isinstance(keep_last_finite, bool):
            raise ValueError(f"keep_last_finite must be True or False, got {keep_last_finite!r}.")
        self.check_interval = non_negative_int(check_interval, "check_interval")
        self.keep_last_finite = keep_last_finite
        #: Copy of the model's weights (``model.get_weights()`` order) at the last check
        #: that found every weight finite, and its train step.
        self.last_finite_weights: list[np.ndarray] | None = None
        self.last_finite_iteration: int | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the per-run state (a new ``fit``)."""
        self._check_tick = None
        self._loss_checked = False

    def new_epoch(self) -> None:
        self._loss_checked = False

    def start(self, model: keras.Model, wrappers: list, step: int, strength: float) -> None:
        """The check at the start of training."""
        if self.check_interval:
            self._check_tick = step // self.check_interval
            self.check(model, wrappers, step, None, strength)

    def after_batch(self, model: keras.Model, wrappers: list, step: int, logs: dict | None,
                    strength: float) -> None:
        """Check when the logged loss is non-finite (once per epoch: Keras logs a running
        mean) or when a ``check_interval`` boundary was crossed."""
        loss = None
        if logs is not None and "loss" in logs:
            try:
                loss = float(np.asarray(logs["loss"]))
            except (TypeError, ValueError):
                loss = None
        if loss is not None and not math.isfinite(loss) and not self._loss_checked:
            self._loss_checked = True
            self._check_tick = step // self.check_interval if self.check_interval else None
            self.check(model, wrappers, step, loss, strength)
        elif self.check_interval and step // self.check_interval != self._check_tick:
            self._check_tick = step // self.check_interval
            self.check(model, wrappers, step, loss, strength)

    @staticmethod
    def _first_non_finite(model: keras.Model, wrappers: list,
                          values: dict[int, np.ndarray]) -> tuple[str, str] | None:
        if all(_finite(value) for value in values.values()):
            return None
        layers = [(w.name, w.layer) for w in wrappers]  # the pruned layers first
        layers += [(layer.name, layer) for layer in keras_internals.flatten_layers(model)]
        for name, layer in layers:
            for variable in layer.weights:
                value = values.get(id(variable))
                if value is not None and not _finite(value):
                    return name, variable.path
        return None

    def check(self, model: keras.Model, wrappers: list, step: int, loss: float | None,
              strength: float) -> None:
        """Raise NonFiniteError if the weights (or, outside mixed precision, the loss) are
        non-finite; otherwise keep a copy of the weights."""
        variables = model.weights
        values = {id(v): np.asarray(keras.ops.convert_to_numpy(v.value)) for v in variables}
        bad = self._first_non_finite(model, wrappers, values)
        loss_bad = loss is not None and not math.isfinite(loss)
        skipped = loss_bad and isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        if bad is None and self.keep_last_finite:
            self.last_finite_weights = [values[id(v)] for v in variables]
            self.last_finite_iteration = step
        if bad is None and (not loss_bad or skipped):
            return
        layer, variable = bad if bad is not None else (None, None)
        what = (f"layer '{layer}' has non-finite values in '{variable}'" if bad is not None
                else "the loss is non-finite (the weights are still finite)")
        if self.last_finite_weights is not None:
            recover = (f"The weights of train step {self.last_finite_iteration}, the last "
                       "found finite, are in callback.last_finite_weights; "
                       "callback.restore_last_finite() puts them back (then recompile with a "
                       "fresh optimizer).")
        else:
            recover = ("No finite copy of the weights was kept (keep_last_finite=False); "
                       "use a BackupAndRestore or ModelCheckpoint callback to keep one.")
        raise NonFiniteError(
            f"Training diverged at train step {step} with prune_lambda={strength:g}"
            f"{f' (loss={loss})' if loss is not None else ''}: {what}. {recover} To avoid "
            "it: lower the learning rate, use a slower ramp (smaller delta / larger "
            "ramp_steps), or keep gram_formulation='bounded' (the default).",
            layer=layer, variable=variable, strength=float(strength), iteration=step,
            last_finite_iteration=self.last_finite_iteration)

    def restore(self, model: keras.Model) -> int:
        """Put the last weights found finite back into ``model``; returns their train step."""
        if self.last_finite_weights is None:
            raise ValueError("No finite weights were kept: train with keep_last_finite=True "
                             "(the default).")
        model.set_weights(self.last_finite_weights)
        return int(self.last_finite_iteration)
