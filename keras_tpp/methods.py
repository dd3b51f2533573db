"""The pruning methods keras_tpp knows, and what each attaches to a prepared model.

A method decides how pruned filters are chosen at :func:`keras_tpp.prepare` time and which
penalties the wrappers carry; its schedule lives in :mod:`keras_tpp.callbacks`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    """What ``prepare`` does for one method.

    Attributes:
        name: the method's name as passed to ``prepare(method=...)``.
        selection: "l1" (smallest mean |w|, on the weights at prepare time), "random"
            (seeded uniform choice) or "deferred" (chosen later by the schedule, GReg-2).
        gram: attach the gram decorrelation term to producers' kernels (TPP).
        l2: attach the masked L2 term to producers' kernels and biases.
        norm_l2: penalize γ and β of the batch norms that follow pruned producers (the
            batch norms are wrapped for every method, so that masks zero them too).
        description: one line for error messages and docs.
    """

    name: str
    selection: str
    gram: bool
    l2: bool
    norm_l2: bool
    description: str


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("tpp", "l1", gram=True, l2=True, norm_l2=True,
                   description="Trainability Preserving Pruning (Wang & Fu, ICLR 2023)"),
        MethodSpec("greg1", "l1", gram=False, l2=True, norm_l2=False,
                   description="GReg-1: growing L2 on L1-chosen filters (Wang et al., ICLR 2021)"),
        MethodSpec("greg2", "deferred", gram=False, l2=True, norm_l2=False,
                   description="GReg-2: growing uniform L2 picks the filters, then pushes them"),
        MethodSpec("l1", "l1", gram=False, l2=False, norm_l2=False,
                   description="one-shot L1-norm pruning (Li et al., 2017)"),
        MethodSpec("random", "random", gram=False, l2=False, norm_l2=False,
                   description="one-shot random filter pruning with the same per-layer ratios"),
    )
}


def get_method(name: str) -> MethodSpec:
    """The MethodSpec called ``name``; ValueError listing the valid names otherwise."""
    spec = METHODS.get(str(name).lower()) if isinstance(name, str) else None
    if spec is None:
        valid = ", ".join(f"'{m}'" for m in METHODS)
        raise ValueError(f"Unknown pruning method {name!r}; valid methods: {valid}.")
    return spec
