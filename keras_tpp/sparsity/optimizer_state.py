"""The optimizer's side of sparse training: masked slots and the growth gradient.

Sparse training (GraNet, RigL) needs two things from inside the train step, after the
optimizer has updated a masked kernel:

- its per-weight optimizer state (SGD momentum, Adam's moments...) zeroed at the masked
  positions, so a masked weight carries no momentum and a regrown one starts from none;
- the dense gradient of the current batch, from which regeneration grows the inactive
  positions with the largest |∂L/∂w|. Under tf.distribute it is the all-reduced gradient the
  optimizer applied (the global batch's), identical on every replica and worker.

:class:`MaskedOptimizerState` does both with one hook after each variable's update
(:func:`keras_tpp.keras_internals.after_update_step`), and copies the gradient into a
buffer variable per kernel (not saved with the model). The masked *weights* are zeroed by
the kernels' :class:`~keras_tpp.constraints.ChannelMask` constraint.

Per backend:

- TensorFlow: the hook wraps the optimizer's per-variable ``update_step``.
- PyTorch: Keras' torch optimizers update all variables at once (``_parallel_update_step``),
  so the hook wraps ``_backend_update_step`` and runs for each variable after it
  (:func:`keras_tpp.keras_internals.after_variable_updates`).
- JAX: the update runs in ``optimizer.stateless_apply``, which keeps only what is written to
  trainable and optimizer variables and cannot read the masks. The buffers are optimizer
  variables there (left out of the optimizer's saved state), written by the same
  ``update_step`` hook; the slots and the kernels are masked right after the update by the
  model's train step (:meth:`MaskedOptimizerState.hold_in_train_step`), which sees the
  whole training state. The values are those of TensorFlow's path.
"""
from __future__ import annotations

import contextlib
from typing import Any

import keras
import numpy as np

from keras_tpp import filters, keras_internals
from keras_tpp.constraints import ChannelMask
from keras_tpp.wrappers import PruningWrapper, find_wrappers


def _variable_scope(variable: keras.Variable) -> Any:
    """The tf.distribute scope ``variable`` was created in (so a buffer is mirrored like it),
    or a null context on other backends and without a strategy."""
    strategy = getattr(getattr(variable, "value", None), "distribute_strategy", None)
    scope = getattr(strategy, "scope", None)
    return scope() if callable(scope) else contextlib.nullcontext()


class MaskedOptimizerState:
    """Zeroes the optimizer slots of masked kernels after every step; records gradients.

    Args:
        wrappers: {layer path: PruningWrapper} with weight-level masks.

    Call :meth:`install` with the compiled model's optimizer (built) before training, and
    :meth:`hold_in_train_step` with the model (JAX); each returns True when the train
    function must be retraced to include its hook.

    Example:
        >>> state = MaskedOptimizerState.for_optimizer(model.optimizer, wrappers)
        >>> if state.install(model.optimizer) | state.hold_in_train_step(model):
        ...     model.make_train_function(force=True)
        >>> state.gradients()  # {layer path: the last applied step's gradient}
    """

    def __init__(self, wrappers: dict[str, PruningWrapper]) -> None:
        self.wrappers = dict(wrappers)
        self.kernels = {path: filters.output_kernel(w.layer) for path, w in self.wrappers.items()}
        self.buffers: dict[str, keras.Variable] = {}
        self.slots: dict[str, list] = {}
        self._by_index: dict[int, tuple[keras.Variable, Any, list]] = {}
        self._constraints: list[tuple[keras.Variable, ChannelMask]] = []
        self.optimizer = None

    @classmethod
    def for_optimizer(cls, optimizer: Any,
                      wrappers: dict[str, PruningWrapper]) -> "MaskedOptimizerState":
        """The state already hooked into ``optimizer`` for these wrappers (a later ``fit``
        reuses it, and the compiled train step), or a new one."""
        hook = keras_internals.installed_hook(optimizer)
        state = getattr(hook, "__self__", None)
        if isinstance(state, cls) and state.wrappers.keys() == wrappers.keys() and all(
                state.wrappers[k] is wrappers[k] for k in wrappers):
            return state
        return cls(wrappers)

    def install(self, optimizer: Any) -> bool:
        """Hook ``optimizer`` (built on the model's variables); True if the hook is new.

        On JAX the growth buffers are created as variables of ``optimizer`` (a new one gets
        new buffers), since only those survive its stateless update.
        """
        if keras_internals.uses_gradient_accumulation(optimizer):
            raise ValueError(
                "Sparse training does not support optimizers with gradient_accumulation_steps: "
                "regeneration needs the gradient of each applied step.")
        stateless = keras.backend.backend() == "jax"
        if stateless and optimizer is not self.optimizer:
            # JAX: what update_step writes survives optimizer.stateless_apply only in the
            # optimizer's own variables (left out of its saved state).
            self.buffers = {path: keras_internals.add_unsaved_optimizer_variable(
                optimizer, kernel, f"growth_gradient_{path.replace('/', '_')}")
                for path, kernel in self.kernels.items()}
        elif not self.buffers:
            for path, kernel in self.kernels.items():
                with _variable_scope(kernel):
                    self.buffers[path] = keras.Variable(
                        np.zeros(tuple(kernel.shape), dtype="float32"), trainable=False,
                        name=f"growth_gradient_{path.replace('/', '_')}")
        if optimizer is not self.optimizer:
            self.slots = {path: keras_internals.optimizer_slots(optimizer, kernel)
                          for path, kernel in self.kernels.items()}
            self._by_index = {
                keras_internals.variable_index(keras_internals.base_optimizer(optimizer),
                                               kernel):
                (self.buffers[path], self.wrappers[path].keep_mask, self.slots[path])
                for path, kernel in self.kernels.items()}
            self.optimizer = optimizer
        return keras_internals.after_variable_updates(optimizer, self._after_update)

    def _after_update(self, index: int, gradient: Any) -> None:
        """In the train step, after the optimizer updated variable ``index``."""
        entry = self._by_index.get(index)
        if entry is None:
            return
        buffer, mask, slots = entry
        buffer.assign(keras.ops.cast(gradient, buffer.dtype))
        if keras_internals.unmapped_in_stateless_scope(mask):
            return  # JAX: the mask is not in the optimizer's state; _after_train_step does it
        for slot in slots:
            slot.assign(slot * keras.ops.cast(mask, slot.dtype))

    def hold_in_train_step(self, model: keras.Model) -> bool:
        """JAX: zero the masked kernels and their slots after every optimizer update, in the
        train step (:func:`keras_tpp.keras_internals.after_train_step_with_optimizer`).

        Keras' JAX trainer updates the weights in ``optimizer.stateless_apply``, which sees
        neither the masks (so the kernels' constraints and the slot zeroing of the
        ``update_step`` hook cannot run there) nor the model's other variables; this hook
        runs right after it with the whole training state, and does what the constraint and
        the hook do on TensorFlow, with the same result. It replaces
        :func:`keras_tpp.prepared.hold_masks_in_train_step`'s hook, and also applies every
        other mask constraint of ``model``. No-op returning False on other backends.

        Args:
            model: the compiled model being trained (its optimizer hooked by
                :meth:`install`).

        Returns:
            True when the train step was wrapped now (the train function is retraced).

        Example:
            >>> if state.hold_in_train_step(model):
            ...     model.make_train_function(force=True)
        """
        if keras.backend.backend() != "jax":
            return False
        self._constraints = [(variable, variable.constraint)
                             for wrapper in find_wrappers(model)
                             for variable, _ in wrapper.masked_variables()
                             if isinstance(variable.constraint, ChannelMask)]
        return keras_internals.after_train_step_with_optimizer(model, self._after_train_step)

    def _after_train_step(self) -> None:
        """In the JAX train step, after the optimizer update (every variable mapped)."""
        for variable, constraint in self._constraints:
            variable.assign(constraint.mask(variable.value))
        for path, slots in self.slots.items():
            mask = self.wrappers[path].keep_mask.value
            for slot in slots:
                if keras_internals.unmapped_in_stateless_scope(slot):
                    continue  # an optimizer the model no longer uses (compiled again)
                slot.assign(slot.value * keras.ops.cast(mask, slot.dtype))

    def zero_slots(self, masks: dict[str, np.ndarray] | None = None) -> None:
        """Zero the slots at the masked positions now (after the masks changed); ``masks``
        ({layer path: bool}) saves reading them from the wrappers."""
        for path, slots in self.slots.items():
            mask = (masks[path] if masks is not None
                    else keras.ops.convert_to_numpy(self.wrappers[path].keep_mask.value))
            for slot in slots:
                value = keras.ops.convert_to_numpy(slot.value)
                slot.assign((value * mask).astype(value.dtype))

    def gradients(self) -> dict[str, np.ndarray]:
        """{layer path: the gradient of its kernel at the last applied step} (zeros before
        the first step after :meth:`install`; a step the loss scaler skipped leaves the
        previous one)."""
        return {path: keras.ops.convert_to_numpy(buffer.value)
                for path, buffer in self.buffers.items()}
