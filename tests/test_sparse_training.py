"""Sparse training (GMP, GraNet, RigL) end to end on small models.

Every expectation is computed independently of keras_tpp.sparsity: numpy formulas for the
cubic schedule and ERK, an autodiff gradient and argsort for one regeneration step, a
single-device run for MirroredStrategy, an uninterrupted run for save / load / resume.

The tests run on every backend except those marked ``tf_only`` (tf.distribute, TFLite);
tests/test_sparse_training_backends.py compares the backends' numbers with TensorFlow's.
Callbacks that read variables during ``fit`` call ``keras_internals.sync_training_state``
first (JAX keeps the training state outside the variables).
"""
from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest

import keras_tpp
from keras_tpp import autodiff, keras_internals, models
from keras_tpp.prepared import wrappers_by_path

L = keras.layers

BATCH = 8


def _net(seed: int = 0) -> keras.Model:
    """Conv → Conv → GAP → Dense, no batch norm (so one gradient is easy to recompute)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="tanh", name="conv1")(inputs)
    x = L.Conv2D(12, 3, padding="same", activation="tanh", name="conv2")(x)
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(5, name="head")(x)
    return keras.Model(inputs, outputs)


def _data(n: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32"), rng.integers(0, 5, n)


def _compile(model, optimizer=None):
    model.compile(optimizer or keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _kernels(model) -> dict[str, np.ndarray]:
    return {path: keras.ops.convert_to_numpy(w.layer.kernel.value)
            for path, w in wrappers_by_path(model).items()}


def _floor(value: float) -> int:
    """⌊value⌋ up to float rounding ((1 - 0.9) * 1140 keeps 114 weights, not 113)."""
    return math.floor(value + 1e-6)


def _kept(masks) -> int:
    return sum(int(m.sum()) for m in masks.values())


class _Recorder(keras.callbacks.Callback):
    """Records (train step, masks) after every batch (placed after the sparse callback)."""

    def __init__(self):
        super().__init__()
        self.masks = {}

    def on_train_batch_end(self, batch, logs=None):
        keras_internals.sync_training_state(self.model)
        step = int(keras.ops.convert_to_numpy(
            wrappers_by_path(self.model)["conv1"].train_steps.value))
        self.masks[step] = keras_tpp.get_masks(self.model)


# -- schedule, ranking, final density ----------------------------------------------------------


@pytest.mark.parametrize("ranking", ["global", "layer"])
def test_gmp_follows_the_cubic_schedule_and_ends_exactly_at_the_target(ranking):
    x, y = _data()
    model = _net()
    total = sum(int(np.prod(k.shape)) for k in
                (model.get_layer(n).kernel for n in ("conv1", "conv2", "head")))
    method = keras_tpp.methods.GMP(ranking=ranking)
    pmodel = _compile(keras_tpp.prepare(model, 0.9, method=method))
    recorder = _Recorder()
    history = pmodel.fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0,
                         callbacks=[keras_tpp.SparseTrainingCallback(
                             total_steps=32, prune_start_step=0, prune_end_step=24,
                             update_frequency=4), recorder])
    # Rounds c = t // 4 for t = 4, 8, ..., 20; c0 = 0, last = 24 // 4 - 1 = 5.
    for step, masks in sorted(recorder.masks.items()):
        c = min(step // 4, 5)
        s = 0.9 + (0.0 - 0.9) * (1 - c / 5) ** 3
        if ranking == "global":
            assert _kept(masks) == _floor((1 - s) * total), step
        else:
            for path, mask in masks.items():
                assert int(mask.sum()) == _floor((1 - s) * mask.size), (step, path)
    final = recorder.masks[32]
    if ranking == "global":
        assert _kept(final) == _floor(0.1 * total)
        # Global ranking: every kept |w| is at least every pruned |w| (at the last update).
    np.testing.assert_allclose(history.history["sparsity"][-1],
                               1 - _kept(final) / total)
    assert history.history["regrow_rate"][-1] == 0.0  # GMP never regenerates
    # Masked weights are exactly zero; the stripped model reports exactly those zeros.
    report = keras_tpp.sparsity_report(keras_tpp.strip(pmodel))
    for path, mask in final.items():
        kernel = _kernels(pmodel)[path]
        assert np.all(kernel[~mask] == 0)
        assert report.layers[path].zeros == int((kernel == 0).sum())
        assert report.layers[path].zeros >= int((~mask).sum())
    assert report.zeros == sum(int((k == 0).sum()) for k in _kernels(pmodel).values())


def test_per_pattern_ratios_give_per_layer_targets():
    x, y = _data()
    pmodel = _compile(keras_tpp.prepare(_net(), {"conv*": 0.8, "head": 0.5}, method="granet"))
    assert keras_tpp.methods.names()  # registry intact
    pmodel.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[
        keras_tpp.SparseTrainingCallback(total_steps=16, prune_end_step=8, update_frequency=2)])
    masks = keras_tpp.get_masks(pmodel)
    for path, ratio in (("conv1", 0.8), ("conv2", 0.8), ("head", 0.5)):
        assert int(masks[path].sum()) == _floor((1 - ratio) * masks[path].size), path
    only_conv2 = keras_tpp.get_masks(keras_tpp.prepare(_net(), {"conv2": 0.6},
                                                       method="magnitude"))
    assert list(only_conv2) == ["conv2"]
    assert int(only_conv2["conv2"].sum()) == _floor(0.4 * only_conv2["conv2"].size)


def test_global_pruning_keeps_the_largest_magnitudes():
    x, y = _data()
    pmodel = _compile(keras_tpp.prepare(_net(), 0.75, method="gmp"))
    snapshots = {}

    class Before(keras.callbacks.Callback):  # runs before the sparse callback's update
        def on_train_batch_end(self, batch, logs=None):
            keras_internals.sync_training_state(self.model)
            snapshots[batch] = (_kernels(self.model), keras_tpp.get_masks(self.model))

    pmodel.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
               callbacks=[Before(), keras_tpp.SparseTrainingCallback(
                   total_steps=8, prune_end_step=8, update_frequency=4)])
    # The update of step 4 (batch index 3): target s = 0.75 + (0 - 0.75)(1 - 1/1)^3 = 0.75.
    kernels, masks_before = snapshots[3]
    pooled = np.concatenate([np.abs(np.where(masks_before[p], k, -1)).ravel()
                             for p, k in kernels.items()])
    keep = _floor(0.25 * pooled.size)
    threshold = np.sort(pooled)[::-1][keep - 1]
    masks_after = keras_tpp.get_masks(pmodel)
    assert _kept(masks_after) == keep
    for path, kernel in kernels.items():
        np.testing.assert_array_equal(masks_after[path], np.abs(kernel) >= threshold)


# -- one regeneration step against numpy ---------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_regeneration_step_against_numpy(optimizer):
    x, y = _data(32, seed=3)
    opt = (keras.optimizers.SGD(0.05, momentum=0.9) if optimizer == "sgd"
           else keras.optimizers.Adam(1e-3))
    pmodel = _compile(keras_tpp.prepare(_net(1), 0.7, method="rigl", seed=5), opt)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    seen = {}

    class Spy(keras.callbacks.Callback):
        """Before the update of step 3: the batch's gradient at the pre-step weights, and
        the weights and masks after the optimizer step."""

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2:
                keras_internals.sync_training_state(self.model)
                xb, yb = x[16:24], y[16:24]
                kernels = [w.layer.kernel for w in wrappers_by_path(self.model).values()]
                _, grads = autodiff.value_and_grad(
                    lambda: loss_fn(yb, self.model(xb, training=False)), kernels)
                seen["grad"] = dict(zip(wrappers_by_path(self.model), grads))

        def on_train_batch_end(self, batch, logs=None):
            keras_internals.sync_training_state(self.model)
            if batch == 2:
                seen["weights"] = _kernels(self.model)
                seen["masks"] = keras_tpp.get_masks(self.model)

    callback = keras_tpp.SparseTrainingCallback(total_steps=12, update_frequency=3,
                                                regrow_ratio=0.4, final_regrow_ratio=0.01)
    pmodel.fit(x, y, batch_size=BATCH, epochs=1, steps_per_epoch=3, shuffle=False, verbose=0,
               callbacks=[Spy(), callback])
    rate = 0.01 + (0.4 - 0.01) * 0.5 * (1 + math.cos(math.pi * 3 / 12))
    new_masks = keras_tpp.get_masks(pmodel)
    new_weights = _kernels(pmodel)
    for path, mask in seen["masks"].items():
        w, g = seen["weights"][path], seen["grad"][path]
        n = math.ceil(rate * mask.sum())
        active = np.flatnonzero(mask.ravel())
        dying = active[np.argsort(np.abs(w.ravel()[active]))[:n]]
        after_death = mask.ravel().copy()
        after_death[dying] = False
        inactive = np.flatnonzero(~after_death)
        growing = inactive[np.argsort(-np.abs(g.ravel()[inactive]))[:n]]
        expected = after_death.copy()
        expected[growing] = True
        got = new_masks[path].ravel()
        np.testing.assert_array_equal(got, expected, err_msg=path)
        assert got.sum() == mask.sum()  # count per layer unchanged
        new_grown = np.setdiff1d(growing, dying)  # inactive before: start at zero
        assert np.all(new_weights[path].ravel()[new_grown] == 0)
        both = np.intersect1d(growing, dying)  # died and grew back: keeps its value
        np.testing.assert_array_equal(new_weights[path].ravel()[both], w.ravel()[both])
        assert np.all(new_weights[path].ravel()[~got] == 0)
        for slot in keras_internals.optimizer_slots(pmodel.optimizer,
                                                    wrappers_by_path(pmodel)[path].layer.kernel):
            assert np.all(keras.ops.convert_to_numpy(slot.value).ravel()[~got] == 0), path


def test_slots_and_weights_zero_at_masked_positions_after_every_step():
    x, y = _data()
    for optimizer in (keras.optimizers.SGD(0.05, momentum=0.9), keras.optimizers.Adam(1e-2),
                      keras.optimizers.RMSprop(1e-3, momentum=0.5)):
        pmodel = _compile(keras_tpp.prepare(_net(), 0.8, method="granet", initial_ratio=0.5),
                          optimizer)
        checked = []

        class Check(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                keras_internals.sync_training_state(self.model)
                for path, wrapper in wrappers_by_path(self.model).items():
                    mask = keras.ops.convert_to_numpy(wrapper.keep_mask.value) > 0.5
                    kernel = wrapper.layer.kernel
                    slots = keras_internals.optimizer_slots(self.model.optimizer, kernel)
                    assert slots, type(self.model.optimizer).__name__
                    assert np.all(keras.ops.convert_to_numpy(kernel.value)[~mask] == 0)
                    for slot in slots:
                        assert np.all(keras.ops.convert_to_numpy(slot.value)[~mask] == 0)
                    # Not vacuous: the kept weights' slots are not all zero.
                    assert any(np.any(keras.ops.convert_to_numpy(s.value)[mask] != 0)
                               for s in slots)
                checked.append(batch)

        pmodel.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[
            keras_tpp.SparseTrainingCallback(total_steps=16, update_frequency=3), Check()])
        assert len(checked) == 16


# -- initial masks ------------------------------------------------------------------------------


def test_erk_initial_mask_budget_and_densities():
    model = _net()
    shapes = {n: model.get_layer(n).kernel.shape for n in ("conv1", "conv2", "head")}
    pmodel = keras_tpp.prepare(model, 0.9, method="granet", initial_ratio=0.6, seed=3)
    masks = keras_tpp.get_masks(pmodel)
    sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
    total = sum(sizes.values())
    assert _kept(masks) == _floor(0.4 * total)
    # ERK: density ∝ (Σ dims)/(Π dims), capped at 1; numpy solution of the budget.
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    dense = set()
    while True:
        eps = (0.4 * total - sum(sizes[n] for n in dense)) / sum(
            raw[n] * sizes[n] for n in shapes if n not in dense)
        over = {n for n in shapes if n not in dense and eps * raw[n] > 1}
        if not over:
            break
        dense |= over
    for n in shapes:
        expected = 1.0 if n in dense else eps * raw[n]
        assert abs(masks[n].mean() - expected) <= 1.0 / sizes[n] + 1e-9, n
    # The prepared model is already sparse, and the callback keeps s_i until pruning starts.
    for n, kernel in _kernels(pmodel).items():
        assert np.all(kernel[~masks[n]] == 0)
    rigl = keras_tpp.get_masks(keras_tpp.prepare(model, 0.8, method="rigl",
                                                 initial_mask="uniform", seed=3))
    assert _kept(rigl) == _floor(0.2 * total)


# -- tf.distribute ------------------------------------------------------------------------------


def _mirrored_run(strategy, x, y):
    import tensorflow as tf

    with strategy.scope():
        pmodel = _compile(keras_tpp.prepare(_net(2), 0.8, method="granet"))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    pmodel.fit(data, epochs=3, verbose=0, shuffle=False, callbacks=[keras_tpp.SparseTrainingCallback(
        total_steps=12, prune_end_step=8, update_frequency=2)])
    return pmodel


@pytest.mark.tf_only(reason="tf.distribute.MirroredStrategy")
def test_mirrored_replicas_hold_identical_masks_equal_to_one_device():
    import tensorflow as tf

    x, y = _data(64, seed=7)
    from keras_tpp.distribute import get_strategy

    # The process-wide strategy object: two MirroredStrategy objects over the same devices
    # would collide in TensorFlow's collective runtime.
    strategy = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    mirrored = _mirrored_run(strategy, x, y)
    single = _mirrored_run(tf.distribute.get_strategy(), x, y)
    single_masks = keras_tpp.get_masks(single)
    for path, wrapper in wrappers_by_path(mirrored).items():
        replicas = [v.numpy() for v in wrapper.keep_mask.value.values]
        assert len(replicas) == 2
        np.testing.assert_array_equal(replicas[0], replicas[1])
        np.testing.assert_array_equal(replicas[0] > 0.5, single_masks[path])
        kernels = [v.numpy() for v in wrapper.layer.kernel.value.values]
        np.testing.assert_array_equal(kernels[0], kernels[1])
    # Regeneration happened (so the growth gradient mattered), and the density is s_f.
    assert _kept(single_masks) == _floor(0.2 * sum(m.size for m in single_masks.values()))


# -- saving, resuming -----------------------------------------------------------------------------


def test_save_mid_schedule_load_and_continue_equals_uninterrupted(tmp_path):
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    x, y = _data(48, seed=9)

    def callback():
        return keras_tpp.SparseTrainingCallback(total_steps=18, prune_end_step=12,
                                                update_frequency=4)

    whole = _compile(keras_tpp.prepare(_net(4), 0.85, method="granet"))
    whole.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
              callbacks=[callback()])

    first = _compile(keras_tpp.prepare(_net(4), 0.85, method="granet"))
    first.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[callback()])  # 6 steps: one update done (step 4), mid-window
    path = str(tmp_path / "mid.keras")
    first.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = keras.models.load_model(path)
    # The optimizer's state loads: the growth-gradient buffer (an optimizer variable on JAX)
    # is not saved with it.
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    assert int(keras.ops.convert_to_numpy(
        wrappers_by_path(resumed)["conv1"].mask_updated_at.value)) == 4
    resumed.fit(x, y, batch_size=BATCH, epochs=3, initial_epoch=1, shuffle=False, verbose=0,
                callbacks=[callback()])
    for (path_a, a), (path_b, b) in zip(sorted(keras_tpp.get_masks(whole).items()),
                                        sorted(keras_tpp.get_masks(resumed).items())):
        np.testing.assert_array_equal(a, b, err_msg=path_a)
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.not_torch(reason="Keras' PyTorch trainer requires steps_per_execution=1")
def test_missed_update_is_caught_up_once_with_steps_per_execution():
    x, y = _data()
    pmodel = keras_tpp.prepare(_net(), 0.6, method="gmp")
    pmodel.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), steps_per_execution=3)
    history = pmodel.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[
        keras_tpp.SparseTrainingCallback(total_steps=16, prune_end_step=8, update_frequency=4)])
    masks = keras_tpp.get_masks(pmodel)
    assert _kept(masks) == _floor(0.4 * sum(m.size for m in masks.values()))
    assert int(keras.ops.convert_to_numpy(
        wrappers_by_path(pmodel)["conv1"].mask_updated_at.value)) == 16
    assert history.history["sparsity"][-1] > 0.59


# -- export ---------------------------------------------------------------------------------------


@pytest.mark.tf_only(reason="TFLite export")
def test_stripped_sparse_model_exports_a_smaller_tflite(tmp_path):
    x, y = _data()
    model = models.small_cnn(widths=(16, 32, 64), input_shape=(16, 16, 3))
    pmodel = keras_tpp.prepare(model, 0.9, method="gmp")
    pmodel.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    xs = np.random.default_rng(0).random((64, 16, 16, 3), np.float32)
    pmodel.fit(xs, y, batch_size=16, epochs=2, verbose=0, callbacks=[
        keras_tpp.SparseTrainingCallback(total_steps=8, prune_end_step=4, update_frequency=2)])
    sparse = keras_tpp.strip(pmodel)
    report = keras_tpp.sparsity_report(sparse)
    assert report.global_sparsity >= 0.9
    dense = keras_tpp.export(sparse, str(tmp_path / "dense.tflite"))
    small = keras_tpp.export(sparse, str(tmp_path / "sparse.tflite"), sparse=True)
    assert small.size_bytes < dense.size_bytes


# -- errors ---------------------------------------------------------------------------------------


def test_bad_inputs_are_refused_before_anything_changes():
    model = _net()
    before = [w.copy() for w in model.get_weights()]
    cases = [
        (dict(pruning_ratio=0.5, method="granet", initial_ratio=0.7), "initial_ratio"),
        (dict(pruning_ratio=0.5, method="rigl", initial_ratio=0.3), "fixed density"),
        (dict(pruning_ratio=0.5, method="tpp", initial_ratio=0.3), "sparse-training"),
        (dict(pruning_ratio=0.5, method="granet", initial_mask="gaussian"), "initial_mask"),
        (dict(pruning_ratio={"conv*": 0.5}, method="rigl"), "one pruning_ratio"),
        (dict(pruning_ratio={"conv*": 0.5}, method=keras_tpp.methods.GMP(ranking="global")),
         "ranking='layer'"),
        (dict(pruning_ratio={"nothing*": 0.5}, method="granet"), "matches no selected"),
        (dict(pruning_ratio=1.0, method="granet"), "pruning.ratio"),
        (dict(pruning_ratio=float("nan"), method="gmp"), "pruning.ratio"),
        (dict(pruning_ratio=0.0, method="gmp"), "Nothing to prune"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            keras_tpp.prepare(model, **kwargs)
    with pytest.raises(ValueError, match="ranking"):
        keras_tpp.methods.GraNet(ranking="both")
    with pytest.raises(ValueError, match="initial_ratio is given both"):
        keras_tpp.prepare(model, 0.9, method=keras_tpp.methods.GMP(initial_ratio=0.5),
                          initial_ratio=0.3)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)

    for kwargs, message in [
        (dict(total_steps=0), "total_steps"),
        (dict(total_steps=100, prune_end_step=200), "prune_end_step"),
        (dict(total_steps=100, update_frequency=0), "update_frequency"),
        (dict(total_steps=100, prune_end_step=50, update_frequency=60), "pruning window"),
        (dict(total_steps=100, update_frequency=10, regrow_ratio=1.5), "regrow_ratio"),
        (dict(total_steps=100, update_frequency=10, final_regrow_ratio=0.9),
         "final_regrow_ratio"),
    ]:
        with pytest.raises(ValueError, match=message):
            keras_tpp.SparseTrainingCallback(**kwargs)

    x, y = _data(16)
    tpp_model = _compile(keras_tpp.prepare(_net(), 0.5, method="l1"))
    with pytest.raises(ValueError, match="PruningCallback"):
        tpp_model.fit(x, y, epochs=1, verbose=0,
                      callbacks=[keras_tpp.SparseTrainingCallback(total_steps=10, update_frequency=2)])
    granet_model = _compile(keras_tpp.prepare(_net(), 0.5, method="granet"))
    with pytest.raises(ValueError, match="SparseTrainingCallback"):
        granet_model.fit(x, y, epochs=1, verbose=0, callbacks=[keras_tpp.PruningCallback()])
    with pytest.raises(ValueError, match="not\\s+prepared"):
        _compile(_net()).fit(x, y, epochs=1, verbose=0,
                             callbacks=[keras_tpp.SparseTrainingCallback(total_steps=10, update_frequency=2)])
    accumulating = keras_tpp.prepare(_net(), 0.5, method="granet")
    accumulating.compile(keras.optimizers.SGD(0.01, gradient_accumulation_steps=2),
                         keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        accumulating.fit(x, y, epochs=1, verbose=0,
                         callbacks=[keras_tpp.SparseTrainingCallback(total_steps=10, update_frequency=2)])
    with pytest.raises(ValueError, match="sparsity_report takes a Keras model"):
        keras_tpp.sparsity_report("model.keras")


def test_mixed_precision_loss_scale_optimizer_masks_inner_slots():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = _data()
        pmodel = _compile(keras_tpp.prepare(_net(), 0.8, method="granet"))
        assert isinstance(pmodel.optimizer, keras.optimizers.LossScaleOptimizer)
        callback = keras_tpp.SparseTrainingCallback(total_steps=24, update_frequency=4)
        pmodel.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[callback])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    masks = keras_tpp.get_masks(pmodel)
    assert _kept(masks) == _floor(0.2 * sum(m.size for m in masks.values()))
    assert callback.last_update.step == 24
    for path, wrapper in wrappers_by_path(pmodel).items():
        slots = keras_internals.optimizer_slots(pmodel.optimizer, wrapper.layer.kernel)
        assert slots  # the inner SGD's momentum
        for slot in slots:
            assert np.all(keras.ops.convert_to_numpy(slot.value)[~masks[path]] == 0)
