"""The same numbers on every Keras backend: TensorFlow and JAX, one subprocess each.

tests/backend_parity.py runs prepare / penalties / a short TPP fit / shrink / the Jacobian
metric / the gradient scores from the same initial weights (an .npz written here) and the
same data; this test compares the two processes' results: penalty values and gradients
(1e-5 relative), identical masks, identical λ schedule, thin-model outputs (1e-5), Jacobian
singular values (1e-4).

It runs both backends whatever ``KERAS_BACKEND`` the test session uses, so it runs once, in
the TensorFlow session (skipped in the others).
"""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "backend_parity.py")
BACKENDS = ("tensorflow", "jax")

once_per_ci = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="runs every backend in its own subprocess: once, in the TensorFlow test session")


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


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backends")
    initial = str(folder / "initial.npz")
    _initial_weights(initial)
    return {b: _run(b, initial, str(folder / f"{b}.npz")) for b in BACKENDS}


def _keys(results, prefix):
    keys = sorted(k for k in results["tensorflow"] if k.startswith(prefix))
    assert keys, prefix
    assert keys == sorted(k for k in results["jax"] if k.startswith(prefix))
    return keys


@once_per_ci
def test_same_masks(results):
    tf_, jax_ = results["tensorflow"], results["jax"]
    for prefix in ("mask_tpp/", "mask_l1/", "mask_snip/"):
        for key in _keys(results, prefix):
            np.testing.assert_array_equal(tf_[key], jax_[key], err_msg=key)


@once_per_ci
def test_same_penalties_and_gradients(results):
    tf_, jax_ = results["tensorflow"], results["jax"]
    keys = _keys(results, "penalty/")
    assert any(float(tf_[k]) > 0 for k in keys)
    for key in keys + _keys(results, "penalty_grad/"):
        scale = max(float(np.max(np.abs(tf_[key]))), 1e-12)
        np.testing.assert_allclose(jax_[key], tf_[key], rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=key)


@once_per_ci
def test_same_schedule_and_training(results):
    tf_, jax_ = results["tensorflow"], results["jax"]
    schedule_tf, schedule_jax = tf_["schedule"], jax_["schedule"]
    # λ and phase of every step: identical; the phase reaches "pruned" (2).
    np.testing.assert_array_equal(schedule_jax[:, :2], schedule_tf[:, :2])
    assert schedule_tf[-1, 1] == 2.0 and schedule_tf[:, 0].max() == pytest.approx(0.3)
    # Losses and weights after 12 SGD steps: the same up to float32 kernel differences
    # (measured: 3e-7 relative).
    np.testing.assert_allclose(schedule_jax[:, 2], schedule_tf[:, 2], rtol=1e-5)
    for key in _keys(results, "trained/"):
        np.testing.assert_allclose(jax_[key], tf_[key], rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(jax_["thin_trained_outputs"], tf_["thin_trained_outputs"],
                               rtol=1e-4, atol=1e-5)


@once_per_ci
def test_same_thin_model_and_jacobian(results):
    tf_, jax_ = results["tensorflow"], results["jax"]
    assert int(tf_["thin_params"]) == int(jax_["thin_params"])
    for key in ("thin_outputs", "strip_outputs"):
        np.testing.assert_allclose(jax_[key], tf_[key], rtol=1e-5, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(tf_["thin_outputs"], tf_["strip_outputs"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax_["jsv"], tf_["jsv"], rtol=1e-4, atol=1e-6)


@once_per_ci
def test_same_gradient_scores(results):
    tf_, jax_ = results["tensorflow"], results["jax"]
    for prefix in ("grasp/", "synflow/"):
        for key in _keys(results, prefix):
            scale = float(np.max(np.abs(tf_[key])))
            np.testing.assert_allclose(jax_[key], tf_[key], rtol=1e-4, atol=1e-5 * scale,
                                       err_msg=key)


def test_masks_hold_during_fit_of_a_loaded_model(tmp_path):
    # On JAX the optimizer update cannot read the masks: a loaded prepared model refuses to
    # train until its train step applies them, then holds the pruned weights at zero.
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
