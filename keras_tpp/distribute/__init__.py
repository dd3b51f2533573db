"""tf.distribute strategies and a custom training loop that works under all of them.

This is a TensorFlow-only edge of keras_tpp (the pruning core is backend-agnostic).

- :func:`get_strategy` — ``"default"``, ``"one_device"``, ``"mirrored"``, ``"multi_worker"``
  or ``"tpu"`` by name.
- :class:`DistributedTrainer` — ``fit`` / ``evaluate`` for a compiled Keras 3 model. Keras 3's
  ``model.fit`` does not work under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585);
  this loop does, and it works under every other strategy too. Each step is a
  ``strategy.run`` inside a ``tf.function`` over a distributed dataset:

  * loss = ``tf.nn.compute_average_loss(per-example loss, global_batch_size=...)`` +
    ``tf.nn.scale_regularization_loss(tf.add_n(model.losses))`` — so regularizers (the
    library's pruning penalties) count once per global step, exactly like ``model.fit``;
  * ``model.optimizer.apply_gradients`` — which all-reduces the gradients, applies variable
    *constraints* (the library's masks) after the update and increments
    ``optimizer.iterations`` once per global step;
  * compiled metrics are evaluated statelessly per replica and summed across replicas, so
    no distributed metric variable is ever read (the part that breaks ``fit``).

  Keras callbacks are driven through ``keras.callbacks.CallbackList`` with the same hooks
  and logs as ``model.fit`` (``loss``, metric names, ``val_*``), so CSVLogger, TensorBoard,
  ModelCheckpoint, EarlyStopping, LR schedulers and keras_tpp's schedule callback work
  unchanged. ``backup_dir`` gives BackupAndRestore-style fault tolerance that is
  multi-worker aware.

Conventions: datasets yield GLOBAL batches (see :mod:`keras_tpp.data.common`); the model
and its optimizer must be created and compiled inside ``strategy.scope()``.

Modules: :mod:`~keras_tpp.distribute.strategies`, :mod:`~keras_tpp.distribute.batches`,
:mod:`~keras_tpp.distribute.trainer`.
"""
from keras_tpp.distribute.strategies import (
    STRATEGY_NAMES,
    get_strategy,
    is_chief,
    scaled_learning_rate,
    worker_info,
)
from keras_tpp.distribute.trainer import DistributedTrainer, train_loop

__all__ = ["STRATEGY_NAMES", "DistributedTrainer", "get_strategy", "is_chief",
           "scaled_learning_rate", "train_loop", "worker_info"]
