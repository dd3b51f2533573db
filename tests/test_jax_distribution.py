"""Data parallelism on JAX: a prepared model trained with ``keras.distribution.DataParallel``
over 2 virtual CPU devices follows the same λ schedule, picks the same masks and ends with
the same weights as on one device (the same global batches).

Both runs are subprocesses (the device count is fixed when JAX starts), so this runs once,
in the TensorFlow test session, like tests/test_backends.py.
"""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "jax_data_parallel.py")

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="runs JAX in subprocesses: once, in the TensorFlow test session")


def _run(initial: str, out: str, devices: int) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run([sys.executable, SCRIPT, initial, out, str(devices)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(out) as loaded:
        return dict(loaded.items())


def test_data_parallel_training_equals_one_device(tmp_path):
    sys.path.insert(0, HERE)
    try:
        from jax_data_parallel import build_model
    finally:
        sys.path.remove(HERE)
    rng = np.random.default_rng(5)
    weights = [rng.normal(scale=0.3, size=tuple(v.shape)).astype("float32")
               if "variance" not in v.path else
               rng.uniform(0.5, 1.5, size=tuple(v.shape)).astype("float32")
               for v in build_model().weights]
    initial = str(tmp_path / "initial.npz")
    np.savez(initial, **{f"w{i}": w for i, w in enumerate(weights)})
    one = _run(initial, str(tmp_path / "one.npz"), 1)
    two = _run(initial, str(tmp_path / "two.npz"), 2)
    # The λ schedule: Δ = 0.1 every 2 steps up to 0.3, the same at every step.
    np.testing.assert_array_equal(two["lambdas"], one["lambdas"])
    assert one["lambdas"].max() == pytest.approx(0.3)
    masks = sorted(k for k in one if k.startswith("mask/"))
    assert masks and masks == sorted(k for k in two if k.startswith("mask/"))
    for key in masks:
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)
    assert int(one["kernel_devices"]) == 1 and int(two["kernel_devices"]) == 2
    weight_keys = sorted(k for k in one if k.startswith("w"))
    assert weight_keys == sorted(k for k in two if k.startswith("w"))
    moved = 0
    for key in weight_keys:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)
        moved += int(not np.array_equal(one[key], one["before" + key[1:]]))
    assert moved > 10  # training changed the weights: the comparison is not vacuous
