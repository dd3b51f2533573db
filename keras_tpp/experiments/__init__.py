"""Experiment plumbing for training scripts: stage runner, crash-safe outputs and logs.

TensorFlow-free at import (Keras, TensorFlow and keras_tpp's training modules are imported
inside the functions that need them):

- :mod:`~keras_tpp.experiments.config` — :class:`RunConfig`, the dataclass a run is
  configured by; ``ConfigError`` naming the setting; per-stage fingerprints.
- :mod:`~keras_tpp.experiments.runner` — ``StageRunner``: pretrain → prune → finetune,
  every setting validated before training, resumable after a kill at any point.
- :mod:`~keras_tpp.experiments.training` — optimizer, compile with coupled weight decay,
  logging and pruning callbacks, fine-tuning schedules.
- :mod:`~keras_tpp.experiments.atomic` — atomic, fsync-ed writes of files, JSON and
  models; validated JSON reads; clean-up of temporaries left by killed runs.
- :mod:`~keras_tpp.experiments.backup` — per-epoch training backups that survive a kill
  at any moment, are checksummed, and are fingerprinted with the run's settings.
- :mod:`~keras_tpp.experiments.history` — a per-iteration CSV log (λ, loss, accuracy,
  learning rate) and its plot.
- :mod:`~keras_tpp.experiments.report` — before/after tables and summary results.
- :mod:`~keras_tpp.experiments.faults` — named kill points for crash tests.
"""
from keras_tpp.experiments.atomic import (
    atomic_save_model,
    atomic_write,
    atomic_write_json,
    read_json,
    read_json_or,
    remove_stale_temporaries,
)
from keras_tpp.experiments.backup import backup_callback, discard_backup, prepare_backup_dir
from keras_tpp.experiments.faults import kill_point
from keras_tpp.experiments.report import before_after_rows, format_table

__all__ = [
    "atomic_save_model", "atomic_write", "atomic_write_json", "backup_callback",
    "before_after_rows", "format_table",
    "discard_backup", "kill_point", "prepare_backup_dir", "read_json", "read_json_or",
    "remove_stale_temporaries",
]
