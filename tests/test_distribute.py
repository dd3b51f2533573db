"""Tests for keras_tpp.distribute: strategies, the custom loop, multi-worker, resume.

Also runnable as a script: ``python tests/test_distribute.py --worker ...`` is one worker
process of the two-process MultiWorkerMirroredStrategy test.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from multiworker import run_workers

pytestmark = pytest.mark.tf_only(reason="tf.distribute strategies and the multi-worker trainer")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH = 16
NUM_EXAMPLES = 64  # 4 global steps per epoch


# --------------------------------------------------------------------------- shared setup


def _mask_constraint_cls():
    import keras

    class ChannelMask(keras.constraints.Constraint):
        """Zeroes the masked output channels, like keras_tpp's mask constraints."""

        def __init__(self, mask):
            self.mask = np.asarray(mask, np.float32)

        def __call__(self, w):
            return w * keras.ops.convert_to_tensor(self.mask, dtype=w.dtype)

    return ChannelMask


def _scheduled_l2_cls():
    import keras

    class ScheduledL2(keras.regularizers.Regularizer):
        """L2 whose strength is a keras.Variable assigned by a callback between steps."""

        def __init__(self, strength):
            self.strength = strength

        def __call__(self, w):
            return self.strength * keras.ops.sum(keras.ops.square(w))

    return ScheduledL2


def _build_model(seed: int = 0, with_schedule: bool = True):
    """A small conv net without BatchNorm (so replica splits cannot change the math), with
    an L2 kernel regularizer, a channel-mask constraint and a scheduled regularizer."""
    import keras

    keras.utils.set_random_seed(seed)
    strength = keras.Variable(0.0, trainable=False, name="lam")
    mask = np.ones(8, np.float32)
    mask[[1, 5]] = 0.0
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv1",
                            kernel_regularizer=keras.regularizers.L2(1e-3),
                            kernel_constraint=_mask_constraint_cls()(mask))(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(10, name="head",
                           kernel_regularizer=_scheduled_l2_cls()(strength)
                           if with_schedule else None)(x)
    model = keras.Model(inputs, x)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.strength = strength
    return model


def _build_prepared_model(seed: int = 11):
    """keras_tpp.prepare(method="tpp") on a conv net with synchronized BatchNorm: pruning
    penalties arrive as regularizers (model.losses), masks as variable constraints."""
    import keras

    import keras_tpp

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    h = inputs
    for i in (1, 2):
        h = keras.layers.Conv2D(8, 3, padding="same", name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(synchronized=True, name=f"bn{i}")(h)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="classifier")(h))
    pmodel = keras_tpp.prepare(model, 0.5, method="tpp")
    pmodel.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    return pmodel


def _build_sparse_model(seed: int = 12):
    """keras_tpp.prepare(method="granet") on a conv net without BatchNorm."""
    import keras

    import keras_tpp

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="classifier")(h))
    pmodel = keras_tpp.prepare(model, 0.8, method="granet")
    pmodel.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return pmodel


def _sparse_callback():
    import keras_tpp

    return keras_tpp.SparseTrainingCallback(total_steps=8, prune_end_step=4,
                                            update_frequency=2)


def _masks(model):
    import keras_tpp

    return [m for _, m in sorted(keras_tpp.get_masks(model).items())]


def _tpp_callback():
    import keras_tpp

    return keras_tpp.TPPCallback(delta=0.1, interval=1, ceiling=0.5, stabilize_steps=2)


def _schedule_callback():
    import keras

    class Schedule(keras.callbacks.Callback):
        """Like keras_tpp's schedule: reads optimizer.iterations, assigns a Variable, adds logs."""

        def on_train_batch_begin(self, batch, logs=None):
            it = int(self.model.optimizer.iterations.numpy())
            self.model.strength.assign(0.01 * it)

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["lam"] = float(self.model.strength.numpy())

    return Schedule()


def _dataset(training: bool = True, seed: int = 0, shuffle: bool | None = None,
             augment: bool | None = None):
    from keras_tpp.data import cifar_pipeline, synthetic_shapes

    x, y = synthetic_shapes(NUM_EXAMPLES, seed=3)
    return cifar_pipeline("train", source="arrays", arrays=(x, y), batch_size=GLOBAL_BATCH,
                          training=training, seed=seed, shuffle=shuffle, augment=augment)


def _weights(model):
    return [np.array(v.numpy()) for v in model.weights]


def _assert_weights_close(a, b, atol=1e-5):
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, atol=atol, rtol=1e-4)


# --------------------------------------------------------------------------- (a) mirrored


def test_get_strategy_names_and_errors():
    import pytest
    import tensorflow as tf

    from keras_tpp.distribute import get_strategy, is_chief, worker_info

    assert get_strategy("default") is tf.distribute.get_strategy()
    mirrored = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    assert get_strategy("one_device", devices=["/cpu:1"]).num_replicas_in_sync == 1
    assert worker_info(mirrored) == (None, 0, True) and is_chief(mirrored)
    with pytest.raises(ValueError, match="Unknown strategy 'gpu_cluster'"):
        get_strategy("gpu_cluster")
    with pytest.raises(ValueError, match="communication"):
        get_strategy("multi_worker", communication="carrier_pigeon")
    with pytest.raises(RuntimeError, match="no TPU"):
        get_strategy("tpu", tpu="")


def test_loop_matches_fit_and_single_device_under_mirrored():
    from keras_tpp.distribute import DistributedTrainer, get_strategy

    strategy = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])

    results = {}
    for name in ("loop", "fit", "single"):
        # Not reshuffled/re-augmented: model.fit iterates the data once more than the loop
        # (to build its metrics), which would advance a reshuffling pipeline by one pass.
        data = _dataset(training=True, shuffle=False, augment=False)
        scope_strategy = strategy if name != "single" else get_strategy("default")
        with scope_strategy.scope():
            model = _build_model(seed=0)
        callbacks = [_schedule_callback()]
        if name == "loop":
            history = DistributedTrainer(model, strategy).fit(
                data, epochs=2, verbose=0, callbacks=callbacks, validation_data=_dataset(False))
        else:
            history = model.fit(data, epochs=2, verbose=0, callbacks=callbacks,
                                validation_data=_dataset(False))
        results[name] = (model, history.history)

    loop_model, loop_hist = results["loop"]
    fit_model, fit_hist = results["fit"]
    single_model, single_hist = results["single"]
    assert int(loop_model.optimizer.iterations.numpy()) == 2 * NUM_EXAMPLES // GLOBAL_BATCH
    assert int(fit_model.optimizer.iterations.numpy()) == 2 * NUM_EXAMPLES // GLOBAL_BATCH
    _assert_weights_close(_weights(loop_model), _weights(fit_model))
    _assert_weights_close(_weights(loop_model), _weights(single_model))
    assert set(loop_hist) == set(fit_hist) == {"loss", "accuracy", "val_loss",
                                               "val_accuracy", "lam"}
    for key in loop_hist:
        np.testing.assert_allclose(loop_hist[key], fit_hist[key], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(loop_hist[key], single_hist[key], rtol=1e-4, atol=1e-6)

    # The mask constraint was applied after every update: masked channels exactly zero,
    # the others trained.
    kernel = loop_model.get_layer("conv1").kernel.numpy()
    assert np.all(kernel[..., [1, 5]] == 0.0)
    assert np.all(np.abs(kernel[..., [0, 2, 3, 4, 6, 7]]).sum(axis=(0, 1, 2)) > 0)
    # The regularizers are in model.losses and in the logged loss.
    assert len(loop_model.losses) == 2
    assert loop_hist["lam"][-1] > 0


def test_keras_tpp_prepare_and_tpp_callback_in_the_loop():
    """The library's own pieces: TPP penalties (model.losses), mask constraints and the
    TPPCallback schedule give the same run in the loop, in model.fit and on one device."""
    import keras_tpp
    from keras_tpp.distribute import DistributedTrainer, get_strategy

    strategy = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    runs = {}
    for name in ("loop", "fit", "single"):
        with (strategy if name != "single" else get_strategy("default")).scope():
            pmodel = _build_prepared_model()
        data = _dataset(training=True, shuffle=False, augment=False)
        if name == "loop":
            history = DistributedTrainer(pmodel, strategy).fit(
                data, epochs=2, callbacks=[_tpp_callback()], verbose=0)
        else:
            history = pmodel.fit(data, epochs=2, callbacks=[_tpp_callback()], verbose=0)
        runs[name] = (pmodel, history.history)
    loop_model, loop_hist = runs["loop"]
    assert loop_model.losses  # the penalties are regularizers
    for other in ("fit", "single"):
        _assert_weights_close(_weights(loop_model), _weights(runs[other][0]))
        assert set(loop_hist) == set(runs[other][1])
        for key in loop_hist:
            np.testing.assert_allclose(loop_hist[key], runs[other][1][key], rtol=1e-4,
                                       atol=1e-6)
    masks = keras_tpp.get_masks(loop_model)
    assert masks and all((~m).any() for m in masks.values())
    for name, mask in masks.items():
        kernel = loop_model.get_layer(name).layer.kernel.numpy()
        assert np.all(kernel[..., ~mask] == 0) and np.abs(kernel[..., mask]).sum() > 0


def test_regularizer_changes_result_and_evaluate_matches_keras():
    from keras_tpp.distribute import DistributedTrainer, get_strategy

    strategy = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    data = _dataset(training=False)
    finals = []
    for with_schedule in (True, False):
        with strategy.scope():
            model = _build_model(seed=0, with_schedule=with_schedule)
        model.strength.assign(0.5)  # strong penalty, constant
        trainer = DistributedTrainer(model)  # strategy inferred from the model
        assert trainer.strategy is strategy
        trainer.fit(data, epochs=1, verbose=0)
        finals.append(model.get_layer("head").kernel.numpy())
        logs = trainer.evaluate(data)
        keras_logs = model.evaluate(data, verbose=0, return_dict=True)
        assert set(logs) == set(keras_logs)
        for key in logs:
            np.testing.assert_allclose(logs[key], keras_logs[key], rtol=1e-4, atol=1e-6)
    # The scheduled L2 (present in the first model only) shrank the head kernel.
    assert np.linalg.norm(finals[0]) < np.linalg.norm(finals[1])


def test_evaluate_with_an_empty_replica_batch():
    """65 examples in global batches of 16: the last batch leaves one replica empty."""
    from keras_tpp.data import cifar_pipeline, synthetic_shapes
    from keras_tpp.distribute import DistributedTrainer, get_strategy

    strategy = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    x, y = synthetic_shapes(65, seed=0)
    data = cifar_pipeline("test", source="arrays", arrays=(x, y), batch_size=16,
                          training=False)
    with strategy.scope():
        model = _build_model(seed=2)
    logs = DistributedTrainer(model).evaluate(data)
    single = _build_model(seed=3)
    single.set_weights(model.get_weights())
    expected = single.evaluate(data, verbose=0, return_dict=True)
    assert set(logs) == set(expected)
    for key in logs:
        np.testing.assert_allclose(logs[key], expected[key], rtol=1e-5)


def test_steps_per_epoch_cycles_data_and_distribute_from_function():
    import tensorflow as tf

    from keras_tpp.data import cifar_pipeline, synthetic_shapes
    from keras_tpp.distribute import DistributedTrainer, get_strategy

    strategy = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    x, y = synthetic_shapes(NUM_EXAMPLES, seed=3)

    def dataset_fn(input_context: tf.distribute.InputContext):
        return cifar_pipeline("train", source="arrays", arrays=(x, y),
                              batch_size=GLOBAL_BATCH, training=True,
                              input_context=input_context)

    with strategy.scope():
        model = _build_model(seed=1)
    history = DistributedTrainer(model, strategy).fit(
        dataset_fn, epochs=3, steps_per_epoch=3, verbose=0)  # 9 steps over 4-step data
    assert int(model.optimizer.iterations.numpy()) == 9
    assert len(history.history["loss"]) == 3 and np.all(np.isfinite(history.history["loss"]))


# --------------------------------------------------------------------------- (c) resume


class _Interrupt(Exception):
    pass


def _interrupting_callback(epoch: int, batch: int):
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            if self._epoch == epoch and b == batch:
                raise _Interrupt()

        def on_epoch_begin(self, e, logs=None):
            self._epoch = e

    return Interrupt()


def _recorder():
    import keras

    class Recorder(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start_iterations = int(self.model.optimizer.iterations.numpy())
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(epoch)

    return Recorder()


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    import pytest

    from keras_tpp.distribute import DistributedTrainer, get_strategy

    strategy = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    # Data positions are not checkpointed (as with BackupAndRestore): use the same batches
    # in every epoch so that the resumed run can match the uninterrupted one exactly.
    data = _dataset(training=True, shuffle=False, augment=False)
    steps = NUM_EXAMPLES // GLOBAL_BATCH
    backup = str(tmp_path / "backup")

    with strategy.scope():
        reference = _build_model(seed=0)
    DistributedTrainer(reference).fit(data, epochs=3, verbose=0, callbacks=[_schedule_callback()])

    # Interrupted in the middle of the second epoch (epoch index 1, batch 2).
    with strategy.scope():
        model = _build_model(seed=0)
    with pytest.raises(_Interrupt):
        DistributedTrainer(model).fit(data, epochs=3, verbose=0, backup_dir=backup,
                                      callbacks=[_schedule_callback(),
                                                 _interrupting_callback(1, 2)])
    assert int(model.optimizer.iterations.numpy()) == steps + 2
    with open(os.path.join(backup, "training_metadata.json")) as f:
        assert json.load(f) == {"epoch": 1, "iterations": steps}

    # Restart "with the same arguments" in a fresh model with other initial weights.
    with strategy.scope():
        restarted = _build_model(seed=99)
    recorder = _recorder()
    history = DistributedTrainer(restarted).fit(
        data, epochs=3, verbose=0, backup_dir=backup,
        callbacks=[_schedule_callback(), recorder])
    assert recorder.start_iterations == steps  # restored before on_train_begin
    assert recorder.epochs == [1, 2]
    assert history.epoch == [1, 2]
    assert int(restarted.optimizer.iterations.numpy()) == 3 * steps
    _assert_weights_close(_weights(restarted), _weights(reference), atol=1e-6)
    assert not os.path.exists(backup)  # removed after a completed run


def test_damaged_newest_backup_falls_back_and_early_stop_is_recorded(tmp_path):
    import glob

    import keras
    import pytest

    from keras_tpp.distribute import DistributedTrainer, get_strategy

    strategy = get_strategy("default")
    data = _dataset(training=True, shuffle=False, augment=False)
    steps = NUM_EXAMPLES // GLOBAL_BATCH
    backup = str(tmp_path / "backup")
    with strategy.scope():
        model = _build_model(seed=0)
    with pytest.raises(_Interrupt):
        DistributedTrainer(model, strategy).fit(
            data, epochs=4, verbose=0, backup_dir=backup,
            callbacks=[_schedule_callback(), _interrupting_callback(2, 1)])
    # A kill while the newest checkpoint (epoch 2) was written: its data file is truncated.
    newest = glob.glob(os.path.join(backup, "ckpt-2.data-*"))[0]
    with open(newest, "r+b") as handle:
        handle.truncate(os.path.getsize(newest) // 2)
    with strategy.scope():
        restarted = _build_model(seed=99)
    recorder = _recorder()
    with pytest.warns(UserWarning, match="ckpt-2 is damaged"):
        DistributedTrainer(restarted, strategy).fit(
            data, epochs=4, verbose=0, backup_dir=backup, delete_backup=False,
            callbacks=[_schedule_callback(), recorder])
    assert recorder.start_iterations == steps  # epoch 1's checkpoint
    assert recorder.epochs == [1, 2, 3]

    # A run stopped early is recorded as finished: the rerun trains no further epoch.
    class StopAfterFirstBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model.stop_training = True

    stopped = str(tmp_path / "stopped")
    with strategy.scope():
        model = _build_model(seed=0)
    DistributedTrainer(model, strategy).fit(data, epochs=4, verbose=0, backup_dir=stopped,
                                            delete_backup=False,
                                            callbacks=[StopAfterFirstBatch()])
    with strategy.scope():
        again = _build_model(seed=1)
    recorder = _recorder()
    DistributedTrainer(again, strategy).fit(data, epochs=4, verbose=0, backup_dir=stopped,
                                            callbacks=[recorder])
    assert recorder.epochs == [] and recorder.start_iterations == 1


def test_keras_backup_and_restore_callback_is_honoured(tmp_path):
    import keras
    import pytest

    from keras_tpp.distribute import DistributedTrainer

    data = _dataset(training=True, shuffle=False, augment=False)
    steps = NUM_EXAMPLES // GLOBAL_BATCH
    reference = _build_model(seed=0, with_schedule=False)
    DistributedTrainer(reference).fit(data, epochs=2, verbose=0)

    model = _build_model(seed=0, with_schedule=False)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "kbackup"))
    with pytest.raises(_Interrupt):
        DistributedTrainer(model).fit(data, epochs=2, verbose=0,
                                      callbacks=[backup, _interrupting_callback(1, 0)])
    restarted = _build_model(seed=5, with_schedule=False)
    recorder = _recorder()
    DistributedTrainer(restarted).fit(
        data, epochs=2, verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "kbackup")), recorder])
    assert recorder.epochs == [1]
    assert int(restarted.optimizer.iterations.numpy()) == 2 * steps
    _assert_weights_close(_weights(restarted), _weights(reference), atol=1e-6)


def test_errors_for_uncompiled_model_and_bad_data():
    import keras
    import pytest

    from keras_tpp.distribute import DistributedTrainer

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="compile"):
        DistributedTrainer(model)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        DistributedTrainer(model).fit(np.zeros((4, 4)), epochs=1, verbose=0)


# --------------------------------------------------------------------------- (b) multi-worker


def test_multi_worker_two_processes_identical_weights(tmp_path):
    """Two worker processes (MultiWorkerMirroredStrategy over 127.0.0.1) train a few steps
    with the custom loop — a small model with a scheduled regularizer and a mask constraint,
    then a keras_tpp.prepare'd model with synchronized BN under TPPCallback, then GraNet sparse
    training. Both workers end with identical weights (and masks), equal to a single-process
    run with the same global batches (so the DATA auto-sharding split every global batch
    between the workers)."""
    backup = str(tmp_path / "backup")
    env = dict(os.environ)
    env.update({"PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
                "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
                "KERAS_BACKEND": "tensorflow"})
    run_workers(
        lambda index: [sys.executable, os.path.abspath(__file__), "--worker",
                       str(tmp_path / f"weights{index}.npz"), backup],
        env, tmp_path, cwd=REPO, timeout=120)
    w0 = np.load(tmp_path / "weights0.npz")
    w1 = np.load(tmp_path / "weights1.npz")
    assert sorted(w0.files) == sorted(w1.files)
    for key in w0.files:
        np.testing.assert_array_equal(w0[key], w1[key])
    steps = NUM_EXAMPLES // GLOBAL_BATCH
    assert int(w0["iterations"]) == 2 * steps

    # Same global batches in one process, default strategy.
    from keras_tpp.distribute import DistributedTrainer

    model = _build_model(seed=0)
    DistributedTrainer(model).fit(_dataset(training=True), epochs=2, verbose=0,
                                  callbacks=[_schedule_callback()])
    single = _weights(model)
    for i, w in enumerate(single):
        np.testing.assert_allclose(w0[f"w{i}"], w, atol=1e-5, rtol=1e-4)
    pmodel = _build_prepared_model()
    DistributedTrainer(pmodel).fit(_dataset(training=True), epochs=2, verbose=0,
                                   callbacks=[_tpp_callback()])
    for i, w in enumerate(_weights(pmodel)):
        np.testing.assert_allclose(w0[f"tpp{i}"], w, atol=1e-5, rtol=1e-4)
    # Sparse training (GraNet): both workers grew from the global batch's gradient.
    smodel = _build_sparse_model()
    DistributedTrainer(smodel).fit(_dataset(training=True), epochs=2, verbose=0,
                                   callbacks=[_sparse_callback()])
    for i, mask in enumerate(_masks(smodel)):
        np.testing.assert_array_equal(w0[f"mask{i}"], w1[f"mask{i}"])
        np.testing.assert_array_equal(w0[f"mask{i}"], mask)

    # The chief wrote the backup (worker 1 saved to a temporary directory, now deleted).
    with open(os.path.join(backup, "training_metadata.json")) as f:
        assert json.load(f) == {"epoch": 2, "iterations": 2 * steps}
    # The two newest checkpoints are kept (the older one is the fallback if the newest is
    # damaged); no worker's temporary directory is left in it.
    assert sorted(os.listdir(backup)) == [
        "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index",
        "ckpt-2.data-00000-of-00001", "ckpt-2.index", "training_metadata.json"]


def _worker_main(weights_path: str, backup_dir: str) -> None:
    """One worker of test_multi_worker_two_processes_identical_weights (TF_CONFIG set)."""
    sys.path.insert(0, REPO)
    from keras_tpp.distribute import DistributedTrainer, get_strategy, is_chief

    strategy = get_strategy("multi_worker")  # before any other TF op
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = _build_model(seed=0)
    trainer = DistributedTrainer(model, strategy)
    history = trainer.fit(_dataset(training=True), epochs=2, verbose=0,
                          validation_data=_dataset(training=False),
                          callbacks=[_schedule_callback()], backup_dir=backup_dir,
                          delete_backup=False)
    assert np.isfinite(history.history["val_loss"]).all()
    out = {f"w{i}": w for i, w in enumerate(_weights(model))}
    out["iterations"] = np.array(int(model.optimizer.iterations.numpy()))

    # keras_tpp's own pruning setup (synchronized BN, penalties, masks, TPPCallback).
    with strategy.scope():
        pmodel = _build_prepared_model()
    DistributedTrainer(pmodel, strategy).fit(
        _dataset(training=True), epochs=2, verbose=0, callbacks=[_tpp_callback()])
    out.update({f"tpp{i}": w for i, w in enumerate(_weights(pmodel))})
    with strategy.scope():
        smodel = _build_sparse_model()
    DistributedTrainer(smodel, strategy).fit(
        _dataset(training=True), epochs=2, verbose=0, callbacks=[_sparse_callback()])
    out.update({f"mask{i}": m for i, m in enumerate(_masks(smodel))})
    np.savez(weights_path, **out)
    print("worker done; chief:", is_chief(strategy), history.history, flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("usage: test_distribute.py --worker WEIGHTS.npz BACKUP_DIR")
