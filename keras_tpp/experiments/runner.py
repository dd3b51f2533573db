"""The pretrain → prune → finetune stages of a pruning experiment, resumable and atomic.

:class:`StageRunner` runs the stages a :class:`~keras_tpp.experiments.config.RunConfig`
asks for, under any tf.distribute strategy (``model.fit``, or keras_tpp's
DistributedTrainer for MultiWorkerMirroredStrategy, where Keras 3's ``fit`` does not work):

- every setting is checked before any training (the data, the fine-tuning schedule and the
  pruning-ratio patterns against the freshly built model);
- each stage trains with a crash-safe, fingerprinted backup (:mod:`.backup`) kept until its
  model and its summary.json entry are written (atomically, :mod:`.atomic`);
- each stage builds its own data pipelines, so its result does not depend on whether the
  earlier stages ran in the same process;
- the run ends with a before/after table and a plot of the per-iteration logs.

Keras, TensorFlow and keras_tpp's training modules are imported inside the methods.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from keras_tpp.experiments.atomic import atomic_save_model, atomic_write_json, read_json_or
from keras_tpp.experiments.config import (
    STAGE_FILES,
    STAGES,
    SUMMARY_FILE,
    ConfigError,
    RunConfig,
    blame,
)
from keras_tpp.experiments.history import plot_history
from keras_tpp.experiments.report import print_report, summary_result
from keras_tpp.experiments.training import (
    cardinality,
    compile_classifier,
    dump_state,
    finetune_schedule,
    label_masks,
    logging_callbacks,
    pruning_callback,
    pruning_method,
    schedule_epochs_needed,
    sgd,
)


def read_json(path: str) -> dict:
    """The JSON object in ``path``; ``{}`` when it is missing or damaged."""
    value = read_json_or(path, {})
    return value if isinstance(value, dict) else {}


@dataclass
class ScriptSpec:
    """What cifar.py / imagenet.py plug into :class:`StageRunner`."""

    name: str
    build_model: Callable[[], object]          # called inside strategy.scope()
    make_data: Callable[[], tuple]             # → (train ds of GLOBAL batches, test ds, info)
    prune_targets: Callable[[object], tuple]   # parsed --pruning_ratio → (ratio, exclude)
    finetune_recipe: str                       # "cifar" | "imagenet"
    pretrain_boundaries: Sequence[float]       # LR ×0.1 at these fractions of --epochs
    finetune_boundaries: Sequence[float]       # TPP fine-tuning: fractions of --ft_epochs
    tpp_recipe_epochs: int                     # length of SPEC's TPP fine-tuning recipe
    info: dict = field(default_factory=dict)   # extra entries for summary.json


class StageRunner:
    """Runs the stages of a pruning experiment with resumable, atomic outputs."""

    def __init__(self, spec: ScriptSpec, config: RunConfig, strategy) -> None:
        from keras_tpp.distribute import is_chief

        self.spec = spec
        self.config = config
        self.strategy = strategy
        self.multi_worker = config.multi_worker
        self.chief = is_chief(strategy)
        self.model_dir = os.path.abspath(config.model_dir)
        # Only the chief writes final files; other workers write to a private temp dir.
        self.out_dir = self.model_dir if self.chief else tempfile.mkdtemp(
            prefix="keras_tpp_worker_")
        self.summary_path = os.path.join(self.out_dir, SUMMARY_FILE)
        self.summary = read_json(os.path.join(self.model_dir, SUMMARY_FILE))
        self.train_ds = self.test_ds = None
        self._data_key = None
        self.steps_per_epoch = None
        if self.chief:
            from keras_tpp.experiments import remove_stale_temporaries

            removed = remove_stale_temporaries(self.model_dir)
            if removed:
                print(f"removed {len(removed)} temporary file(s) left by a killed run: "
                      + ", ".join(os.path.relpath(p, self.model_dir) for p in removed),
                      flush=True)

    # -- helpers ----------------------------------------------------------------------
    def path(self, stage: str) -> str:
        return os.path.join(self.model_dir, STAGE_FILES[stage])

    def _fingerprint(self, stage: str) -> dict:
        return self.config.fingerprint(stage)

    def completed(self, stage: str) -> bool:
        entry = self.summary.get("stages", {}).get(stage)
        return bool(entry and os.path.exists(self.path(stage))
                    and entry.get("fingerprint") == json.loads(
                        json.dumps(self._fingerprint(stage), default=str)))

    def data(self, key: str | None = None):
        """The (train, test) datasets; a new pair for every ``key`` (stage), so a stage sees
        the same data order whether or not earlier stages ran in this process."""
        c = self.config
        if self.train_ds is None or (key is not None and key != self._data_key):
            self._data_key = key
            with blame("data_dir"):
                self.train_ds, self.test_ds, info = self.spec.make_data()
            self.spec.info.update(info)
            n = cardinality(self.train_ds)
            if c.steps_per_epoch:
                self.steps_per_epoch = c.steps_per_epoch
            elif n:
                self.steps_per_epoch = n
            else:
                raise ConfigError("steps_per_epoch", "the training set's size is unknown "
                                  "(or smaller than one batch); give --steps_per_epoch")
        return self.train_ds, self.test_ds

    def backup_dir(self, stage: str) -> str:
        return os.path.join(self.model_dir, "backup", stage)

    def train(self, model, stage: str, epochs: int, callbacks: list) -> None:
        """``fit`` with a crash-safe backup in <model_dir>/backup/<stage>, kept until the
        stage's outputs are recorded (:meth:`record`); a backup made with other flags, or a
        damaged one, is discarded with a message."""
        from keras_tpp.experiments import backup_callback, kill_point, prepare_backup_dir
        from keras_tpp.experiments.history import iteration_logger

        c = self.config
        train, test = self.data(stage)
        backup = self.backup_dir(stage)

        def log(message):
            print(f"[{stage}] {message}", flush=True)

        resuming = prepare_backup_dir(backup, self._fingerprint(stage), log=log,
                                      write=self.chief)
        if resuming:
            print(f"[{stage}] resuming from the backup in {backup}", flush=True)
        log_dir = os.path.join(self.out_dir, "logs")
        callbacks = list(callbacks) + logging_callbacks(log_dir, stage, append=resuming)
        callbacks.append(iteration_logger(os.path.join(log_dir, "iterations", f"{stage}.csv"),
                                          every=c.log_every))
        if self.multi_worker or c.distributed_loop:
            import tensorflow as tf

            from keras_tpp.distribute import DistributedTrainer

            # A barrier: no worker restores before the chief has discarded a stale backup.
            self.strategy.reduce("SUM", self.strategy.run(lambda: tf.constant(1.0)), axis=None)
            DistributedTrainer(model, self.strategy).fit(
                train, epochs=epochs, steps_per_epoch=c.steps_per_epoch,
                callbacks=callbacks, validation_data=test,
                validation_freq=c.validation_freq, backup_dir=backup,
                delete_backup=False, verbose=c.verbose if self.chief else 0)
        else:
            if c.steps_per_epoch:
                train = train.repeat()
            model.fit(train, epochs=epochs, steps_per_epoch=c.steps_per_epoch,
                      callbacks=[backup_callback(backup, stage=stage)] + callbacks,
                      validation_data=test, validation_freq=c.validation_freq,
                      shuffle=False,  # a tf.data.Dataset: shuffled by the pipeline
                      verbose=c.verbose)
        kill_point(f"{stage}.after_train")

    def evaluate(self, model) -> float:
        _, test = self.data()
        if self.multi_worker or self.config.distributed_loop:
            from keras_tpp.distribute import DistributedTrainer

            logs = DistributedTrainer(model, self.strategy).evaluate(test)
        else:
            logs = model.evaluate(test, verbose=0, return_dict=True)
        return float(logs["accuracy"])

    def load(self, stage: str):
        import keras

        with self.strategy.scope():
            return keras.models.load_model(self.path(stage), compile=False)

    def host_copy(self, model):
        """A copy outside any strategy scope (for profiling and latency)."""
        from keras_tpp import cloning

        return cloning.clone(model).model

    def save(self, model, stage: str) -> None:
        target = os.path.join(self.out_dir, STAGE_FILES[stage])
        atomic_save_model(model, target)
        if not self.chief:
            os.remove(target)

    def record(self, stage: str, entry: dict) -> None:
        entry = dict(entry, fingerprint=self._fingerprint(stage),
                     finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        stages = self.summary.setdefault("stages", {})
        order = ["pretrain", "prune", "finetune"]
        for later in order[order.index(stage) + 1:]:
            stages.pop(later, None)  # built from an older output of this stage: stale
        stages[stage] = entry
        self.summary["script"] = self.spec.name
        self.summary["flags"] = self.config.settings
        self.summary["data"] = self.spec.info
        self.summary["result"] = summary_result(stages)
        atomic_write_json(self.summary_path, self.summary)
        # Only now, with the stage's model and summary written, is its backup redundant.
        if self.chief:
            from keras_tpp.experiments import discard_backup

            discard_backup(self.backup_dir(stage))

    # -- stages -----------------------------------------------------------------------
    def run(self) -> None:
        c = self.config
        stages = ["pretrain", "prune", "finetune"] if c.stage == "all" else [c.stage]
        todo = [stage for stage in stages
                if not (c.stage == "all" and c.resume and self.completed(stage))]
        try:
            self.validate(todo)
            for stage in stages:
                if stage not in todo:
                    print(f"[{stage}] {self.path(stage)} exists from a completed run with the "
                          "same flags; skipping (--noresume redoes it)", flush=True)
                    continue
                print(f"\n== stage {stages.index(stage) + 1}/{len(stages)}: {stage} → "
                      f"{self.path(stage)}: {c.describe(stage)}", flush=True)
                start = time.time()
                getattr(self, stage)(start)
        finally:
            if not self.chief:
                shutil.rmtree(self.out_dir, ignore_errors=True)
        if self.chief:
            print_report(self.summary, self.summary_path, self.plot())

    def plot(self) -> str | None:
        """<model_dir>/training.png from the per-iteration logs of the stages run so far."""
        log_dir = os.path.join(self.out_dir, "logs", "iterations")
        curves = {s: os.path.join(log_dir, f"{s}.csv") for s in STAGES
                  if os.path.isfile(os.path.join(log_dir, f"{s}.csv"))}
        if not curves:
            return None
        try:
            return plot_history(curves, os.path.join(self.out_dir, "training.png"),
                                title=f"{self.spec.name}: {os.path.basename(self.model_dir)}")
        except ImportError:
            print("note: matplotlib is not installed; no plot (pip install matplotlib)",
                  file=sys.stderr, flush=True)
            return None

    def validate(self, todo: Sequence[str]) -> None:
        """Checks every flag the stages in ``todo`` use before any of them trains: the data,
        the fine-tuning schedule and --pruning_ratio's patterns against the model."""
        c = self.config
        if not todo:
            return
        self.data("validate")
        if "finetune" in todo:
            self.finetune_schedule()
        if "prune" in todo and "pretrain" in todo:  # --stage prune checks its loaded model
            import keras_tpp

            ratio, exclude = self.spec.prune_targets(c.pruning_ratio)
            model = self.spec.build_model()
            with blame("method"):
                method = pruning_method(c)
            with blame("pruning_ratio"):
                keras_tpp.prepare(model, ratio, method, exclude=exclude, seed=c.seed)

    def pretrain(self, start: float) -> None:
        import keras_tpp
        from keras_tpp import lr_schedules

        c = self.config
        self.data("pretrain")
        with self.strategy.scope():
            model = self.spec.build_model()
            schedule = lr_schedules.StepDecay(
                c.lr, [f * c.epochs for f in self.spec.pretrain_boundaries], 0.1,
                self.steps_per_epoch)
            compile_classifier(model, sgd(schedule), c.weight_decay)
        self.train(model, "pretrain", c.epochs, [])
        accuracy = self.evaluate(model)
        self.save(model, "pretrain")
        cost = keras_tpp.profile(model)
        print(f"[pretrain] test accuracy {accuracy:.4f}; params {cost['params']:,}; "
              f"MACs {cost['macs']:,}", flush=True)
        self.record("pretrain", {"accuracy": accuracy, "params": cost["params"],
                                 "macs": cost["macs"], "epochs": c.epochs,
                                 "iterations": int(model.optimizer.iterations.numpy()),
                                 "wall_s": time.time() - start})

    def prune(self, start: float) -> None:
        import keras_tpp

        c = self.config
        self.data("prune")
        dense = self.load("pretrain")
        ratio, exclude = self.spec.prune_targets(
            c.pruning_ratio)
        with self.strategy.scope():
            with blame("pruning_ratio"):
                pmodel = keras_tpp.prepare(dense, ratio, pruning_method(c), exclude=exclude,
                                           seed=c.seed)
            compile_classifier(pmodel, sgd(c.prune_lr), c.weight_decay)
        masks = keras_tpp.get_masks(pmodel)
        names = list(masks)
        print(f"[prune] {c.method}: {len(names)} pruned layers: {', '.join(names[:6])}"
              f"{' ...' if len(names) > 6 else ''}", flush=True)
        iterations = 0
        if c.method in ("l1", "random"):
            keras_tpp.apply_masks(pmodel)  # one-shot: no training in this stage
        else:
            epochs = c.prune_epochs or schedule_epochs_needed(self.config,
                                                                  self.steps_per_epoch)
            callback = pruning_callback(self.config)
            self.train(pmodel, "prune", epochs, [callback])
            iterations = int(pmodel.optimizer.iterations.numpy())
            if not callback.controller.enforced():
                if not any((~m).any() for m in keras_tpp.get_masks(pmodel).values()):
                    raise ConfigError("prune_epochs", f"after {iterations} iterations "
                                      f"{c.method} has not chosen its filters yet; "
                                      "allow more epochs (0 = until pruned)")
                print(f"[prune] warning: the schedule did not reach the pruned phase in "
                      f"{iterations} iterations (--prune_epochs={c.prune_epochs}); "
                      "applying the masks now", file=sys.stderr, flush=True)
                keras_tpp.apply_masks(pmodel)
        masks = keras_tpp.get_masks(pmodel)  # GReg-2 picks its filters during training
        strength = max(float(w.strength.numpy()) for w in keras_tpp.wrappers.find_wrappers(
            pmodel))
        accuracy = self.evaluate(pmodel)
        if c.dump_state:
            dump_state(pmodel, self.strategy, strength, c.dump_state)
        thin = keras_tpp.shrink(pmodel)
        self.save(thin, "prune")
        batch_sizes = list(c.latency_batch_sizes)
        comparison = keras_tpp.compare(
            self.host_copy(dense), thin, batch_sizes=batch_sizes,
            latency=c.latency_runs > 0 and self.chief, runs=max(c.latency_runs, 1),
            warmup=3, print_table=self.chief)
        print(f"[prune] accuracy right after pruning {accuracy:.4f}", flush=True)
        self.record("prune", {
            "method": c.method,
            "pruning_ratio": c.settings.get("pruning_ratio", c.pruning_ratio),
            "pruned_channels": label_masks(masks),
            "accuracy": accuracy, "params": comparison["after"]["params"],
            "macs": comparison["after"]["macs"],
            "latency_ms": {str(b): v["after_ms"] for b, v in comparison["latency"].items()},
            "dense_params": comparison["before"]["params"],
            "dense_macs": comparison["before"]["macs"],
            "dense_latency_ms": {str(b): v["before_ms"]
                                 for b, v in comparison["latency"].items()},
            "iterations": iterations, "final_lambda": strength,
            "wall_s": time.time() - start})

    def finetune_schedule(self):
        """The fine-tuning learning-rate schedule ``--ft_schedule`` asks for."""
        return finetune_schedule(self.config, self.spec, self.steps_per_epoch)

    def finetune(self, start: float) -> None:
        import keras_tpp

        c = self.config
        self.data("finetune")
        thin = self.load("prune")
        with self.strategy.scope():
            schedule = self.finetune_schedule()
            compile_classifier(thin, sgd(schedule), c.weight_decay)
        self.train(thin, "finetune", c.ft_epochs, [])
        accuracy = self.evaluate(thin)
        self.save(thin, "finetune")
        cost = keras_tpp.profile(thin)
        print(f"[finetune] test accuracy {accuracy:.4f}", flush=True)
        self.record("finetune", {"accuracy": accuracy, "params": cost["params"],
                                 "macs": cost["macs"], "ft_schedule": c.ft_schedule,
                                 "epochs": c.ft_epochs,
                                 "iterations": int(thin.optimizer.iterations.numpy()),
                                 "wall_s": time.time() - start})
