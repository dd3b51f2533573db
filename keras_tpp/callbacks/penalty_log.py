"""``prune_penalty``: the value of keras_tpp's penalty terms, logged beside Keras' ``loss``.

Keras' ``loss`` is the task loss plus every regularization loss of the model (keras_tpp's
penalties and the user's own regularizers); ``prune_penalty`` is keras_tpp's part.
"""
from __future__ import annotations

from typing import Any

import keras

from keras_tpp import autodiff, penalties
from keras_tpp.validation import non_negative_int
from keras_tpp.wrappers import PruningWrapper, find_wrappers


def penalty_terms(wrappers: list[PruningWrapper]) -> list[tuple[Any, Any]]:
    """(variable, regularizer) for every keras_tpp penalty attached to the wrappers' weights
    (the user's own regularizers on the same weights are left out)."""
    terms = []
    for wrapper in wrappers:
        for variable, _ in wrapper.masked_variables():
            regularizer = variable.regularizer
            parts = (regularizer.regularizers
                     if isinstance(regularizer, penalties.RegularizerSum) else [regularizer])
            terms.extend((variable, r) for r in parts
                         if isinstance(r, (penalties.GramPenalty, penalties.MaskedL2)))
    return terms


def prune_penalty(model_or_wrappers: Any) -> float:
    """The sum of keras_tpp's penalty terms at the current weights and λ (eager)."""
    wrappers = (find_wrappers(model_or_wrappers) if isinstance(model_or_wrappers, keras.Model)
                else model_or_wrappers)
    total = 0.0
    for variable, regularizer in penalty_terms(wrappers):
        total += float(keras.ops.convert_to_numpy(regularizer(variable)))
    return total


class PenaltyLogger:
    """Computes ``prune_penalty`` at the first batch, then every ``interval`` steps and on
    demand (epoch ends); in between the last value is reported again.

    Args:
        interval: steps between computations; 0 never computes it.
    """

    def __init__(self, interval: int = 100) -> None:
        self.interval = non_negative_int(interval, "penalty_log_interval")
        self._wrappers: list[PruningWrapper] | None = None
        self._fn = None
        self.reset()

    def reset(self) -> None:
        """Forget the last value (a compiled function is kept for the same wrappers)."""
        self.value: float | None = None
        self._tick = None

    def _compute(self, wrappers: list[PruningWrapper]) -> float:
        same = (getattr(self, "_wrappers", None) is not None
                and len(self._wrappers) == len(wrappers)
                and all(a is b for a, b in zip(self._wrappers, wrappers)))
        if not same:
            self._wrappers = list(wrappers)
            terms = penalty_terms(wrappers)

            def total():
                values = [regularizer(variable) for variable, regularizer in terms]
                return keras.ops.sum(keras.ops.stack(
                    [keras.ops.cast(v, "float32") for v in values])) if values else 0.0

            # One compiled call instead of hundreds of eager ops (JAX: seconds each).
            variables = list({id(v): v for w in wrappers for v in w.weights}.values())
            self._fn = autodiff.compiled(total, variables)
        return float(keras.ops.convert_to_numpy(self._fn()))

    def update(self, wrappers: list[PruningWrapper], step: int, force: bool = False) -> None:
        if not self.interval:
            return
        tick = step // self.interval
        if force or tick != self._tick:
            self._tick = tick
            self.value = self._compute(wrappers)
