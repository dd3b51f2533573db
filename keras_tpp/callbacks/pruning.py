"""PruningCallback: drives λ, the phases and the masks of a prepared model during training.

It reads the model's train-step counter at every batch boundary (never counting its own
calls, so ``steps_per_execution > 1`` and resumed runs stay on schedule), lets the method's
controller (built by the model's :class:`~keras_tpp.methods.PruningMethod`) assign the
wrappers' variables (no retracing), and puts the schedule into the logs, so it shows in the
progress bar, History, CSVLogger and TensorBoard:

- ``prune_lambda``: the penalty strength λ on pruned channels (largest over layers);
- ``prune_phase``: 0 = grow, 1 = stabilize, 2 = pruned, 3 = pick (GReg-2's first phase);
- ``prune_penalty``: the sum of keras_tpp's penalty terms at the current weights
  (:mod:`~keras_tpp.callbacks.penalty_log`); ``loss − prune_penalty`` is the task loss plus
  the user's own regularizers.

The counter is each PruningWrapper's ``train_steps`` variable, incremented in every training
forward pass: it equals ``optimizer.iterations`` except under mixed precision, where a
LossScaleOptimizer does not count the steps it skips (non-finite gradients) and λ would stall.
When the pruned phase starts, the pruned filters, biases and BN γ/β are zeroed and the
wrappers' constraints keep them exactly zero for the rest of training. Divergence is
watched by :class:`~keras_tpp.callbacks.divergence.DivergenceGuard`.
"""
from __future__ import annotations

import json
import math
from typing import Any

import keras
import numpy as np

from keras_tpp import controllers, keras_internals, methods
from keras_tpp.callbacks.divergence import DivergenceGuard
from keras_tpp.callbacks.penalty_log import PenaltyLogger
from keras_tpp.penalty_schedule import PHASE_NAMES, PRUNED, PenaltySchedule
from keras_tpp.prepared import hold_masks_in_train_step
from keras_tpp.validation import non_negative_int
from keras_tpp.wrappers import PruningWrapper, find_wrappers

LAMBDA_KEY = "prune_lambda"
PHASE_KEY = "prune_phase"
PENALTY_KEY = "prune_penalty"


def _quantize_up(value: float) -> float:
    """The smallest power of 2^(1/16) >= value (0 for value <= 0): changes only by ~4 %."""
    if not value > 0 or not math.isfinite(value):
        return 0.0
    return float(2.0 ** (math.ceil(16.0 * math.log2(value) - 1e-9) / 16.0))


def model_method(wrappers: list[PruningWrapper]) -> methods.PruningMethod:
    """The PruningMethod a model was prepared with (its options included)."""
    found = {(w.method, json.dumps(w.method_options, sort_keys=True)) for w in wrappers}
    if len(found) > 1:
        names = sorted({name for name, _ in found})
        raise ValueError(f"The model mixes pruning methods or method options {names}; "
                         "prepare it with one method.")
    name, options = found.pop()
    return methods.get_method(name, json.loads(options))


class PruningCallback(keras.callbacks.Callback):
    """Runs the schedule of a model returned by :func:`keras_tpp.prepare`, for its method.

    The method and its own options (e.g. GReg's ``stop_ratio``) come from the model
    (``prepare(model, method=keras_tpp.methods.GReg2(...))``); the callback holds the shared
    growing-penalty schedule and the logging and safety settings.

    Args:
        delta: Δ, the increment of λ every ``interval`` steps (the papers': 1e-4).
        interval: K_u, train steps between increments (10 CIFAR, 5 ImageNet).
        ceiling: τ, the largest λ (1.0).
        stabilize_steps: K_s, steps at the final λ before the filters are removed.
        ramp_steps: give the schedule by length instead of ``delta``: λ reaches the ceiling
            after this many steps.
        start_step: step at which λ starts growing (TPP).
        schedule: a :class:`~keras_tpp.PenaltySchedule` object instead of the arguments
            above (which are then ignored).
        stop_when_pruned: end training (``model.stop_training``) as soon as the pruned phase
            is reached, e.g. to shrink the model and fine-tune it with a fresh optimizer.
        check_interval: check the model's weights for non-finite values (and keep an
            in-memory copy of them when finite) every this many steps, besides whenever the
            logged loss is non-finite; 0 checks only on a non-finite loss. One check copies
            the weights to host memory (ResNet-50: ~0.3 s), so keep it in the hundreds.
        keep_last_finite: keep the copy of the last weights found finite
            (``last_finite_weights``, model-sized host memory); False keeps none.
        penalty_log_interval: compute ``prune_penalty`` at the first batch, then every this
            many steps, and at every epoch end; in between the last value is logged again.
            0 never computes it. One computation evaluates every penalty term once more
            (one compiled graph on TensorFlow): on EfficientNetB0 (260 terms) ~0.1 s on 2
            CPU cores, 15 % of a training step of batch 16, hence 100 by default.
        verbose: 1 prints a line whenever the phase changes.

    Raises (from ``fit``):
        NonFiniteError: non-finite weights, or a non-finite loss that is not a step the
            LossScaleOptimizer skipped. ``restore_last_finite()`` puts back the weights of
            the last check that found them finite; recompile with a fresh optimizer before
            training on. With ModelCheckpoint, put this callback first in ``callbacks``.

    Example:
        >>> pmodel = keras_tpp.prepare(model, 0.5, method="tpp")
        >>> pmodel.compile(keras.optimizers.SGD(1e-3, momentum=0.9), loss)
        >>> pmodel.fit(ds, epochs=20, callbacks=[keras_tpp.PruningCallback(ramp_steps=5000)])
    """

    def __init__(
        self,
        delta: float | None = 1e-4,
        interval: int = 10,
        ceiling: float = 1.0,
        stabilize_steps: int = 10_000,
        ramp_steps: int | None = None,
        start_step: int = 0,
        *,
        schedule: PenaltySchedule | None = None,
        stop_when_pruned: bool = False,
        check_interval: int = 100,
        keep_last_finite: bool = True,
        penalty_log_interval: int = 100,
        verbose: int = 0,
    ) -> None:
        super().__init__()
        if schedule is not None:
            if not isinstance(schedule, PenaltySchedule):
                raise ValueError(f"schedule must be a keras_tpp.PenaltySchedule, got "
                                 f"{type(schedule).__name__}.")
            self.schedule = schedule
        else:
            self.schedule = PenaltySchedule(
                delta=delta, interval=interval, ceiling=ceiling,
                stabilize_steps=stabilize_steps, ramp_steps=ramp_steps, start_step=start_step)
        if not isinstance(stop_when_pruned, bool):
            raise ValueError(f"stop_when_pruned must be True or False, got {stop_when_pruned!r}.")
        self.stop_when_pruned = stop_when_pruned
        self.guard = DivergenceGuard(check_interval, keep_last_finite)
        self.penalty = PenaltyLogger(penalty_log_interval)
        self.verbose = (int(verbose) if isinstance(verbose, bool)
                        else non_negative_int(verbose, "verbose"))
        self.method: methods.PruningMethod | None = None
        self.controller: controllers.Controller | None = None
        self._step = -1
        self._phase = -1
        self._lambda = 0.0
        self._eta = None

    # -- state ---------------------------------------------------------------------------
    @property
    def wrappers(self) -> list[PruningWrapper]:
        """The PruningWrapper layers of the model being trained."""
        return self.controller.wrappers if self.controller else []

    @property
    def last_finite_weights(self) -> list[np.ndarray] | None:
        """The weights at the last check that found them finite (``get_weights`` order)."""
        return self.guard.last_finite_weights

    @property
    def last_finite_iteration(self) -> int | None:
        """The train step of :attr:`last_finite_weights`."""
        return self.guard.last_finite_iteration

    def restore_last_finite(self, model: keras.Model | None = None) -> int:
        """Put the last weights found finite back into ``model`` (default: the trained
        model); returns their train step. Recompile with a fresh optimizer afterwards."""
        return self.guard.restore(model or self.model)

    def _optimizer(self):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError(
                f"{type(self).__name__} needs a compiled model: call model.compile() first.")
        return optimizer

    def _iteration(self) -> int:
        """Train steps run so far: the wrappers' counter (skipped steps included)."""
        wrappers = self.wrappers
        if wrappers:
            return int(keras.ops.convert_to_numpy(wrappers[0].train_steps.value))
        return int(keras.ops.convert_to_numpy(self._optimizer().iterations))

    def _build_controller(self) -> controllers.Controller:
        wrappers = find_wrappers(self.model)
        if not wrappers:
            raise ValueError(
                f"{type(self).__name__} was given model '{self.model.name}', which was not "
                "prepared for pruning: call keras_tpp.prepare(model, ...) and train the model "
                "it returns (prepare raises when it finds nothing to prune).")
        self.method = model_method(wrappers)
        self._check_method(self.method)
        return self.method.controller(wrappers, self.schedule)

    def _check_method(self, method: methods.PruningMethod) -> None:
        """Hook for subclasses restricted to some methods."""

    def _sync_step_size(self) -> None:
        """Give the optimizer's learning rate to the wrappers (bounded gram term).

        Rounded up to a power of 2^(1/16), so a decaying schedule rewrites the variables
        only when it moved by ~4 %, and the bound never uses a smaller step than the real one.
        """
        learning_rate = getattr(self.model.optimizer, "learning_rate", None)
        if learning_rate is None:
            return
        try:
            eta = _quantize_up(float(keras.ops.convert_to_numpy(learning_rate)))
        except (TypeError, ValueError):
            return
        if eta != self._eta:
            for wrapper in self.wrappers:
                wrapper.step_size.assign(eta)
            self._eta = eta

    def _sync(self, step: int | None = None) -> None:
        """Bring the wrappers' variables to the method's state at the current step (read
        from the model unless given)."""
        step = self._iteration() if step is None else step
        self._sync_step_size()
        if step == self._step:
            return
        self._step = step
        strength, phase = self.controller.sync(step)
        if phase != self._phase and self.verbose and self._phase >= 0:
            print(f"\n{type(self).__name__}: iteration {step}: phase "
                  f"'{PHASE_NAMES[phase]}' (lambda={strength:g})")
        self._lambda, self._phase = strength, phase
        if phase == PRUNED and self.stop_when_pruned:
            self.model.stop_training = True

    def _log(self, logs: dict | None) -> None:
        if logs is not None:
            logs[LAMBDA_KEY] = float(self._lambda)
            logs[PHASE_KEY] = float(self._phase)
            if self.penalty.value is not None:
                logs[PENALTY_KEY] = self.penalty.value

    # -- Keras hooks ----------------------------------------------------------------------
    def on_train_begin(self, logs: dict | None = None) -> None:
        self._optimizer()
        self.controller = self._build_controller()
        if hold_masks_in_train_step(self.model):  # JAX: masks applied after each update
            self.model.make_train_function(force=True)
        self._step = -1
        self._phase = -1
        self._eta = None
        self.guard.reset()
        self.penalty.reset()
        self._sync()
        self.guard.start(self.model, self.wrappers, self._step, self._lambda)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.guard.new_epoch()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        keras_internals.sync_training_state(self.model)  # JAX: variables hold the state
        self._sync()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # JAX: bring the training state into the variables (and our writes back into it).
        keras_internals.sync_training_state(self.model)
        # Before the schedule may zero (non-finite) weights.
        step = self._iteration()
        self.guard.after_batch(self.model, self.wrappers, step, logs, self._lambda)
        self._sync(step)
        self.penalty.update(self.wrappers, self._step)
        self._log(logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        keras_internals.sync_training_state(self.model)
        self.penalty.update(self.wrappers, self._step, force=True)
        self._log(logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        keras_internals.sync_training_state(self.model)
        self._sync()
        if self.controller.enforced():
            # The constraints already hold pruned weights at zero; make it exact on exit.
            for wrapper in self.controller.wrappers:
                wrapper.zero_pruned()

    def get_config(self) -> dict[str, Any]:
        return {**self.schedule.get_config(), "stop_when_pruned": self.stop_when_pruned,
                "check_interval": self.guard.check_interval,
                "keep_last_finite": self.guard.keep_last_finite,
                "penalty_log_interval": self.penalty.interval, "verbose": self.verbose}


class TPPCallback(PruningCallback):
    """TPP's schedule (Wang & Fu, ICLR 2023): λ grows on the gram, weight and BN penalties,
    holds for ``stabilize_steps``, then the pruned filters are zeroed and kept at zero.

    See :class:`PruningCallback` for the arguments; this class only adds the check that the
    model was prepared with ``method="tpp"``.
    """

    def _check_method(self, method: methods.PruningMethod) -> None:
        if method.name != "tpp":
            raise ValueError(
                f"TPPCallback drives models prepared with method='tpp'; this model was "
                f"prepared with '{method.name}'. Use keras_tpp.PruningCallback.")
