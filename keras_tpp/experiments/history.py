"""Per-iteration training history: a CSV log written atomically, and its plot.

:func:`iteration_logger` returns a Keras callback that records, every ``every`` optimizer
iterations, the iteration number, the epoch, the batch logs Keras reports (``loss``,
``accuracy``, ...), the pruning strength ``prune_lambda`` and phase when a pruning callback
put them into the logs, and the learning rate. Rows are kept in memory and the whole CSV is
rewritten atomically (:mod:`keras_tpp.experiments.atomic`) every ``flush_every`` rows, at
every epoch's end and when training ends, so a kill never leaves a torn file. When a run
resumes from a backup, rows past the restored iteration are dropped first (they belong to
the lost part of the killed run).

:func:`plot_history` draws λ, loss and accuracy against iterations (matplotlib, Agg).
"""
from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Sequence

from keras_tpp.experiments import atomic

BASE_COLUMNS = ("iteration", "epoch")
LOGGED_KEYS = ("loss", "accuracy", "prune_lambda", "prune_phase", "learning_rate")


def read_rows(path: str) -> list[dict]:
    """The rows of a CSV written by the logger (``[]`` if missing or unreadable)."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []


def write_rows(path: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Writes ``rows`` as CSV with header ``columns`` to ``path`` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})
    atomic.atomic_write_bytes(path, buffer.getvalue().encode())


def iteration_logger(path: str, every: int = 1, flush_every: int = 100) -> Any:
    """A Keras callback logging training every ``every`` iterations to the CSV ``path``.

    Args:
      path: the CSV file (rewritten atomically; existing rows up to the resumed iteration
        are kept).
      every: log one row every this many optimizer iterations (>= 1).
      flush_every: rewrite the file after this many new rows (and at each epoch end).

    Returns:
      A ``keras.callbacks.Callback``. Put it after callbacks that add entries to the batch
      logs (the pruning callback's ``prune_lambda``) and after a backup callback.
    """
    if int(every) < 1 or int(flush_every) < 1:
        raise ValueError(f"every and flush_every must be >= 1, got {every}, {flush_every}")
    import keras  # lazily: this module must import without TensorFlow

    from keras_tpp.experiments.training import last_learning_rate

    class IterationLogger(keras.callbacks.Callback):
        """Per-iteration CSV of loss, accuracy, λ and learning rate (see module doc)."""

        def __init__(self) -> None:
            super().__init__()
            self.path = os.path.abspath(path)
            self.every = int(every)
            self.flush_every = int(flush_every)
            self.rows: list[dict] = []
            self.columns: list[str] = list(BASE_COLUMNS) + list(LOGGED_KEYS)
            self._pending = 0
            self._epoch = 0

        def _optimizer(self):
            optimizer = self.model.optimizer
            return getattr(optimizer, "inner_optimizer", optimizer)

        def _iteration(self) -> int:
            return int(keras.ops.convert_to_numpy(self._optimizer().iterations))

        def on_train_begin(self, logs=None) -> None:
            start = self._iteration()  # after a backup callback restored its state
            self.rows = [r for r in read_rows(self.path)
                         if r.get("iteration", "").isdigit() and int(r["iteration"]) <= start]
            for row in self.rows[:1]:
                self.columns += [k for k in row if k not in self.columns]

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self._epoch = epoch

        def on_train_batch_end(self, batch, logs=None) -> None:
            iteration = self._iteration()
            if iteration % self.every:
                return
            row: dict = {"iteration": iteration, "epoch": self._epoch}
            for key, value in (logs or {}).items():
                try:
                    number = float(keras.ops.convert_to_numpy(value))
                except (TypeError, ValueError):
                    continue
                if math.isfinite(number) or key in ("loss", "prune_lambda"):
                    row[key] = number
                if key not in self.columns:
                    self.columns.append(key)
            row["learning_rate"] = last_learning_rate(self.model.optimizer)
            self.rows.append(row)
            self._pending += 1
            if self._pending >= self.flush_every:
                self.flush()

        def flush(self) -> None:
            """Rewrites the CSV with every row so far (atomically)."""
            write_rows(self.path, self.rows, self.columns)
            self._pending = 0

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.flush()

        def on_train_end(self, logs=None) -> None:
            self.flush()

    return IterationLogger()


def plot_history(curves: dict[str, str], path: str, title: str = "") -> str:
    """Plots λ, loss and accuracy against iterations for one or more logged stages.

    Args:
      curves: {label (e.g. the stage name): CSV path written by :func:`iteration_logger`};
        missing files are skipped. Iterations are counted from each stage's own start.
      path: the PNG to write (atomically).
      title: the figure title.

    Returns:
      ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("prune_lambda", "λ (prune_lambda)"), ("loss", "loss"),
              ("accuracy", "training accuracy"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 8), sharex=False)
    for label, csv_path in curves.items():
        rows = read_rows(csv_path)
        if not rows:
            continue
        for ax, (key, _) in zip(axes, panels):
            points = [(int(r["iteration"]), float(r[key])) for r in rows
                      if r.get(key) not in (None, "")]
            if points:
                ax.plot(*zip(*points), label=label, linewidth=1)
    for ax, (_, name) in zip(axes, panels):
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("optimizer iteration (within each stage)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path
