"""Input pipelines (TensorFlow-only edge of keras_tpp): tf.data and datasets.

- :func:`synthetic_shapes` — embedded, deterministic, learnable 10-class image dataset.
- :func:`cifar_pipeline` — CIFAR-10/100 from tfds, an image folder/.tar.gz, or arrays.
- :func:`mnist_arrays` — MNIST resized to 32×32 and flattened (MLP-7-Linear).
- :func:`imagenet_pipeline` — tfds imagenet2012 with the standard crops.

Batch sizes are GLOBAL; see :mod:`keras_tpp.data.common` for the sharding conventions.
"""
from keras_tpp.data.cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    augment_cifar,
    cifar_pipeline,
)
from keras_tpp.data.common import per_replica_batch_size
from keras_tpp.data.folder import list_image_folder, resolve_image_folder
from keras_tpp.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, imagenet_pipeline
from keras_tpp.data.mnist import mnist_arrays
from keras_tpp.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASS_NAMES
from keras_tpp.data.synthetic import synthetic_shapes

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD",
    "IMAGENET_MEAN", "IMAGENET_STD", "SYNTHETIC_CLASS_NAMES",
    "augment_cifar", "cifar_pipeline", "imagenet_pipeline", "list_image_folder",
    "mnist_arrays", "per_replica_batch_size", "resolve_image_folder", "synthetic_shapes",
]
