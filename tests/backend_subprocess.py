"""What the cross-backend test files share: which backends they compare with TensorFlow, and
the mark that runs them once, in the TensorFlow test session (each backend runs in its own
subprocess, whatever KERAS_BACKEND the session uses)."""
import importlib.util

import keras
import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None

#: The backends compared with TensorFlow's numbers (torch only where it is installed).
OTHERS = ("jax", pytest.param("torch", marks=pytest.mark.skipif(
    not HAS_TORCH, reason="torch is not installed: pip install torch==2.13.0 (CPU wheel)")))

once_per_ci = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="runs every backend in its own subprocess: once, in the TensorFlow test session")
