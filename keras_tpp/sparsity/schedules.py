"""Schedules of sparse training, as functions of the optimizer step (0-based).

- :class:`CubicSparsity`: gradual magnitude pruning's target sparsity (Zhu & Gupta, 2017)
  with updates every ``frequency`` steps between ``begin_step`` and ``end_step``.
- :class:`CosineRate`: GraNet's regeneration rate, cosine decay over the whole training.
"""
from __future__ import annotations

import math

from keras_tpp.validation import finite_float, non_negative_int, positive_int


class CubicSparsity:
    """s(c) = s_f + (s_i − s_f)·(1 − (c − c₀)/(c_last − c₀))³ at update round c.

    Rounds are c = step // frequency; the first round c₀ = begin_step // frequency and the
    last c_last = end_step // frequency − 1 (pruning happens while c₀ ≤ c ≤ c_last, at the
    steps where ``step % frequency == 0``). Unlike the reference code, which divides by
    (c_last + 1 − c₀) and so ends slightly short of s_f, the last round reaches s_f exactly.

    Args:
        initial_sparsity: s_i, sparsity before the first round (0 = dense-to-sparse).
        final_sparsity: s_f, sparsity from the last round on.
        begin_step, end_step: the pruning window in optimizer steps.
        frequency: ΔT, steps between mask updates.

    Example:
        >>> schedule = CubicSparsity(0.0, 0.9, begin_step=0, end_step=5000, frequency=1000)
        >>> [round(schedule(s), 4) for s in (0, 1000, 2000, 3000, 4000)]
        [0.0, 0.5203, 0.7875, 0.8859, 0.9]
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int,
                 end_step: int, frequency: int) -> None:
        self.initial_sparsity = finite_float(initial_sparsity, "initial_sparsity",
                                             minimum=0.0, maximum=1.0, exclusive_maximum=True)
        self.final_sparsity = finite_float(final_sparsity, "final_sparsity", minimum=0.0,
                                           maximum=1.0, exclusive_maximum=True)
        if self.final_sparsity < self.initial_sparsity:
            raise ValueError(f"final_sparsity ({final_sparsity}) must be >= initial_sparsity "
                             f"({initial_sparsity}).")
        self.begin_step = non_negative_int(begin_step, "begin_step")
        self.end_step = non_negative_int(end_step, "end_step")
        self.frequency = positive_int(frequency, "frequency")
        if self.last_round < self.first_round:
            raise ValueError(
                f"The pruning window [{begin_step}, {end_step}) holds no update every "
                f"{frequency} steps; end_step must be >= begin_step + frequency.")

    @property
    def first_round(self) -> int:
        return self.begin_step // self.frequency

    @property
    def last_round(self) -> int:
        return self.end_step // self.frequency - 1

    def is_update_step(self, step: int) -> bool:
        """Whether gradual pruning updates the masks at ``step``."""
        return step % self.frequency == 0 and \
            self.first_round <= step // self.frequency <= self.last_round

    def __call__(self, step: int) -> float:
        """Target sparsity in force after the update of ``step``'s round."""
        c = step // self.frequency
        if c < self.first_round:
            return self.initial_sparsity
        if c >= self.last_round:
            return self.final_sparsity
        progress = (c - self.first_round) / (self.last_round - self.first_round)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (
            1.0 - progress) ** 3

    def get_config(self) -> dict:
        return {"initial_sparsity": self.initial_sparsity, "final_sparsity": self.final_sparsity,
                "begin_step": self.begin_step, "end_step": self.end_step,
                "frequency": self.frequency}

    @classmethod
    def from_config(cls, config: dict) -> "CubicSparsity":
        return cls(**config)


class CosineRate:
    """r(t) = r_f + (r₀ − r_f)·(1 + cos(π·t/T))/2 for 0 ≤ t ≤ T, r_f after.

    GraNet's regeneration (death/growth) rate: from ``initial_rate`` r₀ = 0.5 at step 0 to
    ``final_rate`` r_f = 0.005 at ``total_steps`` T.
    """

    def __init__(self, initial_rate: float = 0.5, final_rate: float = 0.005,
                 total_steps: int = 1) -> None:
        self.initial_rate = finite_float(initial_rate, "regrow_ratio", minimum=0.0,
                                         maximum=1.0, exclusive_maximum=True)
        self.final_rate = finite_float(final_rate, "final_regrow_ratio", minimum=0.0,
                                       maximum=self.initial_rate)
        self.total_steps = positive_int(total_steps, "total_steps")

    def __call__(self, step: int) -> float:
        t = min(max(int(step), 0), self.total_steps)
        return self.final_rate + (self.initial_rate - self.final_rate) * 0.5 * (
            1.0 + math.cos(math.pi * t / self.total_steps))

    def get_config(self) -> dict:
        return {"initial_rate": self.initial_rate, "final_rate": self.final_rate,
                "total_steps": self.total_steps}

    @classmethod
    def from_config(cls, config: dict) -> "CosineRate":
        return cls(**config)


class SparseTrainingSchedule:
    """When sparse training updates the masks, and the sparsity and regrowth rate it uses.

    Steps count completed train steps (1 after the first optimizer step), as the reference
    code does. The masks are updated at every step ``t`` with ``t % update_frequency == 0``
    and ``t >= prune_start_step``; at such a step

    - gradual pruning runs while the round ``t // update_frequency`` lies in the pruning
      window (:class:`CubicSparsity` over [``prune_start_step``, ``prune_end_step``)), and
    - regeneration (GraNet, RigL) runs at every update before ``total_steps``, with the rate
      of :class:`CosineRate` from ``regrow_ratio`` down to ``final_regrow_ratio``.

    Args:
        total_steps: T, the length of training in train steps (the cosine's length; no
            regeneration at or after T, so every regrown weight gets trained).
        prune_start_step, prune_end_step: the gradual-pruning window (default end: T // 2).
        update_frequency: ΔT, train steps between mask updates (the papers' 1000 on CIFAR).
        regrow_ratio, final_regrow_ratio: r₀ and r_f of the regeneration rate.

    Example:
        >>> schedule = SparseTrainingSchedule(total_steps=10_000, update_frequency=1000)
        >>> [t for t in range(1, 10_001) if schedule.is_update_step(t)][:3]
        [1000, 2000, 3000]
        >>> schedule.sparsity(0.0, 0.9)(4000)  # the cubic target at round 4 of 0..4
        0.9
    """

    def __init__(self, total_steps: int, prune_start_step: int = 0,
                 prune_end_step: int | None = None, update_frequency: int = 1000,
                 regrow_ratio: float = 0.5, final_regrow_ratio: float = 0.005) -> None:
        self.total_steps = positive_int(total_steps, "total_steps")
        self.prune_start_step = non_negative_int(prune_start_step, "prune_start_step")
        self.prune_end_step = (self.total_steps // 2 if prune_end_step is None
                               else non_negative_int(prune_end_step, "prune_end_step"))
        self.update_frequency = positive_int(update_frequency, "update_frequency")
        if self.prune_end_step > self.total_steps:
            raise ValueError(f"prune_end_step ({self.prune_end_step}) must be <= total_steps "
                             f"({self.total_steps}).")
        # Updates happen after steps t = c·ΔT, t >= 1: the first one inside the window is at
        # round ceil(max(start, 1) / ΔT); the window's last round is end // ΔT - 1.
        f = self.update_frequency
        first_round = -(-max(self.prune_start_step, 1) // f)
        if self.prune_end_step // f - 1 < first_round:
            raise ValueError(
                f"The pruning window [prune_start_step={self.prune_start_step}, prune_end_step="
                f"{self.prune_end_step}) holds no mask update at which the sparsity can change "
                f"(updates follow steps {first_round * f}, {(first_round + 1) * f}, ... every "
                f"update_frequency={f} steps, and the window's last update is at round "
                f"prune_end_step // update_frequency - 1): make prune_end_step >= "
                f"{(first_round + 1) * f} or update_frequency smaller.")
        self.rate = CosineRate(regrow_ratio, final_regrow_ratio, self.total_steps)

    def sparsity(self, initial_sparsity: float, final_sparsity: float) -> CubicSparsity:
        """The cubic schedule from s_i to s_f over the pruning window."""
        return CubicSparsity(initial_sparsity, final_sparsity, self.prune_start_step,
                             self.prune_end_step, self.update_frequency)

    def prunes_at(self, step: int) -> bool:
        """Whether gradual pruning runs at update step ``step`` (its round is in the
        window)."""
        c = step // self.update_frequency
        return (self.is_update_step(step)
                and self.prune_start_step // self.update_frequency <= c
                <= self.prune_end_step // self.update_frequency - 1)

    def is_update_step(self, step: int) -> bool:
        """Whether the masks change after train step ``step``."""
        return step >= max(1, self.prune_start_step) and step % self.update_frequency == 0

    def last_update_step(self, step: int) -> int | None:
        """The latest update step <= ``step`` (None before the first one): a run that
        missed it (resumed, or ``steps_per_execution`` > 1) catches up with it."""
        last = step - step % self.update_frequency
        return last if last >= 1 and self.is_update_step(last) else None

    def regenerates_at(self, step: int) -> bool:
        """Whether regeneration runs at update step ``step`` (before ``total_steps``)."""
        return step < self.total_steps

    def get_config(self) -> dict:
        return {"total_steps": self.total_steps, "prune_start_step": self.prune_start_step,
                "prune_end_step": self.prune_end_step,
                "update_frequency": self.update_frequency,
                "regrow_ratio": self.rate.initial_rate,
                "final_regrow_ratio": self.rate.final_rate}

    @classmethod
    def from_config(cls, config: dict) -> "SparseTrainingSchedule":
        return cls(**config)
