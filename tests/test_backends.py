"""The same numbers on every Keras backend: TensorFlow, JAX and PyTorch, one subprocess each.

tests/backend_parity.py runs prepare / penalties / short TPP and GReg-1 fits / shrink /
strip / fold_batchnorm / orthp / profile / the LR schedules / the Jacobian metric / the
gradient scores from the same initial weights (an .npz written here) and the same data;
this test compares each other backend's results with TensorFlow's: penalty values and
gradients (1e-5 relative), identical masks (TPP, L1, random, SNIP), identical λ schedules,
losses and trained weights, thin, folded and OrthP outputs (1e-5), identical profiles,
Jacobian singular values (1e-4). The PyTorch comparisons are skipped when torch is not
installed.

The last tests run in every session: masks holding during ``fit`` of a loaded model, a
callback reading the weights of the fit in progress, and (PyTorch) export's clear error.

It runs every backend whatever ``KERAS_BACKEND`` the test session uses, so it runs once, in
the TensorFlow session (skipped in the others).
"""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from backend_subprocess import OTHERS, once_per_ci

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "backend_parity.py")

#: One pytest-xdist worker runs every test here (with --dist loadgroup), so the module
#: fixture's subprocesses run once, not once per worker.
pytestmark = pytest.mark.xdist_group("backend_parity")


def _initial_weights(path: str) -> None:
    sys.path.insert(0, HERE)
    try:
        from backend_parity import build_model
    finally:
        sys.path.remove(HERE)
    rng = np.random.default_rng(3)
    model = build_model()
    weights = []
    for variable in model.weights:
        shape = tuple(variable.shape)
        if "moving_variance" in variable.path:
            weights.append(rng.uniform(0.5, 1.5, size=shape))
        elif "gamma" in variable.path:
            weights.append(rng.uniform(0.5, 1.5, size=shape))
        else:
            weights.append(rng.normal(scale=0.3, size=shape))
    np.savez(path, **{f"w{i}": w.astype("float32") for i, w in enumerate(weights)})


def _run(backend: str, initial: str, out: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("JAX_ENABLE_X64", None)  # the JAX default: float32
    proc = subprocess.run([sys.executable, SCRIPT, initial, out], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{backend}:\n{proc.stderr[-4000:]}"
    with np.load(out) as loaded:
        return dict(loaded.items())


class _Results:
    """Each backend's results, computed (in its subprocess) at the first request."""

    def __init__(self, folder) -> None:
        self.folder = folder
        self.initial = str(folder / "initial.npz")
        _initial_weights(self.initial)
        self.cache: dict[str, dict] = {}

    def __getitem__(self, backend: str) -> dict:
        if backend not in self.cache:
            self.cache[backend] = _run(backend, self.initial, str(self.folder / f"{backend}.npz"))
        return self.cache[backend]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _Results(tmp_path_factory.mktemp("backends"))


def _keys(results, other, prefix):
    keys = sorted(k for k in results["tensorflow"] if k.startswith(prefix))
    assert keys, prefix
    assert keys == sorted(k for k in results[other] if k.startswith(prefix))
    return keys


@once_per_ci
@pytest.mark.parametrize("other", OTHERS)
def test_same_masks(results, other):
    tf_, other_ = results["tensorflow"], results[other]
    for prefix in ("mask_tpp/", "mask_l1/", "mask_random/", "mask_snip/"):
        for key in _keys(results, other, prefix):
            np.testing.assert_array_equal(tf_[key], other_[key], err_msg=key)


@once_per_ci
@pytest.mark.parametrize("other", OTHERS)
def test_same_penalties_and_gradients(results, other):
    tf_, other_ = results["tensorflow"], results[other]
    keys = _keys(results, other, "penalty/")
    assert any(float(tf_[k]) > 0 for k in keys)
    for key in keys + _keys(results, other, "penalty_grad/"):
        scale = max(float(np.max(np.abs(tf_[key]))), 1e-12)
        np.testing.assert_allclose(other_[key], tf_[key], rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=key)


@once_per_ci
@pytest.mark.parametrize("other", OTHERS)
def test_same_schedule_and_training(results, other):
    tf_, other_ = results["tensorflow"], results[other]
    schedule_tf, schedule_other = tf_["schedule"], other_["schedule"]
    # λ and phase of every step: identical; the phase reaches "pruned" (2).
    np.testing.assert_array_equal(schedule_other[:, :2], schedule_tf[:, :2])
    assert schedule_tf[-1, 1] == 2.0 and schedule_tf[:, 0].max() == pytest.approx(0.3)
    # Losses and weights after 12 SGD steps: the same up to float32 kernel differences
    # (measured: 3e-7 relative on JAX, 2e-7 on PyTorch).
    np.testing.assert_allclose(schedule_other[:, 2], schedule_tf[:, 2], rtol=1e-5)
    for key in _keys(results, other, "trained/"):
        np.testing.assert_allclose(other_[key], tf_[key], rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(other_["thin_trained_outputs"], tf_["thin_trained_outputs"],
                               rtol=1e-4, atol=1e-5)
    # GReg-1's short fit: the same steps, losses and weights.
    greg_tf, greg_other = tf_["greg_schedule"], other_["greg_schedule"]
    np.testing.assert_array_equal(greg_other[:, :2], greg_tf[:, :2])
    assert greg_tf[:, 0].max() > 0 and greg_tf[-1, 1] == 2.0
    np.testing.assert_allclose(greg_other[:, 2], greg_tf[:, 2], rtol=1e-5)
    for key in _keys(results, other, "greg_trained/"):
        np.testing.assert_allclose(other_[key], tf_[key], rtol=1e-4, atol=1e-5, err_msg=key)


@once_per_ci
@pytest.mark.parametrize("other", OTHERS)
def test_same_thin_model_and_jacobian(results, other):
    tf_, other_ = results["tensorflow"], results[other]
    assert int(tf_["thin_params"]) == int(other_["thin_params"])
    for key in ("thin_outputs", "strip_outputs"):
        np.testing.assert_allclose(other_[key], tf_[key], rtol=1e-5, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(tf_["thin_outputs"], tf_["strip_outputs"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(other_["jsv"], tf_["jsv"], rtol=1e-4, atol=1e-6)
    for key in ("folded_outputs", "orthp_outputs"):
        np.testing.assert_allclose(other_[key], tf_[key], rtol=1e-5, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(tf_["folded_outputs"], tf_["thin_outputs"], rtol=1e-4,
                               atol=1e-5)
    assert not np.allclose(tf_["orthp_outputs"], tf_["thin_outputs"], atol=1e-3)
    np.testing.assert_array_equal(other_["profile"], tf_["profile"])
    assert int(tf_["profile"][0]) == int(tf_["thin_params"])
    # The schedules' values: float32 arithmetic of the same formula on every backend.
    np.testing.assert_allclose(other_["lr"], tf_["lr"], rtol=1e-6)
    assert {1e-2, 1e-3, 1e-4} <= set(np.round(tf_["lr"][:, 1].astype(np.float64), 8))


@once_per_ci
@pytest.mark.parametrize("other", OTHERS)
def test_same_gradient_scores(results, other):
    tf_, other_ = results["tensorflow"], results[other]
    for prefix in ("grasp/", "synflow/"):
        for key in _keys(results, other, prefix):
            scale = float(np.max(np.abs(tf_[key])))
            np.testing.assert_allclose(other_[key], tf_[key], rtol=1e-4, atol=1e-5 * scale,
                                       err_msg=key)


def test_masks_hold_during_fit_of_a_loaded_model(tmp_path):
    # On JAX the optimizer update cannot read the masks: a loaded prepared model refuses to
    # train until its train step applies them, then holds the pruned weights at zero. On
    # TensorFlow and PyTorch the optimizer applies the mask constraints after each update.
    import keras_tpp
    from keras_tpp.prepared import hold_masks_in_train_step

    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="d1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(hidden))
    pmodel = keras_tpp.prepare(model, 0.5, method="l1")
    keras_tpp.apply_masks(pmodel)
    path = str(tmp_path / "pruned.keras")
    pmodel.save(path)
    loaded = keras.models.load_model(path)
    loaded.compile(keras.optimizers.SGD(0.1), "mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")
    if keras.backend.backend() == "jax":
        with pytest.raises(RuntimeError, match="hold_masks_in_train_step"):
            loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
        # Keras' JAX fit leaves the variables purged after an error in a train step: reload.
        loaded = keras.models.load_model(path)
        loaded.compile(keras.optimizers.SGD(0.1), "mse")
        assert hold_masks_in_train_step(loaded)
    else:
        assert not hold_masks_in_train_step(loaded)  # the constraint runs in the update
    loaded.fit(x, y, batch_size=8, epochs=2, verbose=0)
    mask = keras_tpp.get_masks(loaded)["d1"]
    kernel = keras.ops.convert_to_numpy(loaded.get_layer("d1").layer.kernel)
    assert np.all(kernel[:, ~mask] == 0) and np.all(kernel[:, mask] != 0)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the PyTorch backend's errors")
def test_torch_export_is_a_clear_error(tmp_path):
    import keras_tpp

    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(inputs))
    with pytest.raises(NotImplementedError, match="PyTorch Keras backend"):
        keras_tpp.export(model, str(tmp_path / "m.tflite"))
    assert not os.path.exists(tmp_path / "m.tflite")


def test_callbacks_read_the_weights_of_the_fit_in_progress():
    # The torch (and TensorFlow) fit updates the variables in place; JAX's is synced by
    # keras_internals.sync_training_state. A callback's reads at each batch end must see
    # the update of that batch: here the SGD step of a linear model, computed in NumPy.
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="d")(inputs))
    w0 = np.array([[0.5], [-1.0], [2.0]], "float32")
    model.get_layer("d").kernel.assign(w0)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")
    seen = []

    class Read(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            from keras_tpp import keras_internals

            keras_internals.sync_training_state(self.model)
            seen.append(keras.ops.convert_to_numpy(self.model.get_layer("d").kernel).copy())

    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[Read()])
    w = w0.astype(np.float64)
    for i, got in enumerate(seen):
        xb, yb = x[4 * i:4 * i + 4], y[4 * i:4 * i + 4]
        w = w - 0.1 * 2 * xb.T @ (xb @ w - yb) / len(xb)  # ∇ mean((xw − y)²)
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    assert len(seen) == 2
