"""Per-method schedules: what each method's wrappers hold at optimizer iteration t.

A controller reads and writes only the wrappers' variables (λ, λ_kept, mask, enforce,
stopped_at, ratio_ema), which are saved with the model, so a resumed run continues exactly
where it stopped. :class:`keras_tpp.callbacks.PruningCallback` calls ``sync(t)`` at every
batch boundary and logs what it returns.

- TPP (:class:`GrowingController`): λ(t) of :class:`~keras_tpp.penalty_schedule.PenaltySchedule`
  for every layer; pruned when the schedule says so.
- GReg-1/GReg-2 (:class:`GRegController`, Wang et al., ICLR 2021): per-layer growth that
  stops when λ reaches τ or the EMA of mean|w_kept| / mean|w_pruned| reaches ``stop_ratio``;
  GReg-2 first grows a uniform penalty on all filters and picks the smallest ones when it
  reaches ``pick_ceiling``, then pushes them while the kept filters get a constant (negative) λ_kept.
- L1 / random (:class:`OneShotController`): masks applied at the first step.
"""
from __future__ import annotations

import math
from collections import defaultdict

import keras
import numpy as np

from keras_tpp import filters, importance
from keras_tpp.penalty_schedule import GROW, PICK, PRUNED, STABILIZE, PenaltySchedule
from keras_tpp.wrappers import PruningWrapper


def _value(variable) -> float:
    return float(keras.ops.convert_to_numpy(variable.value))


def enter_pruned_phase(wrappers: list[PruningWrapper]) -> None:
    """Zero pruned channels now and keep them at zero (constraints on)."""
    for wrapper in wrappers:
        wrapper.zero_pruned()
        wrapper.enforce.assign(1.0)


class Controller:
    """Base class: holds the wrappers and answers ``sync(step) -> (λ to log, phase)``."""

    def __init__(self, wrappers: list[PruningWrapper], schedule: PenaltySchedule) -> None:
        self.wrappers = wrappers
        self.schedule = schedule
        self.producers = [w for w in wrappers if w.is_producer]
        self._enforced = False
        self._assigned: dict[int, tuple[float, float]] = {}  # id(wrapper) -> (λ, λ_kept)

    def set_strengths(self, wrapper: PruningWrapper, strength: float, kept: float) -> None:
        """Assign λ and λ_kept, skipping the variable writes when nothing changed."""
        if self._assigned.get(id(wrapper)) != (strength, kept):
            wrapper.strength.assign(strength)
            wrapper.kept_strength.assign(kept)
            self._assigned[id(wrapper)] = (strength, kept)

    def enforced(self) -> bool:
        """Whether the masks are applied and held (read from the variables, then cached)."""
        if not self._enforced:
            self._enforced = all(_value(w.enforce) > 0.5 for w in self.wrappers)
        return self._enforced

    def sync(self, step: int) -> tuple[float, int]:
        raise NotImplementedError


class GrowingController(Controller):
    """TPP: every layer follows λ(t) of the schedule; pruned at ``schedule.end_step``."""

    def sync(self, step):
        strength = self.schedule.strength(step)
        for wrapper in self.wrappers:
            self.set_strengths(wrapper, strength, 0.0)
        phase = self.schedule.phase(step)
        if phase == PRUNED and not self.enforced():
            enter_pruned_phase(self.wrappers)
        return strength, phase


class OneShotController(Controller):
    """L1 / random pruning: the masks are applied at the first step, no penalty."""

    def sync(self, step):
        if not self.enforced():
            enter_pruned_phase(self.wrappers)
        return 0.0, PRUNED


def picking_steps(interval: int, pick_delta: float, pick_ceiling: float) -> int:
    """Length of GReg-2's picking phase in train steps: the uniform λ grows by
    ``pick_delta`` every ``interval`` steps until it reaches ``pick_ceiling``."""
    return interval * math.ceil(pick_ceiling / pick_delta - 1e-6)


class GRegController(Controller):
    """GReg-1 and GReg-2 (Wang et al., "Neural Pruning via Growing Regularization", ICLR 2021).

    Args:
        wrappers: the model's PruningWrapper layers.
        schedule: Δ, K_u, τ and K_s (``delta``, ``interval``, ``ceiling``, ``stabilize_steps``).
        picking: True for GReg-2 (pick filters with a uniform growing penalty first).
        stop_ratio: a layer stops growing when the EMA of mean|w_kept| / mean|w_pruned|
            reaches this (1000).
        ema_momentum: momentum of that EMA (0.9), updated once per ``interval`` iterations.
        pick_delta, pick_ceiling: GReg-2's uniform λ grows by ``pick_delta`` every
            ``interval`` iterations until it reaches ``pick_ceiling`` (1e-5, 1e-2).
        kept_strength: GReg-2's constant λ on kept filters while pushing (−1e-4).
    """

    def __init__(self, wrappers, schedule, *, picking: bool, stop_ratio: float = 1000.0,
                 ema_momentum: float = 0.9, pick_delta: float = 1e-5,
                 pick_ceiling: float = 1e-2, kept_strength: float = -1e-4):
        super().__init__(wrappers, schedule)
        self.picking = picking
        self.stop_ratio = stop_ratio
        self.ema_momentum = ema_momentum
        self.pick_delta = pick_delta
        self.pick_ceiling = pick_ceiling
        self.kept_strength = kept_strength if picking else 0.0
        interval = schedule.interval
        self.pick_end = picking_steps(interval, pick_delta, pick_ceiling) if picking else 0
        self.base = pick_ceiling if picking else 0.0
        self._last_tick = None
        self.groups: dict[str, list[PruningWrapper]] = defaultdict(list)
        for wrapper in wrappers:
            self.groups[wrapper.group].append(wrapper)

    # -- growth ---------------------------------------------------------------------------
    def growth(self, step: int) -> float:
        """λ on pruned filters at ``step`` for a layer that has not stopped."""
        ticks = max(0, step - self.pick_end) // self.schedule.interval
        return min(self.schedule.ceiling, self.base + self.schedule.delta * ticks)

    def _magnitude_ratio(self, wrapper: PruningWrapper) -> float:
        matrix = np.abs(keras.ops.convert_to_numpy(filters.layer_filter_matrix(wrapper.layer)))
        mask = keras.ops.convert_to_numpy(wrapper.keep_mask.value) > 0.5
        pruned = matrix[~mask].mean() if (~mask).any() else 0.0
        kept = matrix[mask].mean() if mask.any() else 0.0
        return float(kept / pruned) if pruned > 0 else float("inf")

    def _pick(self) -> None:
        """GReg-2: choose each group's pruned filters by their magnitude after picking."""
        group_masks = {}
        for group, members in self.groups.items():
            producers = [w for w in members if w.is_producer]
            if not producers:
                continue
            scores = importance.group_l1_scores([w.layer for w in producers])
            count = producers[0].num_pruned
            group_masks[group] = importance.keep_mask(len(scores),
                                                      importance.lowest(scores, count))
            for wrapper in producers:
                wrapper.keep_mask.assign(group_masks[group].astype("float32"))
        # A batch norm takes its groups' masks at their offsets (behind a Concatenate, several).
        for wrapper in self.wrappers:
            if not wrapper.is_producer:
                mask = wrapper.follow(group_masks)
                if mask is not None:
                    wrapper.keep_mask.assign(mask.astype("float32"))

    def _picked(self) -> bool:
        return any(_value(w.stopped_at) >= 0 for w in self.producers) or any(
            float(np.min(keras.ops.convert_to_numpy(w.keep_mask.value))) < 0.5
            for w in self.producers)

    def sync(self, step):
        if self.enforced():
            return max(_value(w.strength) for w in self.producers), PRUNED
        if self.picking and step < self.pick_end:
            strength = min(self.pick_ceiling, self.pick_delta * (step // self.schedule.interval))
            for wrapper in self.wrappers:  # mask is all ones: a uniform penalty on every filter
                self.set_strengths(wrapper, strength, strength)
            return strength, PICK
        if self.picking and not self._picked():
            self._pick()
        tick = step // self.schedule.interval
        update_ema = tick != self._last_tick
        self._last_tick = tick
        stops, strengths = [], []
        for wrapper in self.wrappers:
            stopped_at = _value(wrapper.stopped_at)
            if stopped_at < 0 and wrapper.is_producer:
                ratio = _value(wrapper.ratio_ema)
                if update_ema:
                    current = self._magnitude_ratio(wrapper)
                    ratio = current if ratio == 0 else (
                        self.ema_momentum * ratio + (1 - self.ema_momentum) * current)
                    wrapper.ratio_ema.assign(min(ratio, 1e30))
                if self.growth(step) >= self.schedule.ceiling or ratio >= self.stop_ratio:
                    wrapper.stopped_at.assign(float(step))
                    stopped_at = step
            strength = self.growth(int(stopped_at) if stopped_at >= 0 else step)
            self.set_strengths(wrapper, strength, self.kept_strength)
            if wrapper.is_producer:
                stops.append(stopped_at)
                strengths.append(strength)
        strength = max(strengths)
        if min(stops) < 0:
            return strength, GROW
        if step >= max(stops) + self.schedule.stabilize_steps:
            enter_pruned_phase(self.wrappers)
            return strength, PRUNED
        return strength, STABILIZE
