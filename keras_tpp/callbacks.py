"""The pruning callback: drives λ, the phases and the mask application during training.

It reads the optimizer's iteration count at every batch boundary (it never counts its own
calls, so ``steps_per_execution > 1`` and resumed runs stay on schedule), lets the method's
controller (:mod:`keras_tpp.controllers`) assign the wrappers' variables (no retracing), and
puts the schedule into the logs, so it shows in the progress bar, History, CSVLogger and
TensorBoard:

- ``prune_lambda``: the penalty strength λ on pruned channels (largest over layers);
- ``prune_phase``: 0 = grow, 1 = stabilize, 2 = pruned, 3 = pick (GReg-2's first phase).

When the pruned phase starts, the pruned filters, biases and BN γ/β are zeroed and the
wrappers' constraints keep them exactly zero for the rest of training.
"""
from __future__ import annotations

from typing import Any

import keras

from keras_tpp import controllers
from keras_tpp.penalty_schedule import PHASE_NAMES, PRUNED, PenaltySchedule
from keras_tpp.wrappers import PruningWrapper, find_wrappers

LAMBDA_KEY = "prune_lambda"
PHASE_KEY = "prune_phase"


class PruningCallback(keras.callbacks.Callback):
    """Runs the schedule of a model returned by :func:`keras_tpp.prepare`, for its method.

    Args:
        delta: Δ, the increment of λ every ``interval`` iterations (SPEC §1: 1e-4).
        interval: K_u, optimizer iterations between increments (10 CIFAR, 5 ImageNet).
        ceiling: τ, the largest λ (1.0).
        stabilize_steps: K_s, iterations at the final λ before the filters are removed.
        ramp_steps: give the schedule by length instead of ``delta``: λ reaches the ceiling
            after this many iterations.
        start_step: iteration at which λ starts growing (TPP).
        stop_ratio, ema_momentum: GReg's per-layer stop: when the EMA of
            mean|w_kept| / mean|w_pruned| reaches ``stop_ratio`` (1000, momentum 0.9).
        pick_delta, pick_ceiling, kept_strength: GReg-2's picking phase (uniform λ grows by
            1e-5 per interval up to 1e-2) and its λ on kept filters while pushing (−1e-4).
        stop_when_pruned: end training (``model.stop_training``) as soon as the pruned phase
            is reached, e.g. to shrink the model and fine-tune it with a fresh optimizer.
        verbose: 1 prints a line whenever the phase changes.

    TPP grows λ by ``delta`` on all its penalties, holds it for ``stabilize_steps``, then
    prunes; GReg-1/GReg-2 grow per layer as in SPEC §2; L1 and random prune at the first
    step (then fit fine-tunes).
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
        stop_ratio: float = 1000.0,
        ema_momentum: float = 0.9,
        pick_delta: float = 1e-5,
        pick_ceiling: float = 1e-2,
        kept_strength: float = -1e-4,
        stop_when_pruned: bool = False,
        verbose: int = 0,
    ) -> None:
        super().__init__()
        self.schedule = PenaltySchedule(
            delta=delta, interval=interval, ceiling=ceiling, stabilize_steps=stabilize_steps,
            ramp_steps=ramp_steps, start_step=start_step)
        if not stop_ratio > 1:
            raise ValueError(f"stop_ratio must be > 1, got {stop_ratio!r}.")
        if not 0 <= ema_momentum < 1:
            raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum!r}.")
        if not 0 < pick_delta <= pick_ceiling:
            raise ValueError(
                f"pick_delta must be in (0, pick_ceiling={pick_ceiling}], got {pick_delta!r}.")
        self.greg_options = {
            "stop_ratio": float(stop_ratio), "ema_momentum": float(ema_momentum),
            "pick_delta": float(pick_delta), "pick_ceiling": float(pick_ceiling),
            "kept_strength": float(kept_strength),
        }
        self.stop_when_pruned = bool(stop_when_pruned)
        self.verbose = verbose
        self.controller: controllers.Controller | None = None
        self._step = -1
        self._phase = -1
        self._lambda = 0.0

    # -- state ---------------------------------------------------------------------------
    @property
    def wrappers(self) -> list[PruningWrapper]:
        """The PruningWrapper layers of the model being trained."""
        return self.controller.wrappers if self.controller else []

    def _iteration(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError(
                f"{type(self).__name__} needs a compiled model: the schedule follows "
                "model.optimizer.iterations.")
        return int(keras.ops.convert_to_numpy(optimizer.iterations))

    def _build_controller(self) -> controllers.Controller:
        wrappers = find_wrappers(self.model)
        if not wrappers:
            raise ValueError(
                f"{type(self).__name__} was given model '{self.model.name}', which was not "
                "prepared for pruning: call keras_tpp.prepare(model, ...) and train the model "
                "it returns.")
        found = {w.method for w in wrappers}
        self._check_methods(found)
        if len(found) > 1:
            raise ValueError(f"The model mixes pruning methods {sorted(found)}; prepare it "
                             "with one method.")
        method = found.pop()
        if method == "tpp":
            return controllers.GrowingController(wrappers, self.schedule)
        if method in ("greg1", "greg2"):
            return controllers.GRegController(
                wrappers, self.schedule, picking=method == "greg2", **self.greg_options)
        return controllers.OneShotController(wrappers, self.schedule)

    def _check_methods(self, found: set[str]) -> None:
        """Hook for subclasses restricted to some methods."""

    def _sync(self) -> None:
        """Bring the wrappers' variables to the method's state at the current iteration."""
        step = self._iteration()
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

    # -- Keras hooks ----------------------------------------------------------------------
    def on_train_begin(self, logs: dict | None = None) -> None:
        self.controller = self._build_controller()
        self._step = -1
        self._phase = -1
        self._sync()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._sync()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._sync()
        self._log(logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._log(logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._sync()
        if self.controller.enforced():
            # The constraints already hold pruned weights at zero; make it exact on exit.
            for wrapper in self.controller.wrappers:
                wrapper.zero_pruned()

    def get_config(self) -> dict[str, Any]:
        return {**self.schedule.get_config(), **self.greg_options,
                "stop_when_pruned": self.stop_when_pruned, "verbose": self.verbose}


class TPPCallback(PruningCallback):
    """TPP's schedule (SPEC §1): λ grows on the gram, weight and BN penalties, holds for
    ``stabilize_steps``, then the pruned filters are zeroed and kept at zero.

    See :class:`PruningCallback` for the arguments; this class only adds the check that the
    model was prepared with ``method="tpp"``.
    """

    def _check_methods(self, found: set[str]) -> None:
        if found != {"tpp"}:
            raise ValueError(
                f"TPPCallback drives models prepared with method='tpp'; this model was "
                f"prepared with {sorted(found)}. Use keras_tpp.PruningCallback.")
