"""OrthP oracle: orthonormal kernels, exact isometry of linear MLPs, original untouched."""
import keras
import numpy as np
import pytest

from keras_tpp.metrics import jacobian_singular_values
from keras_tpp.orthp import orthp


def linear_mlp(widths, name_prefix="fc", bias=False):
    layers = [keras.Input((widths[0],))]
    layers += [
        keras.layers.Dense(w, use_bias=bias, name=f"{name_prefix}{i}")
        for i, w in enumerate(widths[1:])
    ]
    return keras.Sequential(layers)


def reference_q(matrix):
    """Independent numpy restatement: sign-fixed QR factor, orthonormal along the short side."""
    tall = matrix.shape[0] >= matrix.shape[1]
    q, r = np.linalg.qr(matrix if tall else matrix.T)
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    return q if tall else q.T


def assert_orthonormal(kernel, gain=1.0, tol=1e-5):
    q = kernel.reshape(-1, kernel.shape[-1]).astype(np.float64) / gain
    gram = q.T @ q if q.shape[0] >= q.shape[1] else q @ q.T
    np.testing.assert_allclose(gram, np.eye(gram.shape[0]), atol=tol)


def test_dense_kernels_tall_square_wide():
    model = linear_mlp([12, 7, 7, 9], bias=True)  # tall (12,7), square (7,7), wide (7,9)
    before = [w.copy() for w in model.get_weights()]
    result = orthp(model)
    assert result is not model
    for name in ("fc0", "fc1", "fc2"):
        new = result.get_layer(name).kernel.numpy()
        old = model.get_layer(name).kernel.numpy().astype(np.float64)
        assert_orthonormal(new)
        np.testing.assert_allclose(new, reference_q(old), atol=1e-5)
        np.testing.assert_array_equal(  # biases are kept
            result.get_layer(name).bias.numpy(), model.get_layer(name).bias.numpy()
        )
    # diag(R) ≥ 0: for the tall kernel R = QᵀM has a positive diagonal.
    q = result.get_layer("fc0").kernel.numpy().astype(np.float64)
    assert np.all(np.diag(q.T @ model.get_layer("fc0").kernel.numpy()) > 0)
    for a, b in zip(before, model.get_weights()):  # user's model untouched
        np.testing.assert_array_equal(a, b)


def test_linear_mlp_reaches_exact_isometry():
    model = linear_mlp([1024, 100, 100, 10])
    x = np.random.default_rng(0).normal(size=(4, 1024)).astype("float32")
    before = jacobian_singular_values(model, x)
    result = jacobian_singular_values(orthp(model), x)
    assert abs(before["mean"] - 1.0) > 0.05  # random init is not isometric
    assert result["mean"] == pytest.approx(1.0, abs=1e-5)
    assert result["min"] == pytest.approx(1.0, abs=1e-4)
    assert result["max"] == pytest.approx(1.0, abs=1e-4)
    # The original model still gives its own (non-isometric) singular values.
    again = jacobian_singular_values(model, x)
    np.testing.assert_array_equal(again["singular_values"], before["singular_values"])


def test_gain_and_layer_selection():
    model = linear_mlp([6, 5, 5, 3])
    result = orthp(model, layers=["fc1"], gain=2.0)
    assert_orthonormal(result.get_layer("fc1").kernel.numpy(), gain=2.0)
    for name in ("fc0", "fc2"):  # not selected: copied unchanged
        np.testing.assert_array_equal(
            result.get_layer(name).kernel.numpy(), model.get_layer(name).kernel.numpy()
        )
    scaled = orthp(model, gain=2.0)
    x = np.ones((2, 6), "float32")
    assert jacobian_singular_values(scaled, x)["mean"] == pytest.approx(8.0, rel=1e-5)


def test_nested_model_dense_layers():
    inner = linear_mlp([8, 6, 4], name_prefix="inner")
    inputs = keras.Input((10,))
    outputs = keras.layers.Dense(3, name="head")(inner(keras.layers.Dense(8, name="stem")(inputs)))
    model = keras.Model(inputs, outputs)
    result = orthp(model)
    for layer in ("stem", "head"):
        assert_orthonormal(result.get_layer(layer).kernel.numpy())
    for layer in result.get_layer(inner.name).layers:
        assert_orthonormal(layer.kernel.numpy())


def test_conv_only_when_named():
    model = keras.Sequential(
        [
            keras.Input((5, 5, 2)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="fc"),
        ]
    )
    default = orthp(model)
    np.testing.assert_array_equal(
        default.get_layer("conv").kernel.numpy(), model.get_layer("conv").kernel.numpy()
    )
    conv = orthp(model, layers=["conv"]).get_layer("conv").kernel.numpy()
    assert conv.shape == (3, 3, 2, 4)
    assert_orthonormal(conv)  # as an (18, 4) matrix: orthonormal columns


def test_errors():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4, name="a"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(2, name="b"),
        ]
    )
    with pytest.raises(ValueError, match=r"Dense layers: \['a', 'b'\]"):
        orthp(model, layers=["nope"])
    with pytest.raises(ValueError, match="BatchNormalization"):
        orthp(model, layers=["bn"])
    with pytest.raises(ValueError, match="empty"):
        orthp(model, layers=[])
    for gain in (0.0, -1.0, "1"):
        with pytest.raises(ValueError, match="gain"):
            orthp(model, gain=gain)
    with pytest.raises(ValueError, match="built"):
        orthp(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="no Dense"):
        orthp(keras.Sequential([keras.Input((3,)), keras.layers.ReLU()]))
