"""TPP's penalty values and gradients against an independent numpy statement of SPEC §1."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_tpp import penalties, filters
from keras_tpp.constraints import ChannelMask
from keras_tpp.penalty_schedule import PenaltySchedule, GROW, STABILIZE, PRUNED


def np_filter_matrix(kernel, axis=-1):
    moved = np.moveaxis(kernel, axis, 0)
    return moved.reshape(moved.shape[0], -1)


def np_gram(w, m):
    n = w.shape[0]
    g = w @ w.T
    off = 1.0 - np.outer(m, m)
    return ((g * off) ** 2).sum() / n**2


def np_gram_grad(w, m):
    # d/dW (1/N²) Σ (G∘M)² with G = WWᵀ, M symmetric binary: (4/N²) (G∘M) W.
    n = w.shape[0]
    g = w @ w.T
    off = 1.0 - np.outer(m, m)
    return 4.0 / n**2 * (g * off) @ w


def np_masked_l2(x, m, lam, lam_kept=0.0, axis=-1):
    per = (np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1) ** 2).sum(axis=1)
    return 0.5 * (lam * per[m == 0].sum() + lam_kept * per[m == 1].sum())


KERNELS = {
    "conv2d": ((3, 3, 4, 8), -1),
    "dense": ((6, 5), -1),
    "conv2d_transpose": ((3, 3, 7, 4), -2),
}


@pytest.mark.tf_only(reason="differentiates with tf.GradientTape on tf tensors; JAX's gradients of "
                               "the same penalties are compared with TensorFlow's in test_backends.py")
@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gram_penalty_value_and_gradient(name, seed):
    shape, axis = KERNELS[name]
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=shape).astype("float64")
    n = shape[axis]
    mask = (rng.random(n) < 0.5).astype("float64")
    mask[0] = 1.0
    w = np_filter_matrix(kernel, axis)
    strength = keras.Variable(0.37, dtype="float64", trainable=False)
    keep = keras.Variable(mask, dtype="float64", trainable=False)
    reg = penalties.GramPenalty(coefficient=1000.0, axis=axis).bind(keep, strength)
    variable = tf.constant(kernel)
    with tf.GradientTape() as tape:
        tape.watch(variable)
        value = reg(variable)
    grad = tape.gradient(value, variable).numpy()
    np.testing.assert_allclose(float(value), 1000.0 * 0.37 * np_gram(w, mask), rtol=1e-10)
    expected_grad = 1000.0 * 0.37 * np_gram_grad(w, mask)
    np.testing.assert_allclose(np_filter_matrix(grad, axis), expected_grad, rtol=1e-9,
                               atol=1e-12)


@pytest.mark.float64
def test_gram_penalty_ignores_kept_kept_entries():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 10))
    mask = np.array([1, 1, 1, 0, 1, 0], dtype="float64")
    base = float(penalties.gram_penalty(w, mask))
    # Change only kept filters in the directions orthogonal to every pruned filter: the
    # kept-pruned entries stay the same, kept-kept entries change, the value must not.
    pruned = w[mask == 0]
    q, _ = np.linalg.qr(pruned.T, mode="complete")
    null = q[:, pruned.shape[0]:]
    w2 = w.copy()
    w2[mask == 1] += rng.normal(size=(4, null.shape[1])) @ null.T * 3.0
    assert not np.allclose(w2 @ w2.T, w @ w.T)
    np.testing.assert_allclose(float(penalties.gram_penalty(w2, mask)), base, rtol=1e-10)
    # All kept: nothing to penalize at all.
    assert float(penalties.gram_penalty(w, np.ones(6))) == 0.0
    # One pruned filter: its whole row and column (including its diagonal) count.
    m = np.ones(6)
    m[2] = 0
    g = w @ w.T
    expected = (2 * (g[2] ** 2).sum() - g[2, 2] ** 2) / 36
    np.testing.assert_allclose(float(penalties.gram_penalty(w, m)), expected, rtol=1e-10)


@pytest.mark.parametrize("shape,axis", [((3, 3, 4, 8), -1), ((8,), -1), ((6, 5), -1),
                                        ((3, 3, 7, 4), -2)])
@pytest.mark.tf_only(reason="differentiates with tf.GradientTape on tf tensors; JAX's gradients of "
                               "the same penalties are compared with TensorFlow's in test_backends.py")
def test_masked_l2_value_and_gradient(shape, axis):
    rng = np.random.default_rng(5)
    x = rng.normal(size=shape)
    n = shape[axis]
    mask = (rng.random(n) < 0.5).astype("float64")
    reg = penalties.MaskedL2(axis).bind(
        keras.Variable(mask, dtype="float64"), keras.Variable(0.2, dtype="float64"),
        keras.Variable(-1e-4, dtype="float64"))
    variable = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(variable)
        value = reg(variable)
    grad = tape.gradient(value, variable).numpy()
    np.testing.assert_allclose(float(value), np_masked_l2(x, mask, 0.2, -1e-4, axis),
                               rtol=1e-10)
    # Gradient is λ·x on pruned channels and λ_kept·x on kept ones (grad += λ·w in the paper).
    factor = np.where(mask == 1, -1e-4, 0.2)
    shape_b = filters.channel_broadcast_shape(shape, axis)
    np.testing.assert_allclose(grad, x * factor.reshape(shape_b), rtol=1e-10)


def test_unbound_regularizer_is_a_clear_error():
    with pytest.raises(ValueError, match="not bound"):
        penalties.GramPenalty()(np.ones((2, 3), "float32"))


def test_regularizers_serialize():
    for reg in (penalties.GramPenalty(12.0, -2), penalties.MaskedL2(-1)):
        restored = keras.regularizers.deserialize(keras.regularizers.serialize(reg))
        assert type(restored) is type(reg) and restored.get_config() == reg.get_config()
    total = penalties.RegularizerSum([keras.regularizers.L2(0.1), penalties.MaskedL2()])
    restored = keras.regularizers.deserialize(keras.regularizers.serialize(total))
    assert [type(r) for r in restored.regularizers] == [keras.regularizers.L2, penalties.MaskedL2]


def test_channel_mask_constraint():
    w = np.arange(24, dtype="float32").reshape(2, 3, 4) + 1
    mask = keras.Variable(np.array([1, 0, 1, 0], "float32"))
    enforce = keras.Variable(0.0)
    c = ChannelMask(-1, inner=keras.constraints.NonNeg()).bind(mask, enforce)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(c(w)), w)
    enforce.assign(1.0)
    out = keras.ops.convert_to_numpy(c(w))
    np.testing.assert_array_equal(out[..., [0, 2]], w[..., [0, 2]])
    assert (out[..., [1, 3]] == 0).all()
    restored = keras.constraints.deserialize(keras.constraints.serialize(c))
    assert isinstance(restored.inner, keras.constraints.NonNeg)


def test_penalty_schedule_values():
    s = PenaltySchedule(delta=1e-4, interval=10, ceiling=1.0, stabilize_steps=10_000)
    assert s.ramp_end == 100_000 and s.end_step == 110_000
    assert s.strength(0) == 0.0 and s.strength(9) == 0.0
    assert s.strength(10) == pytest.approx(1e-4)
    assert s.strength(12_345) == pytest.approx(1234e-4)
    assert s.strength(99_999) == pytest.approx(0.9999)
    assert s.strength(100_000) == 1.0 and s.strength(10**7) == 1.0
    assert (s.phase(0), s.phase(99_999), s.phase(100_000), s.phase(109_999),
            s.phase(110_000)) == (GROW, GROW, STABILIZE, STABILIZE, PRUNED)
    by_length = PenaltySchedule(delta=None, interval=5, ceiling=0.5, ramp_steps=100,
                                stabilize_steps=3)
    assert by_length.ramp_end == 100 and by_length.end_step == 103
    assert by_length.strength(99) == pytest.approx(0.475) and by_length.strength(100) == 0.5
    assert PenaltySchedule.from_config(s.get_config()).get_config() == s.get_config()


@pytest.mark.parametrize("kwargs", [
    {"delta": 0.0}, {"delta": -1.0}, {"delta": 2.0}, {"interval": 0}, {"interval": 2.5},
    {"ceiling": 0}, {"stabilize_steps": -1}, {"ramp_steps": 3}, {"start_step": -2},
    {"ceiling": float("inf")},
])
def test_penalty_schedule_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        PenaltySchedule(**kwargs)


# -- bounded formulation (default) -------------------------------------------------------------

def np_curvature_bound(w):
    # 12 · min(‖G‖_F, max row sum |G|) / N², G = W Wᵀ.
    n = w.shape[0]
    g = w @ w.T
    return 12.0 * min(np.sqrt((g ** 2).sum()), np.abs(g).sum(axis=1).max()) / n**2


def np_bounded_weight(w, coefficient, strength, eta):
    weight = coefficient * strength
    if eta <= 0:
        return weight
    return min(weight, 1.0 / (eta * np_curvature_bound(w)))


def _gram_value_and_grad(kernel, mask, strength, eta, axis, formulation):
    reg = penalties.GramPenalty(1000.0, axis, formulation).bind(
        keras.Variable(mask, dtype="float64"), keras.Variable(strength, dtype="float64"),
        step_size=keras.Variable(eta, dtype="float64"))
    variable = tf.constant(kernel)
    with tf.GradientTape() as tape:
        tape.watch(variable)
        value = reg(variable)
    return float(value), np_filter_matrix(tape.gradient(value, variable).numpy(), axis)


@pytest.mark.tf_only(reason="differentiates with tf.GradientTape on tf tensors; JAX's gradients of "
                               "the same penalties are compared with TensorFlow's in test_backends.py")
@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("eta", [0.0, 1e-7, 1e-3, 0.1])
def test_bounded_gram_penalty_value_and_gradient(name, eta):
    shape, axis = KERNELS[name]
    rng = np.random.default_rng(7)
    kernel = rng.normal(size=shape) * 3.0
    n = shape[axis]
    mask = np.ones(n)
    mask[rng.permutation(n)[: n // 2]] = 0.0
    w = np_filter_matrix(kernel, axis)
    weight = np_bounded_weight(w, 1000.0, 0.5, eta)
    value, grad = _gram_value_and_grad(kernel, mask, 0.5, eta, axis, "bounded")
    np.testing.assert_allclose(value, weight * np_gram(w, mask), rtol=1e-9)
    # The weight is a constant of the step (no gradient through the bound).
    np.testing.assert_allclose(grad, weight * np_gram_grad(w, mask), rtol=1e-9, atol=1e-12)
    exact_value, exact_grad = _gram_value_and_grad(kernel, mask, 0.5, eta, axis, "exact")
    np.testing.assert_allclose(exact_value, 500.0 * np_gram(w, mask), rtol=1e-10)
    np.testing.assert_allclose(exact_grad, 500.0 * np_gram_grad(w, mask), rtol=1e-9,
                               atol=1e-12)
    step = eta * 500.0 * np_curvature_bound(w)  # η · c·λ · H(W)
    if eta <= 1e-7:  # inactive (η unknown, or a small step): bounded == exact
        assert step <= 1.0
        assert value == pytest.approx(exact_value, rel=1e-12)
    else:  # active: the weight is cut to η · weight · H(W) = 1
        assert step > 1.0 and weight < 500.0
        assert eta * weight * np_curvature_bound(w) == pytest.approx(1.0, rel=1e-12)


def _np_gram_hessian(w, m):
    # Exact Hessian of L_gram over vec(W), by automatic differentiation in float64.
    x = tf.Variable(w)
    mask = tf.constant(m)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            value = penalties.gram_penalty(x, mask)
        grad = inner.gradient(value, x)
    hessian = outer.jacobian(grad, x).numpy()
    return hessian.reshape(w.size, w.size)


@pytest.mark.tf_only(reason="differentiates with tf.GradientTape on tf tensors; JAX's gradients of "
                               "the same penalties are compared with TensorFlow's in test_backends.py")
@pytest.mark.parametrize("seed", range(6))
def test_curvature_bound_bounds_the_hessian(seed):
    rng = np.random.default_rng(seed)
    n, k = rng.integers(2, 7), rng.integers(1, 6)
    w = rng.normal(size=(n, k)) * rng.uniform(0.1, 5.0)
    m = (rng.random(n) < 0.5).astype("float64")
    largest = np.linalg.eigvalsh(_np_gram_hessian(w, m))[-1]
    bound = float(penalties.gram_curvature_bound(w))
    np.testing.assert_allclose(bound, np_curvature_bound(w), rtol=1e-10)
    assert largest <= bound * (1 + 1e-9)


@pytest.mark.tf_only(reason="differentiates with tf.GradientTape on tf tensors; JAX's gradients of "
                               "the same penalties are compared with TensorFlow's in test_backends.py")
def test_curvature_bound_is_tight_for_one_dominant_pruned_filter():
    w = np.zeros((3, 4))
    w[1] = [3.0, 0.0, 0.0, 0.0]
    m = np.array([1.0, 0.0, 1.0])
    largest = np.linalg.eigvalsh(_np_gram_hessian(w, m))[-1]
    np.testing.assert_allclose(largest, 12.0 * 9.0 / 9.0, rtol=1e-9)
    np.testing.assert_allclose(float(penalties.gram_curvature_bound(w)), largest, rtol=1e-9)


def test_bounded_gram_step_contracts_where_exact_overshoots():
    # A lone pruned filter w: L_gram = ‖w‖⁴/N². Plain gradient descent on c·λ·L from a large
    # ‖w‖ explodes; with the bounded weight every step shrinks ‖w‖.
    def run(formulation, steps=20, eta=0.1):
        w = np.zeros((2, 3))
        w[1] = [4.0, -2.0, 1.0]
        m = np.array([1.0, 0.0])
        for _ in range(steps):
            weight = (1000.0 if formulation == "exact"
                      else np_bounded_weight(w, 1000.0, 1.0, eta))
            w = w - eta * weight * np_gram_grad(w, m)
            if not np.all(np.isfinite(w)) or np.abs(w).max() > 1e6:
                return None
        return w
    assert run("exact") is None
    w = run("bounded")
    assert w is not None and np.linalg.norm(w[1]) < 1.0


@pytest.mark.parametrize("kwargs,match", [
    ({"coefficient": float("nan")}, "gram_coefficient"),
    ({"coefficient": float("inf")}, "gram_coefficient"),
    ({"coefficient": -1.0}, "gram_coefficient"),
    ({"coefficient": True}, "gram_coefficient"),
    ({"coefficient": "1000"}, "gram_coefficient"),
    ({"coefficient": None}, "gram_coefficient"),
    ({"formulation": "stable"}, "gram_formulation"),
    ({"formulation": None}, "gram_formulation"),
    ({"axis": 1.5}, "axis"),
])
def test_gram_penalty_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        penalties.GramPenalty(**kwargs)


def test_gram_formulation_serializes():
    for formulation in ("exact", "bounded"):
        reg = penalties.GramPenalty(10.0, -1, formulation)
        restored = keras.regularizers.deserialize(keras.regularizers.serialize(reg))
        assert restored.formulation == formulation
    # Configs written before the option existed load with the default.
    assert penalties.GramPenalty.from_config({"coefficient": 5.0, "axis": -1}).formulation \
        == "bounded"


@pytest.mark.parametrize("kwargs,match", [
    ({"gram_coefficient": float("nan")}, "gram_coefficient"),
    ({"gram_coefficient": float("inf")}, "gram_coefficient"),
    ({"gram_coefficient": "big"}, "gram_coefficient"),
    ({"gram_formulation": "normalized"}, "gram_formulation"),
    ({"num_pruned": 1.5}, "num_pruned"),
    ({"num_pruned": True}, "num_pruned"),
    ({"l2_penalty": "yes"}, "l2_penalty"),
])
def test_wrapper_rejects_bad_penalty_options(kwargs, match):
    from keras_tpp.wrappers import PruningWrapper
    with pytest.raises(ValueError, match=match):
        PruningWrapper(keras.layers.Conv2D(4, 3), **kwargs)


def test_wrapper_config_round_trip_keeps_formulation():
    from keras_tpp.wrappers import PruningWrapper
    wrapper = PruningWrapper(keras.layers.Dense(4), gram_formulation="exact")
    restored = PruningWrapper.from_config(wrapper.get_config())
    assert restored.gram_formulation == "exact"
    restored.build((None, 3))
    grams = [r for r in restored.layer.kernel.regularizer.regularizers
             if isinstance(r, penalties.GramPenalty)]
    assert [g.formulation for g in grams] == ["exact"]
    assert PruningWrapper(keras.layers.Dense(4)).gram_formulation == "bounded"


@pytest.mark.parametrize("kwargs,match", [
    ({"delta": float("nan")}, "delta"), ({"delta": True}, "delta"), ({"delta": "0.1"}, "delta"),
    ({"interval": True}, "interval"), ({"interval": "10"}, "interval"),
    ({"interval": float("nan")}, "interval"),
    ({"ceiling": float("nan")}, "ceiling"), ({"ceiling": -1.0}, "ceiling"),
    ({"ceiling": True}, "ceiling"), ({"ceiling": "1"}, "ceiling"),
    ({"stabilize_steps": True}, "stabilize_steps"), ({"stabilize_steps": 2.0}, "stabilize_steps"),
    ({"ramp_steps": True}, "ramp_steps"), ({"ramp_steps": 100.0}, "ramp_steps"),
    ({"start_step": False}, "start_step"), ({"delta": None}, "delta"),
])
def test_penalty_schedule_names_the_bad_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PenaltySchedule(**kwargs)


def test_validation_helpers():
    from keras_tpp import validation as v
    assert v.finite_float(np.float32(0.5), "x", minimum=0.0) == 0.5
    assert isinstance(v.finite_float(3, "x"), float)
    for bad in (float("nan"), float("inf"), True, np.bool_(True), "1", None, [1.0]):
        with pytest.raises(ValueError, match="^x must be"):
            v.finite_float(bad, "x")
    with pytest.raises(ValueError, match="x must be > 0"):
        v.finite_float(0.0, "x", minimum=0.0, exclusive_minimum=True)
    with pytest.raises(ValueError, match="x must be <= 1"):
        v.finite_float(1.5, "x", maximum=1.0)
    assert v.positive_int(np.int64(3), "n") == 3 and v.non_negative_int(0, "n") == 0
    for bad in (0, -1, True, 2.0, "2", None):
        with pytest.raises(ValueError, match="^n must be"):
            v.positive_int(bad, "n")
    assert v.one_of("exact", "f", ("exact", "bounded")) == "exact"
    with pytest.raises(ValueError, match="f must be one of 'exact', 'bounded'"):
        v.one_of("x", "f", ("exact", "bounded"))


# -- the gram term from the pruned rows only (GramPenalty with num_pruned) -----------------------

@pytest.fixture(autouse=True)
def _pruned_rows_for_every_size(monkeypatch):
    # The test kernels are small: take the pruned-rows path for them too.
    monkeypatch.setattr(penalties, "PRUNED_ROWS_MIN_SIZE", 0)


def _mask_with(n, pruned, rng):
    mask = np.ones(n)
    mask[rng.permutation(n)[:pruned]] = 0.0
    return mask


def _pruned_gram_value_and_grad(kernel, keep, strength, eta, axis, formulation, num_pruned):
    """Value and filter-matrix gradient of a GramPenalty told ``num_pruned``; ``keep`` is a
    variable (its contents may change between calls)."""
    reg = penalties.GramPenalty(1000.0, axis, formulation).bind(
        keep, keras.Variable(strength, dtype="float64"),
        step_size=keras.Variable(eta, dtype="float64")).set_num_pruned(num_pruned)
    variable = tf.constant(kernel)
    with tf.GradientTape() as tape:
        tape.watch(variable)
        value = reg(variable)
    return float(value), np_filter_matrix(tape.gradient(value, variable).numpy(), axis)


def np_gram_grad_any_mask(w, m):
    # (4/N²) (G∘M²) W: the gradient of (1/N²) Σ (G∘M)² for any mask values (M² = M if binary).
    n = w.shape[0]
    off = 1.0 - np.outer(m, m)
    return 4.0 / n**2 * ((w @ w.T) * off**2) @ w


def _expected(w, mask, strength, eta, formulation):
    weight = (np_bounded_weight(w, 1000.0, strength, eta) if formulation == "bounded"
              else 1000.0 * strength)
    grad = np_gram_grad_any_mask(w, mask)
    if set(np.unique(mask)) <= {0.0, 1.0}:
        np.testing.assert_allclose(grad, np_gram_grad(w, mask), rtol=1e-12, atol=1e-12)
    return weight * np_gram(w, mask), weight * grad


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("pruned", ["none", "one", "half", "all_but_one"])
@pytest.mark.parametrize("formulation,eta", [("exact", 0.0), ("bounded", 0.0),
                                             ("bounded", 1e-4), ("bounded", 0.1)])
@pytest.mark.tf_only(reason="differentiates with tf.GradientTape on tf tensors; JAX's gradients of "
                               "the same penalties are compared with TensorFlow's in test_backends.py")
def test_pruned_rows_gram_equals_the_full_formula(name, pruned, formulation, eta):
    shape, axis = KERNELS[name]
    n = shape[axis]
    count = {"none": 0, "one": 1, "half": n // 2, "all_but_one": n - 1}[pruned]
    rng = np.random.default_rng(11 + count)
    kernel = rng.normal(size=shape) * 2.0
    mask = _mask_with(n, count, rng)
    w = np_filter_matrix(kernel, axis)
    value, grad = _pruned_gram_value_and_grad(
        kernel, keras.Variable(mask, dtype="float64"), 0.5, eta, axis, formulation, count)
    expected_value, expected_grad = _expected(w, mask, 0.5, eta, formulation)
    np.testing.assert_allclose(value, expected_value, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.tf_only(reason="differentiates with tf.GradientTape on tf tensors; JAX's gradients of "
                               "the same penalties are compared with TensorFlow's in test_backends.py")
@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("formulation", ["exact", "bounded"])
def test_pruned_rows_gram_gradient_matches_finite_differences(name, formulation):
    shape, axis = KERNELS[name]
    n = shape[axis]
    rng = np.random.default_rng(4)
    kernel = rng.normal(size=shape)
    mask = _mask_with(n, n // 2, rng)
    # η small enough that the bounded weight is c·λ (the cap is a constant of the step, and
    # finite differences would see its kink otherwise).
    eta = 1e-9
    reg = penalties.GramPenalty(1000.0, axis, formulation).bind(
        keras.Variable(mask, dtype="float64"), keras.Variable(0.3, dtype="float64"),
        step_size=keras.Variable(eta, dtype="float64")).set_num_pruned(n // 2)
    variable = tf.constant(kernel)
    with tf.GradientTape() as tape:
        tape.watch(variable)
        value = reg(variable)
    grad = tape.gradient(value, variable).numpy()
    h = 1e-6
    for index in [tuple(rng.integers(0, s) for s in shape) for _ in range(12)]:
        up, down = kernel.copy(), kernel.copy()
        up[index] += h
        down[index] -= h
        numeric = (float(reg(tf.constant(up))) - float(reg(tf.constant(down)))) / (2 * h)
        np.testing.assert_allclose(grad[index], numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.tf_only(reason="differentiates with tf.GradientTape on tf tensors; JAX's gradients of "
                               "the same penalties are compared with TensorFlow's in test_backends.py")
def test_pruned_rows_gram_follows_a_mask_change_in_one_graph():
    # GReg-2-like: the count is fixed at construction, the pruned indices change after it; and
    # a mask with more entries below 1 than declared (or none at all) is still exact.
    shape, axis = (3, 3, 5, 12), -1
    n, count = 12, 5
    rng = np.random.default_rng(8)
    kernel = tf.constant(rng.normal(size=shape))
    w = np_filter_matrix(kernel.numpy(), axis)
    keep = keras.Variable(np.ones(n), dtype="float64", trainable=False)
    eta = keras.Variable(0.0, dtype="float64")
    reg = penalties.GramPenalty(1000.0, axis, "bounded").bind(
        keep, keras.Variable(0.5, dtype="float64"), step_size=eta).set_num_pruned(count)

    @tf.function
    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = reg(x)
        return value, tape.gradient(value, x)

    masks = [np.ones(n), _mask_with(n, count, rng), _mask_with(n, count, rng),
             _mask_with(n, count + 3, rng), _mask_with(n, count - 2, rng),
             np.where(_mask_with(n, count, rng) == 0, 0.25, 1.0)]  # fractional entries too
    for mask in masks:
        for step in (0.0, 1e-4, 0.1):
            keep.assign(mask)
            eta.assign(step)
            value, grad = value_and_grad(kernel)
            expected_value, expected_grad = _expected(w, mask, 0.5, step, "bounded")
            np.testing.assert_allclose(float(value), expected_value, rtol=1e-10, atol=1e-300)
            np.testing.assert_allclose(np_filter_matrix(grad.numpy(), axis), expected_grad,
                                       rtol=1e-9, atol=1e-12)
    assert value_and_grad.experimental_get_tracing_count() == 1


@pytest.mark.float64
@pytest.mark.parametrize("seed", range(8))
def test_pruned_curvature_bounds(seed):
    # exact=True reproduces H(W) from the pruned block and the kept block; exact=False is an
    # upper bound of it (the test of "the cap cannot bind").
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(2, 12)), int(rng.integers(1, 40))
    pruned = int(rng.integers(1, n))
    w = rng.normal(size=(n, k)) * rng.uniform(0.1, 5.0)
    mask = _mask_with(n, pruned, rng)
    ordered, m = penalties._pruned_first(tf.constant(w), tf.constant(mask))
    block, _ = penalties._pruned_block(ordered, m, pruned)
    exact = float(penalties._pruned_curvature_bounds(block, ordered, pruned, n, exact=True))
    cheap = float(penalties._pruned_curvature_bounds(block, ordered, pruned, n, exact=False))
    np.testing.assert_allclose(exact, np_curvature_bound(w), rtol=1e-12)
    assert cheap >= exact * (1 - 1e-12)


@pytest.mark.tf_only(reason="differentiates with tf.GradientTape on tf tensors; JAX's gradients of "
                               "the same penalties are compared with TensorFlow's in test_backends.py")
def test_bounded_weight_where_only_the_cheap_bound_would_cut():
    # η chosen so that η·c·λ·H(W) = 0.9 (no cap) while η·c·λ·(cheap bound) > 1: the exact
    # branch runs and must leave the weight at c·λ.
    rng = np.random.default_rng(2)
    n, pruned = 16, 6
    w = rng.normal(size=(n, 30))
    mask = _mask_with(n, pruned, rng)
    ordered, m = penalties._pruned_first(tf.constant(w), tf.constant(mask))
    block, _ = penalties._pruned_block(ordered, m, pruned)
    cheap = float(penalties._pruned_curvature_bounds(block, ordered, pruned, n, exact=False))
    eta = 0.9 / (500.0 * np_curvature_bound(w))
    assert eta * 500.0 * cheap > 1.0
    for target, cut in ((0.9, False), (1.5, True)):
        eta = target / (500.0 * np_curvature_bound(w))
        value, grad = _pruned_gram_value_and_grad(  # a Dense kernel (K, N): W = kernelᵀ
            w.T, keras.Variable(mask, dtype="float64"), 0.5, eta, -1, "bounded", pruned)
        expected_value, expected_grad = _expected(w, mask, 0.5, eta, "bounded")
        np.testing.assert_allclose(value, expected_value, rtol=1e-10)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-9, atol=1e-12)
        assert bool(value < 500.0 * np_gram(w, mask) * (1 - 1e-9)) is cut


@pytest.mark.tf_only(reason="differentiates with tf.GradientTape on tf tensors; JAX's gradients of "
                               "the same penalties are compared with TensorFlow's in test_backends.py")
def test_gram_penalty_uses_the_pruned_rows_above_a_size(monkeypatch):
    monkeypatch.setattr(penalties, "PRUNED_ROWS_MIN_SIZE", 8 * 8 * 36)
    calls = []
    original = penalties._pruned_weighted_gram
    monkeypatch.setattr(penalties, "_pruned_weighted_gram",
                        lambda *args: calls.append(args[-1]) or original(*args))
    rng = np.random.default_rng(1)
    for shape, expected in (((3, 3, 4, 8), [3]), ((3, 3, 4, 7), [])):
        n = shape[-1]
        mask = _mask_with(n, 3, rng)
        kernel = rng.normal(size=shape)
        value, grad = _pruned_gram_value_and_grad(
            kernel, keras.Variable(mask, dtype="float64"), 0.5, 0.0, -1, "bounded", 3)
        w = np_filter_matrix(kernel, -1)
        np.testing.assert_allclose(value, 500.0 * np_gram(w, mask), rtol=1e-10)
        np.testing.assert_allclose(grad, 500.0 * np_gram_grad(w, mask), rtol=1e-9, atol=1e-12)
        assert calls == expected
        calls.clear()


def test_wrapper_gram_penalty_knows_num_pruned():
    from keras_tpp.wrappers import PruningWrapper
    wrapper = PruningWrapper(keras.layers.Conv2D(10, 3), num_pruned=4)
    wrapper.build((None, 8, 8, 3))
    grams = [r for r in wrapper.layer.kernel.regularizer.regularizers
             if isinstance(r, penalties.GramPenalty)]
    assert [g.num_pruned for g in grams] == [4]
    rng = np.random.default_rng(0)
    mask = _mask_with(10, 4, rng)
    wrapper.keep_mask.assign(mask.astype("float32"))
    wrapper.strength.assign(0.25)
    kernel = keras.ops.convert_to_numpy(wrapper.layer.kernel).astype("float64")
    w = np_filter_matrix(kernel, -1)
    value = float(grams[0](wrapper.layer.kernel))
    np.testing.assert_allclose(value, 250.0 * np_gram(w, mask), rtol=1e-5)
    restored = PruningWrapper.from_config(wrapper.get_config())
    restored.build((None, 8, 8, 3))
    assert [r.num_pruned for r in restored.layer.kernel.regularizer.regularizers
            if isinstance(r, penalties.GramPenalty)] == [4]


@pytest.mark.not_torch(reason="runs its own JAX subprocess whatever the session's backend: "
                              "once is enough, in the TensorFlow and JAX sessions")
def test_pruned_rows_gram_on_the_jax_backend(tmp_path):
    # keras.ops only: the same values and gradients under jax.jit, the mask changing between
    # calls of one compiled function (more entries below 1 than declared included).
    import os
    import pathlib
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent("""
        import numpy as np, jax, jax.numpy as jnp, keras
        from keras_tpp import penalties
        assert keras.backend.backend() == "jax"
        rng = np.random.default_rng(0)
        n, k = 10, 4
        w = rng.normal(size=(n, 7))
        def reference(w, m, eta):
            g = w @ w.T
            off = 1.0 - np.outer(m, m)
            h = 12.0 * min(np.sqrt((g ** 2).sum()), np.abs(g).sum(axis=1).max()) / n ** 2
            weight = 500.0 if eta <= 0 else min(500.0, 1.0 / (eta * h))
            return (weight * ((g * off) ** 2).sum() / n ** 2,
                    weight * 4.0 / n ** 2 * ((g * off ** 2) @ w))
        f = jax.jit(jax.value_and_grad(lambda x, m, eta: penalties.weighted_gram_penalty(
            x, m, 500.0, eta, num_pruned=k)))
        for pruned in (k, k, k + 2, 0):
            m = np.ones(n)
            m[rng.permutation(n)[:pruned]] = 0.0
            for eta in (0.0, 1e-6, 0.1):
                value, grad = f(jnp.asarray(w, "float32"), jnp.asarray(m, "float32"),
                                jnp.asarray(eta, "float32"))
                rv, rg = reference(w, m, eta)
                np.testing.assert_allclose(float(value), rv, rtol=2e-5)
                np.testing.assert_allclose(np.asarray(grad), rg, rtol=2e-4,
                                           atol=2e-4 * np.abs(rg).max())
        print("OK")
    """)
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
