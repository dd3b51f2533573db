"""PruningMethod: what a method attaches at prepare time and which controller runs it."""
from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np

from keras_tpp import controllers
from keras_tpp.penalty_schedule import PenaltySchedule


class PruningMethod:
    """Base class of pruning methods; one subclass per method, registered by name.

    Class attributes (what :func:`keras_tpp.prepare` reads):
        name: the name passed as ``prepare(method=...)`` and the scripts' ``--method``.
        description: one line for errors and docs.
        selection: how pruned channels are chosen at prepare time: "l1" (smallest mean |w|),
            "random" (seeded), "deferred" (the controller picks them during training), or
            "scores" (the method's :meth:`channel_scores`, e.g. pruning at initialization).
        gram: attach TPP's gram decorrelation term to the producers' kernels.
        l2: attach the masked L2 term to producers' kernels and biases.
        norm_l2: attach the masked L2 term to γ/β of the batch norms that follow.
        granularity: "channel" (masks over output channels, removed by surgery) or
            "weight" (masks of each kernel's shape: unstructured sparsity).

    Instances carry the method's own options (e.g. GReg's stopping ratio) and serialize them
    with :meth:`get_config`; the pruning callback builds the method's controller with
    :meth:`controller`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    selection: ClassVar[str] = "l1"
    gram: ClassVar[bool] = False
    l2: ClassVar[bool] = False
    norm_l2: ClassVar[bool] = False
    granularity: ClassVar[str] = "channel"
    #: Granularities the method offers through ``prepare(granularity=...)`` (empty: only its
    #: own ``granularity``); such methods take ``granularity`` as an option.
    granularities: ClassVar[tuple[str, ...]] = ()
    #: Weight-level methods whose masks may start all ones at prepare and lose weights later
    #: (sparse training, lottery rounds): prepare does not call that "nothing to prune".
    prunes_after_prepare: ClassVar[bool] = False

    def controller(self, wrappers: list, schedule: PenaltySchedule) -> controllers.Controller:
        """The object that sets the wrappers' λ, masks and phase at each step."""
        raise NotImplementedError

    def last_step(self, schedule: PenaltySchedule) -> int:
        """An upper bound of the train step at which the pruned phase starts (e.g. to size
        a pruning stage that stops there)."""
        return schedule.end_step

    def configure(self, pruning_ratio: Any, *, initial_ratio: float | None = None,
                  initial_mask: str | None = None, seed: int | None = None) -> "PruningMethod":
        """The method with :func:`keras_tpp.prepare`'s targets; only sparse-training methods
        take ``initial_ratio`` and ``initial_mask`` (others raise ValueError)."""
        if initial_ratio is not None or initial_mask is not None:
            raise ValueError(
                f"initial_ratio and initial_mask apply to the sparse-training methods "
                f"('gmp', 'granet', 'rigl'), not to '{self.name}'.")
        return self

    def initial_weight_masks(self, kernels: dict[str, np.ndarray], pruning_ratio: Any, *,
                             model: Any = None, data: Any = None) -> dict[str, np.ndarray]:
        """Weight-level methods: {layer path: bool mask of the kernel's shape} that
        :func:`keras_tpp.prepare` starts from, given the kernels, the pruning ratio (a float
        or {layer path: ratio}) and, for scores that need them, the model and ``data``."""
        raise NotImplementedError

    def channel_scores(self, model: Any, paths: list[str], data: Any) -> dict[str, np.ndarray]:
        """``selection = "scores"`` methods: {producer path: (N,) channel scores, higher =
        keep}."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The method's options (empty for methods without options)."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PruningMethod":
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self) -> int:
        return hash((type(self), json.dumps(self.get_config(), sort_keys=True)))

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({options})"
