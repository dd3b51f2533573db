"""What a pruning experiment runs: :class:`RunConfig`, its errors and its fingerprints.

A :class:`~keras_tpp.experiments.runner.StageRunner` reads nothing global: everything it
needs is a field here. Scripts fill it from their command-line flags (the example scripts
from absl flags) and put every setting of the run, by flag name, into ``settings``; those
are recorded in summary.json and fingerprint each stage's outputs and backups.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

STAGES = ("pretrain", "prune", "finetune")
FT_SCHEDULES = ("tpp", "ft", "lrw", "slr", "clr")
STAGE_FILES = {"pretrain": "pretrained.keras", "prune": "pruned.keras",
               "finetune": "final.keras"}
SUMMARY_FILE = "summary.json"

# Settings that do not change what a stage computes, and settings only the prune /
# finetune stage uses (changing --ft_lr redoes the fine-tuning only).
NOT_RESULT_SETTINGS = frozenset({
    "stage", "verbose", "dump_state", "latency_runs", "latency_batch_sizes", "resume",
    "model_dir", "strategy", "num_cpu_devices", "distributed_loop", "validation_freq",
    "log_every"})
PRUNE_SETTINGS = frozenset({
    "method", "pruning_ratio", "preset", "prune_lr", "delta", "interval", "ceiling",
    "stabilize_steps", "stop_ratio", "pick_delta", "pick_ceiling", "kept_strength",
    "prune_epochs"})
FINETUNE_SETTINGS = frozenset({"ft_schedule", "ft_lr", "ft_epochs"})


class ConfigError(ValueError):
    """A setting whose value does not work; ``setting`` names it (the script's flag)."""

    def __init__(self, setting: str, detail: str) -> None:
        super().__init__(f"{setting}: {detail}")
        self.setting = setting
        self.detail = detail


def one_line(error: object, limit: int = 600) -> str:
    """``str(error)`` on one line, at most ``limit`` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def blame(setting: str) -> Iterator[None]:
    """Turns a ValueError raised in the block into a :class:`ConfigError` naming ``setting``."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(setting, one_line(e)) from e


@dataclass
class RunConfig:
    """Settings of a pretrain → prune → finetune experiment.

    Units: learning rates per optimizer step; ``epochs`` / ``ft_epochs`` / ``prune_epochs``
    in passes over the (capped) training set; ``interval`` / ``stabilize_steps`` in
    optimizer iterations; ``batch_size`` is the GLOBAL batch (all replicas).

    Attributes:
      model_dir: where outputs, backups, logs and summary.json go.
      stage: "pretrain", "prune", "finetune" or "all".
      method: a pruning method registered in :mod:`keras_tpp.methods`.
      pruning_ratio: a ratio, {pattern: ratio}, or None (the script's default layer set).
      resume: with stage "all", skip stages completed with the same settings.
      epochs, lr: pretraining length and peak learning rate.
      weight_decay: coupled L2 of every stage (gradient += wd·w).
      prune_lr: the prune stage's learning rate.
      delta, interval, ceiling, stabilize_steps: the penalty schedule (Δ, K_u, τ, K_s).
      stop_ratio, pick_delta, pick_ceiling, kept_strength: GReg-1/2's settings.
      prune_epochs: prune-stage epoch cap; 0 = enough to reach the pruned phase.
      ft_schedule, ft_lr, ft_epochs: fine-tuning schedule, learning rate, length.
      multi_worker: train with keras_tpp.distribute.DistributedTrainer (MultiWorker).
      distributed_loop: use DistributedTrainer under every strategy (debugging).
      steps_per_epoch: optional cap on steps per epoch.
      validation_freq: validate every this many epochs.
      latency_batch_sizes, latency_runs: latency measurement (0 runs = skip).
      seed: the "random" method's seed.
      verbose: Keras verbosity (0, 1, 2).
      log_every: per-iteration log interval (iterations).
      dump_state: optional .npz path for the prune stage's full state (debugging).
      settings: every setting of the run by name (recorded; fingerprints).
    """

    model_dir: str
    stage: str = "all"
    method: str = "tpp"
    pruning_ratio: float | Mapping[str, float] | None = 0.5
    resume: bool = True
    epochs: int = 200
    lr: float = 0.1
    weight_decay: float = 5e-4
    prune_lr: float = 1e-3
    delta: float = 1e-4
    interval: int = 10
    ceiling: float = 1.0
    stabilize_steps: int = 10_000
    stop_ratio: float = 1000.0
    pick_delta: float = 1e-5
    pick_ceiling: float = 1e-2
    kept_strength: float = -1e-4
    prune_epochs: int = 0
    ft_schedule: str = "tpp"
    ft_lr: float | None = None
    ft_epochs: int = 120
    multi_worker: bool = False
    distributed_loop: bool = False
    steps_per_epoch: int | None = None
    validation_freq: int = 1
    latency_batch_sizes: Sequence[int] = (1, 64)
    latency_runs: int = 20
    seed: int = 0
    verbose: int = 1
    log_every: int = 10
    dump_state: str | None = None
    settings: dict = field(default_factory=dict)

    def stages(self) -> list[str]:
        """The stages this run goes through, in order."""
        return list(STAGES) if self.stage == "all" else [self.stage]

    def describe(self, stage: str) -> str:
        """One line saying what ``stage`` is about to do."""
        if stage == "pretrain":
            return f"{self.epochs} epochs from scratch, LR {self.lr:g}"
        if stage == "prune":
            ratio = self.settings.get("pruning_ratio") or "the preset"
            return f"{self.method} at pruning_ratio {ratio}, LR {self.prune_lr:g}, then shrink"
        return f"{self.ft_epochs} epochs of the thin model, schedule {self.ft_schedule}"

    def fingerprint(self, stage: str) -> dict:
        """The settings ``stage``'s output depends on (a later stage's do not count)."""
        ignore = set(NOT_RESULT_SETTINGS)
        if stage != "finetune":
            ignore |= FINETUNE_SETTINGS
        if stage == "pretrain":
            ignore |= PRUNE_SETTINGS
        return {k: v for k, v in self.settings.items() if k not in ignore}
