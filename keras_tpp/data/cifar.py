"""CIFAR-10 / CIFAR-100 input pipelines (tf.data).

``cifar_pipeline`` reads one split from tensorflow-datasets (``source="tfds"``), an image
folder or its .tar.gz (``source="folder"``, e.g. the offline CIFAR-10 JPEG copy) or in-memory
arrays (``source="arrays"``, e.g. :func:`keras_tpp.data.synthetic_shapes`), and applies the
standard CIFAR recipe:

- training: pad 4 pixels (zeros) + random 32×32 crop, random horizontal flip, shuffle with
  a seed (reshuffled every epoch);
- always: per-channel normalization ``(x / 255 - mean) / std`` with the dataset's constants;
- batching with the GLOBAL batch size (or the per-replica size under an ``input_context``,
  see :mod:`keras_tpp.data.common`), prefetch.

Elements are ``(image float32 (H, W, 3), label int64)``.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_tpp.data import common
from keras_tpp.data.constants import (  # noqa: F401 - re-exported; defined without TF
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR_STATS,
)
from keras_tpp.data.folder import list_image_folder

_STATS = CIFAR_STATS
_SOURCES = ("tfds", "folder", "arrays")


#: Start of the error raised (when the dataset is iterated) for a file that is not a
#: complete JPEG / PNG / GIF / BMP image; the message goes on to name the file.
CORRUPT_IMAGE_MESSAGE = "corrupt or truncated image file"


def _image_is_complete(contents: tf.Tensor) -> tf.Tensor:
    """Whether ``contents`` (a scalar string) starts with a JPEG/PNG/GIF/BMP signature and
    ends the way that format ends (JPEG: EOI marker within the last 64 bytes; PNG: the IEND
    chunk; GIF: the trailer byte). Catches truncated copies and files that are not images."""
    n = tf.strings.length(contents)

    def head(k):
        return tf.strings.substr(contents, 0, k)

    def tail(k):
        return tf.strings.substr(contents, tf.maximum(n - k, 0), tf.minimum(n, k))

    jpeg = tf.logical_and(
        tf.equal(head(3), b"\xff\xd8\xff"),
        tf.size(tf.strings.split(tail(64), sep=b"\xff\xd9")) > 1)
    png = tf.logical_and(tf.equal(head(8), b"\x89PNG\r\n\x1a\n"),
                         tf.equal(tail(8), b"IEND\xaeB`\x82"))
    gif = tf.logical_and(tf.equal(head(4), b"GIF8"), tf.equal(tail(1), b";"))
    bmp = tf.logical_and(tf.equal(head(2), b"BM"), n > 54)
    return tf.reduce_any(tf.stack([jpeg, png, gif, bmp]))


def _decode_image(path, image_size: int):
    contents = tf.io.read_file(path)
    check = tf.debugging.Assert(_image_is_complete(contents),
                                [CORRUPT_IMAGE_MESSAGE + ":", path], summarize=1)
    with tf.control_dependencies([check]):
        contents = tf.identity(contents)
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)

    def _resize():
        resized = tf.image.resize(image, [image_size, image_size], antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size))
    image = tf.cond(same, lambda: image, _resize)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def _source_dataset(split, source, dataset, data_dir, arrays, class_names, cache_dir,
                    image_size):
    """Unbatched ``(uint8 image, int64 label)`` examples in a deterministic order."""
    if source == "tfds":
        import tensorflow_datasets as tfds

        ds = tfds.load(dataset, split=split, data_dir=data_dir, as_supervised=True,
                       shuffle_files=False)
        return ds.map(lambda x, y: (x, tf.cast(y, tf.int64)))
    if source == "folder":
        paths, labels, _ = list_image_folder(data_dir, split, class_names, cache_dir)
        ds = tf.data.Dataset.from_tensor_slices(
            (tf.constant(paths), tf.constant(labels, tf.int64)))
        return ds.map(lambda p, y: (_decode_image(p, image_size), y),
                      num_parallel_calls=common.AUTOTUNE, deterministic=True)
    # arrays
    if arrays is None:
        raise ValueError("source='arrays' needs arrays=(x, y) or a {split: (x, y)} mapping.")
    if isinstance(arrays, dict):
        if split not in arrays:
            raise ValueError(f"arrays has no split {split!r}; it has {sorted(arrays)}.")
        arrays = arrays[split]
    x, y = arrays
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"arrays x must have shape (n, H, W, 3), got {x.shape}.")
    if x.dtype != np.uint8:  # pixel values 0..255 expected
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if len(x) != len(y):
        raise ValueError(f"arrays x and y differ in length: {len(x)} vs {len(y)}.")
    return tf.data.Dataset.from_tensor_slices((x, y))


def augment_cifar(image: tf.Tensor, seed: tf.Tensor, padding: int = 4) -> tf.Tensor:
    """Pad ``padding`` zero pixels, take a random crop of the original size, random flip.

    Stateless: the result is a deterministic function of ``seed`` (int shape [2]).
    """
    shape = tf.shape(image)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed=seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])


def cifar_pipeline(
    split: str,
    *,
    batch_size: int,
    training: bool,
    source: str = "tfds",
    dataset: str = "cifar10",
    data_dir: str | None = None,
    arrays=None,
    class_names=None,
    cache_dir: str | None = None,
    image_size: int = 32,
    augment: bool | None = None,
    shuffle: bool | None = None,
    shuffle_buffer: int | None = None,
    seed: int = 0,
    mean=None,
    std=None,
    cache: bool = True,
    max_examples: int | None = None,
    drop_remainder: bool | None = None,
    input_context=None,
) -> tf.data.Dataset:
    """A batched CIFAR ``tf.data.Dataset`` of ``(float32 images, int64 labels)``.

    Args:
      split: ``"train"`` or ``"test"``. For tfds any split string works
        (``"train[:10%]"``); for folders it is the sub-directory name.
      batch_size: the GLOBAL batch size (see :mod:`keras_tpp.data.common`).
      training: turns on augmentation, shuffling and ``drop_remainder`` by default.
      source: ``"tfds"`` (``tfds.load(dataset, data_dir=data_dir)``), ``"folder"``
        (``data_dir`` = image folder or .tar.gz, see :mod:`keras_tpp.data.folder`) or
        ``"arrays"`` (``arrays=(x uint8 (n,H,W,3), y)`` or ``{split: (x, y)}``).
      dataset: ``"cifar10"`` or ``"cifar100"``: the tfds name and the normalization constants.
      class_names: folder label order; default = class directories sorted by name, which is
        the CIFAR label order for CIFAR class names.
      cache_dir: where folder archives are extracted (default ``$KERAS_TPP_CACHE`` or
        ``~/.cache/keras_tpp``).
      image_size: folder images of another size are resized to this (tfds/arrays are used
        as they are).
      augment, shuffle: default to ``training``.
      shuffle_buffer: default = the whole split (capped at 50,000 examples).
      seed: seeds the shuffle order and the augmentation; every worker gets the same order.
      mean, std: override the per-channel normalization constants (in [0, 1] units).
      cache: cache the decoded uint8 examples in memory (after sharding, before shuffling).
      max_examples: use only the first ``max_examples`` examples of the split (folders are
        ordered class-round-robin, so the subset is balanced).
      drop_remainder: default = ``training`` (constant global batch for training).
      input_context: a ``tf.distribute.InputContext``: shard by input pipeline and batch
        with the per-replica batch size (for ``strategy.distribute_datasets_from_function``).
        Without it the dataset yields global batches with auto-shard policy ``DATA``.
    """
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {_SOURCES}, got {source!r}.")
    if dataset not in _STATS:
        raise ValueError(f"dataset must be one of {tuple(_STATS)}, got {dataset!r}.")
    augment = training if augment is None else augment
    shuffle = training if shuffle is None else shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder
    default_mean, default_std = _STATS[dataset]
    mean = default_mean if mean is None else tuple(mean)
    std = default_std if std is None else tuple(std)
    common.per_replica_batch_size(batch_size, input_context)  # validates early

    ds = _source_dataset(split, source, dataset, data_dir, arrays, class_names, cache_dir,
                         image_size)
    if max_examples is not None:
        ds = ds.take(int(max_examples))
    ds = common.shard(ds, input_context)
    if cache:
        ds = ds.cache()
    if shuffle:
        buffer = shuffle_buffer
        if buffer is None:
            n = int(ds.cardinality())
            buffer = 50_000 if n < 0 else max(1, min(n, 50_000))
        ds = ds.shuffle(int(buffer), seed=seed, reshuffle_each_iteration=True)

    def _prepare(example, rng_seed):
        image, label = example
        if augment:
            image = augment_cifar(image, rng_seed)
        return common.normalize(image, mean, std), label

    ds = common.with_seeds(ds, seed, input_context)
    ds = ds.map(_prepare, num_parallel_calls=common.AUTOTUNE, deterministic=True)
    return common.finalize(ds, batch_size=batch_size, drop_remainder=drop_remainder,
                           input_context=input_context)
