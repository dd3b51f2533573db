"""keras_tpp.export: TFLite (float, sparse, quantized) and SavedModel, checked against Keras."""
import contextlib
import io
import os
import re

import keras
import numpy as np
import pytest

import keras_tpp
from keras_tpp import deployment, models
from keras_tpp.sparsity import magnitude_masks

pytestmark = pytest.mark.tf_only(reason="TFLite / SavedModel export")

L = keras.layers


@pytest.fixture(scope="module")
def thin():
    model = models.small_cnn(widths=(8, 8, 8), input_shape=(16, 16, 3))
    pmodel = keras_tpp.prepare(model, 0.5, method="l1")
    keras_tpp.apply_masks(pmodel)
    return keras_tpp.shrink(pmodel)


def _mlp(sparsity: float) -> keras.Model:
    inp = keras.Input((64,))
    x = L.Dense(256, activation="relu")(inp)
    x = L.Dense(256, activation="relu")(x)
    model = keras.Model(inp, L.Dense(10)(x))
    rng = np.random.default_rng(0)
    for layer in model.layers[1:]:
        kernel = rng.normal(size=layer.kernel.shape).astype("float32")
        kernel[rng.random(kernel.shape) < sparsity] = 0.0
        layer.kernel.assign(kernel)
    return model


def test_tflite_export_matches_keras_and_reports(tmp_path, thin):
    report = keras_tpp.export(thin, str(tmp_path / "thin.tflite"), latency_runs=3)
    assert os.path.getsize(tmp_path / "thin.tflite") == report.size_bytes > 0
    assert report.max_error <= 1e-4 and report.latency_ms > 0
    assert oct(os.stat(tmp_path / "thin.tflite").st_mode & 0o777) == "0o644"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    # Independent check with the interpreter.
    x = np.random.default_rng(5).random((1, 16, 16, 3), np.float32)
    interpreter = deployment._interpreter((tmp_path / "thin.tflite").read_bytes())
    np.testing.assert_allclose(deployment._run_tflite(interpreter, x),
                               thin.predict(x, verbose=0), rtol=1e-4, atol=1e-4)


def test_sparse_tflite_is_smaller_at_90_percent_zeros(tmp_path):
    model = _mlp(0.9)
    dense = keras_tpp.export(model, str(tmp_path / "d.tflite"), latency_runs=0)
    sparse = keras_tpp.export(model, str(tmp_path / "s.tflite"), sparse=True, latency_runs=0)
    assert sparse.max_error <= 1e-4
    assert sparse.size_bytes <= 0.35 * dense.size_bytes, (sparse.size_bytes, dense.size_bytes)


def _zero_smallest(model: keras.Model, sparsity: float) -> int:
    """Zero the smallest-|w| ``sparsity`` of every Conv2D and Dense kernel; return their count."""
    layers = [layer for layer in model.layers if isinstance(layer, (L.Conv2D, L.Dense))]
    kernels = {layer.name: np.array(layer.kernel) for layer in layers}
    masks = magnitude_masks(kernels, {k: np.ones(v.shape, bool) for k, v in kernels.items()},
                            sparsity, ranking="layer")
    for layer in layers:
        layer.kernel.assign(np.where(masks[layer.name], kernels[layer.name], 0.0))
    return len(layers)


def _sparse_conv_net() -> keras.Model:
    """small_cnn with 90% zeros per kernel and non-trivial BN statistics (folded on export)."""
    model = models.small_cnn(widths=(16, 32, 32), input_shape=(16, 16, 3))
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.1, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
    assert _zero_smallest(model, 0.9) == 4  # conv1..conv3 and the classifier
    return model


def test_sparse_conv_tflite_is_smaller_and_matches_keras(tmp_path):
    model = _sparse_conv_net()
    dense = keras_tpp.export(model, str(tmp_path / "d.tflite"), latency_runs=0)
    sparse = keras_tpp.export(model, str(tmp_path / "s.tflite"), sparse=True, latency_runs=0)
    assert sparse.sparse and not dense.sparse
    assert sparse.size_bytes <= 0.35 * dense.size_bytes, (sparse.size_bytes, dense.size_bytes)
    assert sparse.max_error <= 1e-4
    # Independently: the sparse file runs in the default interpreter (XNNPack densifies its
    # weights) and gives Keras' outputs, which are far from zero (BN folded, not identity).
    x = np.random.default_rng(7).random((2, 16, 16, 3), np.float32)
    expected = model.predict(x, verbose=0)
    assert np.abs(expected).max() > 0.05
    interpreter = deployment._interpreter((tmp_path / "s.tflite").read_bytes(), num_threads=1)
    got = np.concatenate([deployment._run_tflite(interpreter, x[i:i + 1]) for i in range(2)])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_sparse_storage_needs_zeros(tmp_path):
    """Without zeros sparse=True stores the same dense tensors: the size gain is the zeros'."""
    model = models.small_cnn(widths=(16, 32, 32), input_shape=(16, 16, 3))
    dense = keras_tpp.export(model, str(tmp_path / "d.tflite"), latency_runs=0)
    sparse = keras_tpp.export(model, str(tmp_path / "s.tflite"), sparse=True, latency_runs=0)
    assert sparse.size_bytes > 0.9 * dense.size_bytes


def _tflite_ops(content: bytes) -> list[str]:
    import tensorflow as tf

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_content=content)
    return re.findall(r"Op#\d+ (\w+)", text.getvalue())


def test_block_sparse_dense_weights_skip_densify(tmp_path):
    """Dense kernels with zeros in 1×4 blocks (4 consecutive inputs of one output) are stored
    for TFLite's own sparse FULLY_CONNECTED kernel; unstructured zeros get a DENSIFY op
    (weights densified at load, dense inference)."""
    model = _mlp(0.0)
    rng = np.random.default_rng(3)
    for layer in model.layers[1:]:
        kernel = np.array(layer.kernel)
        blocks = rng.random((kernel.shape[0] // 4, kernel.shape[1])) < 0.9
        kernel[np.repeat(blocks, 4, axis=0)] = 0.0
        layer.kernel.assign(kernel)
    dense = keras_tpp.export(model, str(tmp_path / "d.tflite"), latency_runs=0)
    block = keras_tpp.export(model, str(tmp_path / "b.tflite"), sparse=True, latency_runs=0)
    assert block.max_error <= 1e-4
    assert block.size_bytes <= 0.35 * dense.size_bytes
    block_ops = _tflite_ops((tmp_path / "b.tflite").read_bytes())
    assert block_ops.count("FULLY_CONNECTED") == 3 and "DENSIFY" not in block_ops, block_ops
    unstructured = keras_tpp.export(_mlp(0.9), str(tmp_path / "u.tflite"), sparse=True,
                                    latency_runs=0)
    assert _tflite_ops((tmp_path / "u.tflite").read_bytes()).count("DENSIFY") == 3
    assert unstructured.max_error <= 1e-4


@pytest.mark.parametrize("quantize", ["float16", "dynamic"])
def test_quantized_tflite_is_smaller_and_within_its_tolerance(tmp_path, quantize):
    model = _mlp(0.0)
    dense = keras_tpp.export(model, str(tmp_path / "d.tflite"), latency_runs=0)
    small = keras_tpp.export(model, str(tmp_path / "q.tflite"), quantize=quantize,
                             latency_runs=0)
    assert small.size_bytes < 0.6 * dense.size_bytes
    assert small.max_error <= deployment.TOLERANCES[quantize]


def test_saved_model_export(tmp_path, thin):
    report = keras_tpp.export(thin, str(tmp_path / "sm"), format="saved_model")
    assert report.max_error <= 1e-4 and os.path.isdir(tmp_path / "sm")


def test_a_wrong_export_raises_and_writes_nothing(tmp_path, thin, monkeypatch):
    other = models.small_cnn(widths=(8, 8, 8), input_shape=(16, 16, 3))
    wrong = deployment._tflite_bytes(other, None, False)
    monkeypatch.setattr(deployment, "_tflite_bytes", lambda *args: wrong)
    with pytest.raises(keras_tpp.ExportCheckError, match="differs from the Keras model"):
        keras_tpp.export(thin, str(tmp_path / "x.tflite"))
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(format="onnx"), "format"), (dict(quantize="int4"), "quantize"),
    (dict(sparse="yes"), "sparse"), (dict(format="saved_model", sparse=True), "'tflite' only"),
    (dict(sparse=True, quantize="dynamic"), "XNNPack")])
def test_export_rejects_bad_arguments(tmp_path, thin, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        keras_tpp.export(thin, str(tmp_path / "x"), **kwargs)
    assert not os.listdir(tmp_path)


def test_export_refuses_a_prepared_model(tmp_path):
    pmodel = keras_tpp.prepare(models.small_cnn(widths=(4, 4, 4)), 0.5, method="l1")
    with pytest.raises(ValueError, match="strip"):
        keras_tpp.export(pmodel, str(tmp_path / "x.tflite"))
