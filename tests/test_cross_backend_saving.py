"""A .keras file written on one Keras backend loads on the others with the same numbers.

tests/cross_backend_saving.py trains a TPP-prepared small CNN for a few steps and saves the
prepared model and its thin model on one backend; every other backend loads both and must
give the same outputs (1e-5 relative to the largest), the same masks (identical) and the
same λ. Each backend runs in its own subprocess, so the test runs once, in the TensorFlow
session; PyTorch takes part where it is installed.
"""
import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "cross_backend_saving.py")
BACKENDS = ["tensorflow", "jax"] + (["torch"] if importlib.util.find_spec("torch") else [])

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="runs every backend in its own subprocess: once, in the TensorFlow test session")


def _run(backend: str, *args: str) -> None:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run([sys.executable, SCRIPT, *args], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"{backend} {args[0]}:\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    for backend in BACKENDS:
        _run(backend, "write", str(folder))
    return folder


@pytest.mark.parametrize("reader", BACKENDS)
def test_models_saved_on_other_backends_load_with_the_same_numbers(saved, reader, tmp_path):
    _run(reader, "read", str(saved), str(tmp_path))
    for writer in BACKENDS:
        if writer == reader:
            continue
        out = str(tmp_path / f"{writer}.npz")
        with np.load(saved / writer / "expected.npz") as e, np.load(out) as got:
            assert sorted(e.files) == sorted(got.files)
            masks = [k for k in e.files if k.startswith("mask/")]
            assert masks and any(not e[k].all() for k in masks)  # something is pruned
            for key in masks:
                np.testing.assert_array_equal(got[key], e[key], err_msg=f"{writer}→{reader} {key}")
            np.testing.assert_allclose(got["strength"], e["strength"], rtol=1e-6)
            assert e["strength"].max() > 0
            for key in ("prepared", "thin"):
                np.testing.assert_allclose(
                    got[key], e[key], rtol=0, atol=1e-5 * np.abs(e[key]).max(),
                    err_msg=f"{writer}→{reader} {key}")
