"""DistributedTrainer: fit / evaluate for a compiled Keras 3 model under any tf.distribute
strategy, multi-worker included (see :mod:`keras_tpp.distribute`)."""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings

import keras
import tensorflow as tf

from keras_tpp import keras_internals
from keras_tpp.experiments.atomic import atomic_write_json
from keras_tpp.distribute.batches import (
    first_leaf,
    is_distributed_dataset,
    local_spec,
    pad_empty_batch,
    per_example_loss_fn,
    pythonify,
    unpack,
)
from keras_tpp.distribute.strategies import is_chief, worker_info


class DistributedTrainer:
    """``fit`` / ``evaluate`` for a compiled Keras 3 model under any tf.distribute strategy.

    Usage (same callbacks and data as ``model.fit``)::

        strategy = get_strategy("multi_worker")        # first thing in the program
        train = cifar_pipeline("train", batch_size=GLOBAL_BATCH, training=True, ...)
        with strategy.scope():
            model = cifar_resnet(56)
            model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
        trainer = DistributedTrainer(model, strategy)
        history = trainer.fit(train, epochs=10, validation_data=test,
                              callbacks=[...], backup_dir="runs/x/backup")

    Args:
      model: a built, compiled (single-output) Keras model created in ``strategy.scope()``.
      strategy: the strategy; default = the one the model was created under.
      checkpoint_objects: extra trackables (``{"name": obj}``, e.g. ``keras.Variable`` s of a
        schedule) to save and restore with ``backup_dir``.
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy | None = None,
                 *, checkpoint_objects: dict | None = None):
        if getattr(model, "optimizer", None) is None:
            raise ValueError("DistributedTrainer: call model.compile(optimizer=..., loss=..., "
                             "metrics=...) inside strategy.scope() first.")
        model_strategy = getattr(model, "distribute_strategy", None)
        self.strategy = strategy or model_strategy or tf.distribute.get_strategy()
        created_under = getattr(model, "_distribute_strategy", None)
        if created_under is not None and created_under is not self.strategy:
            raise ValueError("The model was created under a different strategy's scope than "
                             "the one given to DistributedTrainer.")
        if created_under is None and self.strategy.num_replicas_in_sync > 1:
            raise ValueError("Create and compile the model inside strategy.scope() to train "
                             f"it on {self.strategy.num_replicas_in_sync} replicas.")
        self.model = model
        self.checkpoint_objects = dict(checkpoint_objects or {})
        self._loss_fn = per_example_loss_fn(model)
        self._train_function = None
        self._test_function = None
        self._checkpoint = None
        self._epoch_var = None

    # ----------------------------------------------------------------- building

    @property
    def _metrics(self):
        return keras_internals.compile_metrics(self.model)

    def _build(self, element_spec):
        """Builds model, compiled metrics and optimizer from the data's element spec."""
        model = self.model
        spec = local_spec(element_spec)
        with self.strategy.scope():
            metrics = self._metrics
            need = (not model.built or (metrics is not None and not metrics.built))
            if need:
                symbolic_build = keras_internals.symbolic_build_function(model)
                if symbolic_build is None:  # pragma: no cover - older/newer Keras
                    raise RuntimeError("Build the model and its metrics before training.")
                symbolic_build(data_batch=spec)
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)

    def _metric_zeros(self):
        metrics = self._metrics
        if metrics is None:
            return []
        return [tf.zeros(v.shape, v.dtype) for v in metrics.variables]

    def _metric_results(self, state):
        metrics = self._metrics
        if metrics is None or not metrics.variables:
            return {}
        result = metrics.stateless_result(list(state))
        if not isinstance(result, dict):
            result = {metrics.name: result}
        flat = {}
        for key, value in result.items():
            if isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        return flat

    def _step_values(self, batch, training: bool):
        """Replica step: forward (+ backward); returns values to be summed over replicas."""
        model = self.model
        x, y, sample_weight = unpack(batch)
        ctx = tf.distribute.get_replica_context()
        local_n = tf.shape(first_leaf(x))[0]
        global_n = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(local_n, tf.float32))
        global_n = tf.cast(tf.round(global_n), tf.int64)
        loss_weight, empty = sample_weight, None
        if not training:
            # The last evaluation batch can leave a replica with no example, and Keras layers
            # fail on empty batches: run one zero example instead and drop its contribution.
            x, y, sample_weight, loss_weight, empty = pad_empty_batch(
                x, y, sample_weight, local_n)

        with tf.GradientTape() as tape:
            y_pred = model(x, training=training)
            per_example = self._loss_fn(y, y_pred)
            data_loss = tf.nn.compute_average_loss(
                per_example, sample_weight=loss_weight, global_batch_size=global_n)
            losses = model.losses
            if losses:
                reg = tf.add_n([tf.cast(l, data_loss.dtype) for l in losses])
                reg_loss = tf.nn.scale_regularization_loss(reg)
            else:
                reg_loss = tf.zeros((), data_loss.dtype)
            loss = data_loss + reg_loss
            if training:
                scaled = model.optimizer.scale_loss(loss)
        if training:
            variables = model.trainable_variables
            grads = tape.gradient(scaled, variables)
            model.optimizer.apply_gradients(zip(grads, variables))
        metric_delta = []
        metrics = self._metrics
        if metrics is not None and metrics.variables:
            metric_delta = metrics.stateless_update_state(
                self._metric_zeros(), y, y_pred, sample_weight=sample_weight)
            if empty is not None:  # metric states start at zero: zero the dummy's delta
                metric_delta = [tf.where(empty, tf.zeros_like(d), d) for d in metric_delta]
        # ``loss`` summed over replicas = the global batch's mean loss + regularization.
        n = tf.cast(local_n, tf.float32)
        return loss, n, list(metric_delta)

    def _make_function(self, training: bool):
        strategy = self.strategy

        def function(batch, loss_state, metric_state):
            loss, n, delta = strategy.run(self._step_values, args=(batch, training))
            loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
            n = strategy.reduce(tf.distribute.ReduceOp.SUM, n, axis=None)
            delta = [strategy.reduce(tf.distribute.ReduceOp.SUM, d, axis=None) for d in delta]
            loss_state = (loss_state[0] + loss * n, loss_state[1] + n)
            metric_state = [s + d for s, d in zip(metric_state, delta)]
            logs = {"loss": tf.math.divide_no_nan(loss_state[0], loss_state[1])}
            logs.update(self._metric_results(metric_state))
            return loss_state, metric_state, logs

        # Batches are fetched eagerly by the caller: a get_next that fails inside the
        # function could still let unordered side effects (iterations += 1) run.
        return tf.function(function, reduce_retracing=True)

    def _distribute(self, data):
        if data is None:
            return None, None
        if is_distributed_dataset(data):
            return data, data.element_spec
        if isinstance(data, tf.data.Dataset):
            return self.strategy.experimental_distribute_dataset(data), data.element_spec
        if callable(data):
            dist = self.strategy.distribute_datasets_from_function(data)
            return dist, dist.element_spec
        raise TypeError(
            "DistributedTrainer takes a tf.data.Dataset of GLOBAL batches, a function "
            "input_context -> per-replica dataset, or a distributed dataset; got "
            f"{type(data).__name__}.")

    @staticmethod
    def _cardinality(data):
        if isinstance(data, tf.data.Dataset):
            n = int(data.cardinality())
            return n if n >= 0 else None
        return None

    def _initial_state(self):
        return (tf.constant(0.0), tf.constant(0.0)), self._metric_zeros()

    # ----------------------------------------------------------------- checkpoints

    def _get_checkpoint(self):
        if self._checkpoint is None:
            with self.strategy.scope():
                self._epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False,
                                              name="backup_epoch")
            self._checkpoint = tf.train.Checkpoint(
                model=self.model, optimizer=self.model.optimizer, epoch=self._epoch_var,
                **self.checkpoint_objects)
        return self._checkpoint

    def _restore_backup(self, backup_dir):
        """Restores the newest readable backup in ``backup_dir``; returns the epoch to start
        at (None: no usable backup). A damaged checkpoint (a kill while it was written, a
        truncated file) is skipped with a warning naming it; the previous one is used."""
        ckpt = self._get_checkpoint()
        state = tf.train.get_checkpoint_state(backup_dir)
        paths = list(state.all_model_checkpoint_paths) if state is not None else []
        for path in reversed(paths):
            try:
                reader = tf.train.load_checkpoint(path)
                for key in reader.get_variable_to_shape_map():
                    reader.get_tensor(key)  # reads every tensor: checks sizes and CRCs
            except (tf.errors.OpError, ValueError, IndexError, OSError) as err:
                warnings.warn(f"Backup checkpoint {path} is damaged ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}); trying an older one.")
                continue
            ckpt.restore(path).assert_existing_objects_matched()
            return int(self._epoch_var.numpy())
        return None

    def _save_backup(self, backup_dir, epoch):
        """All workers save (saving may need collectives); only the chief's copy is kept."""
        ckpt = self._get_checkpoint()
        self._epoch_var.assign(epoch)
        task_type, task_id, chief = worker_info(self.strategy)
        # Non-chief workers write to a private local temporary directory that is deleted
        # right away (outside backup_dir, so the chief's clean-up can never race with it).
        write_dir = backup_dir if chief else tempfile.mkdtemp(
            prefix=f"keras_tpp_backup_{task_type}_{task_id}_")
        # Two checkpoints are kept: if the newest is damaged, the one before is restored.
        manager = tf.train.CheckpointManager(ckpt, write_dir, max_to_keep=2)
        manager.save(checkpoint_number=epoch)
        if chief:
            atomic_write_json(os.path.join(backup_dir, "training_metadata.json"),
                              {"epoch": int(epoch),
                               "iterations": int(self.model.optimizer.iterations.numpy())})
        else:
            shutil.rmtree(write_dir, ignore_errors=True)

    # ----------------------------------------------------------------- public API

    def fit(
        self,
        x,
        *,
        epochs: int = 1,
        verbose="auto",
        callbacks=None,
        validation_data=None,
        initial_epoch: int = 0,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        validation_freq: int = 1,
        backup_dir: str | None = None,
        delete_backup: bool = True,
    ) -> keras.callbacks.History:
        """Trains like ``model.fit``; returns the ``keras.callbacks.History``.

        Args:
          x: ``tf.data.Dataset`` of GLOBAL ``(x, y[, sample_weight])`` batches (distributed
            with ``strategy.experimental_distribute_dataset``), or a function
            ``input_context -> dataset`` of per-replica batches (distributed with
            ``strategy.distribute_datasets_from_function``), or a distributed dataset.
            Every replica must get at least one example per training step (batch with
            ``drop_remainder=True``, the default of keras_tpp's training pipelines);
            evaluation handles empty replica batches.
          epochs, initial_epoch, steps_per_epoch, validation_data, validation_steps,
            validation_freq, callbacks, verbose: as in ``model.fit`` (``verbose="auto"``
            shows a progress bar on the chief only). With
            ``steps_per_epoch`` the iterator is kept across epochs and restarted whenever
            the data runs out; without it an epoch is one pass over ``x``.
          backup_dir: enables fault tolerance: after every epoch the model, optimizer
            (incl. ``iterations``), epoch number and ``checkpoint_objects`` are saved there;
            a run restarted with the same arguments resumes after the last completed epoch.
            Multi-worker: every worker must see the same ``backup_dir`` (shared filesystem);
            the chief writes it, the other workers save to local temporary directories that
            are deleted at once (saving is collective, so every worker must take part).
            Data iterators are not saved (as with ``BackupAndRestore``): a resumed epoch
            starts a fresh pass over ``x``. The two newest checkpoints are kept; a damaged
            one is skipped with a warning. A run stopped early (``stop_training``) is
            recorded as finished, so a rerun restores it and trains no further.
          delete_backup: remove ``backup_dir`` when training completes normally (as Keras'
            BackupAndRestore does). Pass False, and remove it yourself once the trained model
            is saved, if a kill between the end of ``fit`` and your save must lose nothing.

        A ``keras.callbacks.BackupAndRestore`` in ``callbacks`` also works for single-process
        strategies (its restored epoch is honoured); use ``backup_dir`` for multi-worker.
        """
        model = self.model
        if validation_freq < 1:
            raise ValueError(f"validation_freq must be >= 1, got {validation_freq}.")
        train_dist, spec = self._distribute(x)
        val_dist, _ = self._distribute(validation_data)
        self._build(spec)
        if self._train_function is None:
            self._train_function = self._make_function(training=True)

        if backup_dir is not None:
            os.makedirs(backup_dir, exist_ok=True)
            restored = self._restore_backup(backup_dir)
            if restored is not None:
                initial_epoch = max(int(initial_epoch), restored)

        steps = steps_per_epoch or self._cardinality(x)
        if verbose == "auto":  # a progress bar on the chief only
            verbose = 1 if is_chief(self.strategy) else 0
        callback_list = callbacks
        if not isinstance(callback_list, keras.callbacks.CallbackList):
            callback_list = keras.callbacks.CallbackList(
                callbacks, add_history=True, add_progbar=verbose != 0, model=model,
                verbose=verbose, epochs=epochs, steps=steps)
        history = next((c for c in callback_list.callbacks
                        if isinstance(c, keras.callbacks.History)), None)

        model.stop_training = False
        callback_list.on_train_begin()
        if any(isinstance(c, keras.callbacks.BackupAndRestore)
               for c in callback_list.callbacks):
            initial_epoch = max(initial_epoch, int(getattr(model, "_initial_epoch", None) or 0))

        iterator = None
        training_logs = None
        logs = {}
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            loss_state, metric_state = self._initial_state()
            if iterator is None or steps_per_epoch is None:
                iterator, fresh = iter(train_dist), True
            step = 0
            while steps_per_epoch is None or step < steps_per_epoch:
                try:
                    batch = next(iterator)
                except (StopIteration, tf.errors.OutOfRangeError):
                    if steps_per_epoch is None:
                        break
                    if fresh:
                        warnings.warn("The training data is empty; stopping training.")
                        model.stop_training = True
                        break
                    iterator, fresh = iter(train_dist), True  # cycle the data
                    continue
                fresh = False
                callback_list.on_train_batch_begin(step)
                loss_state, metric_state, logs = self._train_function(
                    batch, loss_state, metric_state)
                callback_list.on_train_batch_end(step, logs)
                step += 1
                if model.stop_training:
                    break
            if step == 0:
                warnings.warn(f"Epoch {epoch} ran no training step (empty data?).")
            epoch_logs = pythonify(logs) if step else {}
            if val_dist is not None and (epoch + 1) % validation_freq == 0:
                val_logs = self._evaluate(val_dist, validation_steps, callback_list)
                epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
            callback_list.on_epoch_end(epoch, epoch_logs)
            training_logs = epoch_logs
            if backup_dir is not None:
                # Stopped early (e.g. stop_when_pruned): record the run as finished, so a
                # rerun after a kill restores it and trains no further epoch.
                self._save_backup(backup_dir, epochs if model.stop_training else epoch + 1)
            if model.stop_training:
                break

        if epochs > 0:
            with self.strategy.scope():
                model.optimizer.finalize_variable_values(model.trainable_weights)
        callback_list.on_train_end(logs=training_logs)
        if backup_dir is not None and delete_backup and is_chief(self.strategy):
            shutil.rmtree(backup_dir, ignore_errors=True)
        return history if history is not None else getattr(model, "history", None)

    def _evaluate(self, dist_data, steps, callback_list):
        if self._test_function is None:
            self._test_function = self._make_function(training=False)
        callback_list.on_test_begin()
        loss_state, metric_state = self._initial_state()
        logs = {}
        iterator = iter(dist_data)
        step = 0
        while steps is None or step < steps:
            try:
                batch = next(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                break
            callback_list.on_test_batch_begin(step)
            loss_state, metric_state, logs = self._test_function(
                batch, loss_state, metric_state)
            callback_list.on_test_batch_end(step, logs)
            step += 1
        logs = pythonify(logs)
        callback_list.on_test_end(logs)
        return logs

    def evaluate(self, x, *, steps: int | None = None, callbacks=None,
                 verbose=0) -> dict:
        """Evaluates like ``model.evaluate(..., return_dict=True)`` (works multi-worker).

        ``x`` as in :meth:`fit`. Returns ``{"loss": ..., <metric>: ...}``; ``loss``
        includes ``model.losses`` (regularization), as Keras does.
        """
        dist, spec = self._distribute(x)
        self._build(spec)
        callback_list = callbacks
        if not isinstance(callback_list, keras.callbacks.CallbackList):
            callback_list = keras.callbacks.CallbackList(
                callbacks, add_progbar=verbose != 0, model=self.model, verbose=verbose,
                epochs=1, steps=steps or self._cardinality(x))
        return self._evaluate(dist, steps, callback_list)


def train_loop(model: keras.Model, x, *, strategy=None, **fit_kwargs) -> keras.callbacks.History:
    """Shorthand for ``DistributedTrainer(model, strategy).fit(x, **fit_kwargs)``."""
    return DistributedTrainer(model, strategy).fit(x, **fit_kwargs)
