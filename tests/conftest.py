"""Shared test setup: quiet TensorFlow, two logical CPU devices, deterministic seeds."""
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


@pytest.fixture(autouse=True)
def _seed():
    # Seeding only: keras.backend.clear_session() after every test would cost ~0.5 s each.
    keras.utils.set_random_seed(1234)
    yield
