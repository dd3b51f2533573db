"""A .keras file written on one Keras backend loads on the others with the same numbers.

tests/cross_backend_saving.py trains a TPP-prepared small CNN for a few steps and saves the
prepared model and its thin model. The TensorFlow test session writes TensorFlow's files
itself; one subprocess per other backend (JAX, and PyTorch where it is installed) writes
its own files and loads TensorFlow's; the session then loads theirs. Each load must give
the writer's outputs (1e-5 relative to the largest), masks (identical) and λ. So the test
runs once, in the TensorFlow session: TensorFlow → JAX / PyTorch and JAX / PyTorch →
TensorFlow (the route to exporting a model trained on another backend).
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
OTHERS = ["jax"] + (["torch"] if importlib.util.find_spec("torch") else [])

pytestmark = [
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="runs the other backends in subprocesses: once, in the TensorFlow test session"),
    # one pytest-xdist worker runs them all (with --dist loadgroup): the fixture's
    # subprocesses run once, not once per worker
    pytest.mark.xdist_group("cross_backend_saving"),
]


def _script():
    sys.path.insert(0, HERE)
    try:
        import cross_backend_saving
    finally:
        sys.path.remove(HERE)
    return cross_backend_saving


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    _script().write(str(folder / "tensorflow"))
    for backend in OTHERS:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE),
                                              os.environ.get("PYTHONPATH", "")])}
        env.pop("JAX_ENABLE_X64", None)
        proc = subprocess.run([sys.executable, SCRIPT, str(folder)], env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{backend}:\n{proc.stderr[-4000:]}"
    return folder


def _same(got: dict, expected: dict, route: str) -> None:
    assert sorted(got) == sorted(expected)
    masks = [k for k in expected if k.startswith("mask/")]
    assert masks and any(not expected[k].all() for k in masks)  # something is pruned
    for key in masks:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{route} {key}")
    assert expected["strength"].max() > 0
    np.testing.assert_allclose(got["strength"], expected["strength"], rtol=1e-6)
    for key in ("prepared", "thin"):
        np.testing.assert_allclose(got[key], expected[key], rtol=0,
                                   atol=1e-5 * np.abs(expected[key]).max(),
                                   err_msg=f"{route} {key}")


@pytest.mark.parametrize("other", OTHERS)
def test_tensorflow_files_load_on_the_other_backend(saved, other):
    with np.load(saved / "tensorflow" / "expected.npz") as e, \
            np.load(saved / f"{other}_read_tensorflow.npz") as got:
        _same(dict(got.items()), dict(e.items()), f"tensorflow→{other}")


@pytest.mark.parametrize("other", OTHERS)
def test_files_of_the_other_backend_load_on_tensorflow(saved, other):
    got = _script().read(str(saved / other))
    with np.load(saved / other / "expected.npz") as e:
        _same(got, dict(e.items()), f"{other}→tensorflow")
