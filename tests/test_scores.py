"""keras_tpp.scores against independent references: tape gradients, finite differences of
the gradient (GraSP's Hessian–gradient product) and SynFlow's closed form on Dense chains."""
import keras
import numpy as np
import pytest
from reference_grad import model_gradients

from keras_tpp import scores
from keras_tpp.sparsity.masks import kept_count

L = keras.layers


def _cnn(dtype="float32", activation="relu"):
    inp = keras.Input((6, 6, 2), dtype=dtype)
    x = L.Conv2D(3, 3, activation=activation, name="c1", dtype=dtype)(inp)
    x = L.BatchNormalization(name="bn", dtype=dtype)(x)
    x = L.Flatten(dtype=dtype)(x)
    x = L.Dense(5, activation=activation, name="d1", dtype=dtype)(x)
    model = keras.Model(inp, L.Dense(3, name="head", dtype=dtype)(x))
    rng = np.random.default_rng(0)
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(-1.5, 1.5, 3), rng.normal(0, 0.3, 3), rng.normal(0, 0.3, 3),
                    rng.uniform(0.5, 1.5, 3)])
    for name in ("c1", "d1", "head"):  # non-zero biases: every code path sees them
        layer = model.get_layer(name)
        layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(dtype))
    return model


def _data(n=6, dtype="float32"):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 6, 6, 2)).astype(dtype), np.arange(n) % 3


def _snapshot(model):
    return [np.array(v.numpy(), copy=True) for v in model.weights]


def _assert_unchanged(model, saved):
    for before, variable in zip(saved, model.weights):
        np.testing.assert_array_equal(variable.numpy(), before, err_msg=variable.path)
        assert variable.numpy().tobytes() == before.tobytes(), variable.path


def _tape_gradients(model, x, y, loss, kernels, temperature=1.0):
    return model_gradients(model, kernels, x, lambda out: keras.ops.mean(
        loss(y, out / temperature)))


def _ce(y, logits):
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)


KERNELS = ("c1", "d1", "head")


# -- magnitude, random, patterns ---------------------------------------------------------------


def test_magnitude_is_abs_kernel_and_patterns_select():
    model = _cnn()
    mag = scores.magnitude(model)
    assert list(mag) == list(KERNELS)
    for name in KERNELS:
        np.testing.assert_array_equal(mag[name], np.abs(model.get_layer(name).kernel.numpy()))
    assert list(scores.magnitude(model, layers="d*")) == ["d1"]
    assert list(scores.magnitude(model, exclude=["c1", "head"])) == ["d1"]


def test_random_scores_are_seeded_uniform():
    model = _cnn()
    a, b = scores.random(model, seed=3), scores.random(model, seed=3)
    for name in KERNELS:
        assert a[name].shape == model.get_layer(name).kernel.shape
        np.testing.assert_array_equal(a[name], b[name])
        assert a[name].min() >= 0 and a[name].max() < 1
    assert not np.array_equal(a["c1"], scores.random(model, seed=4)["c1"])


@pytest.mark.parametrize("fn", ["magnitude", "snip", "synflow", "random"])
def test_patterns_that_match_nothing_are_errors(fn):
    model = _cnn()
    x, y = _data()
    kwargs = {"snip": dict(x=x, y=y)}.get(fn, {})
    with pytest.raises(ValueError, match="'nope' matches no Conv or Dense layer.*c1"):
        getattr(scores, fn)(model, layers="nope", **kwargs)
    with pytest.raises(ValueError, match="exclude pattern 'zz\\*' matches no"):
        getattr(scores, fn)(model, exclude="zz*", **kwargs)


# -- SNIP ------------------------------------------------------------------------------------


def test_snip_is_abs_gradient_times_weight():
    model = _cnn()
    x, y = _data()
    saved = _snapshot(model)
    kernels = [model.get_layer(n).kernel for n in KERNELS]
    grads = _tape_gradients(model, x, y, _ce, kernels)
    expected = {n: np.abs(g * k.numpy()) for n, g, k in zip(KERNELS, grads, kernels)}
    got = scores.snip(model, x, y)
    for name in KERNELS:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-8)
    # Batches (arrays with a batch size, an uneven dataset) average to the same gradient.
    batched = scores.snip(model, x, y, batch_size=4)
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    from_dataset = scores.snip(model, dataset, layers="head")
    np.testing.assert_allclose(batched["head"], expected["head"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(from_dataset["head"], expected["head"], rtol=1e-5, atol=1e-8)
    assert list(from_dataset) == ["head"]
    _assert_unchanged(model, saved)


def test_snip_uses_the_compiled_loss_and_restores_bn_statistics_in_training_mode():
    model = _cnn()
    model.compile("sgd", loss="mean_squared_error")
    x, _ = _data()
    target = np.random.default_rng(2).normal(size=(6, 3)).astype("float32")
    kernel = model.get_layer("d1").kernel
    (grad,) = model_gradients(model, [kernel], x, lambda out: keras.ops.mean(
        keras.ops.mean((out - keras.ops.convert_to_tensor(target)) ** 2, -1)))
    expected = np.abs(grad * kernel.numpy())
    np.testing.assert_allclose(scores.snip(model, x, target)["d1"], expected, rtol=1e-5,
                               atol=1e-8)
    saved = _snapshot(model)
    trained = scores.snip(model, x, target, training=True)  # BN batch statistics
    assert not np.allclose(trained["d1"], expected)
    _assert_unchanged(model, saved)


def test_data_dependent_scores_need_data():
    model = _cnn()
    x, _ = _data()
    for fn in (scores.snip, scores.grasp):
        with pytest.raises(ValueError, match="data-dependent score"):
            fn(model)
        with pytest.raises(ValueError, match="needs targets"):
            fn(model, x)


# -- GraSP -----------------------------------------------------------------------------------


@pytest.mark.float64  # finite differences of float64 gradients
def test_grasp_hessian_gradient_product_matches_finite_differences_and_sign_convention():
    model = _cnn(dtype="float64", activation="tanh")
    x, y = _data(dtype="float64")
    temperature = 2.0
    saved = _snapshot(model)
    kernels = [model.get_layer(n).kernel for n in KERNELS]
    originals = [k.numpy().copy() for k in kernels]

    def gradient_at(shift):
        for k, w, s in zip(kernels, originals, shift):
            k.assign(w + s)
        try:
            return _tape_gradients(model, x, y, _ce, kernels, temperature)
        finally:
            for k, w in zip(kernels, originals):
                k.assign(w)

    g = gradient_at([np.zeros_like(w) for w in originals])
    eps = 1e-5
    plus = gradient_at([eps * gi for gi in g])
    minus = gradient_at([-eps * gi for gi in g])
    hg = [(p - m) / (2 * eps) for p, m in zip(plus, minus)]
    expected = {n: w * h for n, w, h in zip(KERNELS, originals, hg)}  # −S, S = −w ⊙ Hg

    got = scores.grasp(model, x, y, temperature=temperature)
    scale = max(np.abs(v).max() for v in expected.values())
    for name in KERNELS:
        assert got[name].dtype == np.float64
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-7 * scale)
    batched = scores.grasp(model, x, y, temperature=temperature, batch_size=4, layers="d1")
    np.testing.assert_allclose(batched["d1"], expected["d1"], rtol=1e-5, atol=1e-7 * scale)
    _assert_unchanged(model, saved)

    # Keeping the highest returned scores removes exactly the highest GraSP scores S.
    grasp_s = np.concatenate([-expected[n].ravel() for n in KERNELS])
    density = 0.7
    masks = scores.top_masks(got, density)
    removed = np.concatenate([~masks[n].ravel() for n in KERNELS])
    assert removed.sum() == grasp_s.size - kept_count(grasp_s.size, 1 - density)
    assert grasp_s[removed].min() > grasp_s[~removed].max()


def test_grasp_refuses_a_softmax_output_without_a_loss():
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(3, activation="softmax", name="head")(inp))
    x = np.ones((3, 4), "float32")
    with pytest.raises(ValueError, match="softmax"):
        scores.grasp(model, x, np.arange(3))


# -- SynFlow ---------------------------------------------------------------------------------


def _dense_chain(widths=(4, 6, 5, 3), use_bias=False, activation="relu"):
    inp = keras.Input((widths[0],))
    x = inp
    for i, width in enumerate(widths[1:]):
        x = L.Dense(width, use_bias=use_bias, activation=activation, name=f"d{i}")(x)
    model = keras.Model(inp, x)
    rng = np.random.default_rng(5)
    for layer in model.layers[1:]:
        layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
        if use_bias:
            layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    return model


def _closed_form(abs_kernels):
    """S_l = |W_l| ⊙ (left_lᵀ right_l), R = 1ᵀ|W_1|…|W_L|1 (x @ W orientation), numpy."""
    out = []
    for l, w in enumerate(abs_kernels):
        left = np.ones(abs_kernels[0].shape[0])
        for m in abs_kernels[:l]:
            left = left @ m
        right = np.ones(abs_kernels[-1].shape[1])
        for m in reversed(abs_kernels[l + 1:]):
            right = m @ right
        out.append(w * np.outer(left, right))
    return out


@pytest.mark.parametrize("use_bias", [False, True])
def test_synflow_equals_the_closed_form_of_a_dense_chain_and_restores_weights(use_bias):
    model = _dense_chain(use_bias=use_bias)
    saved = _snapshot(model)
    abs_kernels = [np.abs(layer.kernel.numpy()).astype(np.float64) for layer in model.layers[1:]]
    expected = _closed_form(abs_kernels)  # biases are zeroed in the flow network
    got = scores.synflow(model)
    assert list(got) == ["d0", "d1", "d2"]
    for name, exp in zip(got, expected):
        np.testing.assert_allclose(got[name], exp, rtol=1e-5)
    _assert_unchanged(model, saved)
    # Masked weights are zero in the flow network.
    mask = np.random.default_rng(0).random(abs_kernels[1].shape) < 0.5
    masked = scores.synflow(model, masks={"d1": mask})
    exp = _closed_form([abs_kernels[0], abs_kernels[1] * mask, abs_kernels[2]])
    for name, e in zip(masked, exp):
        np.testing.assert_allclose(masked[name], e, rtol=1e-5, atol=1e-12)
    _assert_unchanged(model, saved)


def test_synflow_batchnorm_scales_by_abs_gamma_over_std_and_drops_shifts():
    inp = keras.Input((4,))
    x = L.Dense(5, name="a")(inp)
    x = L.BatchNormalization(name="bn", epsilon=1e-3)(x)
    x = L.ReLU()(x)
    model = keras.Model(inp, L.Dense(2, name="b")(x))
    rng = np.random.default_rng(7)
    bn = model.get_layer("bn")
    bn.set_weights([rng.normal(size=5), rng.normal(size=5), rng.normal(size=5),
                    rng.uniform(0.5, 2.0, 5)])
    saved = _snapshot(model)
    gamma, _, _, var = bn.get_weights()
    d = np.diag(np.abs(gamma) / np.sqrt(var + 1e-3))
    w1, w2 = (np.abs(model.get_layer(n).kernel.numpy()).astype(np.float64) for n in "ab")
    s1, _, s2 = _closed_form([w1, d, w2])
    got = scores.synflow(model)
    np.testing.assert_allclose(got["a"], s1, rtol=1e-5)
    np.testing.assert_allclose(got["b"], s2, rtol=1e-5)
    _assert_unchanged(model, saved)


def test_synflow_restores_weights_when_an_error_is_raised_midway(monkeypatch):
    model = _cnn()
    saved = _snapshot(model)
    seen = {}

    def failing(self, masks):
        # The flow network is a float64 copy of the float32 model, linearized.
        seen["c1"] = self.model.get_layer("c1").kernel.numpy().copy()
        seen["dtype"] = str(self.model.get_layer("c1").kernel.dtype)
        raise RuntimeError("boom")

    monkeypatch.setattr(scores._FlowNetwork, "scores", failing)
    with pytest.raises(RuntimeError, match="boom"):
        scores.synflow_masks(model, 0.5, rounds=3)
    np.testing.assert_array_equal(seen["c1"], np.abs(saved[0]).astype("float64"))
    assert seen["dtype"] == "float64"
    _assert_unchanged(model, saved)


def test_synflow_masks_follow_the_exponential_schedule_to_the_exact_count(monkeypatch):
    model = _cnn()
    saved = _snapshot(model)
    total = sum(model.get_layer(n).kernel.numpy().size for n in KERNELS)
    density, rounds = 0.1, 5
    counts = []
    original = scores.top_masks

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        counts.append(sum(int(m.sum()) for m in out.values()))
        return out

    monkeypatch.setattr(scores, "top_masks", recording)
    masks = scores.synflow_masks(model, density, rounds=rounds)
    assert counts == [kept_count(total, 1 - density ** (k / rounds)) for k in
                      range(1, rounds + 1)]
    assert sum(int(m.sum()) for m in masks.values()) == int(np.floor(density * total + 1e-6))
    assert all(m.dtype == bool and m.shape == model.get_layer(n).kernel.shape
               for n, m in masks.items())
    _assert_unchanged(model, saved)
    # One round is one SynFlow score ranked globally.
    monkeypatch.setattr(scores, "top_masks", original)
    one = scores.synflow_masks(model, 0.3, rounds=1)
    ref = scores.top_masks(scores.synflow(model), 0.3)
    assert all(np.array_equal(one[n], ref[n]) for n in KERNELS)


@pytest.mark.parametrize("bad, name, why", [
    (lambda x: L.LayerNormalization(name="ln")(x), "ln", "own statistics"),
    (lambda x: L.Dense(4, activation="softmax", name="sm")(x), "sm", "softmax"),
    (lambda x: L.Lambda(lambda t: t * 2.0, name="lam")(x), "lam", "Lambda"),
    (lambda x: L.Activation("tanh", name="th")(x), "th", "tanh"),
])
def test_synflow_refuses_layers_without_a_sign_free_flow(bad, name, why):
    inp = keras.Input((4,))
    x = L.Dense(4, name="first")(inp)
    model = keras.Model(inp, L.Dense(2, name="head")(bad(x)))
    saved = _snapshot(model)
    with pytest.raises(ValueError, match=f"'{name}' \\(.*\\).*{why}"):
        scores.synflow(model)
    _assert_unchanged(model, saved)


# -- masks and channel scores -----------------------------------------------------------------


def test_top_masks_rank_signed_scores_with_exact_counts_and_filter_scores_sum():
    s = {"a": np.array([[-3.0, 2.0], [0.5, -0.1]]), "b": np.array([1.0, -5.0, 0.5])}
    m = scores.top_masks(s, 3 / 7)
    assert m["a"].tolist() == [[False, True], [True, False]]
    assert m["b"].tolist() == [True, False, False]  # ties (0.5) go to the earlier layer
    per_layer = scores.top_masks(s, {"a": 0.5, "b": 1 / 3}, ranking="layer")
    assert per_layer["a"].sum() == 2 and per_layer["b"].tolist() == [True, False, False]
    model = _cnn()
    mag = scores.magnitude(model)
    channel = scores.filter_scores(model, mag)
    np.testing.assert_allclose(channel["c1"], mag["c1"].sum(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(channel["head"], mag["head"].sum(axis=0), rtol=1e-6)


@pytest.mark.not_torch(reason="Keras' torch Dense computes float64 matmuls in float32 "
                              "(keras.backend.result_type): the flow overflows there")
def test_synflow_of_a_deep_float32_network_runs_in_float64():
    """Path products of 30 Dense layers of width 64 with unit-variance weights reach ~1e50:
    beyond float32 (max 3.4e38), within float64; the scores stay finite and the float32
    model is untouched."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((64,))
    x = inputs
    for i in range(30):
        x = keras.layers.Dense(64, activation="relu", name=f"d{i}",
                               kernel_initializer=keras.initializers.RandomNormal(0, 1))(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(x))
    saved = _snapshot(model)
    flow = scores.synflow(model)
    assert all(np.all(np.isfinite(v)) for v in flow.values())
    assert max(float(v.max()) for v in flow.values()) > 3.4e38
    _assert_unchanged(model, saved)
