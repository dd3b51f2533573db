"""MNIST as arrays, resized to 32×32 and flattened to 1024 (SPEC §1's MLP-7-Linear input).

Offline sources, tried in this order:

1. ``data_dir`` (argument): a ``mnist.npz`` file, or a directory containing ``mnist.npz``
   or ``datasets/mnist.npz`` (Keras' file format: x_train, y_train, x_test, y_test);
2. ``$KERAS_HOME/datasets/mnist.npz`` (read at call time, e.g.
   ``KERAS_HOME=<folder holding datasets/mnist.npz>``);
3. ``keras.datasets.mnist.load_data()`` (``source="keras"``; downloads if it can) or
   ``tfds.load("mnist")`` (``source="tfds"``, ``data_dir`` = tfds data dir).
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from keras_tpp.data.constants import MNIST_MEAN, MNIST_STD  # noqa: F401 - re-exported


def _find_npz(data_dir):
    candidates = []
    if data_dir is not None:
        data_dir = os.path.expanduser(str(data_dir))
        if os.path.isfile(data_dir):
            return data_dir
        candidates += [os.path.join(data_dir, "mnist.npz"),
                       os.path.join(data_dir, "datasets", "mnist.npz")]
        for path in candidates:
            if os.path.isfile(path):
                return path
        raise ValueError(
            f"{data_dir} holds no MNIST file: expected {data_dir}/mnist.npz or "
            f"{data_dir}/datasets/mnist.npz (Keras' mnist.npz with x_train, y_train, "
            f"x_test, y_test), or pass the .npz path itself.")
    keras_home = os.environ.get("KERAS_HOME")
    if keras_home:
        path = os.path.join(os.path.expanduser(keras_home), "datasets", "mnist.npz")
        if os.path.isfile(path):
            return path
    return None


def _load_raw(source, data_dir):
    if source not in ("keras", "tfds"):
        raise ValueError(f"source must be 'keras' or 'tfds', got {source!r}.")
    if source == "tfds":
        import tensorflow_datasets as tfds

        out = []
        for split in ("train", "test"):
            ds = tfds.load("mnist", split=split, data_dir=data_dir, as_supervised=True)
            xs, ys = [], []
            for x, y in tfds.as_numpy(ds.batch(10_000)):
                xs.append(x[..., 0] if x.ndim == 4 else x)
                ys.append(y)
            out.append((np.concatenate(xs), np.concatenate(ys)))
        return tuple(out)
    path = _find_npz(data_dir)
    if path is not None:
        with np.load(path, allow_pickle=False) as f:
            return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
    import keras

    return keras.datasets.mnist.load_data()


def _resize_flatten(x, size, flatten, normalize, chunk=10_000):
    out = []
    for start in range(0, len(x), chunk):
        batch = tf.convert_to_tensor(x[start:start + chunk, :, :, None], tf.float32) / 255.0
        if size is not None and tuple(batch.shape[1:3]) != (size, size):
            batch = tf.image.resize(batch, [size, size], method="bilinear")
        out.append(batch.numpy())
    side = size if size is not None else x.shape[1]
    images = (np.concatenate(out) if out else np.zeros((0, side, side, 1), np.float32))
    if normalize:
        images = (images - MNIST_MEAN) / MNIST_STD
    if flatten:
        images = images.reshape(len(images), -1)
    return images.astype(np.float32)


def mnist_arrays(
    flatten_size: int | None = 32,
    *,
    flatten: bool = True,
    source: str = "keras",
    data_dir: str | None = None,
    normalize: bool = True,
    train_examples: int | None = None,
    test_examples: int | None = None,
):
    """MNIST resized to ``flatten_size``² and (by default) flattened.

    Args:
      flatten_size: side of the resized images (bilinear); 32 gives 1024 features.
        ``None`` keeps 28×28.
      flatten: return (n, side²) rows; ``False`` returns (n, side, side, 1) images.
      source: ``"keras"`` (npz file, see module docstring) or ``"tfds"``.
      data_dir: npz file / directory for ``"keras"``, tfds data dir for ``"tfds"``.
      normalize: scale to [0, 1] then ``(x - 0.1307) / 0.3081``; else just [0, 1].
      train_examples, test_examples: keep only the first n examples of each split.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: float32 inputs, int64 labels.
    """
    (x_train, y_train), (x_test, y_test) = _load_raw(source, data_dir)
    if train_examples is not None:
        x_train, y_train = x_train[:train_examples], y_train[:train_examples]
    if test_examples is not None:
        x_test, y_test = x_test[:test_examples], y_test[:test_examples]
    x_train = _resize_flatten(np.asarray(x_train), flatten_size, flatten, normalize)
    x_test = _resize_flatten(np.asarray(x_test), flatten_size, flatten, normalize)
    return ((x_train, np.asarray(y_train).astype(np.int64)),
            (x_test, np.asarray(y_test).astype(np.int64)))
