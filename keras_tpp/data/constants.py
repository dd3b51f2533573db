"""Dataset constants shared by the tf.data pipelines and the TensorFlow-free PyDatasets.

Kept in a module without TensorFlow so that :mod:`keras_tpp.data.pydataset` (numpy and
Pillow only) normalizes with exactly the numbers :mod:`keras_tpp.data.cifar` and
:mod:`keras_tpp.data.mnist` use.

Example::

    from keras_tpp.data.constants import CIFAR10_MEAN, CIFAR10_STD
    print(CIFAR10_MEAN, CIFAR10_STD)
"""
from __future__ import annotations

# Per-channel statistics of the CIFAR training sets (pixel values scaled to [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# CIFAR-10 label order (alphabetical, so sorted folder names give the same labels).
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

#: Normalization constants by dataset name.
CIFAR_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}

# MNIST mean and standard deviation (pixel values scaled to [0, 1]).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
