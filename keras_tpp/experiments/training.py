"""Training pieces of an experiment: optimizer, compile, weight decay, callbacks.

Keras and keras_tpp are imported inside the functions (this module imports without
TensorFlow).
"""
from __future__ import annotations

import math
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from keras_tpp.experiments.config import RunConfig


def last_learning_rate(optimizer) -> float:
    """The learning rate the optimizer's last step used (a schedule evaluated at it)."""
    import keras

    from keras_tpp import keras_internals

    inner = getattr(optimizer, "inner_optimizer", optimizer)
    schedule = keras_internals.learning_rate_schedule(inner)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        step = max(int(keras.ops.convert_to_numpy(inner.iterations)) - 1, 0)
        return float(keras.ops.convert_to_numpy(schedule(step)))
    return float(keras.ops.convert_to_numpy(inner.learning_rate))


def learning_rate_logger():
    """A callback that puts the learning rate of the epoch's last step into the logs as
    ``learning_rate`` (so CSVLogger and TensorBoard record it)."""
    import keras

    class LearningRateLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = last_learning_rate(self.model.optimizer)

    return LearningRateLogger()


def tensorboard_available() -> bool:
    """Keras' TensorBoard callback needs the ``tensorboard`` package (TensorFlow 2.21 does
    not install it)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


_TB_NOTE = []


def logging_callbacks(log_dir: str, name: str, append: bool) -> list:
    """[LearningRateLogger, CSVLogger(<log_dir>/<name>.csv), TensorBoard(<log_dir>/tensorboard/
    <name>) when the tensorboard package is installed]."""
    import keras

    os.makedirs(log_dir, exist_ok=True)
    callbacks = [
        learning_rate_logger(),
        keras.callbacks.CSVLogger(os.path.join(log_dir, f"{name}.csv"), append=append),
    ]
    if tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(
            os.path.join(log_dir, "tensorboard", name), write_graph=False, profile_batch=0))
    elif not _TB_NOTE:
        _TB_NOTE.append(True)
        print("note: the tensorboard package is not installed; writing CSV logs only "
              "(pip install tensorboard for TensorBoard logs)", file=sys.stderr, flush=True)
    return callbacks



def add_coupled_weight_decay(model, weight_decay: float) -> None:
    """The papers' (PyTorch's) weight decay: gradient += wd·w on every trainable weight.

    Keras' ``SGD(weight_decay=...)`` is decoupled (it bypasses momentum, ~10× weaker at
    momentum 0.9), so the recipes' decay is attached as an L2 regularizer wd/2·‖w‖² to each
    trainable variable instead, composed with any regularizer already there (the pruning
    penalties). It lives on the variables, not in the saved config: every stage adds it again.
    """
    import keras

    from keras_tpp.penalties import RegularizerSum

    if not weight_decay:
        return
    decay = keras.regularizers.L2(weight_decay / 2)
    for variable in model.trainable_variables:
        existing = variable.regularizer
        variable.regularizer = decay if existing is None else RegularizerSum([existing, decay])


def sgd(learning_rate):
    """SGD with momentum 0.9 (the papers' optimizer); ``learning_rate`` may be a schedule."""
    import keras

    return keras.optimizers.SGD(learning_rate, momentum=0.9)


def compile_classifier(model, optimizer, weight_decay: float = 0.0) -> None:
    """Compile for integer labels and logits (accuracy metric), adding coupled weight decay."""
    import keras

    add_coupled_weight_decay(model, weight_decay)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def pruning_method(config: "RunConfig"):
    """The keras_tpp method object of ``config.method`` with the options it takes from
    ``config`` (GReg's ``stop_ratio``, ``pick_delta``, ``pick_ceiling``, ``kept_strength``)."""
    import inspect

    from keras_tpp import methods

    cls = methods.METHODS.get(config.method)
    if cls is None:  # get_method's error lists the valid names
        return methods.get_method(config.method)
    accepted = inspect.signature(cls.__init__).parameters
    options = {k: getattr(config, k) for k in accepted if k != "self" and hasattr(config, k)}
    return methods.get_method(config.method, options)


def pruning_schedule(config: "RunConfig"):
    """The growing-penalty schedule of ``config`` (Δ, K_u, τ, K_s)."""
    from keras_tpp.penalty_schedule import PenaltySchedule

    c = config
    return PenaltySchedule(delta=c.delta, interval=c.interval, ceiling=c.ceiling,
                           stabilize_steps=c.stabilize_steps)


def schedule_epochs_needed(config: "RunConfig", steps_per_epoch: int) -> int:
    """Epochs that surely reach the pruned phase of the method's schedule (training stops
    there): the method's :meth:`~keras_tpp.methods.PruningMethod.last_step` plus one step."""
    steps = pruning_method(config).last_step(pruning_schedule(config))
    if steps == 0:
        return 1
    # Margin: under mixed precision, dynamic loss scaling skips steps with non-finite
    # gradients (at least a few at the start). Training stops at the pruned phase anyway.
    import keras

    margin = 64 if keras.mixed_precision.global_policy().name.startswith("mixed") else 0
    return max(1, math.ceil((steps + 2 + margin) / steps_per_epoch) + 1)


def pruning_callback(config: "RunConfig", stop_when_pruned: bool = True):
    """keras_tpp.PruningCallback with ``config``'s schedule (Δ, K_u, τ, K_s); the method's
    own options travel with the prepared model."""
    import keras_tpp

    c = config
    return keras_tpp.PruningCallback(
        delta=c.delta, interval=c.interval, ceiling=c.ceiling,
        stabilize_steps=c.stabilize_steps, stop_when_pruned=stop_when_pruned,
        verbose=1 if c.verbose else 0)


def cardinality(ds) -> int | None:
    """A tf.data.Dataset's known number of elements, or None."""
    n = int(ds.cardinality())
    return n if n >= 0 else None



def label_masks(masks: dict) -> dict:
    """{layer path: {"removed": [channel indices], "kept": n, "of": N}} from keep-masks."""
    import numpy as np

    out = {}
    for name, mask in masks.items():
        mask = np.asarray(mask, bool).reshape(-1)
        out[name] = {"removed": [int(i) for i in np.flatnonzero(~mask)],
                     "kept": int(mask.sum()), "of": int(mask.size)}
    return out


def dump_state(pmodel, strategy, strength: float, path: str) -> None:
    """(Debugging) Writes every weight of ``pmodel`` (each replica's copy), λ, the
    enforced flags, the iteration count and the replica count to the .npz ``path``."""
    import numpy as np

    from keras_tpp.wrappers import find_wrappers

    arrays = {}
    for i, variable in enumerate(pmodel.weights):
        values = strategy.experimental_local_results(variable.value)
        for r, value in enumerate(values):
            arrays[f"{i:03d}:{variable.path}@replica{r}"] = np.asarray(value)
    arrays["iterations"] = np.asarray(int(pmodel.optimizer.iterations.numpy()))
    arrays["prune_lambda"] = np.asarray(strength)
    arrays["enforced"] = np.asarray(
        [float(np.min(strategy.experimental_local_results(w.enforce.value)))
         for w in find_wrappers(pmodel)])
    arrays["num_replicas"] = np.asarray(strategy.num_replicas_in_sync)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **arrays)


def finetune_schedule(config: "RunConfig", spec, steps_per_epoch: int):
    """The fine-tuning learning-rate schedule of ``config.ft_schedule``.

    tpp: the papers' recipe (``spec.finetune_recipe``) when ``ft_epochs`` is its length,
    else LR ×0.1 at ``spec.finetune_boundaries`` (fractions of ``ft_epochs``); ft / lrw /
    slr / clr: Le & Hua's retraining schedules, with the pretraining schedule (``lr``,
    ``epochs``, ``spec.pretrain_boundaries``) as the original one.

    Args:
      config: the run's settings.
      spec: the script's :class:`~keras_tpp.experiments.runner.ScriptSpec`.
      steps_per_epoch: optimizer steps per epoch.
    """
    from keras_tpp import lr_schedules
    from keras_tpp.experiments.config import blame

    c, spe, budget = config, steps_per_epoch, config.ft_epochs
    kind = c.ft_schedule
    if kind == "tpp":
        lr = c.ft_lr if c.ft_lr is not None else 0.01
        if budget == spec.tpp_recipe_epochs:
            return lr_schedules.tpp_finetune_schedule(
                spe, dataset=spec.finetune_recipe, initial_lr=lr)
        return lr_schedules.StepDecay(lr, [f * budget for f in spec.finetune_boundaries], 0.1,
                                      spe)
    original = dict(original_lr=c.lr, original_epochs=c.epochs,
                    original_boundaries=[f * c.epochs for f in spec.pretrain_boundaries])
    kwargs = {}
    if c.ft_lr is not None:
        if kind == "ft":
            kwargs["learning_rate"] = c.ft_lr
        else:  # slr / clr: the peak
            original["original_lr"] = c.ft_lr
    with blame("ft_schedule"):
        return lr_schedules.retraining_schedule(
            kind, budget_epochs=budget, steps_per_epoch=spe, **original, **kwargs)
