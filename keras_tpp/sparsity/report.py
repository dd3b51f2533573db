"""sparsity_report: how many weights of each Conv/Dense kernel are zero (or masked).

    report = keras_tpp.sparsity_report(sparse_model)
    print(report)                    # one row per kernel, then the total
    report.global_sparsity           # fraction of all Conv/Dense kernel weights that are zero
"""
from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from keras_tpp import filters
from keras_tpp.graph import iter_layers
from keras_tpp.wrappers import PruningWrapper


@dataclass(frozen=True)
class LayerSparsity:
    """One kernel: ``size`` weights, ``zeros`` of them exactly 0, and ``masked`` of them
    masked by a weight-level mask (None for a plain model)."""

    size: int
    zeros: int
    masked: int | None = None

    @property
    def density(self) -> float:
        """Fraction of the kernel's weights that are non-zero."""
        return 1.0 - self.zeros / self.size if self.size else 1.0

    @property
    def sparsity(self) -> float:
        """Fraction of the kernel's weights that are exactly zero."""
        return 1.0 - self.density


@dataclass(frozen=True)
class SparsityReport:
    """Per-kernel and global zero counts of a model's Conv and Dense kernels.

    ``layers`` maps layer paths ("conv1", "backbone/conv1") to :class:`LayerSparsity`.
    Biases, batch norms and other weights are not counted.
    """

    layers: dict[str, LayerSparsity] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Number of weights in all counted kernels."""
        return sum(layer.size for layer in self.layers.values())

    @property
    def zeros(self) -> int:
        """Number of those weights that are exactly zero."""
        return sum(layer.zeros for layer in self.layers.values())

    @property
    def global_density(self) -> float:
        """Non-zero fraction over all counted kernels."""
        return 1.0 - self.zeros / self.size if self.size else 1.0

    @property
    def global_sparsity(self) -> float:
        """Zero fraction over all counted kernels."""
        return 1.0 - self.global_density

    def __str__(self) -> str:
        width = max([len(p) for p in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'weights':>10}  {'zeros':>10}  {'density':>8}"]
        for path, layer in self.layers.items():
            lines.append(f"{path:<{width}}  {layer.size:>10}  {layer.zeros:>10}  "
                         f"{layer.density:>8.4f}")
        lines.append(f"{'total':<{width}}  {self.size:>10}  {self.zeros:>10}  "
                     f"{self.global_density:>8.4f}")
        return "\n".join(lines)


def sparsity_report(model: keras.Model) -> SparsityReport:
    """Count the exact zeros of every Conv and Dense kernel of ``model``.

    Works on a plain model (e.g. ``keras_tpp.strip(pmodel)``) and on a prepared one, where
    it also gives each weight-level mask's masked count.

    Args:
        model: a built Keras model; nested models are included, keyed by layer path.

    Example:
        >>> report = keras_tpp.sparsity_report(keras_tpp.strip(pmodel))
        >>> round(report.global_sparsity, 3)
        0.9
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"sparsity_report takes a Keras model, got {type(model).__name__}.")
    layers = {}
    for ref in iter_layers(model):
        layer = ref.layer
        wrapper = layer if isinstance(layer, PruningWrapper) else None
        inner = wrapper.layer if wrapper is not None else layer
        if not filters.is_producer(inner) or not inner.built:
            continue
        kernel = keras.ops.convert_to_numpy(filters.output_kernel(inner))
        masked = None
        if wrapper is not None and wrapper.granularity == "weight":
            masked = int((keras.ops.convert_to_numpy(wrapper.keep_mask.value) < 0.5).sum())
        layers[ref.path_str] = LayerSparsity(int(kernel.size), int(np.sum(kernel == 0)), masked)
    if not layers:
        raise ValueError(f"Model '{model.name}' has no Conv or Dense kernel to report on.")
    return SparsityReport(layers)
