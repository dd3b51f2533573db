"""Batches, losses and logs of the distributed training loop (helpers of the trainer)."""
from __future__ import annotations


import keras
import tensorflow as tf



def unpack(batch):
    """``(x, y[, sample_weight])`` → ``(x, y, sample_weight or None)``."""
    if isinstance(batch, (list, tuple)):
        if len(batch) == 2:
            return batch[0], batch[1], None
        if len(batch) == 3:
            return batch[0], batch[1], batch[2]
    raise ValueError(
        "DistributedTrainer needs datasets of (x, y) or (x, y, sample_weight) batches; got "
        f"an element of type {type(batch).__name__}.")


def local_spec(spec):
    """A per-replica TensorSpec structure from a (possibly PerReplica) element_spec."""
    def one(s):
        value_specs = getattr(s, "_value_specs", None)
        return value_specs[0] if value_specs else s
    return tf.nest.map_structure(one, spec)


def per_example_loss_fn(model):
    """A function (y_true, y_pred) → per-example losses from the compiled ``model.loss``."""
    loss = getattr(model, "loss", None)
    if isinstance(loss, dict) and len(loss) == 1:
        loss = next(iter(loss.values()))
    if isinstance(loss, (list, tuple)) and len(loss) == 1:
        loss = loss[0]
    if loss is None:
        raise ValueError("DistributedTrainer: compile the model with a loss "
                         "(model.compile(optimizer=..., loss=..., metrics=...)).")
    if isinstance(loss, (list, tuple, dict)):
        raise NotImplementedError(
            "DistributedTrainer supports single-output models with one loss; got "
            f"{type(loss).__name__} of {len(loss)} losses.")
    if not isinstance(loss, keras.losses.Loss):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        loss_obj = loss

        def per_example(y_true, y_pred):
            y_pred = tf.convert_to_tensor(y_pred)
            return loss_obj.call(y_true, y_pred)
    else:
        per_example = loss

    def fn(y_true, y_pred):
        values = tf.convert_to_tensor(per_example(y_true, y_pred))
        values = tf.cast(values, tf.float32) if values.dtype != tf.float64 else values
        if values.shape.rank is not None and values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
        return values

    return fn


def pad_empty_batch(x, y, sample_weight, local_n):
    """Replaces an empty replica batch by one all-zero example.

    Returns ``(x, y, sample_weight, loss_weight, empty)``: ``loss_weight`` is 0 for the dummy
    example (1 or the given weights otherwise) and ``empty`` says whether it was inserted.
    """
    empty = tf.equal(local_n, 0)

    def pad(t):
        t = tf.convert_to_tensor(t)
        dummy_shape = tf.concat([[1], tf.shape(t)[1:]], axis=0)
        return tf.cond(empty, lambda: tf.zeros(dummy_shape, t.dtype), lambda: t)

    x, y = tf.nest.map_structure(pad, x), tf.nest.map_structure(pad, y)
    keep = tf.cast(tf.logical_not(empty), tf.float32)
    if sample_weight is None:
        loss_weight = tf.fill([tf.shape(first_leaf(x))[0]], keep)
    else:
        sample_weight = pad(sample_weight)
        loss_weight = tf.cast(sample_weight, tf.float32) * keep
    return x, y, sample_weight, loss_weight, empty


def first_leaf(structure):
    return next(t for t in tf.nest.flatten(structure) if t is not None)


def is_distributed_dataset(data) -> bool:
    return isinstance(data, (tf.distribute.DistributedDataset,))


def pythonify(logs):
    out = {}
    for key, value in logs.items():
        if isinstance(value, (tf.Tensor, tf.Variable)) or hasattr(value, "numpy"):
            value = value.numpy()
        try:
            value = float(value)
        except (TypeError, ValueError):
            pass
        out[key] = value
    return out
