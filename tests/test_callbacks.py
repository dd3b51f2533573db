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


@pytest.mark.not_torch(reason="Keras' torch backend requires steps_per_execution=1")
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


@pytest.mark.tf_only(reason="tf.distribute.MirroredStrategy")
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


@pytest.mark.tf_only(reason="reads TensorBoard event files with tf.data.TFRecordDataset")
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


# -- prune_penalty, non-finite values, mixed precision ------------------------------------

def _np_quantized_lr(lr):
    return 2.0 ** (np.ceil(16 * np.log2(lr) - 1e-9) / 16)


def _np_prune_penalty(pmodel, lr):
    """TPP's penalty from the weights, written out in numpy (bounded gram weight)."""
    total = 0.0
    for wrapper in find_wrappers(pmodel):
        m = wrapper.keep_mask.numpy()
        lam = float(wrapper.strength.numpy())
        layer = wrapper.layer
        if wrapper.is_producer:
            kernel = layer.kernel.numpy().astype(np.float64)
            w = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)
            n = w.shape[0]
            g = w @ w.T
            gram = ((g * (1 - np.outer(m, m))) ** 2).sum() / n**2
            bound = 12 * min(np.sqrt((g**2).sum()), np.abs(g).sum(axis=1).max()) / n**2
            weight = min(1000.0 * lam, 1.0 / (_np_quantized_lr(lr) * bound))
            total += weight * gram
            per = (w**2).sum(axis=1) + layer.bias.numpy().astype(np.float64) ** 2
        else:
            per = layer.gamma.numpy().astype(np.float64) ** 2 \
                + layer.beta.numpy().astype(np.float64) ** 2
        total += 0.5 * lam * per[m == 0].sum()
    return total


def _regularized_cnn():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv1",
                            kernel_regularizer=keras.regularizers.L2(0.01))(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.Dense(2, name="classifier")(x))


def test_prune_penalty_is_logged_and_matches_numpy(tmp_path):
    pmodel = keras_tpp.prepare(_regularized_cnn(), 0.5, method="tpp")
    lr = 0.3  # large enough for the bound to cut the gram weight of some layer
    pmodel.compile(optimizer=keras.optimizers.SGD(lr),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32") * 3
    y = rng.integers(0, 2, 32)
    path = os.path.join(tmp_path, "log.csv")
    cb = keras_tpp.TPPCallback(delta=0.1, interval=1, ceiling=0.5, stabilize_steps=100,
                               penalty_log_interval=1)
    batch_logs = []
    rec = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: batch_logs.append(dict(logs)))
    history = pmodel.fit(x, y, batch_size=8, epochs=2, verbose=0,
                         callbacks=[cb, rec, keras.callbacks.CSVLogger(path)])
    expected = _np_prune_penalty(pmodel, lr)
    assert expected > 0
    assert history.history["prune_penalty"][-1] == pytest.approx(expected, rel=1e-5)
    assert batch_logs[-1]["prune_penalty"] == pytest.approx(expected, rel=1e-5)
    assert all(np.isfinite(row["prune_penalty"]) for row in batch_logs)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["prune_penalty"]) == pytest.approx(expected, rel=1e-5)
    # Keras' regularization losses = keras_tpp's penalties + the user's own L2.
    user_l2 = 0.01 * float(np.sum(pmodel.get_layer("conv1").layer.kernel.numpy() ** 2))
    total = float(sum(keras.ops.convert_to_numpy(v) for v in pmodel.losses))
    assert total == pytest.approx(expected + user_l2, rel=1e-5)
    assert keras_tpp.callbacks.prune_penalty(pmodel) == pytest.approx(expected, rel=1e-5)


class _Poison(keras.callbacks.Callback):
    """Writes a NaN into one layer's kernel at the end of a given train step."""

    def __init__(self, at, layer):
        super().__init__()
        self.at, self.layer = at, layer

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.at:
            variable = self.model.get_layer(self.layer).layer.kernel
            value = variable.numpy()
            value[0, 0, 0, 0] = np.nan
            variable.assign(value)


def test_non_finite_weights_stop_training_naming_layer_and_lambda():
    _, pmodel = _prepared()
    _compile(pmodel)
    x, y = _data(64)
    cb = keras_tpp.TPPCallback(delta=0.05, interval=1, ceiling=1.0, stabilize_steps=100,
                               check_interval=1)
    with pytest.raises(keras_tpp.NonFiniteError, match=r"conv2.*") as info:
        pmodel.fit(x, y, batch_size=8, epochs=2, verbose=0,
                   callbacks=[_Poison(5, "conv2"), cb])
    error = info.value
    assert isinstance(error, ValueError)
    assert error.layer == "conv2" and "kernel" in error.variable
    # λ is the one the diverging step trained with (set at iteration 4).
    assert error.iteration == 5 and error.strength == pytest.approx(0.2)
    assert "prune_lambda=0.2" in str(error) and "restore_last_finite" in str(error)
    assert error.last_finite_iteration == cb.last_finite_iteration == 4
    assert cb.restore_last_finite() == 4
    assert all(np.all(np.isfinite(w)) for w in pmodel.get_weights())


def test_non_finite_loss_is_caught_without_periodic_checks():
    _, pmodel = _prepared()
    _compile(pmodel)
    x, y = _data(64)
    cb = keras_tpp.TPPCallback(delta=0.05, interval=1, ceiling=1.0, stabilize_steps=2,
                               check_interval=0)
    with pytest.raises(keras_tpp.NonFiniteError) as info:
        pmodel.fit(x, y, batch_size=8, epochs=4, verbose=0,
                   callbacks=[_Poison(3, "conv2"), cb])
    # The poisoned step's loss was finite; the next one is not, and stops training there,
    # before the schedule reaches its pruned phase and zeroes (NaN) weights.
    assert info.value.iteration == 4 and info.value.layer is not None
    assert "No finite copy" in str(info.value)
    assert float(find_wrappers(pmodel)[0].enforce.numpy()) == 0.0


def _scaled_mse(y_true, y_pred):
    # y_true = (target, scale): a batch with scale = inf has non-finite gradients.
    y_pred = keras.ops.cast(y_pred, "float32")
    return keras.ops.mean(y_true[:, 1:2] * keras.ops.square(y_pred[:, :1] - y_true[:, :1]))


def test_schedule_advances_when_the_loss_scaler_skips_steps():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.small_cnn(num_classes=2, input_shape=(16, 16, 3), widths=(8, 8))
        pmodel = keras_tpp.prepare(model, 0.5, method="tpp")
        pmodel.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=_scaled_mse)
        assert isinstance(pmodel.optimizer, keras.optimizers.LossScaleOptimizer)
        x, _ = _data(96)
        y = np.ones((96, 2), "float32")
        skipped = [2, 5, 6, 9]  # batches of 8 whose gradients are infinite
        for b in skipped:
            y[8 * b:8 * (b + 1), 1] = np.inf
        cb = keras_tpp.TPPCallback(delta=0.01, interval=1, ceiling=1.0, stabilize_steps=100)
        rec = _Recorder()
        pmodel.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
                   callbacks=[cb, rec])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if keras.backend.backend() == "tensorflow":
        assert int(pmodel.optimizer.iterations.numpy()) == 12 - len(skipped)
    else:  # JAX's float16 gradients also overflow at the initial loss scale (plain Keras: 6)
        assert int(pmodel.optimizer.iterations.numpy()) <= 12 - len(skipped)
    assert [int(w.train_steps.numpy()) for w in find_wrappers(pmodel)] == [12] * 4
    assert float(find_wrappers(pmodel)[0].strength.numpy()) == pytest.approx(0.12)
    # λ after each batch follows the train steps, not the optimizer's iterations.
    assert [row[1] for row in rec.rows] == pytest.approx([0.01 * (i + 1) for i in range(12)])
    assert all(np.all(np.isfinite(w)) for w in pmodel.get_weights())


@pytest.mark.parametrize("kwargs,match", [
    ({"check_interval": True}, "check_interval"), ({"check_interval": -1}, "check_interval"),
    ({"penalty_log_interval": 1.5}, "penalty_log_interval"),
    ({"keep_last_finite": 1}, "keep_last_finite"),
    ({"stop_when_pruned": "yes"}, "stop_when_pruned"),
    ({"stabilize_steps": True}, "stabilize_steps"), ({"delta": float("nan")}, "delta"),
    ({"interval": "5"}, "interval"), ({"ceiling": float("nan")}, "ceiling"),
    ({"verbose": None}, "verbose"),
])
def test_callback_names_the_bad_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_tpp.TPPCallback(**kwargs)


@pytest.mark.parametrize("options,match", [
    ({"stop_ratio": float("nan")}, "stop_ratio"), ({"kept_strength": float("nan")}, "kept_strength"),
    ({"ema_momentum": "0.9"}, "ema_momentum"), ({"pick_delta": float("inf")}, "pick_delta"),
    ({"pick_delta": 0.1, "pick_ceiling": 0.01}, "pick_delta"), ({"stop_ratio": 1.0}, "stop_ratio"),
])
def test_method_options_name_the_bad_argument(options, match):
    with pytest.raises(ValueError, match=match):
        keras_tpp.methods.GReg2(**options)
    with pytest.raises(ValueError, match=match):
        keras_tpp.methods.get_method("greg2", options)
    with pytest.raises(TypeError):
        keras_tpp.PruningCallback(**options)  # method options live on the method


def test_wrappers_get_the_learning_rate_rounded_up():
    _, pmodel = _prepared()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    pmodel.compile(optimizer=keras.optimizers.SGD(schedule),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(32)
    seen = []
    rec = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(
        (float(keras.ops.convert_to_numpy(pmodel.optimizer.learning_rate)),
         float(find_wrappers(pmodel)[0].step_size.numpy()))))
    cb = keras_tpp.TPPCallback(delta=0.1, interval=1, stabilize_steps=10)
    pmodel.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb, rec])
    for lr, eta in seen:
        # η >= the learning rate, less than 2^(1/16) above it.
        assert lr <= eta * (1 + 1e-6) and eta < lr * 2 ** (1 / 16) * (1 + 1e-6)
    assert {float(w.step_size.numpy()) for w in find_wrappers(pmodel)} == {seen[-1][1]}


def test_callback_takes_a_schedule_object():
    schedule = keras_tpp.PenaltySchedule(interval=2, ramp_steps=20, stabilize_steps=5)
    callback = keras_tpp.PruningCallback(schedule=schedule)
    assert callback.schedule is schedule
    assert callback.get_config()["stabilize_steps"] == 5 and callback.schedule.end_step == 25
    with pytest.raises(ValueError, match="PenaltySchedule"):
        keras_tpp.PruningCallback(schedule={"ramp_steps": 20})
