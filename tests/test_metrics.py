"""Jacobian singular values against closed forms and float64 finite differences."""
import keras
import numpy as np
import pytest

from keras_tpp.metrics import jacobian_singular_values


def numpy_svals(jacobians):
    """(B, K, D) float64 → (B, min(K, D)) singular values, descending."""
    return np.linalg.svd(jacobians, compute_uv=False)


def central_difference_jacobian(f, x, h=1e-5):
    """J[b, k, d] = ∂f(x)[b, k]/∂x[b, d] for an example-wise float64 numpy function f."""
    batch = x.shape[0]
    flat = x.reshape(batch, -1).astype(np.float64)
    columns = []
    for d in range(flat.shape[1]):
        step = np.zeros_like(flat)
        step[:, d] = h
        plus = f((flat + step).reshape(x.shape))
        minus = f((flat - step).reshape(x.shape))
        columns.append((plus - minus) / (2 * h))
    return np.stack(columns, axis=-1)  # (B, K, D)


def check_result(result, expected):
    sv = result["singular_values"]
    assert sv.dtype == np.float64 and sv.shape == expected.shape
    np.testing.assert_allclose(sv, expected, rtol=2e-4, atol=1e-6)
    assert result["mean"] == pytest.approx(expected.mean(), rel=2e-4)
    assert result["std"] == pytest.approx(expected.std(), rel=1e-3, abs=1e-6)
    assert result["min"] == pytest.approx(expected.min(), rel=2e-4, abs=1e-6)
    assert result["max"] == pytest.approx(expected.max(), rel=2e-4)


def test_linear_mlp_is_product_of_kernels():
    model = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(15, use_bias=False),
            keras.layers.Dense(12, use_bias=False),
            keras.layers.Dense(7, use_bias=False),
        ]
    )
    product = np.linalg.multi_dot([k.numpy().astype(np.float64) for k in model.weights])
    x = np.random.default_rng(0).normal(size=(5, 20)).astype("float32")
    result = jacobian_singular_values(model, x, batch_size=2)
    expected = np.tile(np.linalg.svd(product, compute_uv=False), (5, 1))  # J = productᵀ
    check_result(result, expected)


def test_tanh_mlp_matches_finite_differences():
    model = keras.Sequential(
        [
            keras.Input((9,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(5),
        ]
    )
    k1, b1, k2, b2 = [w.astype(np.float64) for w in model.get_weights()]

    def f(x):
        return np.tanh(x @ k1 + b1) @ k2 + b2

    x = np.random.default_rng(1).normal(size=(4, 9)).astype("float32")
    expected = numpy_svals(central_difference_jacobian(f, x.astype(np.float64)))
    check_result(jacobian_singular_values(model, x), expected)


def conv2d_valid(x, kernel, bias):
    """(B, H, W, C) * (kh, kw, C, N) → (B, H−kh+1, W−kw+1, N), stride 1, float64."""
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((x.shape[0], h, w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("bhwc,cn->bhwn", x[:, i : i + h, j : j + w, :], kernel[i, j])
    return out + bias


def test_conv_net_matches_finite_differences():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3, activation="tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )
    kc, bc, kd, bd = [w.astype(np.float64) for w in model.get_weights()]

    def f(x):
        hidden = np.tanh(conv2d_valid(x, kc, bc))
        return hidden.reshape(x.shape[0], -1) @ kd + bd

    x = np.random.default_rng(2).normal(size=(3, 6, 6, 2)).astype("float32")
    expected = numpy_svals(central_difference_jacobian(f, x.astype(np.float64)))
    check_result(jacobian_singular_values(model, x, batch_size=2), expected)


def test_more_logits_than_inputs_gives_d_values():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(6, use_bias=False)])
    result = jacobian_singular_values(model, np.ones((2, 3), "float32"))
    assert result["singular_values"].shape == (2, 3)


def test_logits_fn_picks_an_output():
    inputs = keras.Input((5,))
    logits = keras.layers.Dense(4, use_bias=False, name="logits")(inputs)
    probs = keras.layers.Softmax()(logits)
    model = keras.Model(inputs, [probs, logits])
    x = np.random.default_rng(3).normal(size=(3, 5)).astype("float32")
    with pytest.raises(ValueError, match="logits_fn"):
        jacobian_singular_values(model, x)
    result = jacobian_singular_values(model, x, logits_fn=lambda outs: outs[1])
    kernel = model.get_layer("logits").kernel.numpy().astype(np.float64)
    expected = np.tile(np.linalg.svd(kernel, compute_uv=False), (3, 1))
    check_result(result, expected)


def test_softmax_model_warns():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.warns(UserWarning, match="logits"):
        jacobian_singular_values(model, np.ones((2, 5), "float32"))


def test_rank_error():
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3)])
    with pytest.raises(ValueError, match="logits output of rank 2"):
        jacobian_singular_values(model, np.ones((2, 6, 6, 2), "float32"))


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 2.0}, {"logits_fn": 3}])
def test_bad_arguments(kwargs):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError):
        jacobian_singular_values(model, np.ones((2, 3), "float32"), **kwargs)


def test_bad_inputs():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="B ≥ 1"):
        jacobian_singular_values(model, np.ones((0, 3), "float32"))
    with pytest.raises(ValueError, match="single array"):
        jacobian_singular_values(model, [np.ones((2, 3), "float32")])


def test_other_backends_not_implemented(monkeypatch):
    # TensorFlow, JAX and PyTorch have an autodiff implementation; Keras' numpy backend not.
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(NotImplementedError, match="'numpy'"):
        jacobian_singular_values(model, np.ones((2, 3), "float32"))


def test_repeated_calls_reuse_compiled_function_and_see_new_weights():
    from keras_tpp import metrics

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, use_bias=False)])
    x = np.ones((2, 4), "float32")
    first = jacobian_singular_values(model, x)["mean"]
    compiled = metrics._JACOBIAN_FNS[model]
    model.layers[0].kernel.assign(model.layers[0].kernel * 3.0)
    assert jacobian_singular_values(model, x)["mean"] == pytest.approx(3 * first, rel=1e-5)
    assert metrics._JACOBIAN_FNS[model] is compiled
