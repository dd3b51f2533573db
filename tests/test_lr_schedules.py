"""Retraining schedules against an independent restatement of Le & Hua's (ICLR 2021) formulas."""
import math

import keras
import numpy as np
import pytest

from keras_tpp import lr_schedules as L

ORIG_LR, ORIG_BOUNDS, ORIG_E, FACTOR = 0.1, (80, 120), 160, 0.1


# --- Le & Hua's schedules restated in plain python -------------------------------------------------------


def eta_orig(epoch):
    return ORIG_LR * FACTOR ** sum(epoch >= b for b in ORIG_BOUNDS)


def ref_lrw(step, budget, spe):
    return eta_orig(ORIG_E - budget + step // spe)


def nearest(x):
    return int(math.floor(x + 0.5))


def cos_ramp(step, w, lo, hi):
    return lo + (hi - lo) * (1 - math.cos(math.pi * step / w)) / 2


def ref_slr(step, n, peak=0.1, start=0.001):
    w = nearest(0.1 * n)
    if step < w:
        return cos_ramp(step, w, start, peak)
    rest = n - w
    d1, d2 = w + nearest(0.5 * rest), w + nearest(0.75 * rest)
    return peak * (0.1 if step >= d1 else 1.0) * (0.1 if step >= d2 else 1.0)


def ref_clr(step, n, peak=0.1):
    start = peak / 100
    end = start / 100
    w = nearest(0.1 * n)
    step = min(step, n - 1)
    if step < w:
        return cos_ramp(step, w, start, peak)
    t = (step - w) / (n - 1 - w)
    return end + (peak - end) * (1 + math.cos(math.pi * t)) / 2


def values(schedule, steps):
    steps = np.asarray(steps)
    steps = steps.astype("int64" if steps.dtype.kind == "i" else "float32")
    if isinstance(schedule, keras.optimizers.schedules.PiecewiseConstantDecay):
        # Keras' PiecewiseConstantDecay accumulates into a scalar in place: one step at a
        # time on the torch backend (optimizers call it with a scalar step).
        out = np.array([keras.ops.convert_to_numpy(schedule(s)) for s in steps])
    else:
        out = keras.ops.convert_to_numpy(schedule(steps))
    assert out.dtype == np.float32
    return out.astype(np.float64)


# --- values -----------------------------------------------------------------------------------


def test_original_schedule_and_step_decay():
    orig = L.OriginalSchedule()
    assert orig.final_learning_rate == pytest.approx(1e-3)
    assert [orig.lr_at_epoch(e) for e in (0, 79, 80, 119, 120, 159)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3]
    )
    spe = 3
    steps = np.arange(ORIG_E * spe + 5)
    expected = [eta_orig(s // spe) for s in steps]
    np.testing.assert_allclose(values(orig.as_schedule(spe), steps), expected, rtol=1e-6)


@pytest.mark.parametrize("budget", [1, 40, 50, 81, 160])
def test_lr_rewinding_replays_tail(budget):
    spe = 3
    sched = L.retraining_schedule("lrw", budget_epochs=budget, steps_per_epoch=spe)
    assert isinstance(sched, L.LRRewinding)
    steps = np.arange(budget * spe + 4)  # every step of the budget plus a few past it
    expected = [ref_lrw(s, budget, spe) for s in steps]
    np.testing.assert_allclose(values(sched, steps), expected, rtol=1e-6)


def test_lr_rewinding_boundary_steps():
    # T = 50: epochs 110..159 of the original; epoch 10 of retraining is original epoch 120.
    sched = L.LRRewinding(50, steps_per_epoch=4)
    assert values(sched, [0, 39, 40, 199]) == pytest.approx([0.01, 0.01, 1e-3, 1e-3])


def test_fine_tune_constant_and_piecewise():
    ft = L.retraining_schedule("ft", budget_epochs=10, steps_per_epoch=5)
    np.testing.assert_allclose(values(ft, [0, 17, 49, 10_000]), [1e-3] * 4, rtol=1e-6)
    ft = L.retraining_schedule("ft", original_lr=0.2, budget_epochs=1, steps_per_epoch=1)
    assert values(ft, [0])[0] == pytest.approx(0.2 * 0.01, rel=1e-6)
    pw = L.FineTuneSchedule(boundaries=[10, 20], values=[0.01, 0.001, 0.0001])
    np.testing.assert_allclose(
        values(pw, [0, 9, 10, 19, 20, 500]), [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6
    )


@pytest.mark.parametrize("budget,spe", [(13, 7), (40, 10), (2, 5)])
def test_scaled_lr_restart_every_step(budget, spe):
    n = budget * spe
    sched = L.retraining_schedule("slr", budget_epochs=budget, steps_per_epoch=spe)
    steps = np.arange(n + 5)
    np.testing.assert_allclose(values(sched, steps), [ref_slr(s, n) for s in steps], rtol=2e-6)


def test_scaled_lr_restart_landmarks():
    # N = 91: warm-up W = 9, remaining 82, decays at 9 + 41 = 50 and 9 + round(61.5) = 71.
    sched = L.ScaledLRRestart(91)
    got = values(sched, [0, 9, 49, 50, 70, 71, 90])
    assert got == pytest.approx([0.001, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-6)
    mid = values(L.ScaledLRRestart(100), [5])[0]  # W = 10: ramp midpoint = mean of ends
    assert mid == pytest.approx((0.001 + 0.1) / 2, rel=1e-5)
    custom = L.ScaledLRRestart(100, warmup_start=0.02, peak_learning_rate=0.05)
    assert values(custom, [0, 10])[0] == pytest.approx(0.02, rel=1e-6)
    assert values(custom, [10])[0] == pytest.approx(0.05, rel=1e-6)


@pytest.mark.parametrize("budget,spe", [(13, 7), (40, 10), (1, 5)])
def test_one_cycle_every_step(budget, spe):
    n = budget * spe
    sched = L.retraining_schedule("clr", budget_epochs=budget, steps_per_epoch=spe)
    steps = np.arange(n + 5)
    np.testing.assert_allclose(values(sched, steps), [ref_clr(s, n) for s in steps], rtol=2e-5)


def test_one_cycle_landmarks():
    sched = L.OneCycleLR(101)  # W = 10, decay over steps 10..100
    got = values(sched, [0, 10, 55, 100, 150])
    assert got == pytest.approx([1e-3, 0.1, (0.1 + 1e-5) / 2, 1e-5, 1e-5], rel=1e-5)


def test_piecewise_schedule_epoch_boundaries():
    spe = 10
    cifar = L.tpp_finetune_schedule(spe)
    assert isinstance(cifar, keras.optimizers.schedules.PiecewiseConstantDecay)
    np.testing.assert_allclose(
        values(cifar, [0, 599, 600, 899, 900, 1199]),
        [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4],
        rtol=1e-6,
    )
    imagenet = L.tpp_finetune_schedule(spe, dataset="imagenet")
    np.testing.assert_allclose(
        values(imagenet, [299, 300, 599, 600, 749, 750, 899]),
        [1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5],
        rtol=1e-6,
    )
    low = L.tpp_finetune_schedule(spe, initial_lr=1e-3)
    assert values(low, [0, 600])[1] == pytest.approx(1e-4, rel=1e-6)
    custom = L.piecewise_schedule([2, 5], [0.3, 0.2, 0.1], steps_per_epoch=4)
    np.testing.assert_allclose(
        values(custom, [0, 7, 8, 19, 20]), [0.3, 0.3, 0.2, 0.2, 0.1], rtol=1e-6
    )


# --- serialization ----------------------------------------------------------------------------

ALL = [
    L.StepDecay(0.1, [80, 120], 0.1, steps_per_epoch=3),
    L.LRRewinding(40, 3),
    L.FineTuneSchedule(0.002),
    L.FineTuneSchedule(boundaries=[5], values=[0.01, 0.001]),
    L.ScaledLRRestart(300, warmup_start=0.002, milestones=[0.4, 0.8]),
    L.OneCycleLR(300, peak_learning_rate=0.2),
]


@pytest.mark.parametrize("sched", ALL, ids=lambda s: type(s).__name__)
def test_serialize_round_trip(sched):
    config = keras.saving.serialize_keras_object(sched)
    assert config["registered_name"].startswith("keras_tpp>")
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(sched)
    assert restored.get_config() == sched.get_config()
    steps = np.arange(0, 400, 7)
    np.testing.assert_array_equal(values(restored, steps), values(sched, steps))


def test_original_schedule_round_trip():
    orig = L.OriginalSchedule(0.05, (30, 60), 0.2, 90)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(orig))
    assert restored == orig


def test_schedule_inside_saved_model(tmp_path):
    sched = L.retraining_schedule("slr", budget_epochs=5, steps_per_epoch=4)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=sched, momentum=0.9), loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # 2 optimizer steps
    assert float(model.optimizer.learning_rate) == pytest.approx(ref_slr(2, 20), rel=1e-6)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    restored = loaded.optimizer._learning_rate
    assert isinstance(restored, L.ScaledLRRestart)
    assert restored.get_config() == sched.get_config()
    assert int(loaded.optimizer.iterations) == 2
    assert float(loaded.optimizer.learning_rate) == pytest.approx(ref_slr(2, 20), rel=1e-6)


# --- errors -----------------------------------------------------------------------------------


def test_unknown_kind_lists_valid_ones():
    with pytest.raises(ValueError, match="ft, lrw, slr, clr"):
        L.retraining_schedule("cosine", budget_epochs=10, steps_per_epoch=10)


def test_non_positive_budget():
    for kind in L.RETRAINING_KINDS:
        for budget in (0, -3, 2.5):
            with pytest.raises(ValueError, match="budget_epochs"):
                L.retraining_schedule(kind, budget_epochs=budget, steps_per_epoch=10)


@pytest.mark.parametrize("kind", ["slr", "clr"])
def test_budget_too_short_for_warmup(kind):
    with pytest.raises(ValueError, match="too short|after a warm-up"):
        L.retraining_schedule(kind, budget_epochs=1, steps_per_epoch=4)  # warm-up rounds to 0
    with pytest.raises(ValueError, match="after a warm-up"):
        L.OneCycleLR(2, warmup_fraction=0.5)  # one warm-up step, one decay step: not enough


def test_lrw_budget_longer_than_original():
    with pytest.raises(ValueError, match="budget_epochs <= original_epochs"):
        L.retraining_schedule("lrw", budget_epochs=161, steps_per_epoch=10)


BAD_ARGUMENTS = [
    lambda: L.OriginalSchedule(boundaries=(120, 80)),
    lambda: L.OriginalSchedule(boundaries=(80, 200), epochs=160),
    lambda: L.OriginalSchedule(initial_learning_rate=-0.1),
    lambda: L.FineTuneSchedule(0.01, boundaries=[10], values=[0.1, 0.01]),
    lambda: L.FineTuneSchedule(boundaries=[10], values=[0.1]),
    lambda: L.FineTuneSchedule(values=[0.1]),
    lambda: L.ScaledLRRestart(100, milestones=(0.5, 1.5)),
    lambda: L.ScaledLRRestart(100, warmup_fraction=1.0),
    lambda: L.OneCycleLR(0),
    lambda: L.StepDecay(steps_per_epoch=0),
    lambda: L.piecewise_schedule([60, 90], [0.01, 0.001], 10),
    lambda: L.piecewise_schedule([0, 90], [0.01, 0.001, 1e-4], 10),
    lambda: L.piecewise_schedule([], [0.01], 10),
    lambda: L.tpp_finetune_schedule(10, dataset="mnist"),
]


def test_bad_arguments():
    for i, make in enumerate(BAD_ARGUMENTS):
        with pytest.raises(ValueError):
            make()
            pytest.fail(f"BAD_ARGUMENTS[{i}] did not raise")
