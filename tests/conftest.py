"""Shared test setup: quiet TensorFlow, two logical CPU devices, deterministic seeds.

The Keras backend is ``KERAS_BACKEND`` (default: tensorflow). Tests marked ``tf_only``
(``@pytest.mark.tf_only(reason="...")`` or ``pytestmark`` for a whole file) are skipped with
their reason on any other backend, e.g. ``KERAS_BACKEND=jax python -m pytest -m "not tf_only"``;
tests marked ``not_torch`` (``@pytest.mark.not_torch(reason="...")``) are skipped with their
reason on the PyTorch backend; tests marked ``float64`` are skipped on JAX unless
``JAX_ENABLE_X64=1`` and on PyTorch (Keras' torch ops compute float64 matmul and mean in
float32: ``keras.backend.result_type`` maps float64 to float32 on backends other than
TensorFlow).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

# Two logical CPU devices so MirroredStrategy tests can run on one CPU. This must
# happen before any op runs, i.e. at import of the test session.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # already initialized (e.g. imported twice)
    pass

import keras  # noqa: E402
import pytest  # noqa: E402


def _jax_x64() -> bool:
    import jax

    return bool(jax.config.jax_enable_x64)


def pytest_collection_modifyitems(config, items):
    """Skip ``tf_only`` tests, with their reason, when the Keras backend is not TensorFlow,
    ``not_torch`` tests on PyTorch, and ``float64`` tests on JAX without x64 (JAX truncates
    float64 to float32) and on PyTorch (Keras' torch matmul and mean of float64 tensors run
    in float32)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    x64 = backend != "jax" or _jax_x64()
    for item in items:
        if not x64 and item.get_closest_marker("float64") is not None:
            item.add_marker(pytest.mark.skip(
                reason="float64: JAX computes in float32 unless JAX_ENABLE_X64=1"))
        if backend == "torch" and item.get_closest_marker("float64") is not None:
            item.add_marker(pytest.mark.skip(
                reason="float64: Keras' torch backend computes float64 matmul and mean in "
                       "float32 (keras.backend.result_type maps float64 to float32)"))
        not_torch = item.get_closest_marker("not_torch")
        if backend == "torch" and not_torch is not None:
            reason = not_torch.kwargs.get("reason") or (not_torch.args[0] if not_torch.args
                                                        else "not supported on PyTorch")
            item.add_marker(pytest.mark.skip(reason=f"not_torch: {reason}"))
        marker = item.get_closest_marker("tf_only")
        if marker is None:
            continue
        reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else
                                                 "needs TensorFlow")
        item.add_marker(pytest.mark.skip(
            reason=f"tf_only on the {backend} backend: {reason}"))


@pytest.fixture(autouse=True)
def _seed():
    # Seeding only: keras.backend.clear_session() after every test would cost ~0.5 s each.
    keras.utils.set_random_seed(1234)
    yield
