"""The pruning callback: schedule by iterations, logs, final masks, resume and distribution."""
import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_tpp
from keras_tpp import models
from keras_tpp.callbacks import LAMBDA_KEY, PHASE_KEY
from keras_tpp.distribute import get_strategy
from keras_tpp.penalty_schedule import PenaltySchedule
from keras_tpp.wrappers import find_wrappers


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16, 16, 3)).astype("float32")
    y = (x[:, :8].mean(axis=(1, 2, 3)) > x[:, 8:].mean(axis=(1, 2, 3))).astype("int64")
    return x, y


def _prepared(widths=(8, 8), ratio=0.5):
    model = models.small_cnn(num_classes=2, input_shape=(16, 16, 3), widths=widths)
    pmodel = keras_tpp.prepare(model, ratio, method="tpp")
    return model, pmodel


def _compile(model, steps_per_execution=1):
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], steps_per_execution=steps_per_execution)


class _Recorder(keras.callbacks.Callback):
    """Records (iteration, λ of the first wrapper, logged λ) after every batch callback."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        wrapper = find_wrappers(self.model)[0]
        self.rows.append((int(self.model.optimizer.iterations.numpy()),
                          float(wrapper.strength.numpy()), logs.get(LAMBDA_KEY),
                          logs.get(PHASE_KEY)))


def test_schedule_zeroes_pruned_filters_at_the_end():
    model, pmodel = _prepared()
    original = {n: model.get_layer(n).kernel.numpy() for n in ("conv1", "conv2")}
    _compile(pmodel)
    x, y = _data()
    cb = keras_tpp.TPPCallback(delta=0.05, interval=1, ceiling=0.5, stabilize_steps=4)
    history = pmodel.fit(x, y, batch_size=16, epochs=5, callbacks=[cb], verbose=0)
    masks = keras_tpp.get_masks(pmodel)
    for name, mask in masks.items():
        kernel = pmodel.get_layer(name).layer.kernel.numpy()
        bias = pmodel.get_layer(name).layer.bias.numpy()
        assert np.all(kernel[..., ~mask] == 0) and np.all(bias[~mask] == 0)
        assert np.all(np.abs(kernel[..., mask]).sum(axis=(0, 1, 2)) > 0)
        bn = pmodel.get_layer(name.replace("conv", "bn")).layer
        assert np.all(bn.gamma.numpy()[~mask] == 0) and np.all(bn.beta.numpy()[~mask] == 0)
        # The pruned filters are the L1-smallest of the original weights.
        l1 = np.abs(original[name]).mean(axis=(0, 1, 2))
        expected = np.sort(np.argsort(l1)[: int(np.ceil(0.5 * len(l1)))])
        np.testing.assert_array_equal(np.flatnonzero(~mask), expected)
    # 20 iterations: ramp ends at 10, pruning starts at 14.
    assert history.history[LAMBDA_KEY][-1] == 0.5
    assert history.history[PHASE_KEY] == [0.0, 0.0, 1.0, 2.0, 2.0]


def test_lambda_follows_optimizer_iterations_with_steps_per_execution():
    _, pmodel = _prepared()
    _compile(pmodel, steps_per_execution=3)
    x, y = _data(96)
    cb = keras_tpp.TPPCallback(delta=0.01, interval=2, ceiling=1.0, stabilize_steps=100)
    rec = _Recorder()
    pmodel.fit(x, y, batch_size=8, epochs=2, callbacks=[cb, rec], verbose=0)
    schedule = PenaltySchedule(delta=0.01, interval=2, ceiling=1.0, stabilize_steps=100)
    iterations = [row[0] for row in rec.rows]
    assert iterations == list(range(3, 25, 3))  # the callback sees every third batch
    for step, strength, logged, phase in rec.rows:
        assert strength == pytest.approx(schedule.strength(step), abs=1e-7)
        assert logged == pytest.approx(schedule.strength(step), abs=1e-7)
        assert phase == 0.0


def test_logs_reach_history_and_csv(tmp_path):
    _, pmodel = _prepared()
    _compile(pmodel)
    x, y = _data(32)
    path = os.path.join(tmp_path, "log.csv")
    cb = keras_tpp.TPPCallback(delta=0.1, interval=1, ceiling=1.0, stabilize_steps=0)
    pmodel.fit(x, y, batch_size=16, epochs=3, verbose=0,
               callbacks=[cb, keras.callbacks.CSVLogger(path)])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [float(r[LAMBDA_KEY]) for r in rows] == pytest.approx([0.2, 0.4, 0.6])
    assert [float(r[PHASE_KEY]) for r in rows] == [0.0, 0.0, 0.0]


def test_callback_refuses_unprepared_model_and_bad_arguments():
    model = models.small_cnn(num_classes=2, input_shape=(16, 16, 3), widths=(4,))
    _compile(model)
    x, y = _data(16)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="not prepared"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[keras_tpp.TPPCallback()])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for kwargs in ({"delta": 0}, {"interval": -1}, {"ceiling": -1.0},
                   {"stabilize_steps": -5}, {"delta": None, "ramp_steps": None}):
        with pytest.raises(ValueError):
            keras_tpp.TPPCallback(**kwargs)


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_iteration):
        super().__init__()
        self.at = at_iteration

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.at:
            raise RuntimeError("simulated interruption")


def _resume_run(backup_dir, interrupt_at=None):
    keras.utils.set_random_seed(7)
    _, pmodel = _prepared()
    _compile(pmodel)
    x, y = _data(48, seed=3)
    callbacks = [keras.callbacks.BackupAndRestore(backup_dir),
                 keras_tpp.TPPCallback(delta=0.05, interval=1, ceiling=0.3,
                                       stabilize_steps=5)]
    if interrupt_at is not None:
        callbacks.append(_Interrupt(interrupt_at))
    pmodel.fit(x, y, batch_size=8, epochs=4, shuffle=False, callbacks=callbacks, verbose=0)
    return pmodel


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    reference = _resume_run(os.path.join(tmp_path, "ref"))
    backup = os.path.join(tmp_path, "backup")
    with pytest.raises(RuntimeError, match="simulated"):
        _resume_run(backup, interrupt_at=15)  # inside epoch 3 (6 steps per epoch)
    resumed = _resume_run(backup)
    assert int(resumed.optimizer.iterations.numpy()) == 24
    for a, b in zip(find_wrappers(reference), find_wrappers(resumed)):
        assert float(a.strength.numpy()) == float(b.strength.numpy()) == pytest.approx(0.3)
        assert float(b.enforce.numpy()) == 1.0
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _sync_bn_model():
    # Plain BN normalizes with per-replica batch statistics; synchronized BN makes the
    # two-replica run the same computation as one device with the same global batch.
    inputs = keras.Input((16, 16, 3))
    x = inputs
    for i in (1, 2):
        x = keras.layers.Conv2D(8, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(synchronized=True, name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="classifier")(x))


def _distributed_run(strategy):
    keras.utils.set_random_seed(11)
    with strategy.scope():
        pmodel = keras_tpp.prepare(_sync_bn_model(), 0.5, method="tpp")
        _compile(pmodel)
    x, y = _data(64, seed=5)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    rec = _Recorder()
    cb = keras_tpp.TPPCallback(delta=0.1, interval=1, ceiling=0.5, stabilize_steps=2)
    pmodel.fit(ds, epochs=2, callbacks=[cb, rec], verbose=0)
    return pmodel, rec.rows


def test_mirrored_strategy_matches_one_device():
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2
    single, rows1 = _distributed_run(tf.distribute.OneDeviceStrategy("/cpu:0"))
    # One MirroredStrategy per device set and process (two can mix up their collectives).
    mirrored, rows2 = _distributed_run(
        get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"]))
    assert [r[:2] for r in rows1] == [r[:2] for r in rows2]
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for name, mask in keras_tpp.get_masks(mirrored).items():
        assert np.all(mirrored.get_layer(name).layer.kernel.numpy()[..., ~mask] == 0)


def test_stop_when_pruned_ends_training_at_the_pruned_phase():
    _, pmodel = _prepared()
    _compile(pmodel)
    x, y = _data(64)
    cb = keras_tpp.TPPCallback(delta=0.25, interval=1, ceiling=1.0, stabilize_steps=2,
                               stop_when_pruned=True)
    history = pmodel.fit(x, y, batch_size=16, epochs=50, callbacks=[cb], verbose=0)
    # Ramp ends at iteration 4, pruning starts at 6: training stops in epoch 2 (4 steps each).
    assert len(history.history["loss"]) == 2
    assert int(pmodel.optimizer.iterations.numpy()) == 6
    assert history.history[PHASE_KEY][-1] == 2.0


def test_schedule_values_reach_tensorboard(tmp_path):
    _, pmodel = _prepared()
    _compile(pmodel)
    x, y = _data(32)
    cb = keras_tpp.TPPCallback(delta=0.1, interval=1, ceiling=1.0, stabilize_steps=0)
    log_dir = os.path.join(tmp_path, "tb")
    pmodel.fit(x, y, batch_size=16, epochs=2, verbose=0,
               callbacks=[cb, keras.callbacks.TensorBoard(log_dir)])
    values = {}
    train_dir = os.path.join(log_dir, "train")
    for name in os.listdir(train_dir):
        for record in tf.data.TFRecordDataset(os.path.join(train_dir, name)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if not value.tag.startswith("epoch_"):
                    continue  # e.g. the model graph
                values.setdefault(value.tag, []).append(
                    float(tf.make_ndarray(value.tensor)))
    assert values["epoch_prune_lambda"] == pytest.approx([0.2, 0.4])
    assert values["epoch_prune_phase"] == [0.0, 0.0]
