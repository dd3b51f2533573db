"""Lottery tickets: iterative magnitude pruning with rewinding (method "lottery").

Expectations are computed independently of keras_tpp.lottery: the kept counts by the
recursion ⌊0.8·kept⌋ in plain Python, the snapshot at step k by a second model trained k
steps on its own, the survivors by comparing with the snapshot's arrays.
"""
from __future__ import annotations

import math
import os

import keras
import numpy as np
import pytest

import keras_tpp
from keras_tpp import lottery, models
from keras_tpp.prepared import wrappers_by_path

BATCH = 8
#: The PruningWrapper's own variables: pruning state, never rewound.
STATE = {"keep_mask", "strength", "kept_strength", "enforce", "stopped_at", "ratio_ema",
         "step_size", "train_steps", "mask_updated_at"}


def _model(widths=(4, 6, 8)) -> keras.Model:
    return models.small_cnn(num_classes=5, input_shape=(8, 8, 3), widths=widths)


def _data(n: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32"), rng.integers(0, 5, n)


def _train(pmodel, x, y, steps=None, callbacks=()):
    """Compile with a fresh optimizer and train (one epoch, or ``steps`` batches)."""
    pmodel.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if steps is not None:
        x, y = x[:steps * BATCH], y[:steps * BATCH]
    pmodel.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
               callbacks=[keras_tpp.PruningCallback(penalty_log_interval=0), *callbacks])


def _kernels(pmodel):
    return {p: keras.ops.convert_to_numpy(w.layer.kernel) for p, w in
            wrappers_by_path(pmodel).items()}


def _variables(model):
    """(layer name, variable) of a flat model's layers."""
    return [(layer.name, v) for layer in model.layers for v in layer.weights]


def _all_values(model):
    return [keras.ops.convert_to_numpy(v.value).copy() for v in model.weights]


def _kept(masks):
    return sum(int(m.sum()) for m in masks.values())


def test_rounds_prune_the_remaining_weights_and_rewind_survivors_exactly():
    x, y = _data()
    pmodel = keras_tpp.prepare(_model(), 0.9, method="lottery")
    masks = keras_tpp.get_masks(pmodel)
    total = sum(m.size for m in masks.values())
    assert _kept(masks) == total  # dense start
    rewind = lottery.RewindPoint(step=0)
    _train(pmodel, x, y, callbacks=[rewind])
    snapshot = rewind.snapshot
    assert snapshot.step == 0
    expected_kept, rounds = total, 3
    for round_ in range(1, rounds + 1):
        trained = _kernels(pmodel)
        previous = keras_tpp.get_masks(pmodel)
        report = lottery.lottery_round(pmodel, snapshot)
        expected_kept = math.floor(0.8 * expected_kept + 1e-9)
        masks = keras_tpp.get_masks(pmodel)
        assert report.kept == _kept(masks) == expected_kept
        assert report.removed == _kept(previous) - expected_kept
        assert report.sparsity == pytest.approx(1 - expected_kept / total)
        # Sparsity 1 − 0.8^L up to one weight of flooring per round.
        assert abs(expected_kept - 0.8 ** round_ * total) <= round_
        for path, mask in masks.items():
            assert not np.any(mask & ~previous[path])  # nested
        # Global magnitude: every newly removed |w| <= every kept |w| (trained values).
        kept_mags = np.concatenate([np.abs(trained[p][m]) for p, m in masks.items()])
        gone = np.concatenate([np.abs(trained[p][previous[p] & ~m]) for p, m in masks.items()])
        assert gone.size and gone.max() <= kept_mags.min()
        # Every variable back at the snapshot (BN moving statistics included), masked zero.
        rewound = [(layer, v) for layer, v in _variables(pmodel) if v.name not in STATE]
        assert set(snapshot.weights) == {f"{layer}/{v.name}" for layer, v in rewound}
        for layer, variable in rewound:
            key = f"{layer}/{variable.name}"
            value = keras.ops.convert_to_numpy(variable.value)
            saved = snapshot.weights[key]
            if variable.name == "kernel" and layer in masks:
                np.testing.assert_array_equal(value[masks[layer]], saved[masks[layer]])
                assert np.all(value[~masks[layer]] == 0)
            else:
                np.testing.assert_array_equal(value, saved)
        assert any("moving_variance" in key for key in snapshot.weights)
        for wrapper in wrappers_by_path(pmodel).values():
            assert int(keras.ops.convert_to_numpy(wrapper.train_steps.value)) == 0
        _train(pmodel, x, y, steps=2)  # masked weights stay zero through training
        for path, kernel in _kernels(pmodel).items():
            assert np.all(kernel[~masks[path]] == 0)
    assert lottery.remaining_rounds(pmodel) == lottery.rounds_needed(
        0.9, 0.2, total) - rounds


def test_rewind_point_takes_the_weights_after_k_steps():
    x, y = _data()
    base = _model()
    first = keras_tpp.prepare(base, 0.5, method="lottery")
    second = keras_tpp.prepare(base, 0.5, method="lottery")  # same weights, trained apart
    seen = {}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen[batch + 1] = {f"{layer}/{v.name}": keras.ops.convert_to_numpy(v.value).copy()
                               for layer, v in _variables(self.model)}

    at_zero, at_three = lottery.RewindPoint(step=0), lottery.RewindPoint(step=3)
    initial = {f"{layer}/{v.name}": keras.ops.convert_to_numpy(v.value).copy()
               for layer, v in _variables(first)}
    _train(first, x, y, callbacks=[at_zero, at_three, Record()])
    _train(second, x, y, steps=3)
    assert at_three.snapshot.step == 3 and at_zero.snapshot.step == 0
    reference = {f"{layer}/{v.name}": keras.ops.convert_to_numpy(v.value)
                 for layer, v in _variables(second)}
    for key, value in at_three.snapshot.weights.items():
        np.testing.assert_array_equal(value, seen[3][key])
        np.testing.assert_allclose(value, reference[key], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(at_zero.snapshot.weights[key], initial[key])
    moved = [k for k in at_three.snapshot.weights if k.endswith("kernel")]
    assert all(np.any(at_three.snapshot.weights[k] != seen[4][k]) for k in moved)
    assert not any(k.endswith(("keep_mask", "train_steps")) for k in at_three.snapshot.weights)
    assert at_three.get_config() == {"step": 3, "path": None}
    with pytest.raises(ValueError, match="past the rewind step"):
        _train(first, x, y, steps=1, callbacks=[lottery.RewindPoint(step=2)])


def test_snapshot_file_round_trip_and_resume(tmp_path):
    x, y = _data()
    path = tmp_path / "run" / "rewind.npz"
    pmodel = keras_tpp.prepare(_model(), 0.5, method="lottery")
    rewind = lottery.RewindPoint(step=2, path=path)
    _train(pmodel, x, y, callbacks=[rewind])
    assert os.listdir(path.parent) == ["rewind.npz"]  # no temporary left
    loaded = lottery.Snapshot.load(path)
    assert loaded.step == 2 and loaded.fingerprint == rewind.snapshot.fingerprint
    assert loaded.architecture == rewind.snapshot.architecture
    assert set(loaded.weights) == set(rewind.snapshot.weights)
    for key, value in rewind.snapshot.weights.items():
        assert loaded.weights[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded.weights[key], value)
    # A resumed run (counter past k) loads the file instead of snapshotting again.
    again = lottery.RewindPoint(step=2, path=path)
    _train(pmodel, x, y, steps=1, callbacks=[again])
    for key, value in loaded.weights.items():
        np.testing.assert_array_equal(again.snapshot.weights[key], value)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a keras_tpp lottery snapshot"):
        lottery.Snapshot.load(damaged)


def test_bad_inputs_raise_and_leave_the_model_untouched():
    x, y = _data()
    pmodel = keras_tpp.prepare(_model(), 0.5, method="lottery")
    rewind = lottery.RewindPoint(step=1)
    _train(pmodel, x, y, steps=2, callbacks=[rewind])
    other = lottery.Snapshot.capture(keras_tpp.prepare(_model(widths=(4, 6, 6)), 0.5,
                                                       method="lottery"))
    before = _all_values(pmodel)
    cases = [
        (dict(snapshot=other), "another architecture"),
        (dict(snapshot=rewind.snapshot, rate=0.0), "rate"),
        (dict(snapshot=rewind.snapshot, rate=1.5), "rate"),
        (dict(snapshot=rewind.snapshot, rate=1.0), "rate"),
        (dict(snapshot=dict(rewind.snapshot.weights)), "Snapshot"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            lottery.lottery_round(pmodel, **kwargs)
        for old, new in zip(before, _all_values(pmodel)):
            np.testing.assert_array_equal(old, new)
    magnitude = keras_tpp.prepare(_model(), 0.5, method="magnitude")
    untouched = _all_values(magnitude)
    with pytest.raises(ValueError, match="method='lottery'"):
        lottery.lottery_round(magnitude, lottery.Snapshot.capture(magnitude))
    for old, new in zip(untouched, _all_values(magnitude)):
        np.testing.assert_array_equal(old, new)
    with pytest.raises(ValueError, match="method='lottery'"):
        lottery.lottery_round(_model(), rewind.snapshot)
    # At the target (0.5 after 4 rounds of 20 %): no round left, the model stays as it is.
    while lottery.remaining_rounds(pmodel):
        lottery.lottery_round(pmodel, rewind.snapshot)
    done = _all_values(pmodel)
    with pytest.raises(ValueError, match="already at the target"):
        lottery.lottery_round(pmodel, rewind.snapshot)
    for old, new in zip(done, _all_values(pmodel)):
        np.testing.assert_array_equal(old, new)
    masks = keras_tpp.get_masks(pmodel)
    total = sum(m.size for m in masks.values())
    assert _kept(masks) == math.floor(0.5 * total + 1e-9)  # capped at the target
    with pytest.raises(ValueError, match="initial_ratio"):
        keras_tpp.prepare(_model(), 0.5, method="lottery", initial_ratio=0.2)
    with pytest.raises(ValueError, match="rate"):
        keras_tpp.methods.Lottery(rate=0)
    with pytest.raises(ValueError, match="PruningCallback"):
        pmodel.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        pmodel.fit(x[:8], y[:8], verbose=0, callbacks=[
            keras_tpp.SparseTrainingCallback(total_steps=4, update_frequency=1)])


def test_save_and_load_between_rounds_keeps_masks_and_resumes(tmp_path):
    x, y = _data()
    pmodel = keras_tpp.prepare(_model(), 0.8, method=keras_tpp.methods.Lottery(rate=0.3))
    rewind = lottery.RewindPoint(step=1, path=tmp_path / "rewind.npz")
    _train(pmodel, x, y, steps=3, callbacks=[rewind])
    first = lottery.lottery_round(pmodel, rewind.snapshot)
    masks = keras_tpp.get_masks(pmodel)
    assert first.kept == math.floor(0.7 * first.total + 1e-9)
    pmodel.save(tmp_path / "round1.keras")
    loaded = keras.models.load_model(tmp_path / "round1.keras")
    for path, mask in keras_tpp.get_masks(loaded).items():
        np.testing.assert_array_equal(mask, masks[path])
    for old, new in zip(_all_values(pmodel), _all_values(loaded)):
        np.testing.assert_array_equal(old, new)
    _train(loaded, x, y, steps=2)
    second = lottery.lottery_round(loaded, lottery.Snapshot.load(tmp_path / "rewind.npz"))
    assert second.kept == math.floor(0.7 * first.kept + 1e-9)
    for path, mask in keras_tpp.get_masks(loaded).items():
        assert not np.any(mask & ~masks[path])
    assert lottery.remaining_rounds(loaded) == lottery.rounds_needed(0.8, 0.3, first.total) - 2


def test_per_layer_ranking_and_rounds_needed():
    x, y = _data()
    method = keras_tpp.methods.Lottery(ranking="layer")
    pmodel = keras_tpp.prepare(_model(), {"conv*": 0.6, "classifier": 0.3}, method=method)
    rewind = lottery.RewindPoint()
    _train(pmodel, x, y, steps=2, callbacks=[rewind])
    for _ in range(2):
        sizes = {p: (int(m.sum()), m.size) for p, m in keras_tpp.get_masks(pmodel).items()}
        lottery.lottery_round(pmodel, rewind.snapshot)
        for path, mask in keras_tpp.get_masks(pmodel).items():
            kept, size = sizes[path]
            floor = math.floor((1 - (0.3 if path == "classifier" else 0.6)) * size + 1e-9)
            assert int(mask.sum()) == max(math.floor(0.8 * kept + 1e-9), floor), path
    for target, rate in ((0.9, 0.2), (0.5, 0.2), (0.99, 0.5)):
        needed = lottery.rounds_needed(target, rate)
        assert 1 - (1 - rate) ** needed >= target > 1 - (1 - rate) ** (needed - 1)
    assert lottery.rounds_needed(0.0) == 0
    with pytest.raises(ValueError):
        lottery.rounds_needed(0.5, 1.5)


# -- channel level ---------------------------------------------------------------------------
def _residual_concat_model() -> keras.Model:
    """conv-BN stem, a residual block (stem and conv_b coupled by the Add), then two convs
    concatenated into one BatchNormalization, then the classifier."""
    inputs = keras.Input((8, 8, 3))
    stem = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    stem = keras.layers.BatchNormalization(name="stem_bn")(stem)
    stem = keras.layers.ReLU()(stem)
    h = keras.layers.Conv2D(6, 3, padding="same", name="conv_a")(stem)
    h = keras.layers.BatchNormalization(name="bn_a")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv_b")(h)
    h = keras.layers.BatchNormalization(name="bn_b")(h)
    h = keras.layers.ReLU()(keras.layers.Add()([stem, h]))
    left = keras.layers.Conv2D(5, 1, name="left")(h)
    right = keras.layers.Conv2D(7, 3, padding="same", name="right")(h)
    h = keras.layers.Concatenate(name="cat")([left, right])
    h = keras.layers.BatchNormalization(name="cat_bn")(h)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h))
    outputs = keras.layers.Dense(5, name="head")(h)
    return keras.Model(inputs, outputs, name="residual_concat")


#: The channel groups of that model and their producers.
GROUPS = {"stem": ("stem", "conv_b"), "conv_a": ("conv_a",), "left": ("left",),
          "right": ("right",)}


def _l1_ranking(kernels: list[np.ndarray]) -> np.ndarray:
    """Combined L1 scores of coupled producers, in plain numpy: each filter's Σ|w| divided
    by that layer's mean, averaged over the producers."""
    scores = []
    for kernel in kernels:
        per_filter = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
        scores.append(per_filter / per_filter.mean())
    return np.mean(scores, axis=0)


def _expected_channel_mask(kernels, mask, keep):
    """Of the channels still kept in ``mask``, the ``keep`` with the largest scores."""
    scores = np.where(mask, _l1_ranking(kernels), -np.inf)
    order = np.argsort(-scores, kind="stable")
    expected = np.zeros(mask.size, bool)
    expected[order[:keep]] = True
    return expected


def test_channel_rounds_remove_l1_channels_per_group_rewind_and_shrink_exactly():
    x, y = _data()
    pmodel = keras_tpp.prepare(_residual_concat_model(), 0.5, method="lottery",
                               granularity="channel")
    wrappers = wrappers_by_path(pmodel)
    assert {w.granularity for w in wrappers.values()} == {"channel"}
    assert all(m.all() for m in keras_tpp.get_masks(pmodel, include_norms=True).values())
    sizes = {g: wrappers[g].num_channels for g in GROUPS}
    floors = {g: sizes[g] - math.ceil(0.5 * sizes[g]) for g in GROUPS}  # the target widths
    kept = dict(sizes)
    rewind = lottery.RewindPoint(step=2)
    _train(pmodel, x, y, callbacks=[rewind])
    snapshot = rewind.snapshot
    rounds = 0
    while lottery.remaining_rounds(pmodel):
        before = keras_tpp.get_masks(pmodel)
        trained = {p: keras.ops.convert_to_numpy(w.layer.kernel)
                   for p, w in wrappers.items() if w.is_producer}
        report = lottery.lottery_round(pmodel, snapshot)
        rounds += 1
        masks = keras_tpp.get_masks(pmodel, include_norms=True)
        for group, producers in GROUPS.items():
            keep = max(math.floor(0.8 * kept[group] + 1e-9), floors[group])
            if kept[group] <= floors[group]:
                keep = kept[group]
            expected = _expected_channel_mask([trained[p] for p in producers],
                                              before[group], keep)
            for p in producers:
                np.testing.assert_array_equal(masks[p], expected, err_msg=p)
            assert not (masks[group] & ~before[group]).any()  # nested
            kept[group] = keep
        # Batch norms follow their producer's mask; behind the Concatenate, both groups'.
        for bn, producer in (("stem_bn", "stem"), ("bn_b", "stem"), ("bn_a", "conv_a")):
            np.testing.assert_array_equal(masks[bn], masks[producer])
        np.testing.assert_array_equal(masks["cat_bn"],
                                      np.concatenate([masks["left"], masks["right"]]))
        assert report.kept == sum(kept.values()) and report.total == sum(sizes.values())
        assert report.layers["conv_b"] == (kept["stem"], sizes["stem"])
        # Survivors hold the snapshot's values exactly; pruned channels are zero.
        for key, variable in lottery.model_variables(pmodel):
            layer, name = key.rsplit("/", 1)
            value = keras.ops.convert_to_numpy(variable.value)
            if layer in masks and name in ("kernel", "bias", "gamma", "beta"):
                np.testing.assert_array_equal(value[..., masks[layer]],
                                              snapshot.weights[key][..., masks[layer]])
                assert not value[..., ~masks[layer]].any(), key
            else:
                np.testing.assert_array_equal(value, snapshot.weights[key], err_msg=key)
        assert lottery.train_step(pmodel) == 2
        _train(pmodel, x, y)
    def rounds_to_floor(n, floor):  # ⌊0.8·n⌋ per round, capped at the target width
        return 0 if n <= floor else 1 + rounds_to_floor(max(math.floor(0.8 * n), floor), floor)

    assert kept == floors
    assert rounds == max(rounds_to_floor(sizes[g], floors[g]) for g in GROUPS) == 3
    # The thin model: exactly the target widths, the masked model's outputs.
    keras_tpp.apply_masks(pmodel)
    thin = keras_tpp.shrink(pmodel)
    widths = {layer.name: layer.filters for layer in thin.layers
              if isinstance(layer, keras.layers.Conv2D)}
    assert widths == {"stem": floors["stem"], "conv_a": floors["conv_a"],
                      "conv_b": floors["stem"], "left": floors["left"],
                      "right": floors["right"]}
    np.testing.assert_allclose(thin.predict(x, verbose=0), pmodel.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_channel_rounds_resume_after_save_and_follow_per_pattern_targets(tmp_path):
    x, y = _data()
    pmodel = keras_tpp.prepare(_residual_concat_model(), {"conv_a": 0.5, "right": 0.7},
                               method="lottery", granularity="channel")
    assert {p for p, w in wrappers_by_path(pmodel).items() if w.is_producer} == {"conv_a",
                                                                                 "right"}
    rewind = lottery.RewindPoint(step=1, path=tmp_path / "rewind.npz")
    _train(pmodel, x, y, steps=3, callbacks=[rewind])
    lottery.lottery_round(pmodel, rewind.snapshot)
    pmodel.save(tmp_path / "round1.keras")
    loaded = keras.models.load_model(tmp_path / "round1.keras")
    for path, mask in keras_tpp.get_masks(pmodel, include_norms=True).items():
        np.testing.assert_array_equal(keras_tpp.get_masks(loaded, include_norms=True)[path],
                                      mask)
    # The same round from the original and from the reloaded model: the same masks.
    _train(pmodel, x, y, steps=2)
    loaded.set_weights(pmodel.get_weights())
    lottery.lottery_round(pmodel, rewind.snapshot)
    lottery.lottery_round(loaded, lottery.Snapshot.load(tmp_path / "rewind.npz"))
    for path, mask in keras_tpp.get_masks(pmodel, include_norms=True).items():
        np.testing.assert_array_equal(keras_tpp.get_masks(loaded, include_norms=True)[path],
                                      mask)
    while lottery.remaining_rounds(loaded):
        lottery.lottery_round(loaded, rewind.snapshot)
    masks = keras_tpp.get_masks(loaded)
    assert int(masks["conv_a"].sum()) == 6 - math.ceil(0.5 * 6)
    assert int(masks["right"].sum()) == 7 - math.ceil(0.7 * 7)


def test_channel_granularity_bad_inputs():
    model = _residual_concat_model()
    with pytest.raises(ValueError, match="ranking='layer'"):
        keras_tpp.methods.Lottery(ranking="global", granularity="channel")
    with pytest.raises(ValueError, match="ranking='layer'"):
        keras_tpp.prepare(model, 0.5, method=keras_tpp.methods.Lottery(ranking="global"),
                          granularity="channel")
    with pytest.raises(ValueError, match="initial_ratio"):
        keras_tpp.prepare(model, 0.5, method="lottery", granularity="channel",
                          initial_ratio=0.2)
    with pytest.raises(ValueError, match="'lottery'"):  # names the methods that offer both
        keras_tpp.prepare(model, 0.5, method="l1", granularity="weight")
    with pytest.raises(ValueError, match="granularity"):
        keras_tpp.prepare(model, 0.5, method="lottery", granularity="block")
    # A snapshot of another architecture: refused, the channel-level model untouched.
    pmodel = keras_tpp.prepare(model, 0.5, method="lottery", granularity="channel")
    rewind = lottery.RewindPoint()
    x, y = _data()
    _train(pmodel, x, y, steps=1, callbacks=[rewind])
    lottery.lottery_round(pmodel, rewind.snapshot)
    before = _all_values(pmodel)
    with pytest.raises(ValueError, match="another architecture"):
        lottery.lottery_round(pmodel, lottery.Snapshot.capture(
            keras_tpp.prepare(_model(), 0.5, method="lottery")))
    for old, new in zip(before, _all_values(pmodel)):
        np.testing.assert_array_equal(old, new)


def test_resume_schedule_continues_the_learning_rate_from_the_rewind_step():
    x, y = _data(64)
    pmodel = keras_tpp.prepare(_model(), 0.5, method="lottery")
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([3], [0.1, 0.01])
    rewind = lottery.RewindPoint(step=4)
    pmodel.compile(keras.optimizers.SGD(schedule), "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="fresh optimizer"):  # this one has run steps
        pmodel.fit(x, y, batch_size=BATCH, verbose=0,
                   callbacks=[keras_tpp.PruningCallback(penalty_log_interval=0), rewind])
        lottery.resume_schedule(pmodel)
    lottery.lottery_round(pmodel, rewind.snapshot)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate)))

    pmodel.compile(keras.optimizers.SGD(schedule), "sparse_categorical_crossentropy")
    assert lottery.resume_schedule(pmodel) == 4
    pmodel.fit(x[:16], y[:16], batch_size=BATCH, verbose=0,
               callbacks=[keras_tpp.PruningCallback(penalty_log_interval=0), Record()])
    np.testing.assert_allclose(seen, [0.01, 0.01], rtol=1e-6)  # step 4 ≥ 3: decayed
    assert int(keras.ops.convert_to_numpy(pmodel.optimizer.iterations)) == 6
    with pytest.raises(ValueError, match="not compiled"):
        lottery.resume_schedule(_model())
    with pytest.raises(ValueError, match="keras.Model"):
        lottery.resume_schedule("pmodel")
