"""tf.distribute strategies by name, worker roles and learning-rate scaling."""
from __future__ import annotations


import tensorflow as tf


STRATEGY_NAMES = ("default", "one_device", "mirrored", "multi_worker", "tpu")


# --------------------------------------------------------------------------- strategies


def get_strategy(
    name: str = "default",
    *,
    devices=None,
    tpu: str | None = None,
    communication: str = "auto",
    cluster_resolver=None,
) -> tf.distribute.Strategy:
    """Returns the ``tf.distribute`` strategy called ``name``.

    Args:
      name: one of :data:`STRATEGY_NAMES`:

        * ``"default"`` — the default (no-op) strategy: one device;
        * ``"one_device"`` — ``OneDeviceStrategy(devices[0])`` (default: first GPU, else CPU);
        * ``"mirrored"`` — ``MirroredStrategy(devices)``: synchronous data parallelism on
          the local GPUs (or the given devices, e.g. two logical CPUs);
        * ``"multi_worker"`` — ``MultiWorkerMirroredStrategy`` configured from
          ``$TF_CONFIG`` (or ``cluster_resolver``). Create it at program start, before any
          other TensorFlow op. Train with :class:`DistributedTrainer`, not ``model.fit``;
        * ``"tpu"`` — ``TPUStrategy`` through ``TPUClusterResolver(tpu=tpu)``.
      devices: device strings for ``"mirrored"`` / ``"one_device"``.
      tpu: TPU name or grpc address (``None``/``""`` = the local or configured TPU).
      communication: collective implementation for ``"multi_worker"``: ``"auto"``,
        ``"ring"`` or ``"nccl"``.
      cluster_resolver: optional cluster resolver for ``"multi_worker"``.

    Strategies other than ``"default"`` are created once per process and configuration and
    then reused: TensorFlow's collective runtime cannot tell two MirroredStrategy objects
    over the same devices apart.

    Raises:
      ValueError: unknown ``name`` or ``communication``.
      RuntimeError: ``"tpu"`` requested but no TPU can be reached.
    """
    name = str(name).lower().replace("-", "_")
    if name not in STRATEGY_NAMES:
        raise ValueError(f"Unknown strategy {name!r}; expected one of {STRATEGY_NAMES}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if isinstance(devices, str):
        devices = [devices]
    key = (name, tuple(devices) if devices else None, tpu, communication,
           id(cluster_resolver) if cluster_resolver is not None else None)
    if key not in _STRATEGY_CACHE:
        _STRATEGY_CACHE[key] = _create_strategy(name, devices, tpu, communication,
                                                cluster_resolver)
    return _STRATEGY_CACHE[key]


# One strategy object per configuration and process: two MirroredStrategy objects over the
# same devices allocate the same collective group/instance keys, and TensorFlow's collective
# runtime then mixes up their ops ("Shape mismatch in the collective instance ..."); a
# MultiWorkerMirroredStrategy or TPU system must be set up only once per process anyway.
_STRATEGY_CACHE: dict = {}


def _create_strategy(name, devices, tpu, communication, cluster_resolver):
    if name == "one_device":
        if devices:
            device = devices[0]
        else:
            device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        implementations = {
            "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
            "ring": tf.distribute.experimental.CommunicationImplementation.RING,
            "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
        }
        if communication not in implementations:
            raise ValueError(f"communication must be one of {tuple(implementations)}, "
                             f"got {communication!r}.")
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=implementations[communication])
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=cluster_resolver, communication_options=options)
    # tpu
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise RuntimeError(
            f"strategy 'tpu' requested but no TPU could be reached (tpu={tpu!r}): {e}") from e
    return tf.distribute.TPUStrategy(resolver)


def worker_info(strategy: tf.distribute.Strategy | None = None) -> tuple[str | None, int, bool]:
    """``(task_type, task_id, is_chief)`` of this process under ``strategy``.

    Single-process strategies report ``(None, 0, True)``. In a multi-worker cluster the
    chief is the ``"chief"`` task, or ``worker`` 0 when the cluster has no chief task.
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None) if resolver is not None else None
    task_id = getattr(resolver, "task_id", None) if resolver is not None else None
    task_id = int(task_id or 0)
    if task_type is None:
        return None, task_id, True
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if task_type == "chief":
        chief = True
    elif task_type == "worker":
        chief = "chief" not in cluster and task_id == 0
    else:
        chief = False
    return task_type, task_id, chief


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process should write shared outputs (logs, checkpoints, reports)."""
    return worker_info(strategy)[2]


def scaled_learning_rate(base_lr: float, global_batch_size: int,
                         base_batch_size: int) -> float:
    """Linear scaling rule: ``base_lr · global_batch_size / base_batch_size``."""
    return float(base_lr) * float(global_batch_size) / float(base_batch_size)
