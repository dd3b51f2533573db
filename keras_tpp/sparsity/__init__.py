"""Weight-level (unstructured) sparsity: schedules, initial masks and mask updates.

The numerical core of sparse training (GMP, RigL, GraNet — Liu et al., NeurIPS 2021), as
pure functions on numpy arrays and small serializable schedule objects:

- :mod:`~keras_tpp.sparsity.schedules` — the cubic gradual-pruning schedule (Zhu & Gupta)
  and the cosine regeneration rate;
- :mod:`~keras_tpp.sparsity.erk` — Erdős–Rényi-kernel initial densities;
- :mod:`~keras_tpp.sparsity.masks` — global / per-layer magnitude masks with exact counts,
  and one regeneration step (death by magnitude, growth by gradient);
- :mod:`~keras_tpp.sparsity.controller` — the mask updates of a prepared model (GMP,
  GraNet, RigL), run by :class:`keras_tpp.SparseTrainingCallback`;
- :mod:`~keras_tpp.sparsity.optimizer_state` — optimizer slots zeroed at masked positions
  and the growth gradient, inside the train step;
- :mod:`~keras_tpp.sparsity.report` — :func:`sparsity_report`, per-kernel zero counts.
"""
from keras_tpp.sparsity.erk import erk_densities, random_masks
from keras_tpp.sparsity.masks import magnitude_masks, regenerate
from keras_tpp.sparsity.report import LayerSparsity, SparsityReport, sparsity_report
from keras_tpp.sparsity.schedules import CosineRate, CubicSparsity, SparseTrainingSchedule

__all__ = ["CosineRate", "CubicSparsity", "LayerSparsity", "SparseTrainingSchedule",
           "SparsityReport", "erk_densities", "magnitude_masks", "random_masks", "regenerate",
           "sparsity_report"]
