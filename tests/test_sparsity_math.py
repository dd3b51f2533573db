"""Sparse-training maths against independent numpy restatements of the formulas.

Cubic schedule (Zhu & Gupta; GraNet's rounds), ERK densities, global magnitude ranking with
exact counts, and one regeneration step (death by |w|, growth by |gradient|).
"""
import math

import numpy as np
import pytest

from keras_tpp.sparsity import (
    CosineRate,
    CubicSparsity,
    erk_densities,
    magnitude_masks,
    random_masks,
    regenerate,
)


@pytest.mark.parametrize("s_i,s_f,begin,end,freq", [
    (0.0, 0.9, 0, 5000, 1000), (0.5, 0.95, 2000, 20000, 500), (0.0, 0.98, 100, 1100, 100)])
def test_cubic_schedule_at_every_update(s_i, s_f, begin, end, freq):
    schedule = CubicSparsity(s_i, s_f, begin, end, freq)
    c0, c_last = begin // freq, end // freq - 1
    updates = [t for t in range(0, end + 3 * freq) if schedule.is_update_step(t)]
    assert updates == [c * freq for c in range(c0, c_last + 1)]
    for t in updates:
        c = t // freq
        expected = s_f + (s_i - s_f) * (1 - (c - c0) / (c_last - c0)) ** 3
        assert schedule(t) == pytest.approx(expected, abs=1e-12)
    assert schedule(updates[0]) == pytest.approx(s_i)
    assert schedule(updates[-1]) == s_f   # exactly s_f at the last round
    assert schedule(end + 10 * freq) == s_f and schedule(0) in (s_i, schedule(updates[0]))
    values = [schedule(t) for t in updates]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_cubic_schedule_rejects_bad_windows():
    with pytest.raises(ValueError, match="holds no update"):
        CubicSparsity(0.0, 0.9, 500, 900, 1000)
    with pytest.raises(ValueError, match="final_sparsity"):
        CubicSparsity(0.5, 0.2, 0, 5000, 1000)
    with pytest.raises(ValueError, match="frequency"):
        CubicSparsity(0.0, 0.9, 0, 5000, 0)


def test_cosine_rate():
    rate = CosineRate(0.5, 0.005, total_steps=1000)
    for t in (0, 1, 250, 500, 999, 1000, 5000):
        tt = min(t, 1000)
        assert rate(t) == pytest.approx(0.005 + 0.495 * (1 + math.cos(math.pi * tt / 1000)) / 2)
    assert rate(0) == 0.5 and rate(1000) == pytest.approx(0.005)


def test_erk_densities_match_the_formula_and_budget():
    shapes = {"conv1": (3, 3, 3, 16), "conv2": (3, 3, 16, 32), "conv3": (3, 3, 32, 64),
              "fc": (64, 10)}
    sizes = {k: np.prod(s) for k, s in shapes.items()}
    for sparsity in (0.5, 0.8, 0.95):
        dens = erk_densities(shapes, sparsity)
        # Independent restatement: layers at 1.0 are dense; the others share one epsilon.
        dense = [k for k, d in dens.items() if d == 1.0]
        rest = [k for k in shapes if k not in dense]
        raw = {k: sum(s) / np.prod(s) for k, s in shapes.items()}
        eps = ((1 - sparsity) * sum(sizes.values()) - sum(sizes[k] for k in dense)) / sum(
            raw[k] * sizes[k] for k in rest)
        for k in rest:
            assert dens[k] == pytest.approx(eps * raw[k]) and dens[k] < 1.0
        for k in dense:  # made dense because the formula asked for more than 1
            assert eps * raw[k] >= 1.0 - 1e-12
        assert sum(dens[k] * sizes[k] for k in shapes) == pytest.approx(
            (1 - sparsity) * sum(sizes.values()))
    assert erk_densities(shapes, 0.5)["conv1"] == 1.0   # the small first conv goes dense


@pytest.mark.parametrize("kind", ["erk", "uniform"])
def test_random_masks_have_the_exact_total(kind):
    shapes = {"a": (3, 3, 3, 16), "b": (3, 3, 16, 32), "c": (32, 10)}
    total = sum(np.prod(s) for s in shapes.values())
    masks = random_masks(shapes, 0.7, kind=kind, seed=3)
    assert sum(int(m.sum()) for m in masks.values()) == int(np.floor(0.3 * total))
    assert all(m.shape == shapes[k] for k, m in masks.items())
    again = random_masks(shapes, 0.7, kind=kind, seed=3)
    assert all(np.array_equal(masks[k], again[k]) for k in masks)


def test_global_magnitude_keeps_exactly_the_largest():
    rng = np.random.default_rng(0)
    weights = {"a": rng.normal(size=(4, 5)), "b": rng.normal(size=(3, 3, 2)) * 3}
    masks = {k: np.ones(v.shape, bool) for k, v in weights.items()}
    masks["a"][0, :2] = False
    weights["a"][0, :2] = 0.0
    out = magnitude_masks(weights, masks, 0.6)
    n = sum(v.size for v in weights.values())
    k = int(np.floor(0.4 * n))
    assert sum(int(m.sum()) for m in out.values()) == k
    pooled = np.sort(np.concatenate([np.abs(v).ravel() for v in weights.values()]))[::-1]
    threshold = pooled[k - 1]
    for key, value in weights.items():
        np.testing.assert_array_equal(out[key], np.abs(value) >= threshold)
    per_layer = magnitude_masks(weights, masks, 0.5, ranking="layer")
    for key, value in weights.items():
        assert int(per_layer[key].sum()) == int(np.floor(0.5 * value.size))


def test_one_regeneration_step_against_numpy():
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(6, 8))
    mask = rng.random((6, 8)) < 0.5
    weight = np.where(mask, weight, 0.0)
    gradient = rng.normal(size=(6, 8))
    new_mask, new_weight = regenerate(weight, gradient, mask, rate=0.3)
    nnz = int(mask.sum())
    n = math.ceil(0.3 * nnz)
    # Death: the n active weights of smallest |w|.
    active = np.flatnonzero(mask.ravel())
    dead = set(active[np.argsort(np.abs(weight.ravel()[active]))[:n]])
    # Growth: n positions, not surviving, of largest |g|.
    survivors = set(active) - dead
    candidates = np.array([i for i in range(mask.size) if i not in survivors])
    grown = set(candidates[np.argsort(-np.abs(gradient.ravel()[candidates]))[:n]])
    expected = np.zeros(mask.size, bool)
    expected[list(survivors | grown)] = True
    np.testing.assert_array_equal(new_mask.ravel(), expected)
    assert int(new_mask.sum()) == nnz
    for i in grown:
        value = new_weight.ravel()[i]
        assert value == (weight.ravel()[i] if i in dead else 0.0)
    assert not np.any(new_weight[~new_mask])

