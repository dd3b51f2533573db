"""A Keras constraint that keeps pruned channels exactly zero after every optimizer step.

Keras applies a variable's constraint right after each gradient update, inside the compiled
train step, so the masked entries stay zero with any ``steps_per_execution`` and under
tf.distribute. The constraint reads a keep-mask and an on/off switch from variables bound by
a :class:`~keras_tpp.wrappers.PruningWrapper`; while the switch is 0 it changes nothing.

On JAX the optimizer update (``optimizer.stateless_apply``) sees the trainable and optimizer
variables only, not the mask: there the mask is applied by the prepared model's train step
right after the update (:func:`keras_tpp.prepared.hold_masks_in_train_step`, installed by
``prepare``, ``apply_masks`` and the pruning callbacks), with the same result.
"""
from __future__ import annotations

from typing import Any, Callable

import keras
from keras import ops

from keras_tpp import filters, keras_internals
from keras_tpp.validation import integer


@keras.saving.register_keras_serializable(package="keras_tpp")
class ChannelMask(keras.constraints.Constraint):
    """w ← w · (1 − e·(1 − m)): zeroes the masked entries when enforcing (e = 1).

    The mask has two granularities: one entry per channel along ``axis`` (structured
    pruning), or, with ``axis=None``, one entry per weight, of the weight's shape
    (unstructured, weight-level sparsity).

    Args:
        axis: axis of the weight that indexes channels; None for a weight-shaped mask.
        inner: an existing constraint of the weight, applied first.
    """

    def __init__(self, axis: int | None = -1, inner: Callable | None = None) -> None:
        self.axis = None if axis is None else integer(axis, "axis")
        self.inner = keras.constraints.get(inner) if inner is not None else None
        self._keep_mask = None
        self._enforce = None

    def bind(self, keep_mask: Any, enforce: Any) -> "ChannelMask":
        """Attach the keep-mask ((N,) or the weight's shape) and the 0/1 enforce scalar;
        returns self."""
        self._keep_mask = keep_mask
        self._enforce = enforce
        return self

    def __call__(self, w: Any) -> Any:
        if self.inner is not None:
            w = self.inner(w)
        if self._keep_mask is None:
            return w
        if keras_internals.unmapped_in_stateless_scope(self._keep_mask):
            # JAX's stateless optimizer update: the mask's value is not in the state here.
            if keras_internals.in_wrapped_train_step():
                return w  # the wrapped train step applies the mask right after the update
            raise RuntimeError(
                "On the JAX backend a keras_tpp mask constraint cannot read its mask inside "
                "optimizer.stateless_apply. Call keras_tpp.prepared.hold_masks_in_train_step("
                "model) before fit (prepare, apply_masks and the pruning callbacks do it; a "
                "model loaded from a file and trained without them needs it).")
        return self.mask(w)

    def mask(self, w: Any) -> Any:
        """w with the mask applied when enforcing (the inner constraint not applied)."""
        if self._keep_mask is None:
            return w
        mask = ops.cast(self._keep_mask, w.dtype)
        enforce = ops.cast(self._enforce, w.dtype)
        factor = 1.0 - enforce * (1.0 - mask)
        if self.axis is None:
            return w * factor
        shape = filters.channel_broadcast_shape(tuple(w.shape), self.axis)
        return w * ops.reshape(factor, shape)

    def get_config(self) -> dict:
        inner = keras.constraints.serialize(self.inner) if self.inner is not None else None
        return {"axis": self.axis, "inner": inner}
