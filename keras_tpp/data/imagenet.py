"""ImageNet (tfds ``imagenet2012``) input pipeline.

Training: random-resized crop (area 8–100 %, aspect ratio 3/4–4/3, 10 attempts, else the
whole image) resized to ``image_size`` (bilinear), random horizontal flip. Evaluation: resize
the shorter side to ``resize_size`` (256 for 224) and center-crop ``image_size``. Both
normalize with the ImageNet mean/std. The tfds data must already be prepared in ``data_dir``
(``tfds.load`` with ``download=False``); offline tests use ``tfds.testing.mock_data``.
"""
from __future__ import annotations

import tensorflow as tf

from keras_tpp.data import common

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_resized_crop(image, seed, image_size: int, area_range=(0.08, 1.0),
                        aspect_ratio_range=(3 / 4, 4 / 3)):
    """Inception-style random crop resized to ``image_size`` × ``image_size`` (float32)."""
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=bbox, seed=seed, min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio_range, area_range=area_range, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, size)
    crop = tf.image.resize(tf.cast(crop, tf.float32), [image_size, image_size],
                           method="bilinear")
    return tf.ensure_shape(crop, [image_size, image_size, 3])


def resize_center_crop(image, image_size: int, resize_size: int):
    """Resize the shorter side to ``resize_size`` (keeping the aspect) and center-crop."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(resize_size, tf.float32) / tf.reduce_min(shape)
    new_hw = tf.cast(tf.round(shape * scale), tf.int32)
    new_hw = tf.maximum(new_hw, image_size)
    image = tf.image.resize(tf.cast(image, tf.float32), new_hw, method="bilinear")
    top = (new_hw[0] - image_size) // 2
    left = (new_hw[1] - image_size) // 2
    image = tf.slice(image, [top, left, 0], [image_size, image_size, 3])
    return tf.ensure_shape(image, [image_size, image_size, 3])


def imagenet_pipeline(
    split: str,
    *,
    batch_size: int,
    training: bool,
    data_dir: str | None = None,
    dataset: str = "imagenet2012",
    image_size: int = 224,
    resize_size: int | None = None,
    shuffle: bool | None = None,
    shuffle_buffer: int = 10_000,
    seed: int = 0,
    max_examples: int | None = None,
    drop_remainder: bool | None = None,
    input_context=None,
) -> tf.data.Dataset:
    """A batched ImageNet ``tf.data.Dataset`` of ``(float32 images, int64 labels)``.

    ``split`` is a tfds split (``"train"``, ``"validation"``, ``"train[:1%]"``);
    ``batch_size`` is GLOBAL; ``resize_size`` defaults to ``round(image_size / 0.875)``
    (256 for 224). Sharding and ``input_context`` as in :mod:`keras_tpp.data.common`.
    """
    import tensorflow_datasets as tfds

    shuffle = training if shuffle is None else shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder
    resize_size = resize_size or int(round(image_size / 0.875))
    common.per_replica_batch_size(batch_size, input_context)

    ds = tfds.load(dataset, split=split, data_dir=data_dir, as_supervised=True,
                   shuffle_files=False, download=False)
    if max_examples is not None:
        ds = ds.take(int(max_examples))
    ds = common.shard(ds, input_context)
    if shuffle:
        ds = ds.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)

    def _prepare(example, rng_seed):
        image, label = example
        if training:
            seeds = tf.random.experimental.stateless_split(rng_seed, 2)
            image = random_resized_crop(image, seeds[0], image_size)
            image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
        else:
            image = resize_center_crop(image, image_size, resize_size)
        image = (image / 255.0 - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)
        return image, tf.cast(label, tf.int64)

    ds = common.with_seeds(ds, seed, input_context)
    ds = ds.map(_prepare, num_parallel_calls=common.AUTOTUNE, deterministic=True)
    return common.finalize(ds, batch_size=batch_size, drop_remainder=drop_remainder,
                           input_context=input_context)
