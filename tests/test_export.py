"""keras_tpp.export: TFLite (float, sparse, quantized) and SavedModel, checked against Keras."""
import os

import keras
import numpy as np
import pytest

import keras_tpp
from keras_tpp import deployment, models

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
    (dict(sparse="yes"), "sparse"), (dict(format="saved_model", sparse=True), "'tflite' only")])
def test_export_rejects_bad_arguments(tmp_path, thin, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        keras_tpp.export(thin, str(tmp_path / "x"), **kwargs)
    assert not os.listdir(tmp_path)


def test_export_refuses_a_prepared_model(tmp_path):
    pmodel = keras_tpp.prepare(models.small_cnn(widths=(4, 4, 4)), 0.5, method="l1")
    with pytest.raises(ValueError, match="strip"):
        keras_tpp.export(pmodel, str(tmp_path / "x.tflite"))
