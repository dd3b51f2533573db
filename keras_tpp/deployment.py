"""Deployment export in one call: fold BN, write TFLite or SavedModel, check, measure.

A TensorFlow-only edge of keras_tpp (TensorFlow is imported when a function runs):

    report = keras_tpp.export(thin, "thin.tflite")                     # float32 TFLite
    report = keras_tpp.export(sparse, "sparse.tflite", sparse=True)    # sparse weight storage
    print(report)   # size, output error against Keras, interpreter latency

The exported file is written atomically (a temporary name, then a rename) and only kept
when its outputs match the Keras model's within the stated tolerance on random inputs;
otherwise :class:`ExportCheckError` is raised and nothing is left at ``path``.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from keras_tpp.folding import fold_batchnorm as _fold
from keras_tpp.graph import iter_layers
from keras_tpp.wrappers import PruningWrapper

FORMATS = ("tflite", "saved_model")
QUANTIZATIONS = (None, "dynamic", "float16")
#: Largest accepted max|y_exported − y_keras| / max(1, max|y_keras|), per quantization.
TOLERANCES = {None: 1e-4, "float16": 1e-2, "dynamic": 1e-1}


class ExportCheckError(ValueError):
    """The exported model's outputs differ from the Keras model's beyond the tolerance."""


@dataclass
class ExportReport:
    """What :func:`export` wrote and measured.

    Attributes:
        path: the file (TFLite) or directory (SavedModel) written.
        format, quantize, sparse: what was asked.
        size_bytes: size on disk (a directory: all its files).
        max_error: max |y_exported − y_keras| / max(1, max|y_keras|) on the check inputs.
        tolerance: the largest accepted ``max_error``.
        latency_ms: median batch-1 latency of the TFLite interpreter (None for SavedModel).
    """

    path: str
    format: str
    quantize: str | None
    sparse: bool
    size_bytes: int
    max_error: float
    tolerance: float
    latency_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        latency = f", {self.latency_ms:.2f} ms/example (TFLite, batch 1)" \
            if self.latency_ms is not None else ""
        return (f"{self.path}: {self.format}{' sparse' if self.sparse else ''}"
                f"{f' {self.quantize}' if self.quantize else ''}, "
                f"{self.size_bytes / 1e6:.3f} MB, max output error {self.max_error:.2e} "
                f"(tolerance {self.tolerance:g}){latency}")


def _check_arguments(model: Any, format: str, quantize: Any, sparse: Any) -> None:
    if not isinstance(model, keras.Model):
        raise ValueError(f"export expects a keras.Model, got {type(model).__name__}.")
    if keras.backend.backend() == "torch":
        raise NotImplementedError(
            f"export of model '{model.name}' converts it with TensorFlow (TFLite converter / "
            "SavedModel), which cannot read a model of the PyTorch Keras backend: save it "
            "(model.save('thin.keras')) and export the loaded file with "
            "KERAS_BACKEND=tensorflow or jax.")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}.")
    if not isinstance(sparse, bool):
        raise ValueError(f"sparse must be True or False, got {sparse!r}.")
    if format == "saved_model" and (quantize or sparse):
        raise ValueError("quantize= and sparse= apply to format='tflite' only.")
    if sparse and quantize == "dynamic":
        # TF 2.21: the converter writes it, but XNNPack (TFLite's default CPU path) fails
        # to prepare sparse int8 weights ("failed to delegate CONV_2D / FULLY_CONNECTED").
        raise ValueError("sparse=True cannot be combined with quantize='dynamic': the TFLite "
                         "interpreter's XNNPack delegate cannot run sparse int8 weights; use "
                         "sparse=True alone or with quantize='float16'.")
    wrapped = [ref.path_str for ref in iter_layers(model) if isinstance(ref.layer, PruningWrapper)]
    if wrapped:
        raise ValueError(f"Model '{model.name}' still has pruning wrappers ({wrapped[0]}, ...): "
                         "export keras_tpp.strip(model) or keras_tpp.shrink(model).")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("export supports models with one input and one output.")
    if any(d is None for d in model.inputs[0].shape[1:]):
        raise ValueError(f"Model '{model.name}' has inputs of unknown size "
                         f"{tuple(model.inputs[0].shape)}; rebuild it with a fixed input shape.")


def _tflite_bytes(model: keras.Model, quantize: str | None, sparse: bool) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    optimizations = []
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    if quantize is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    converter.optimizations = optimizations
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its signatures
        return converter.convert()


def _interpreter(content: bytes, num_threads: int | None = None) -> Any:
    """A TFLite interpreter (default op resolver: XNNPack) with its tensors allocated.

    ``num_threads`` defaults to all CPUs.
    """
    try:  # LiteRT, the interpreter's new home
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TF 2.21's deprecation notice pointing to LiteRT
        interpreter = Interpreter(model_content=content,
                                  num_threads=num_threads or os.cpu_count() or 1)
    interpreter.allocate_tensors()
    return interpreter


def _run_tflite(interpreter: Any, x: np.ndarray) -> np.ndarray:
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    return np.array(interpreter.get_tensor(out["index"]))


def _write_atomically(path: str, content: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-export-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


def export(
    model: keras.Model,
    path: str,
    format: str = "tflite",
    *,
    fold_batchnorm: bool = True,
    quantize: str | None = None,
    sparse: bool = False,
    check_examples: int = 4,
    latency_runs: int = 20,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` for deployment, check its outputs and report size and latency.

    Args:
        model: a plain Keras model with one fixed-size input (a thin or stripped model; not
            a prepared one).
        path: the ``.tflite`` file or the SavedModel directory to write.
        format: "tflite" or "saved_model".
        fold_batchnorm: fold inference-mode batch norms into the layers before them first
            (:func:`keras_tpp.fold_batchnorm`).
        quantize: None (float32), "dynamic" (int8 weights) or "float16" (TFLite only).
        sparse: store weights sparsely (``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``), for
            weight-sparse models: the converter stores each weight tensor with ≥ 30% zeros
            as its non-zeros and their indices, behind a DENSIFY op. That saves file size.
            Speed only where XNNPack runs sparse kernels: 1×1 convolutions with ≥ 2/3 zeros
            in a MobileNet-like chain (a 3×3 stride-2 stem with padding 1 on every side,
            symmetric-padded depthwise convs, ending in a spatial mean), on ARM or x86
            without AVX; everywhere else the interpreter densifies the weights when it
            loads the model and runs dense kernels. Not combinable with "dynamic".
        check_examples: random inputs (uniform in [0, 1)) on which the exported outputs are
            compared with ``model``'s.
        latency_runs: interpreter invocations timed at batch 1 (TFLite; 0 skips).
        seed: seed of the check inputs.
    Returns:
        An :class:`ExportReport`.
    Raises:
        ValueError: bad arguments or an unsupported model (nothing written).
        ExportCheckError: outputs beyond :data:`TOLERANCES` (nothing left at ``path``).
        NotImplementedError: on the PyTorch Keras backend (TensorFlow cannot convert its
            models; export the saved ``.keras`` file from a TensorFlow or JAX session).
    """
    _check_arguments(model, format, quantize, sparse)
    source = _fold(model) if fold_batchnorm else model
    shape = tuple(model.inputs[0].shape[1:])
    x = np.random.default_rng(seed).random((max(1, int(check_examples)),) + shape, np.float32)
    expected = np.asarray(model.predict(x, verbose=0))
    tolerance = TOLERANCES[quantize]
    latency = None
    if format == "tflite":
        content = _tflite_bytes(source, quantize, sparse)
        interpreter = _interpreter(content)
        got = np.concatenate([_run_tflite(interpreter, x[i:i + 1]) for i in range(len(x))])
        error = _relative_error(got, expected)
        _raise_unless_close(error, tolerance, format, quantize)
        _write_atomically(path, content)
        if latency_runs:
            times = []
            for _ in range(int(latency_runs) + 2):
                start = time.perf_counter()
                _run_tflite(interpreter, x[:1])
                times.append(time.perf_counter() - start)
            latency = float(np.median(times[2:]) * 1000)
    else:
        error = _export_saved_model(source, path, x, expected, tolerance)
    return ExportReport(os.path.abspath(path), format, quantize, sparse, _size(path), error,
                        tolerance, latency)


def _relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    scale = max(1.0, float(np.max(np.abs(expected))))
    return float(np.max(np.abs(got.reshape(expected.shape) - expected)) / scale)


def _raise_unless_close(error: float, tolerance: float, format: str, quantize: Any) -> None:
    if not error <= tolerance:
        raise ExportCheckError(
            f"The exported {format} model{f' ({quantize})' if quantize else ''} differs from "
            f"the Keras model by {error:.3g} (relative to the output scale), more than the "
            f"tolerance {tolerance:g}; nothing was written.")


def _export_saved_model(model: keras.Model, path: str, x: np.ndarray, expected: np.ndarray,
                        tolerance: float) -> float:
    import tensorflow as tf

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
    try:
        target = os.path.join(tmp, "model")
        with contextlib.redirect_stdout(io.StringIO()):
            model.export(target, format="tf_saved_model", verbose=False)
        loaded = tf.saved_model.load(target)
        got = np.asarray(loaded.serve(tf.constant(x)))
        error = _relative_error(got, expected)
        _raise_unless_close(error, tolerance, "saved_model", None)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(target, path)
        return error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
