"""Sparse training of individual weights: GMP, GraNet and RigL from one machinery.

- ``"gmp"``: gradual magnitude pruning (Zhu & Gupta, 2017): from s_i to s_f on a cubic
  schedule, ranking |w| globally (or per layer), no regeneration.
- ``"granet"``: GMP plus zero-cost neuroregeneration (Liu et al., NeurIPS 2021): at every
  mask update, also after the pruning window, the smallest active weights die and as many
  inactive ones with the largest |gradient| grow, at a cosine-decaying rate.
- ``"rigl"``: regeneration at a fixed density from a random initial mask (Evci et al., ICML
  2020), no gradual pruning.

``prepare`` sets the masks (dense, or random ERK/uniform at ``initial_ratio``);
:class:`keras_tpp.SparseTrainingCallback` runs the updates. Masks have each kernel's shape;
the result is a sparse model (:func:`keras_tpp.strip`, :func:`keras_tpp.sparsity_report`,
:func:`keras_tpp.export` with ``sparse=True``), not a thinner one.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from keras_tpp import sparsity
from keras_tpp.methods.base import PruningMethod
from keras_tpp.methods.magnitude import resolve_ranking
from keras_tpp.methods.registry import register
from keras_tpp.validation import finite_float, one_of

#: How a sparse-to-sparse run's initial mask spreads its weights over layers.
INITIAL_MASKS = ("erk", "uniform")


def _ratio(value: Any, name: str) -> float:
    return finite_float(value, name, minimum=0.0, maximum=1.0, exclusive_maximum=True)


class SparseTrainingMethod(PruningMethod):
    """Base class of the weight-level methods driven by SparseTrainingCallback.

    Class attributes: ``gradual`` (prunes from s_i to s_f on the cubic schedule),
    ``regenerates`` (death by magnitude, growth by gradient at every update).

    Args:
        ranking: "global" (one |w| threshold over all masked kernels, the papers') or
            "layer" (every kernel pruned to its own target: the "uniform" variants); default:
            "global" for one pruning ratio, "layer" for per-pattern ratios.
        initial_ratio: s_i, the sparsity of the initial random mask (0 = dense-to-sparse);
            normally given to :func:`keras_tpp.prepare`.
        initial_mask: "erk" (Erdős–Rényi-kernel densities) or "uniform".
        final_ratio: s_f, set by :func:`keras_tpp.prepare` from ``pruning_ratio``: one
            float, or {layer path: s_f} from per-pattern ratios.
        seed: seed of the random initial mask.
    """

    granularity = "weight"
    selection = "deferred"
    prunes_after_prepare = True
    gradual: ClassVar[bool] = True
    regenerates: ClassVar[bool] = False

    def __init__(self, ranking: str | None = None, initial_ratio: float | None = None,
                 initial_mask: str = "erk",
                 final_ratio: float | Mapping[str, float] | None = None,
                 seed: int | None = None) -> None:
        self.ranking = None if ranking is None else one_of(ranking, "ranking",
                                                           ("global", "layer"))
        self.initial_mask = one_of(initial_mask, "initial_mask", INITIAL_MASKS)
        if isinstance(final_ratio, Mapping):
            final_ratio = {str(k): _ratio(v, "pruning_ratio") for k, v in final_ratio.items()}
        elif final_ratio is not None:
            final_ratio = _ratio(final_ratio, "pruning_ratio")
        self.final_ratio = final_ratio
        self.initial_ratio = (None if initial_ratio is None
                              else _ratio(initial_ratio, "initial_ratio"))
        lowest = (min(final_ratio.values()) if isinstance(final_ratio, dict) and final_ratio
                  else final_ratio)
        if lowest is not None and self.initial_ratio is not None and (
                self.initial_ratio > lowest):
            raise ValueError(f"initial_ratio ({self.initial_ratio}) must be <= pruning_ratio "
                             f"({lowest}): sparse training only removes weights.")
        self.seed = seed

    def configure(self, pruning_ratio: Any, *, initial_ratio: float | None = None,
                  initial_mask: str | None = None, seed: int | None = None
                  ) -> "SparseTrainingMethod":
        """A copy with prepare's targets: s_f = ``pruning_ratio``, s_i, mask kind, seed."""
        if initial_ratio is not None and self.initial_ratio is not None and (
                initial_ratio != self.initial_ratio):
            raise ValueError(f"initial_ratio is given both to prepare ({initial_ratio!r}) and "
                             f"to the method object ({self.initial_ratio!r}).")
        config = self.get_config()
        config["ranking"] = resolve_ranking(self.ranking, pruning_ratio)
        config["final_ratio"] = pruning_ratio
        if initial_ratio is not None:
            config["initial_ratio"] = initial_ratio
        if initial_mask is not None:
            config["initial_mask"] = initial_mask
        if seed is not None:
            config["seed"] = seed
        if config["initial_ratio"] is None:
            config["initial_ratio"] = self.default_initial_ratio(config["final_ratio"])
        return type(self)(**config)

    def default_initial_ratio(self, final_ratio: Any) -> float:
        """s_i when none is given: 0 (dense-to-sparse)."""
        return 0.0

    def initial_weight_masks(self, kernels: dict[str, np.ndarray], pruning_ratio: Any, *,
                             model: Any = None, data: Any = None) -> dict[str, np.ndarray]:
        """The masks prepare starts from: all ones at s_i = 0, else random at s_i (the
        final ``pruning_ratio`` is reached during training)."""
        if not self.initial_ratio:
            return {path: np.ones(k.shape, dtype=bool) for path, k in kernels.items()}
        shapes: dict[str, Sequence[int]] = {path: k.shape for path, k in kernels.items()}
        return sparsity.random_masks(shapes, self.initial_ratio, self.initial_mask,
                                     seed=self.seed)

    def controller(self, wrappers, schedule):
        from keras_tpp.sparsity.controller import SparseTrainingController
        from keras_tpp.sparsity.schedules import SparseTrainingSchedule

        if not isinstance(schedule, SparseTrainingSchedule):
            raise ValueError(
                f"Method '{self.name}' (sparse training) is driven by "
                "keras_tpp.SparseTrainingCallback(total_steps=..., ...), not by "
                f"{type(schedule).__name__}-based callbacks such as PruningCallback.")
        if not isinstance(wrappers, dict):
            raise ValueError("SparseTrainingController takes {layer path: wrapper}.")
        return SparseTrainingController(wrappers, self, schedule)

    def last_step(self, schedule):
        return getattr(schedule, "prune_end_step", getattr(schedule, "end_step", 0))

    def get_config(self) -> dict[str, Any]:
        return {"ranking": self.ranking, "initial_ratio": self.initial_ratio,
                "initial_mask": self.initial_mask, "final_ratio": self.final_ratio,
                "seed": self.seed}


@register
class GMP(SparseTrainingMethod):
    """Gradual magnitude pruning (Zhu & Gupta, 2017), global ranking by default."""

    name = "gmp"
    description = "gradual magnitude pruning of individual weights on a cubic schedule"


@register
class GraNet(SparseTrainingMethod):
    """GraNet (Liu et al., NeurIPS 2021): gradual pruning with neuroregeneration."""

    name = "granet"
    description = "gradual magnitude pruning with neuroregeneration (GraNet)"
    regenerates = True


@register
class RigL(SparseTrainingMethod):
    """RigL (Evci et al., ICML 2020): a fixed-density random mask, regenerated.

    ``initial_ratio`` is the pruning ratio itself (the density never changes); the initial
    mask is ERK by default.
    """

    name = "rigl"
    description = "regeneration at a fixed density from a random initial mask (RigL)"
    gradual = False
    regenerates = True

    def default_initial_ratio(self, final_ratio: float) -> float:
        return final_ratio

    def configure(self, pruning_ratio, *, initial_ratio=None, initial_mask=None, seed=None):
        if isinstance(pruning_ratio, Mapping):
            raise ValueError(
                "Method 'rigl' keeps one fixed density spread over the layers by its initial "
                "mask (initial_mask='erk' or 'uniform'): give one pruning_ratio, and select "
                "layers with layers= and exclude=.")
        if initial_ratio is not None and initial_ratio != pruning_ratio:
            raise ValueError(
                f"Method 'rigl' keeps a fixed density: initial_ratio ({initial_ratio}) must "
                f"equal pruning_ratio ({pruning_ratio}) or be left out.")
        return super().configure(pruning_ratio, initial_ratio=initial_ratio,
                                 initial_mask=initial_mask, seed=seed)
