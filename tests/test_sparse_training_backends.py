"""Sparse training (GMP, GraNet, RigL) gives the same numbers on TensorFlow, JAX and PyTorch.

tests/sparse_training_parity.py trains a small CNN from the same initial weights (an .npz
written here) on the same data with ``fit`` and SparseTrainingCallback, one subprocess per
backend, and this test compares JAX's and PyTorch's results with TensorFlow's: the masks
after every train step (identical), the final weights, the optimizer slots of the masked
kernels (momentum, Adam's moments: zero at masked and freshly grown positions on every
backend) and the last growth gradient (float32 tolerance), the losses and the logged
sparsity and regrowth rate. TensorFlow's path is checked against numpy statements of the
formulas in tests/test_sparse_training.py.

It runs every backend whatever ``KERAS_BACKEND`` the test session uses, so it runs once, in
the TensorFlow session (skipped in the others). The PyTorch comparison is skipped when
torch is not installed; the ``steps_per_execution=3`` run is compared on JAX only (Keras'
PyTorch trainer requires 1).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from backend_subprocess import HAS_TORCH, OTHERS, once_per_ci

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "sparse_training_parity.py")
#: Runs of the script (its RUNS) for every backend; "granet_spe3" on TensorFlow and JAX only.
RUNS = ("gmp", "granet_sgd", "granet_adam", "rigl")

#: One pytest-xdist worker runs every test here (with --dist loadgroup), so the module
#: fixture's subprocesses run once, not once per worker.
pytestmark = pytest.mark.xdist_group("sparse_training_parity")


def _initial_weights(path: str) -> None:
    sys.path.insert(0, HERE)
    try:
        from sparse_training_parity import build_model
    finally:
        sys.path.remove(HERE)
    rng = np.random.default_rng(3)
    weights = [rng.normal(scale=0.3, size=tuple(v.shape)) for v in build_model().weights]
    np.savez(path, **{f"w{i}": w.astype("float32") for i, w in enumerate(weights)})


def _runs(backend: str) -> tuple:
    return RUNS if backend == "torch" else RUNS + ("granet_spe3",)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """{backend: its results}: the backends' subprocesses run side by side."""
    folder = tmp_path_factory.mktemp("sparse_backends")
    initial = str(folder / "initial.npz")
    _initial_weights(initial)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("JAX_ENABLE_X64", None)  # the JAX default: float32
    backends = ["tensorflow", "jax"] + (["torch"] if HAS_TORCH else [])
    procs = {b: subprocess.Popen(
        [sys.executable, SCRIPT, initial, str(folder / f"{b}.npz"), *_runs(b)],
        env={**env, "KERAS_BACKEND": b}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True) for b in backends}
    out = {}
    for backend, proc in procs.items():
        _, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{backend}:\n{stderr[-4000:]}"
        with np.load(folder / f"{backend}.npz") as loaded:
            out[backend] = dict(loaded.items())
    return out


def _keys(results: dict, other: str, prefix: str) -> list[str]:
    keys = sorted(k for k in results[other] if k.startswith(prefix))
    assert keys, prefix
    return keys


@once_per_ci
@pytest.mark.parametrize("other", OTHERS)
def test_same_runs_and_masks_at_every_step(results, other):
    tf_, other_ = results["tensorflow"], results[other]
    for run in _runs(other):
        assert _keys(results, "tensorflow", f"{run}/") == _keys(results, other, f"{run}/")
        for key in _keys(results, other, f"{run}/masks/"):
            np.testing.assert_array_equal(other_[key], tf_[key], err_msg=f"{other}: {key}")
        assert int(other_[f"{run}/last_update"]) == int(tf_[f"{run}/last_update"])


@once_per_ci
def test_the_runs_prune_and_regrow(results):
    # Not vacuous: TensorFlow's masks reach the targets, and regeneration moves masks at a
    # constant count (RigL) and after the pruning window (GraNet).
    tf_ = results["tensorflow"]

    def masks(run, step):
        return {layer: tf_[f"{run}/masks/{layer}/{step}"] for layer in ("conv1", "conv2", "head")}

    def kept(run, step):
        return sum(int(m.sum()) for m in masks(run, step).values())

    total = sum(m.size for m in masks("gmp", 1).values())
    for run, ratio, last in (("gmp", 0.8, 18), ("granet_sgd", 0.75, 18), ("rigl", 0.7, 18),
                             ("granet_adam", 0.7, 12), ("granet_spe3", 0.6, 12)):
        assert kept(run, last) == int(np.floor((1 - ratio) * total + 1e-6)), run
    for run, before, after in (("rigl", 2, 3), ("rigl", 14, 15), ("granet_sgd", 11, 12)):
        assert kept(run, before) == kept(run, after)
        assert any(not np.array_equal(masks(run, before)[k], masks(run, after)[k])
                   for k in ("conv1", "conv2", "head")), (run, after)


@once_per_ci
@pytest.mark.parametrize("other", OTHERS)
def test_same_weights_slots_gradients_and_logs(results, other):
    tf_, other_ = results["tensorflow"], results[other]
    for run in _runs(other):
        # Measured: weights within 5e-7, slots 6e-9, gradients 7e-7 relative (float32).
        for prefix in ("weights/", "slots/", "grad/"):
            for key in _keys(results, other, f"{run}/{prefix}"):
                scale = max(float(np.max(np.abs(tf_[key]))), 1e-12)
                np.testing.assert_allclose(other_[key], tf_[key], rtol=1e-4,
                                           atol=1e-5 * scale, err_msg=f"{other}: {key}")
        log_tf, log_other = tf_[f"{run}/log"], other_[f"{run}/log"]
        # (train step, loss, sparsity, regrow_rate) after every batch.
        np.testing.assert_array_equal(log_other[:, [0, 2, 3]], log_tf[:, [0, 2, 3]])
        np.testing.assert_allclose(log_other[:, 1], log_tf[:, 1], rtol=1e-5)
