"""Growing-regularization schedule (shared by TPP and GReg).

λ(t) as a pure function of the train step t (0-based; see PruningCallback for the counter):

    λ(t) = min(τ, Δ · floor(t / K_u))          growing phase, t < T_ramp
    λ(t) = τ                                     stabilization, T_ramp ≤ t < T_ramp + K_s
    pruned (masks applied, pruned weights held at zero)  t ≥ T_ramp + K_s

with T_ramp = K_u · ceil(τ / Δ), the first iteration at which λ reaches τ.
"""
from __future__ import annotations

import math

import keras

from keras_tpp.validation import finite_float, integer, non_negative_int, positive_int

#: Phase codes, as logged (numbers so that progress bars and TensorBoard can show them).
#: PICK is GReg-2's first phase, before its growth.
GROW, STABILIZE, PRUNED, PICK = 0, 1, 2, 3
PHASE_NAMES = {GROW: "grow", STABILIZE: "stabilize", PRUNED: "pruned", PICK: "pick"}


@keras.saving.register_keras_serializable(package="keras_tpp")
class PenaltySchedule:
    """λ grows by ``delta`` every ``interval`` iterations up to ``ceiling``, then holds.

    Args:
        delta: Δ, the increment of λ (1e-4 in the papers).
        interval: K_u, optimizer iterations between increments (10 CIFAR, 5 ImageNet).
        ceiling: τ, the largest λ (1.0).
        stabilize_steps: K_s, iterations at λ = τ before the filters are removed.
        ramp_steps: alternative to ``delta``: reach the ceiling after this many iterations
            (Δ is then τ·K_u / ramp_steps).
        start_step: iteration at which growth starts (λ = 0 before).
    """

    def __init__(
        self,
        delta: float | None = 1e-4,
        interval: int = 10,
        ceiling: float = 1.0,
        stabilize_steps: int = 10_000,
        ramp_steps: int | None = None,
        start_step: int = 0,
    ) -> None:
        interval = positive_int(interval, "interval")
        ceiling = finite_float(ceiling, "ceiling", minimum=0.0, exclusive_minimum=True)
        stabilize_steps = non_negative_int(stabilize_steps, "stabilize_steps")
        start_step = non_negative_int(start_step, "start_step")
        if ramp_steps is not None:
            ramp_steps = integer(ramp_steps, "ramp_steps", minimum=interval)
            delta = ceiling * interval / ramp_steps
        elif delta is None:
            raise ValueError("delta must be a number in (0, ceiling]; got None (give "
                             "ramp_steps to set the schedule by length instead).")
        delta = finite_float(delta, "delta", minimum=0.0, maximum=ceiling,
                             exclusive_minimum=True)
        self.delta = float(delta)
        self.interval = interval
        self.ceiling = float(ceiling)
        self.stabilize_steps = stabilize_steps
        self.start_step = start_step
        increments = math.ceil(self.ceiling / self.delta - 1e-6)
        #: First iteration at which λ = τ.
        self.ramp_end = start_step + increments * interval
        #: First iteration of the pruned phase.
        self.end_step = self.ramp_end + stabilize_steps

    def strength(self, step: int) -> float:
        """λ at optimizer iteration ``step``."""
        if step < self.start_step:
            return 0.0
        if step >= self.ramp_end:
            return self.ceiling
        return min(self.ceiling, self.delta * ((step - self.start_step) // self.interval))

    def phase(self, step: int) -> int:
        """GROW, STABILIZE or PRUNED at iteration ``step``."""
        if step >= self.end_step:
            return PRUNED
        if step >= self.ramp_end:
            return STABILIZE
        return GROW

    def get_config(self) -> dict:
        return {
            "delta": self.delta,
            "interval": self.interval,
            "ceiling": self.ceiling,
            "stabilize_steps": self.stabilize_steps,
            "start_step": self.start_step,
        }

    @classmethod
    def from_config(cls, config: dict) -> "PenaltySchedule":
        return cls(**config)
