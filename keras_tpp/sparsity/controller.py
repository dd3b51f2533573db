"""SparseTrainingController: the mask updates of GMP, GraNet and RigL on a prepared model.

Host-side, between train steps: reads the kernels, masks and last gradients, computes the
new masks with :mod:`keras_tpp.sparsity.masks` (numpy), and writes masks and kernels back.
All its state lives in the wrappers' variables (``keep_mask``, ``mask_updated_at``), saved
with the model, so a resumed run performs each update exactly once.

One update at train step t (after the optimizer step, as in the authors' code):

1. gradual pruning, while t's round is inside the pruning window (GMP, GraNet): keep the
   largest |w| so that exactly ⌊(1 − s(t))·N⌋ weights stay (global or per-layer ranking);
2. regeneration, at every update before ``total_steps`` (GraNet, RigL): per layer, the
   n = ⌈r(t)·nnz⌉ smallest active |w| die and the n inactive positions with the largest
   |gradient| grow, at zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from keras_tpp import filters
from keras_tpp.sparsity.masks import magnitude_masks, parallel_map, regenerate
from keras_tpp.sparsity.schedules import SparseTrainingSchedule
from keras_tpp.wrappers import PruningWrapper


def _numpy(variable: Any) -> np.ndarray:
    return keras.ops.convert_to_numpy(variable.value)


@dataclass
class MaskUpdate:
    """What one update did: at train ``step``, to ``sparsity`` (fraction of prunable
    weights masked afterwards); ``pruned`` by gradual pruning, ``regrown`` (= died) by
    regeneration at ``rate``."""

    step: int
    sparsity: float
    pruned: int
    regrown: int
    rate: float


class SparseTrainingController:
    """Runs a sparse-training method's mask updates on a model's weight-level wrappers.

    Args:
        wrappers: {layer path: PruningWrapper} with weight-level masks.
        method: the model's method (:class:`keras_tpp.methods.SparseTrainingMethod`), which
            says whether it prunes gradually and regenerates, and holds s_i, s_f, ranking.
        schedule: when updates happen and the regrowth rate.
    """

    def __init__(self, wrappers: dict[str, PruningWrapper], method: Any,
                 schedule: SparseTrainingSchedule) -> None:
        self.wrappers = dict(wrappers)
        self.method = method
        self.schedule = schedule
        final = method.final_ratio
        if not method.gradual:
            self.cubic = None
        elif isinstance(final, dict):  # per-layer targets (per-pattern ratios)
            self.cubic = {path: schedule.sparsity(method.initial_ratio, final[path])
                          for path in wrappers}
        else:
            self.cubic = schedule.sparsity(method.initial_ratio, final)
        self.kernels = {path: filters.output_kernel(w.layer) for path, w in wrappers.items()}
        self.sizes = {path: int(np.prod(k.shape)) for path, k in self.kernels.items()}
        self._last_update: int | None = None  # read from the variables once, then kept
        # The masks on the host, read once: during training only this controller changes them.
        self.current_masks: dict[str, np.ndarray] | None = None

    # -- state ----------------------------------------------------------------------------
    def masks(self) -> dict[str, np.ndarray]:
        """{layer path: bool mask, True = kept} (read from the wrappers once)."""
        if self.current_masks is None:
            self.current_masks = {path: _numpy(w.keep_mask) > 0.5
                                  for path, w in self.wrappers.items()}
        return self.current_masks

    def sparsity(self) -> float:
        """Fraction of all masked kernels' weights that are masked now."""
        kept = sum(int(m.sum()) for m in self.masks().values())
        return 1.0 - kept / sum(self.sizes.values())

    def last_update(self) -> int:
        """Train step of the last mask update (−1 before any)."""
        if self._last_update is None:
            self._last_update = min(int(_numpy(w.mask_updated_at))
                                    for w in self.wrappers.values())
        return self._last_update

    def pending(self, step: int) -> int | None:
        """The update step <= ``step`` not yet performed (None if up to date)."""
        due = self.schedule.last_update_step(step)
        return due if due is not None and due > self.last_update() else None

    def needs_gradient(self, step: int) -> bool:
        """Whether the update at ``step`` regenerates (and so reads the gradient)."""
        return self.method.regenerates and self.schedule.regenerates_at(step)

    def regrow_rate(self, step: int) -> float:
        """r(step) for a regenerating method, else 0."""
        return self.schedule.rate(step) if self.method.regenerates else 0.0

    # -- actions --------------------------------------------------------------------------
    def start(self) -> None:
        """Apply the masks to the kernels and hold them there (the constraint) from now."""
        for wrapper in self.wrappers.values():
            if _numpy(wrapper.enforce) < 0.5:
                wrapper.zero_pruned()
                wrapper.enforce.assign(1.0)

    def update(self, step: int, gradients: dict[str, np.ndarray] | None) -> MaskUpdate:
        """Perform the update of train step ``step``; ``gradients`` are required when
        :meth:`needs_gradient` says so."""
        before = self.masks()  # never modified in place: every step below makes new arrays
        masks = dict(before)
        weights = {path: _numpy(k) for path, k in self.kernels.items()}
        pruned = regrown = 0
        if self.cubic is not None and self.schedule.prunes_at(step):
            target = ({path: cubic(step) for path, cubic in self.cubic.items()}
                      if isinstance(self.cubic, dict) else self.cubic(step))
            masks = magnitude_masks(weights, masks, target, self.method.ranking)
            pruned = sum(int(np.count_nonzero(before[p])) - int(np.count_nonzero(masks[p]))
                         for p in masks)
            # (Regeneration grows the weights pruned here at zero: they are inactive now.)
        rate = 0.0
        if self.needs_gradient(step):
            if gradients is None:
                raise ValueError("Regeneration needs the gradients of the last train step.")
            rate = self.schedule.rate(step)
            paths = list(masks)

            def regenerate_layer(path: str) -> tuple[np.ndarray, np.ndarray, int]:
                new_mask, new_weight = regenerate(weights[path], gradients[path], masks[path],
                                                  rate)
                return new_mask, new_weight, int(np.count_nonzero(new_mask & ~masks[path]))

            for path, (new_mask, new_weight, grown) in zip(
                    paths, parallel_map(regenerate_layer, paths)):
                regrown += grown
                masks[path], weights[path] = new_mask, new_weight
        for path, wrapper in self.wrappers.items():
            if masks[path] is not before[path] and not np.array_equal(masks[path], before[path]):
                wrapper.keep_mask.assign(masks[path].astype("float32"))
                self.kernels[path].assign(np.where(masks[path], weights[path], 0).astype(
                    weights[path].dtype))
            wrapper.mask_updated_at.assign(step)
        self._last_update = step
        kept = sum(int(np.count_nonzero(m)) for m in masks.values())
        self.current_masks = masks
        return MaskUpdate(step, 1.0 - kept / sum(self.sizes.values()), pruned, regrown, rate)
