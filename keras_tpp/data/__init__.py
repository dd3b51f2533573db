"""Input pipelines: tf.data (TensorFlow edge) and keras.utils.PyDataset (no TensorFlow).

TensorFlow-free (numpy, Pillow; any Keras backend), imported eagerly:

- :class:`CifarPyDataset`, :class:`MnistPyDataset` (:mod:`keras_tpp.data.pydataset`) —
  CIFAR-10/100 from an image folder / .tar.gz or arrays, MNIST from ``mnist.npz``, with the
  tf.data pipelines' augmentation and normalization, as ``keras.utils.PyDataset``.
- :func:`synthetic_shapes` — embedded, deterministic, learnable 10-class image dataset.
- :func:`list_image_folder`, :func:`resolve_image_folder` — the image-folder layout.

TensorFlow-only, imported on first use (so ``import keras_tpp.data`` needs no TensorFlow):

- :func:`cifar_pipeline` — CIFAR-10/100 from tfds, an image folder/.tar.gz, or arrays.
- :func:`mnist_arrays` — MNIST resized to 32×32 and flattened (MLP-7-Linear).
- :func:`imagenet_pipeline` — tfds imagenet2012 with the standard crops.

Batch sizes are GLOBAL; see :mod:`keras_tpp.data.common` for the sharding conventions.

Example::

    from keras_tpp.data import CifarPyDataset, synthetic_shapes
    ds = CifarPyDataset("train", arrays=synthetic_shapes(256), batch_size=64)
    x, y = ds[0]          # float32 (64, 32, 32, 3), int64 (64,)
"""
from __future__ import annotations

import importlib

from keras_tpp.data.constants import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    MNIST_MEAN,
    MNIST_STD,
)
from keras_tpp.data.folder import list_image_folder, resolve_image_folder
from keras_tpp.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASS_NAMES
from keras_tpp.data.synthetic import synthetic_shapes

# name -> module that defines it; imported on first attribute access (PEP 562).
_LAZY = {
    "augment_cifar": "keras_tpp.data.cifar",
    "cifar_pipeline": "keras_tpp.data.cifar",
    "per_replica_batch_size": "keras_tpp.data.common",
    "IMAGENET_MEAN": "keras_tpp.data.imagenet",
    "IMAGENET_STD": "keras_tpp.data.imagenet",
    "imagenet_pipeline": "keras_tpp.data.imagenet",
    "mnist_arrays": "keras_tpp.data.mnist",
    # keras_tpp.data.pydataset imports keras (and so the Keras backend): lazily too.
    "CifarPyDataset": "keras_tpp.data.pydataset",
    "MnistPyDataset": "keras_tpp.data.pydataset",
    "augment_batch": "keras_tpp.data.pydataset",
    "load_image_folder": "keras_tpp.data.pydataset",
    "load_mnist_npz": "keras_tpp.data.pydataset",
}


def __getattr__(name: str):
    """Imports a TensorFlow (or Keras) dependent name on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_tpp.data' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ImportError as e:
        if module.endswith(".pydataset") or (
                (e.name or "").split(".")[0] != "tensorflow" and "tensorflow" not in str(e)):
            raise
        raise ModuleNotFoundError(
            f"keras_tpp.data.{name} belongs to the tf.data pipelines and needs TensorFlow: "
            f"pip install 'keras-tpp[tensorflow]'. Without TensorFlow use "
            f"keras_tpp.data.CifarPyDataset / MnistPyDataset.", name="tensorflow") from e
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD",
    "CifarPyDataset", "IMAGENET_MEAN", "IMAGENET_STD", "MNIST_MEAN", "MNIST_STD",
    "MnistPyDataset", "SYNTHETIC_CLASS_NAMES", "augment_batch", "augment_cifar",
    "cifar_pipeline", "imagenet_pipeline", "list_image_folder", "load_image_folder",
    "load_mnist_npz", "mnist_arrays", "per_replica_batch_size", "resolve_image_folder",
    "synthetic_shapes",
]
