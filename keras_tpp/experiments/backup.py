"""Crash-safe training backups: atomic, checksummed, fingerprinted with the run's settings.

A backup directory holds

- ``fingerprint.json`` — the settings the backup was made with (written when the stage
  starts). :func:`prepare_backup_dir` discards a backup whose fingerprint differs from the
  current run's, printing which settings differ, so a rerun with other flags never resumes
  someone else's training.
- ``epoch<E>-iter<I>.weights.h5`` — model and optimizer state, written by
  :func:`backup_callback`'s callback through a temporary file and an atomic rename, under
  a new name for every backup.
- ``backup.json`` — the commit record: which weights file is current, its SHA-256 and
  size, the epoch, the iteration and whether training finished. It is replaced
  (atomically) only after the new weights file is complete, and older weights files are
  deleted only after that, so a kill at any moment leaves a record that points at a
  complete file: the previous backup until the new one is committed. A weights file whose
  checksum does not match or that fails to load, or weights without a record (e.g. a
  Keras ``latest.weights.h5``), are reported (naming the file) and ignored: the stage
  starts over instead of crashing.

Unlike ``keras.callbacks.BackupAndRestore`` the backup is not deleted when ``fit`` returns:
the caller deletes it (:func:`discard_backup`) once the stage's outputs are written, and a
backup marked ``finished`` makes a rerun skip straight to those outputs.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

from keras_tpp.experiments import atomic
from keras_tpp.experiments.faults import kill_point

FINGERPRINT_FILE = "fingerprint.json"
STATE_FILE = "backup.json"
WEIGHTS_SUFFIX = ".weights.h5"
_FORMAT = 1

Log = Callable[[str], None]


def _normalized(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=atomic.json_default))


def fingerprint_differences(old: dict, new: dict) -> list[str]:
    """``["--name: old → new", ...]`` for every setting that differs (sorted by name)."""
    old, new = _normalized(old), _normalized(new)
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            out.append(f"--{key}: {old.get(key, '<unset>')!r} → {new.get(key, '<unset>')!r}")
    return out


def discard_backup(backup_dir: str) -> None:
    """Deletes ``backup_dir`` and, if it is then empty, its parent directory."""
    shutil.rmtree(backup_dir, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(os.path.abspath(backup_dir)))
    except OSError:  # not empty (other stages' backups) or already gone
        pass


def prepare_backup_dir(backup_dir: str, fingerprint: dict, *, log: Log = print,
                       write: bool = True) -> bool:
    """Gets ``backup_dir`` ready for a stage run with ``fingerprint``.

    Removes temporaries of killed writers; discards (with a message saying why) a backup
    whose ``fingerprint.json`` is missing, damaged or different; then writes the current
    fingerprint. With ``write=False`` (non-chief workers, which share the directory with
    the chief) nothing is changed: the result only says whether there is a backup to
    resume.

    Args:
      backup_dir: the stage's backup directory (need not exist).
      fingerprint: JSON-able settings the stage's result depends on (e.g. its flags).
      log: where messages go.
      write: may change the directory (only one process of a multi-worker job may).

    Returns:
      True when a backup made with the same fingerprint is there to resume from.
    """
    removed = atomic.remove_stale_temporaries(backup_dir) if write else []
    if removed:
        log(f"removed {len(removed)} temporary file(s) of a killed run: "
            f"{', '.join(os.path.basename(p) for p in removed)}")
    path = os.path.join(backup_dir, FINGERPRINT_FILE)
    contents = [n for n in os.listdir(backup_dir) if not n.startswith(atomic.TMP_PREFIX)
                ] if os.path.isdir(backup_dir) else []
    if contents:
        stored = atomic.read_json_or(path, None)
        reason = None
        if not isinstance(stored, dict):
            reason = f"its fingerprint {path} is missing or damaged"
        else:
            diff = fingerprint_differences(stored, fingerprint)
            if diff:
                reason = "it was made with other flags: " + "; ".join(diff)
        if reason is None:
            return any(n != FINGERPRINT_FILE for n in contents)
        if not write:
            return False
        log(f"discarding the backup in {backup_dir}: {reason}")
        shutil.rmtree(backup_dir, ignore_errors=True)
    if write:
        atomic.atomic_write_json(path, _normalized(fingerprint))
    return False


def _weights_path(backup_dir: str, state: Any) -> str | None:
    name = state.get("file") if isinstance(state, dict) else None
    if not isinstance(name, str) or os.sep in name or not name.endswith(WEIGHTS_SUFFIX):
        return None
    return os.path.join(backup_dir, name)


def _validate(state: Any, weights: str | None) -> str | None:
    """Why the backup described by ``state`` is unusable, or None."""
    if not isinstance(state, dict) or state.get("format") != _FORMAT or weights is None:
        return f"{STATE_FILE} is not a backup record of format {_FORMAT}"
    if not os.path.isfile(weights):
        return "the weights file is missing"
    size = os.path.getsize(weights)
    if size != state.get("bytes"):
        return f"{size} bytes, the backup record says {state.get('bytes')}"
    if atomic.sha256_file(weights) != state.get("sha256"):
        return "its SHA-256 does not match the backup record"
    return None


def read_backup_state(backup_dir: str) -> dict | None:
    """The validated ``backup.json`` of ``backup_dir``, or None if absent or damaged."""
    state = atomic.read_json_or(os.path.join(backup_dir, STATE_FILE), None)
    if _validate(state, _weights_path(backup_dir, state)) is not None:
        return None
    return state


def backup_callback(backup_dir: str, *, stage: str = "train", log: Log = print) -> Any:
    """A Keras callback that backs up after every epoch and restores at ``fit``'s start.

    Args:
      backup_dir: directory of this stage's backup (see the module docstring).
      stage: name used in messages and in the fault-injection point
        ``<stage>.backup_write`` (see :mod:`keras_tpp.experiments.faults`).
      log: where messages go.

    Returns:
      A ``keras.callbacks.Callback``; put it first in ``fit``'s callbacks, so the restored
      state is in place before other callbacks read it.
    """
    return _callback_class()(backup_dir, stage=stage, log=log)


_CLASS: list = []


def _callback_class():
    if _CLASS:
        return _CLASS[0]
    import keras  # lazily: this module must import without TensorFlow

    class AtomicBackupAndRestore(keras.callbacks.Callback):
        """Atomic, checksummed per-epoch backups; validated restore (see module doc)."""

        def __init__(self, backup_dir: str, *, stage: str, log: Log) -> None:
            super().__init__()
            self.backup_dir = os.path.abspath(backup_dir)
            self.stage = stage
            self.log = log
            self.state_path = os.path.join(self.backup_dir, STATE_FILE)
            self._epoch = 0
            self._saved_iterations = None

        def _iterations(self) -> int:
            optimizer = getattr(self.model, "optimizer", None)
            if optimizer is None:
                return 0
            return int(keras.ops.convert_to_numpy(optimizer.iterations))

        def _weights_files(self) -> list[str]:
            if not os.path.isdir(self.backup_dir):
                return []
            return sorted(os.path.join(self.backup_dir, n) for n in os.listdir(self.backup_dir)
                          if n.endswith(WEIGHTS_SUFFIX) and not n.startswith(atomic.TMP_PREFIX))

        def _remove_except(self, keep: str | None) -> None:
            for path in self._weights_files():
                if path != keep:
                    os.remove(path)

        def _ignore(self, paths: list[str], problem: str) -> None:
            names = ", ".join(paths) if paths else self.state_path
            self.log(f"[{self.stage}] backup {names} is damaged ({problem}); ignoring it and "
                     "starting this stage from the beginning")
            self._remove_except(None)
            if os.path.exists(self.state_path):
                os.remove(self.state_path)

        # -- restore ------------------------------------------------------------------
        def on_train_begin(self, logs=None) -> None:
            self._epoch = 0
            self._saved_iterations = None
            state = atomic.read_json_or(self.state_path, None)
            if state is None:
                if self._weights_files() or os.path.exists(self.state_path):
                    self._ignore(self._weights_files(),
                                 f"no readable {STATE_FILE} record: the write never completed")
                return
            weights = _weights_path(self.backup_dir, state)
            problem = _validate(state, weights)
            if problem is not None:
                self._ignore([weights] if weights else [], problem)
                return
            self._remove_except(weights)  # orphans of a write killed before its commit
            optimizer = self.model.optimizer
            if optimizer is not None and not optimizer.built:
                optimizer.build(self.model.trainable_variables)
            variables = list(self.model.variables) + (
                list(optimizer.variables) if optimizer is not None else [])
            snapshot = [keras.ops.convert_to_numpy(v) for v in variables]
            try:
                self.model.load_weights(weights)
            except Exception as e:  # noqa: BLE001 - any load failure means a bad file
                for variable, value in zip(variables, snapshot):
                    variable.assign(value)
                self._ignore([weights], f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
                return
            epoch = int(state["epoch"])
            target = self.params.get("epochs")
            finished = bool(state.get("finished")) and state.get("target_epochs") == target
            if finished:  # e.g. stopped early by a callback: do not train again
                epoch = max(epoch, int(target))
            self._epoch = epoch
            self._saved_iterations = self._iterations()
            self.model._initial_epoch = epoch  # what keras' BackupAndRestore sets (3.x)
            self.log(f"[{self.stage}] restored {weights}: epoch {state['epoch']}, iteration "
                     f"{state.get('iterations')}"
                     + ("; its training had finished" if finished else ""))

        # -- save ---------------------------------------------------------------------
        def _save(self, finished: bool) -> None:
            iterations = self._iterations()
            if iterations == self._saved_iterations:  # nothing new since the last backup
                state = atomic.read_json_or(self.state_path, None)
                if _validate(state, _weights_path(self.backup_dir, state)) is None:
                    if finished and not state.get("finished"):
                        atomic.atomic_write_json(self.state_path, dict(state, finished=True))
                    return
            name = f"epoch{self._epoch:05d}-iter{iterations}{WEIGHTS_SUFFIX}"
            path = os.path.join(self.backup_dir, name)
            record: dict = {}

            def checksum(tmp: str) -> None:
                record.update(bytes=os.path.getsize(tmp), sha256=atomic.sha256_file(tmp))
                kill_point(f"{self.stage}.backup_write")

            atomic.atomic_write(path, lambda tmp: self.model.save_weights(tmp, overwrite=True),
                                before_rename=checksum)
            atomic.atomic_write_json(self.state_path, {  # the commit point
                "format": _FORMAT, "file": name, "epoch": self._epoch,
                "target_epochs": self.params.get("epochs"), "iterations": iterations,
                "finished": finished, **record})
            self._remove_except(path)
            self._saved_iterations = iterations

        def on_epoch_end(self, epoch, logs=None) -> None:
            self._epoch = epoch + 1
            self._save(finished=False)

        def on_train_end(self, logs=None) -> None:
            self._save(finished=True)

    _CLASS.append(AtomicBackupAndRestore)
    return AtomicBackupAndRestore
