"""SparseTrainingCallback: runs GMP, GraNet or RigL on a model prepared for sparse training.

    pmodel = keras_tpp.prepare(model, pruning_ratio=0.9, method="granet")
    pmodel.compile(keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True), loss)
    pmodel.fit(ds, epochs=E, callbacks=[keras_tpp.SparseTrainingCallback(total_steps=T)])

At every batch end it reads the model's train-step counter (the wrappers' ``train_steps``)
and performs the mask update that is due, if any (:mod:`keras_tpp.sparsity.controller`); a
run resumed from a saved model, or one with ``steps_per_execution > 1``, catches up with
an update it has not done, and never repeats one (``mask_updated_at`` is saved with the
model). Inside the train step, after every optimizer update, the masked weights are zeroed
(the kernels' constraint) and so are their optimizer slots, and the gradient is kept for
regeneration (:mod:`keras_tpp.sparsity.optimizer_state`).

Backends: TensorFlow, JAX and PyTorch, with the same masks and (to float32 rounding) the
same weights (tests/test_sparse_training_backends.py). On JAX, whose ``fit`` keeps the
training state outside the variables, the callback syncs the state before it reads or
writes anything, and the masks and slots are zeroed by the train step right after the
stateless optimizer update (:meth:`MaskedOptimizerState.hold_in_train_step`).

Logs ``sparsity`` (fraction of the prunable weights masked) and ``regrow_rate`` (the
regeneration rate r(t); 0 for GMP) at every batch and epoch: progress bar, History,
CSVLogger, TensorBoard.
"""
from __future__ import annotations

from typing import Any

import keras

from keras_tpp import keras_internals, methods
from keras_tpp.callbacks.pruning import model_method
from keras_tpp.prepared import wrappers_by_path
from keras_tpp.sparsity.controller import MaskUpdate, SparseTrainingController
from keras_tpp.sparsity.optimizer_state import MaskedOptimizerState
from keras_tpp.sparsity.schedules import SparseTrainingSchedule
from keras_tpp.validation import non_negative_int

SPARSITY_KEY = "sparsity"
RATE_KEY = "regrow_rate"
#: The Keras backends SparseTrainingCallback runs on.
SUPPORTED_BACKENDS = ("tensorflow", "jax", "torch")


class SparseTrainingCallback(keras.callbacks.Callback):
    """Drives the mask updates of a model prepared with "gmp", "granet" or "rigl".

    Args:
        total_steps: T, the training length in train steps (epochs × steps per epoch): the
            regeneration rate's cosine runs over it, and regeneration stops at T.
        prune_start_step, prune_end_step: the window of gradual pruning, in train steps
            (default: 0 to T // 2; the papers prune from epoch 0 to 80 of 160). The
            sparsity reaches ``pruning_ratio`` exactly at the window's last update, the one
            after step (prune_end_step // update_frequency − 1)·update_frequency; the end
            is excluded (tfmot's ``PolynomialDecay(end_step=E)`` includes E: the same
            targets at the same steps are ``prune_end_step = E + update_frequency``).
        update_frequency: ΔT, train steps between mask updates (1000 in the papers on
            CIFAR, 4000 on ImageNet).
        regrow_ratio, final_regrow_ratio: the regeneration rate's cosine, r₀ → r_f
            (0.5 → 0.005); ignored by "gmp".
        verbose: 1 prints a line at every mask update.

    Example:
        >>> pmodel = keras_tpp.prepare(model, 0.9, method="gmp")
        >>> pmodel.compile("sgd", "sparse_categorical_crossentropy")
        >>> pmodel.fit(x, y, epochs=4, callbacks=[keras_tpp.SparseTrainingCallback(
        ...     total_steps=4 * steps_per_epoch, update_frequency=100)])
    """

    def __init__(self, total_steps: int, prune_start_step: int = 0,
                 prune_end_step: int | None = None, update_frequency: int = 1000,
                 regrow_ratio: float = 0.5, final_regrow_ratio: float = 0.005,
                 verbose: int = 0) -> None:
        super().__init__()
        self.schedule = SparseTrainingSchedule(
            total_steps=total_steps, prune_start_step=prune_start_step,
            prune_end_step=prune_end_step, update_frequency=update_frequency,
            regrow_ratio=regrow_ratio, final_regrow_ratio=final_regrow_ratio)
        self.verbose = (int(verbose) if isinstance(verbose, bool)
                        else non_negative_int(verbose, "verbose"))
        self.controller: SparseTrainingController | None = None
        self.optimizer_state: MaskedOptimizerState | None = None
        self.method: methods.SparseTrainingMethod | None = None
        self.last_update: MaskUpdate | None = None
        self._sparsity = 0.0

    # -- helpers ----------------------------------------------------------------------------
    def _step(self) -> int:
        wrapper = next(iter(self.controller.wrappers.values()))
        return int(keras.ops.convert_to_numpy(wrapper.train_steps.value))

    def _check_model(self) -> dict:
        if keras.backend.backend() not in SUPPORTED_BACKENDS:
            raise ValueError(
                "SparseTrainingCallback runs on the TensorFlow, JAX and PyTorch backends (the "
                f"backend is '{keras.backend.backend()}'): it needs fit's train step, whose "
                "optimizer update it hooks to zero the optimizer slots of masked weights and "
                "keep the dense gradient for regrowth, and this backend has none (Keras' "
                "numpy and OpenVINO backends do not train).")
        if getattr(self.model, "optimizer", None) is None:
            raise ValueError("SparseTrainingCallback needs a compiled model: call "
                             "model.compile() first.")
        wrappers = wrappers_by_path(self.model)
        if not wrappers:
            raise ValueError(
                f"SparseTrainingCallback was given model '{self.model.name}', which was not "
                "prepared for pruning: call keras_tpp.prepare(model, ratio, method='granet' "
                "(or 'gmp', 'rigl')) and train the model it returns.")
        self.method = model_method(list(wrappers.values()))
        if not isinstance(self.method, methods.SparseTrainingMethod):
            raise ValueError(
                f"SparseTrainingCallback drives models prepared with 'gmp', 'granet' or "
                f"'rigl'; this model was prepared with '{self.method.name}': use "
                "keras_tpp.PruningCallback.")
        return wrappers

    def _log(self, logs: dict | None) -> None:
        if logs is not None:
            logs[SPARSITY_KEY] = float(self._sparsity)
            logs[RATE_KEY] = float(self.controller.regrow_rate(self._step()))

    # -- Keras hooks ------------------------------------------------------------------------
    def on_train_begin(self, logs: dict | None = None) -> None:
        wrappers = self._check_model()
        self.controller = self.method.controller(wrappers, self.schedule)
        optimizer = self.model.optimizer
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self.optimizer_state = MaskedOptimizerState.for_optimizer(optimizer, wrappers)
        changed = self.optimizer_state.install(optimizer)
        # JAX: masks and slots zeroed after each update, in the train step (no-op elsewhere).
        changed = self.optimizer_state.hold_in_train_step(self.model) or changed
        if changed:
            self.model.make_train_function(force=True)  # trace the step with the hooks
        self.controller.start()
        self.optimizer_state.zero_slots()
        self._sparsity = self.controller.sparsity()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # JAX: bring the training state into the variables (and our writes back into it).
        keras_internals.sync_training_state(self.model)
        step = self._step()
        due = self.controller.pending(step)
        if due is not None:
            # At a batch end at least one step of this fit has run, so the gradient is there.
            gradients = (self.optimizer_state.gradients()
                         if self.controller.needs_gradient(due) else None)
            self.last_update = self.controller.update(due, gradients)
            self.optimizer_state.zero_slots(self.controller.current_masks)
            self._sparsity = self.last_update.sparsity
            if self.verbose and (self.last_update.pruned or self.last_update.regrown):
                u = self.last_update
                print(f"\nSparseTrainingCallback: step {u.step}: sparsity {u.sparsity:.4f} "
                      f"(pruned {u.pruned}, regrown {u.regrown} at rate {u.rate:.4f})")
        self._log(logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        keras_internals.sync_training_state(self.model)
        self._log(logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        keras_internals.sync_training_state(self.model)
        for wrapper in self.controller.wrappers.values():  # exact zeros on exit
            wrapper.zero_pruned()

    def get_config(self) -> dict[str, Any]:
        return {**self.schedule.get_config(), "verbose": self.verbose}
