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
