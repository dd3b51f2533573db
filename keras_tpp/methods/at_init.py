"""Pruning at initialization (PaI): score the untrained network once, fix the masks, train.

- ``"snip"`` (Lee et al., ICLR 2019): S = |g ⊙ w| on a batch of data;
- ``"grasp"`` (Wang et al., ICLR 2020): gradient-signal preservation, S = −w ⊙ (H g) with
  the logits divided by a temperature; the highest S are removed;
- ``"synflow"`` (Tanaka et al., NeurIPS 2020): data-free synaptic flow, iterated 100 times
  with an exponential density schedule;
- ``"random_init"``: random positions, the same density in every layer.

The scores are :mod:`keras_tpp.scores` (TensorFlow gradients, imported when prepare runs).
``granularity="weight"`` (default) masks individual weights, ranked globally (random: per
layer), held at zero during training (:class:`keras_tpp.PruningCallback`, like
"magnitude"); ``granularity="channel"`` ranks filters by their summed scores, and the
prepared model's masks are removed by :func:`keras_tpp.shrink` after
:func:`keras_tpp.apply_masks`: a thin model to train from scratch.

    pmodel = keras_tpp.prepare(model, 0.9, method="snip", data=(x, y))
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import keras
import numpy as np

from keras_tpp import controllers
from keras_tpp.methods.base import PruningMethod
from keras_tpp.methods.registry import register
from keras_tpp.validation import finite_float, one_of, positive_int

#: Mask granularities pruning at initialization offers.
GRANULARITIES = ("weight", "channel")


class PruningAtInit(PruningMethod):
    """Base class of the pruning-at-initialization methods.

    Class attributes: ``needs_data`` (the score reads a batch of data).

    Args:
        granularity: "weight" (individual weights, global ranking) or "channel" (filters by
            their summed scores, removed by surgery).
    """

    selection = "scores"
    granularities = GRANULARITIES
    needs_data: ClassVar[bool] = False

    def __init__(self, granularity: str = "weight") -> None:
        self.granularity = one_of(granularity, "granularity", GRANULARITIES)

    def configure(self, pruning_ratio: Any, *, initial_ratio: float | None = None,
                  initial_mask: str | None = None, seed: int | None = None) -> "PruningAtInit":
        super().configure(pruning_ratio, initial_ratio=initial_ratio, initial_mask=initial_mask)
        return self

    def check_data(self, data: Any) -> None:
        """ValueError unless the method gets the data it needs (and no data it ignores)."""
        if self.needs_data and data is None:
            raise ValueError(
                f"Method '{self.name}' scores weights on data: pass data=(x, y) (a few "
                "batches, e.g. 10 examples per class) or a tf.data.Dataset to prepare().")

    def scores(self, model: keras.Model, paths: list[str], data: Any) -> dict[str, np.ndarray]:
        """{layer path: kernel-shaped scores, higher = keep} for the prunable kernels."""
        raise NotImplementedError

    def initial_weight_masks(self, kernels, pruning_ratio, *, model=None, data=None):
        return self.weight_masks(model, list(kernels), data, pruning_ratio)

    def channel_scores(self, model, paths, data):
        return self.filter_scores(model, paths, data)

    def weight_masks(self, model: keras.Model, paths: list[str], data: Any,
                     pruning_ratio: float | Mapping[str, float]) -> dict[str, np.ndarray]:
        """The fixed masks: the highest (signed) scores kept, globally with an exact count,
        or per layer (per-pattern ratios; ``random_init``)."""
        from keras_tpp import scores

        per_pattern = isinstance(pruning_ratio, Mapping)
        density = ({p: 1.0 - r for p, r in pruning_ratio.items()} if per_pattern
                   else 1.0 - pruning_ratio)
        ranking = "layer" if per_pattern or self.per_layer else "global"
        return scores.top_masks(self.scores(model, paths, data), density, ranking=ranking)

    #: Rank every layer on its own (random) instead of globally.
    per_layer: ClassVar[bool] = False

    def filter_scores(self, model: keras.Model, paths: list[str],
                      data: Any) -> dict[str, np.ndarray]:
        """{producer path: (N,) channel scores}: each filter's scores summed."""
        from keras_tpp import scores

        return scores.filter_scores(model, self.scores(model, paths, data))

    def controller(self, wrappers, schedule):
        return controllers.OneShotController(wrappers, schedule)

    def last_step(self, schedule):
        return 0

    def get_config(self) -> dict[str, Any]:
        return {"granularity": self.granularity}


def _xy(data: Any) -> tuple[Any, Any]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    return data, None


@register
class SNIP(PruningAtInit):
    """SNIP: connection sensitivity |∂L/∂w ⊙ w| on data (Lee et al., ICLR 2019).

    Args:
        granularity: "weight" or "channel".
        loss: a Keras loss for the score (default: sparse categorical cross-entropy on
            logits).
    """

    name = "snip"
    description = "pruning at initialization by connection sensitivity |g ⊙ w| (SNIP)"
    needs_data = True

    def scores(self, model, paths, data):
        from keras_tpp import scores

        x, y = _xy(data)
        return _select(scores.snip(model, x, y), paths)


@register
class GraSP(PruningAtInit):
    """GraSP: gradient-signal preservation (Wang, Zhang & Grosse, ICLR 2020).

    Args:
        granularity: "weight" or "channel".
        temperature: T, the logits are divided by it (200).
    """

    name = "grasp"
    description = "pruning at initialization by gradient-signal preservation (GraSP)"
    needs_data = True

    def __init__(self, granularity: str = "weight", temperature: float = 200.0) -> None:
        super().__init__(granularity)
        self.temperature = finite_float(temperature, "temperature", minimum=0.0,
                                        exclusive_minimum=True)

    def scores(self, model, paths, data):
        from keras_tpp import scores

        x, y = _xy(data)
        # keras_tpp.scores.grasp returns w ⊙ Hg = −S: higher = keep, like every score.
        return _select(scores.grasp(model, x, y, temperature=self.temperature), paths)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@register
class SynFlow(PruningAtInit):
    """SynFlow: iterative synaptic-flow pruning, data-free (Tanaka et al., NeurIPS 2020).

    Args:
        granularity: "weight" (iterated ``rounds`` times with the exponential schedule) or
            "channel" (one round of scores, summed per filter).
        rounds: n, scoring rounds to the final density (100).
    """

    name = "synflow"
    description = "data-free iterative synaptic-flow pruning at initialization (SynFlow)"

    def __init__(self, granularity: str = "weight", rounds: int = 100) -> None:
        super().__init__(granularity)
        self.rounds = positive_int(rounds, "rounds")

    def scores(self, model, paths, data):
        from keras_tpp import scores

        return _select(scores.synflow(model), paths)

    def weight_masks(self, model, paths, data, pruning_ratio):
        from keras_tpp import scores

        if isinstance(pruning_ratio, Mapping):
            raise ValueError("Method 'synflow' ranks all kernels together over its rounds: "
                             "give one pruning_ratio.")
        masks = scores.synflow_masks(model, 1.0 - pruning_ratio, rounds=self.rounds,
                                     layers=paths)
        return _select(masks, paths)

    def get_config(self):
        return {**super().get_config(), "rounds": self.rounds}


@register
class RandomInit(PruningAtInit):
    """Random pruning at initialization: random positions, the same density per layer.

    Args:
        granularity: "weight" or "channel".
        seed: seed of the positions.
    """

    name = "random_init"
    description = "random pruning at initialization (same density in every layer)"
    per_layer = True

    def __init__(self, granularity: str = "weight", seed: int | None = None) -> None:
        super().__init__(granularity)
        self.seed = seed

    def configure(self, pruning_ratio, *, initial_ratio=None, initial_mask=None, seed=None):
        super().configure(pruning_ratio, initial_ratio=initial_ratio, initial_mask=initial_mask)
        return type(self)(self.granularity, self.seed if seed is None else seed)

    def scores(self, model, paths, data):
        from keras_tpp import scores

        return _select(scores.random(model, seed=self.seed), paths)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def _select(scores: dict[str, np.ndarray], paths: list[str]) -> dict[str, np.ndarray]:
    missing = [p for p in paths if p not in scores]
    if missing:
        raise ValueError(f"No scores for layers {missing}.")
    return {p: np.asarray(scores[p]) for p in paths}
