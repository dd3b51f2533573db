"""Shared tf.data plumbing: global vs per-replica batch sizes, sharding, stateless seeds.

Conventions used by every pipeline in :mod:`keras_tpp.data`:

- ``batch_size`` is always the GLOBAL batch size (summed over all replicas of all workers).
- Without ``input_context`` a pipeline returns global batches and sets the auto-shard policy
  to ``DATA``. Feed it to ``model.fit`` (default / MirroredStrategy) or to
  ``strategy.experimental_distribute_dataset`` (what :class:`keras_tpp.distribute.
  DistributedTrainer` does): every worker builds the same deterministic pipeline and keeps
  its own slice of each global batch.
- With ``input_context`` (a ``tf.distribute.InputContext``, as passed by
  ``strategy.distribute_datasets_from_function``) the pipeline shards its examples by
  ``input_context.input_pipeline_id`` *before* shuffling, batches with the PER-REPLICA batch
  size ``input_context.get_per_replica_batch_size(batch_size)`` and turns auto-sharding off.
"""
from __future__ import annotations

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def per_replica_batch_size(global_batch_size: int, input_context=None) -> int:
    """The batch size one pipeline must produce for ``global_batch_size`` overall."""
    if global_batch_size is None or int(global_batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {global_batch_size!r}.")
    if input_context is None:
        return int(global_batch_size)
    return int(input_context.get_per_replica_batch_size(int(global_batch_size)))


def shard(ds: tf.data.Dataset, input_context=None) -> tf.data.Dataset:
    """Keeps this input pipeline's share of the examples (a no-op without a context)."""
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return ds


def with_seeds(ds: tf.data.Dataset, seed: int, input_context=None) -> tf.data.Dataset:
    """Zips each element with a fresh stateless-op seed (an int64 vector of shape [2]).

    The seeds are deterministic given ``seed`` and differ between epochs (iterations of the
    dataset) and between input pipelines.
    """
    offset = 0 if input_context is None else 7919 * input_context.input_pipeline_id
    seeds = tf.data.Dataset.random(seed=int(seed) + offset,
                                   rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds))


def finalize(
    ds: tf.data.Dataset,
    *,
    batch_size: int,
    drop_remainder: bool,
    input_context=None,
) -> tf.data.Dataset:
    """Batches (global or per-replica size), sets sharding options and prefetches."""
    ds = ds.batch(per_replica_batch_size(batch_size, input_context),
                  drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if input_context is not None
        else tf.data.experimental.AutoShardPolicy.DATA)
    ds = ds.with_options(options)
    return ds.prefetch(AUTOTUNE)


def normalize(image: tf.Tensor, mean, std) -> tf.Tensor:
    """uint8 (or 0..255 float) image → float32 ``(image / 255 - mean) / std`` per channel."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
