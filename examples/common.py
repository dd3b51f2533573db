"""Shared machinery of the example scripts (cifar.py, imagenet.py, mnist_mlp.py, quickstart.py).

- Flag handling: one-line errors (``error: --flag: what was expected``, exit code 2) for bad
  flag values, bad flag combinations and library errors caused by a flag; pruning-ratio
  parsing (``0.5`` or ``"*_conv1:0.5,stage3_*:0.3"``).
- Outputs: atomic writes (temporary name + ``os.replace``) of models and JSON, so a failed or
  killed run never leaves a half-written file under a final name.
- Callbacks: CSVLogger, TensorBoard, BackupAndRestore, and :class:`LearningRateLogger`, which
  puts the optimizer's learning rate into the logs as ``learning_rate``.
- :class:`StageRunner`: the pretrain → prune → finetune stages of cifar.py and imagenet.py,
  under any tf.distribute strategy (``model.fit``, or keras_tpp's DistributedTrainer for
  MultiWorkerMirroredStrategy, where Keras 3's fit does not work).

TensorFlow and Keras are imported lazily, so that flag errors are reported at once.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from absl import app, flags, logging

FLAGS = flags.FLAGS
STAGES = ("pretrain", "prune", "finetune", "all")
METHODS = ("tpp", "greg1", "greg2", "l1", "random")
FT_SCHEDULES = ("tpp", "ft", "lrw", "slr", "clr")
STAGE_FILES = {"pretrain": "pretrained.keras", "prune": "pruned.keras",
               "finetune": "final.keras"}
SUMMARY_FILE = "summary.json"


# ------------------------------------------------------------------------------- errors


class UsageError(ValueError):
    """A bad flag value or combination; printed as one line, exit code 2."""


def usage_error(flag: str, message: str) -> UsageError:
    return UsageError(f"--{flag}: {message}")


@contextlib.contextmanager
def blame(flag: str):
    """Turn a library ValueError raised in this block into a UsageError naming ``flag``."""
    try:
        yield
    except UsageError:
        raise
    except ValueError as e:
        raise usage_error(flag, one_line(e)) from e


def one_line(error) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 600 else text[:597] + "..."


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


def run_main(main: Callable[[], None]) -> None:
    """``absl.app.run`` with one-line errors for bad flags and for :class:`UsageError`."""

    def _main(argv):
        if not FLAGS["verbosity"].present:  # absl INFO lines (tfds) would drown the output
            logging.set_verbosity(logging.WARNING)
        if len(argv) > 1:
            print(f"error: unexpected positional arguments {argv[1:]}; every option is a "
                  "--flag", file=sys.stderr)
            sys.exit(2)
        try:
            main()
        except UsageError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)

    app.run(_main, flags_parser=_parse_flags)


# ------------------------------------------------------------------------------- flags


def parse_ratio(text: str, flag: str = "pruning_ratio"):
    """``"0.5"`` → 0.5; ``"*_conv1:0.5,stage3_*:0.3"`` → {pattern: ratio} (first match wins).

    Raises UsageError naming ``flag`` for anything else.
    """
    text = str(text).strip()
    expected = ("expected a ratio in [0, 1) or comma-separated pattern:ratio pairs such as "
                "'*_conv1:0.5,stage3_*:0.3'")

    def ratio(value: str) -> float:
        try:
            r = float(value)
        except ValueError:
            raise usage_error(flag, f"{value!r} is not a number; {expected}") from None
        if not 0 <= r < 1:
            raise usage_error(flag, f"ratio {r} is outside [0, 1); {expected}")
        return r

    if not text:
        raise usage_error(flag, f"empty; {expected}")
    if ":" not in text:
        return ratio(text)
    mapping = {}
    for item in text.split(","):
        pattern, sep, value = item.strip().rpartition(":")
        if not sep or not pattern.strip():
            raise usage_error(flag, f"{item!r} is not pattern:ratio; {expected}")
        mapping.setdefault(pattern.strip(), ratio(value.strip()))
    return mapping


def parse_int_list(text_list: Sequence[str], flag: str) -> list[int]:
    out = []
    for item in text_list:
        try:
            value = int(item)
        except ValueError:
            raise usage_error(flag, f"{item!r} is not an integer") from None
        if value < 1:
            raise usage_error(flag, f"{value} must be >= 1")
        out.append(value)
    return out


def define_training_flags(defaults: dict) -> None:
    """Flags shared by cifar.py and imagenet.py; ``defaults`` gives the per-script recipe."""
    d = defaults
    flags.DEFINE_enum("stage", "all", STAGES,
                      "Which stage to run: pretrain → <model_dir>/pretrained.keras; prune "
                      "(needs pretrained.keras) → pruned.keras, the thin model; finetune "
                      "(needs pruned.keras) → final.keras; all = the three in order (a stage "
                      "whose output exists from a completed run with the same flags is "
                      "skipped, see --resume).")
    flags.DEFINE_enum("method", "tpp", METHODS, "Pruning method.")
    flags.DEFINE_string("pruning_ratio", d["pruning_ratio"], d["pruning_ratio_help"])
    flags.DEFINE_string("model_dir", d["model_dir"],
                        "Where stage outputs, backups (resumption), CSV and TensorBoard logs "
                        "and summary.json go.")
    flags.DEFINE_bool("resume", True,
                      "With --stage all: skip a stage whose output file exists and was "
                      "completed with the same flags (recorded in summary.json). Killed "
                      "stages always resume from their backup.")
    # pretraining
    flags.DEFINE_integer("epochs", d["epochs"], d["epochs_help"], lower_bound=1)
    flags.DEFINE_integer("batch_size", d["batch_size"],
                         "GLOBAL batch size (all replicas of all workers)"
                         + d.get("batch_size_help", "") + ".", lower_bound=1)
    flags.DEFINE_float("lr", d["lr"], "Pretraining peak learning rate (SGD, momentum 0.9).",
                       lower_bound=0)
    flags.DEFINE_float("weight_decay", d["weight_decay"],
                       "Weight decay of every stage, as in the papers: gradient += wd·w on every "
                       "trainable weight (a coupled L2, not Keras' decoupled weight_decay).",
                       lower_bound=0)
    # prune stage
    flags.DEFINE_float("prune_lr", 1e-3, "Prune-stage learning rate (SPEC: 1e-3).",
                       lower_bound=0)
    flags.DEFINE_float("delta", 1e-4, "Δ: λ increment every --interval iterations.",
                       lower_bound=0)
    flags.DEFINE_integer("interval", d["interval"], "K_u: iterations between increments.",
                         lower_bound=1)
    flags.DEFINE_float("ceiling", 1.0, "τ: the largest λ.", lower_bound=0)
    flags.DEFINE_integer("stabilize_steps", d["stabilize_steps"],
                         "K_s: iterations at λ = τ before the filters are removed.",
                         lower_bound=0)
    flags.DEFINE_float("stop_ratio", 1000.0,
                       "GReg: a layer stops growing when EMA(mean|w_kept|/mean|w_pruned|) "
                       "reaches this.")
    flags.DEFINE_float("pick_delta", 1e-5, "GReg-2: λ increment of the picking phase.")
    flags.DEFINE_float("pick_ceiling", 1e-2, "GReg-2: λ at which filters are picked.")
    flags.DEFINE_float("kept_strength", -1e-4, "GReg-2: λ on kept filters while pushing.")
    flags.DEFINE_integer("prune_epochs", 0,
                         "Prune-stage epoch cap; 0 = enough to reach the pruned phase "
                         "(training stops there in any case).", lower_bound=0)
    # fine-tuning
    flags.DEFINE_enum("ft_schedule", "tpp", FT_SCHEDULES,
                      "Fine-tuning LR schedule: tpp = SPEC §1 (LR ×0.1 at 50% and 75% for "
                      "CIFAR, at 1/3, 2/3, 5/6 for ImageNet); ft / lrw / slr / clr = Le & Hua "
                      "(SPEC §3) with the pretraining schedule as the original one.")
    flags.DEFINE_float("ft_lr", None,
                       "Fine-tuning LR: tpp start (default 0.01), ft constant (default: the "
                       "pretraining schedule's last LR), slr/clr peak (default --lr); lrw "
                       "replays the pretraining schedule and takes none.")
    flags.DEFINE_integer("ft_epochs", d["ft_epochs"], "Fine-tuning epochs (the budget).",
                         lower_bound=1)
    # execution
    flags.DEFINE_enum("strategy", "default", ("default", "mirrored", "multi_worker"),
                      "tf.distribute strategy; multi_worker reads $TF_CONFIG and trains with "
                      "keras_tpp.distribute.DistributedTrainer.")
    flags.DEFINE_integer("num_cpu_devices", 1,
                         "Split the CPU into this many logical devices (mirrored on CPU).",
                         lower_bound=1)
    flags.DEFINE_integer("steps_per_epoch", None, "Optional cap on steps per epoch.",
                         lower_bound=1)
    flags.DEFINE_integer("max_train_examples", None, "Use only this many training examples.",
                         lower_bound=1)
    flags.DEFINE_integer("max_test_examples", None, "Use only this many test examples.",
                         lower_bound=1)
    flags.DEFINE_integer("validation_freq", 1, "Validate every N epochs.", lower_bound=1)
    flags.DEFINE_list("latency_batch_sizes", ["1", "64"], "Batch sizes for latency.")
    flags.DEFINE_integer("latency_runs", 20, "Timed runs per latency (0 = skip).",
                         lower_bound=0)
    flags.DEFINE_integer("seed", 0, "Random seed (initialization, data order, random method).")
    flags.DEFINE_integer("verbose", 1, "Keras verbosity: 1 progress bars, 2 one line per "
                         "epoch, 0 silent.", lower_bound=0, upper_bound=2)
    flags.DEFINE_string("dump_state", None,
                        "(debug) After the prune stage's training, write every weight of the "
                        "prepared model (each replica's copy), λ, phase and the iteration "
                        "count to this .npz.")
    flags.DEFINE_bool("distributed_loop", False,
                      "(debug) Train with DistributedTrainer under every strategy, not only "
                      "multi_worker.")


def flag_values(exclude: Sequence[str] = ()) -> dict:
    """The values of the flags this program defined (not absl's own)."""
    out = {}
    main = sys.argv[0]
    for module, module_flags in FLAGS.flags_by_module_dict().items():
        if module.startswith("absl") or not (module == main or module.endswith("common")
                                             or module == "__main__"):
            continue
        for flag in module_flags:
            if flag.name not in exclude:
                out[flag.name] = flag.value
    return out


# ------------------------------------------------------------------------------- outputs


def atomic_write_json(path: str, obj) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def atomic_save_model(model, path: str) -> None:
    """``model.save`` to a temporary ``.keras`` name beside ``path``, then ``os.replace``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def looks_like_image_folder(path: str) -> bool:
    """A quick check before TensorFlow is imported: an archive file, or a directory (or its
    only sub-directory) with train/ and test/ sub-directories. keras_tpp.data checks the rest."""
    path = os.path.expanduser(path)
    if os.path.isfile(path):
        return path.endswith((".tar.gz", ".tgz", ".tar"))
    if not os.path.isdir(path):
        return False
    subdirs = [e.path for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]
    roots = [path] + (subdirs if len(subdirs) == 1 else [])
    return any(os.path.isdir(os.path.join(r, "train")) and os.path.isdir(os.path.join(r, "test"))
               for r in roots)


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------- callbacks


def learning_rate_logger():
    """A callback that puts the learning rate of the epoch's last step into the logs as
    ``learning_rate`` (so CSVLogger and TensorBoard record it)."""
    import keras

    class LearningRateLogger(keras.callbacks.Callback):
        def _current(self):
            optimizer = self.model.optimizer
            inner = getattr(optimizer, "inner_optimizer", optimizer)
            schedule = getattr(inner, "_learning_rate", None)
            if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
                step = max(int(keras.ops.convert_to_numpy(inner.iterations)) - 1, 0)
                return float(keras.ops.convert_to_numpy(schedule(step)))
            return float(keras.ops.convert_to_numpy(inner.learning_rate))

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = self._current()

    return LearningRateLogger()


def tensorboard_available() -> bool:
    """Keras' TensorBoard callback needs the ``tensorboard`` package (TensorFlow 2.21 does
    not install it)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


_TB_NOTE = []


def logging_callbacks(log_dir: str, name: str, append: bool) -> list:
    """[LearningRateLogger, CSVLogger(<log_dir>/<name>.csv), TensorBoard(<log_dir>/tensorboard/
    <name>) when the tensorboard package is installed]."""
    import keras

    os.makedirs(log_dir, exist_ok=True)
    callbacks = [
        learning_rate_logger(),
        keras.callbacks.CSVLogger(os.path.join(log_dir, f"{name}.csv"), append=append),
    ]
    if tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(
            os.path.join(log_dir, "tensorboard", name), write_graph=False, profile_batch=0))
    elif not _TB_NOTE:
        _TB_NOTE.append(True)
        print("note: the tensorboard package is not installed; writing CSV logs only "
              "(pip install tensorboard for TensorBoard logs)", file=sys.stderr, flush=True)
    return callbacks


# ------------------------------------------------------------------------------- TF setup


def setup_tensorflow(strategy_name: str = "default", num_cpu_devices: int = 1):
    """Logical CPU devices and the strategy, before any other TensorFlow op. Returns it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    if num_cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices)
        except RuntimeError as e:  # pragma: no cover - TF already initialized
            raise usage_error("num_cpu_devices", f"cannot configure devices now: {e}") from e
    from keras_tpp.distribute import get_strategy

    devices = None
    if strategy_name == "mirrored" and num_cpu_devices > 1 and not tf.config.list_physical_devices(
            "GPU"):
        devices = [f"/cpu:{i}" for i in range(num_cpu_devices)]
    if strategy_name == "multi_worker" and not os.environ.get("TF_CONFIG"):
        raise usage_error("strategy", "multi_worker needs $TF_CONFIG describing the cluster "
                          "(see the README's multi-worker recipe)")
    return get_strategy(strategy_name, devices=devices)


def add_coupled_weight_decay(model, weight_decay: float) -> None:
    """The papers' (PyTorch's) weight decay: gradient += wd·w on every trainable weight.

    Keras' ``SGD(weight_decay=...)`` is decoupled (it bypasses momentum, ~10× weaker at
    momentum 0.9), so the recipes' decay is attached as an L2 regularizer wd/2·‖w‖² to each
    trainable variable instead, composed with any regularizer already there (the pruning
    penalties). It lives on the variables, not in the saved config: every stage adds it again.
    """
    import keras

    from keras_tpp.penalties import RegularizerSum

    if not weight_decay:
        return
    decay = keras.regularizers.L2(weight_decay / 2)
    for variable in model.trainable_variables:
        existing = variable.regularizer
        variable.regularizer = decay if existing is None else RegularizerSum([existing, decay])


def sgd(learning_rate):
    import keras

    return keras.optimizers.SGD(learning_rate, momentum=0.9)


def compile_classifier(model, optimizer, weight_decay: float = 0.0) -> None:
    import keras

    add_coupled_weight_decay(model, weight_decay)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def schedule_epochs_needed(method: str, steps_per_epoch: int) -> int:
    """Epochs that surely reach the pruned phase of ``method``'s schedule (training stops
    there): TPP's end_step = K_u·ceil(τ/Δ) + K_s (+ GReg-2's picking phase) plus one step."""
    if method in ("l1", "random"):
        return 1
    interval = FLAGS.interval
    steps = interval * math.ceil(FLAGS.ceiling / FLAGS.delta - 1e-6) + FLAGS.stabilize_steps
    if method == "greg2":
        steps += interval * math.ceil(FLAGS.pick_ceiling / FLAGS.pick_delta - 1e-6)
    # Margin: under mixed precision, dynamic loss scaling skips steps with non-finite
    # gradients (at least a few at the start), and those are not optimizer iterations.
    # Training stops at the pruned phase anyway.
    import keras

    margin = 64 if keras.mixed_precision.global_policy().name.startswith("mixed") else 0
    return max(1, math.ceil((steps + 2 + margin) / steps_per_epoch) + 1)


def check_schedule_flags() -> None:
    if not 0 < FLAGS.delta <= FLAGS.ceiling:
        raise usage_error("delta", f"must be in (0, --ceiling={FLAGS.ceiling}], got "
                          f"{FLAGS.delta}")
    if FLAGS.method == "greg2" and not 0 < FLAGS.pick_delta <= FLAGS.pick_ceiling:
        raise usage_error("pick_delta", f"must be in (0, --pick_ceiling={FLAGS.pick_ceiling}]")
    if FLAGS.method in ("greg1", "greg2") and not FLAGS.stop_ratio > 1:
        raise usage_error("stop_ratio", f"must be > 1, got {FLAGS.stop_ratio}")


def pruning_callback(stop_when_pruned: bool = True):
    import keras_tpp

    return keras_tpp.PruningCallback(
        delta=FLAGS.delta, interval=FLAGS.interval, ceiling=FLAGS.ceiling,
        stabilize_steps=FLAGS.stabilize_steps, stop_ratio=FLAGS.stop_ratio,
        pick_delta=FLAGS.pick_delta, pick_ceiling=FLAGS.pick_ceiling,
        kept_strength=FLAGS.kept_strength, stop_when_pruned=stop_when_pruned,
        verbose=1 if FLAGS.verbose else 0)


def cardinality(ds) -> int | None:
    n = int(ds.cardinality())
    return n if n >= 0 else None


# ------------------------------------------------------------------------------- stages


# Flags that do not change what a stage computes, and flags only the prune / finetune
# stage uses (for --stage all --resume: changing --ft_lr redoes the fine-tuning only).
_NOT_RESULT_FLAGS = {"stage", "verbose", "dump_state", "latency_runs", "latency_batch_sizes",
                     "resume", "model_dir", "strategy", "num_cpu_devices", "distributed_loop",
                     "validation_freq"}
_PRUNE_FLAGS = {"method", "pruning_ratio", "preset", "prune_lr", "delta", "interval",
                "ceiling", "stabilize_steps", "stop_ratio", "pick_delta", "pick_ceiling",
                "kept_strength", "prune_epochs"}
_FINETUNE_FLAGS = {"ft_schedule", "ft_lr", "ft_epochs"}


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

    def __init__(self, spec: ScriptSpec, strategy) -> None:
        from keras_tpp.distribute import is_chief

        self.spec = spec
        self.strategy = strategy
        self.multi_worker = FLAGS.strategy == "multi_worker"
        self.chief = is_chief(strategy)
        self.model_dir = os.path.abspath(FLAGS.model_dir)
        # Only the chief writes final files; other workers write to a private temp dir.
        self.out_dir = self.model_dir if self.chief else tempfile.mkdtemp(
            prefix="keras_tpp_worker_")
        self.summary_path = os.path.join(self.out_dir, SUMMARY_FILE)
        self.summary = read_json(os.path.join(self.model_dir, SUMMARY_FILE))
        self.train_ds = self.test_ds = None
        self.steps_per_epoch = None

    # -- helpers ----------------------------------------------------------------------
    def path(self, stage: str) -> str:
        return os.path.join(self.model_dir, STAGE_FILES[stage])

    def _fingerprint(self, stage: str) -> dict:
        """The flags a stage's output depends on (a later stage's flags do not count)."""
        ignore = set(_NOT_RESULT_FLAGS)
        if stage != "finetune":
            ignore |= _FINETUNE_FLAGS
        if stage == "pretrain":
            ignore |= _PRUNE_FLAGS
        return {k: v for k, v in flag_values().items() if k not in ignore}

    def completed(self, stage: str) -> bool:
        entry = self.summary.get("stages", {}).get(stage)
        return bool(entry and os.path.exists(self.path(stage))
                    and entry.get("fingerprint") == json.loads(
                        json.dumps(self._fingerprint(stage), default=str)))

    def data(self):
        if self.train_ds is None:
            with blame("data_dir"):
                self.train_ds, self.test_ds, info = self.spec.make_data()
            self.spec.info.update(info)
            n = cardinality(self.train_ds)
            if FLAGS.steps_per_epoch:
                self.steps_per_epoch = FLAGS.steps_per_epoch
            elif n:
                self.steps_per_epoch = n
            else:
                raise usage_error("steps_per_epoch", "the training set's size is unknown "
                                  "(or smaller than one batch); give --steps_per_epoch")
        return self.train_ds, self.test_ds

    def train(self, model, stage: str, epochs: int, callbacks: list) -> None:
        import keras

        train, test = self.data()
        backup = os.path.join(self.model_dir, "backup", stage)
        resuming = os.path.exists(backup)
        if resuming:
            print(f"[{stage}] resuming from the backup in {backup}", flush=True)
        callbacks = list(callbacks) + logging_callbacks(
            os.path.join(self.out_dir, "logs"), stage, append=resuming)
        if self.multi_worker or FLAGS.distributed_loop:
            from keras_tpp.distribute import DistributedTrainer

            DistributedTrainer(model, self.strategy).fit(
                train, epochs=epochs, steps_per_epoch=FLAGS.steps_per_epoch,
                callbacks=callbacks, validation_data=test,
                validation_freq=FLAGS.validation_freq, backup_dir=backup,
                verbose=FLAGS.verbose if self.chief else 0)
        else:
            if FLAGS.steps_per_epoch:
                train = train.repeat()
            model.fit(train, epochs=epochs, steps_per_epoch=FLAGS.steps_per_epoch,
                      callbacks=[keras.callbacks.BackupAndRestore(backup)] + callbacks,
                      validation_data=test, validation_freq=FLAGS.validation_freq,
                      verbose=FLAGS.verbose)

    def evaluate(self, model) -> float:
        _, test = self.data()
        if self.multi_worker or FLAGS.distributed_loop:
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
        import keras

        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        return copy

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
        self.summary["flags"] = flag_values()
        self.summary["data"] = self.spec.info
        self.summary["result"] = self._result()
        atomic_write_json(self.summary_path, self.summary)
        backup = os.path.join(self.model_dir, "backup", stage)
        if self.chief and os.path.isdir(backup):
            shutil.rmtree(backup, ignore_errors=True)
        with contextlib.suppress(OSError):  # only if empty
            os.rmdir(os.path.dirname(backup))

    def _result(self) -> dict:
        stages = self.summary.get("stages", {})
        dense, pruned, final = (stages.get(s, {}) for s in ("pretrain", "prune", "finetune"))
        result = {}
        if dense:
            result["dense"] = {k: dense.get(k) for k in ("accuracy", "params", "macs")}
        if pruned:
            result["pruned"] = {"accuracy_before_finetune": pruned.get("accuracy"),
                                "params": pruned.get("params"), "macs": pruned.get("macs"),
                                "latency_ms": pruned.get("latency_ms")}
            result["dense_latency_ms"] = pruned.get("dense_latency_ms")
            if pruned.get("dense_params"):
                result["params_ratio"] = pruned["dense_params"] / max(pruned["params"], 1)
                result["macs_ratio"] = pruned["dense_macs"] / max(pruned["macs"], 1)
        if final:
            result["final_accuracy"] = final.get("accuracy")
            if dense.get("accuracy") is not None:
                result["accuracy_change"] = final["accuracy"] - dense["accuracy"]
        return result

    # -- stages -----------------------------------------------------------------------
    def run(self) -> None:
        stages = ["pretrain", "prune", "finetune"] if FLAGS.stage == "all" else [FLAGS.stage]
        try:
            for stage in stages:
                if FLAGS.stage == "all" and FLAGS.resume and self.completed(stage):
                    print(f"[{stage}] {self.path(stage)} exists from a completed run with the "
                          "same flags; skipping (--noresume redoes it)", flush=True)
                    continue
                start = time.time()
                getattr(self, stage)(start)
        finally:
            if not self.chief:
                shutil.rmtree(self.out_dir, ignore_errors=True)
        if self.chief:
            print(json.dumps(self.summary.get("result", {}), indent=2, default=str))
            print(f"summary: {self.summary_path}")

    def pretrain(self, start: float) -> None:
        import keras_tpp
        from keras_tpp import lr_schedules

        self.data()
        with self.strategy.scope():
            model = self.spec.build_model()
            schedule = lr_schedules.StepDecay(
                FLAGS.lr, [f * FLAGS.epochs for f in self.spec.pretrain_boundaries], 0.1,
                self.steps_per_epoch)
            compile_classifier(model, sgd(schedule), FLAGS.weight_decay)
        self.train(model, "pretrain", FLAGS.epochs, [])
        accuracy = self.evaluate(model)
        self.save(model, "pretrain")
        cost = keras_tpp.profile(model)
        print(f"[pretrain] test accuracy {accuracy:.4f}; params {cost['params']:,}; "
              f"MACs {cost['macs']:,}", flush=True)
        self.record("pretrain", {"accuracy": accuracy, "params": cost["params"],
                                 "macs": cost["macs"], "epochs": FLAGS.epochs,
                                 "iterations": int(model.optimizer.iterations.numpy()),
                                 "wall_s": time.time() - start})

    def prune(self, start: float) -> None:
        import keras_tpp

        self.data()
        dense = self.load("pretrain")
        ratio, exclude = self.spec.prune_targets(
            parse_ratio(FLAGS.pruning_ratio) if FLAGS.pruning_ratio else None)
        with self.strategy.scope():
            with blame("pruning_ratio"):
                pmodel = keras_tpp.prepare(dense, ratio, FLAGS.method, exclude=exclude,
                                           seed=FLAGS.seed)
            compile_classifier(pmodel, sgd(FLAGS.prune_lr), FLAGS.weight_decay)
        masks = keras_tpp.get_masks(pmodel)
        names = list(masks)
        print(f"[prune] {FLAGS.method}: {len(names)} pruned layers: {', '.join(names[:6])}"
              f"{' ...' if len(names) > 6 else ''}", flush=True)
        iterations = 0
        if FLAGS.method in ("l1", "random"):
            keras_tpp.apply_masks(pmodel)  # one-shot: no training in this stage
        else:
            epochs = FLAGS.prune_epochs or schedule_epochs_needed(FLAGS.method,
                                                                  self.steps_per_epoch)
            callback = pruning_callback()
            self.train(pmodel, "prune", epochs, [callback])
            iterations = int(pmodel.optimizer.iterations.numpy())
            if not callback.controller.enforced():
                if not any((~m).any() for m in keras_tpp.get_masks(pmodel).values()):
                    raise usage_error("prune_epochs", f"after {iterations} iterations "
                                      f"{FLAGS.method} has not chosen its filters yet; "
                                      "allow more epochs (0 = until pruned)")
                print(f"[prune] warning: the schedule did not reach the pruned phase in "
                      f"{iterations} iterations (--prune_epochs={FLAGS.prune_epochs}); "
                      "applying the masks now", file=sys.stderr, flush=True)
                keras_tpp.apply_masks(pmodel)
        masks = keras_tpp.get_masks(pmodel)  # GReg-2 picks its filters during training
        strength = max(float(w.strength.numpy()) for w in keras_tpp.wrappers.find_wrappers(
            pmodel))
        accuracy = self.evaluate(pmodel)
        if FLAGS.dump_state:
            self.dump_state(pmodel, strength, FLAGS.dump_state)
        thin = keras_tpp.shrink(pmodel)
        self.save(thin, "prune")
        batch_sizes = parse_int_list(FLAGS.latency_batch_sizes, "latency_batch_sizes")
        comparison = keras_tpp.compare(
            self.host_copy(dense), thin, batch_sizes=batch_sizes,
            latency=FLAGS.latency_runs > 0 and self.chief, runs=max(FLAGS.latency_runs, 1),
            warmup=3, print_table=self.chief)
        print(f"[prune] accuracy right after pruning {accuracy:.4f}", flush=True)
        self.record("prune", {
            "method": FLAGS.method, "pruning_ratio": FLAGS.pruning_ratio,
            "pruned_channels": {k: [int((~v).sum()), int(v.size)] for k, v in masks.items()},
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
        from keras_tpp import lr_schedules

        spe, budget = self.steps_per_epoch, FLAGS.ft_epochs
        kind = FLAGS.ft_schedule
        if kind == "tpp":
            lr = FLAGS.ft_lr if FLAGS.ft_lr is not None else 0.01
            if budget == self.spec.tpp_recipe_epochs:
                return lr_schedules.tpp_finetune_schedule(
                    spe, dataset=self.spec.finetune_recipe, initial_lr=lr)
            return lr_schedules.StepDecay(
                lr, [f * budget for f in self.spec.finetune_boundaries], 0.1, spe)
        original = dict(original_lr=FLAGS.lr, original_epochs=FLAGS.epochs,
                        original_boundaries=[f * FLAGS.epochs
                                             for f in self.spec.pretrain_boundaries])
        kwargs = {}
        if FLAGS.ft_lr is not None:
            if kind == "ft":
                kwargs["learning_rate"] = FLAGS.ft_lr
            else:  # slr / clr: the peak
                original["original_lr"] = FLAGS.ft_lr
        with blame("ft_schedule"):
            return lr_schedules.retraining_schedule(
                kind, budget_epochs=budget, steps_per_epoch=spe, **original, **kwargs)

    def finetune(self, start: float) -> None:
        import keras_tpp

        self.data()
        thin = self.load("prune")
        with self.strategy.scope():
            schedule = self.finetune_schedule()
            compile_classifier(thin, sgd(schedule), FLAGS.weight_decay)
        self.train(thin, "finetune", FLAGS.ft_epochs, [])
        accuracy = self.evaluate(thin)
        self.save(thin, "finetune")
        cost = keras_tpp.profile(thin)
        print(f"[finetune] test accuracy {accuracy:.4f}", flush=True)
        self.record("finetune", {"accuracy": accuracy, "params": cost["params"],
                                 "macs": cost["macs"], "ft_schedule": FLAGS.ft_schedule,
                                 "epochs": FLAGS.ft_epochs,
                                 "iterations": int(thin.optimizer.iterations.numpy()),
                                 "wall_s": time.time() - start})

    def dump_state(self, pmodel, strength: float, path: str) -> None:
        import numpy as np

        from keras_tpp.wrappers import find_wrappers

        arrays = {}
        for i, variable in enumerate(pmodel.weights):
            values = self.strategy.experimental_local_results(variable.value)
            for r, value in enumerate(values):
                arrays[f"{i:03d}:{variable.path}@replica{r}"] = np.asarray(value)
        arrays["iterations"] = np.asarray(int(pmodel.optimizer.iterations.numpy()))
        arrays["prune_lambda"] = np.asarray(strength)
        arrays["enforced"] = np.asarray(
            [float(np.min(self.strategy.experimental_local_results(w.enforce.value)))
             for w in find_wrappers(pmodel)])
        arrays["num_replicas"] = np.asarray(self.strategy.num_replicas_in_sync)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        np.savez(path, **arrays)


def check_stage_inputs(model_dir: str) -> None:
    """--stage prune / finetune need the previous stage's output in --model_dir."""
    needs = {"prune": "pretrain", "finetune": "prune"}
    previous = needs.get(FLAGS.stage)
    if previous:
        path = os.path.join(model_dir, STAGE_FILES[previous])
        if not os.path.isfile(path):
            raise usage_error(
                "stage", f"'{FLAGS.stage}' needs {path} (the output of --stage {previous}) "
                f"in --model_dir, which does not exist")
    if FLAGS.ft_schedule == "lrw" and FLAGS.stage in ("finetune", "all") and \
            FLAGS.ft_epochs > FLAGS.epochs:
        raise usage_error("ft_epochs", f"LR rewinding replays the last --ft_epochs epochs of "
                          f"the pretraining schedule, so it must be <= --epochs="
                          f"{FLAGS.epochs}; got {FLAGS.ft_epochs}")
    if FLAGS.ft_schedule == "lrw" and FLAGS.ft_lr is not None:
        raise usage_error("ft_lr", "--ft_schedule lrw replays the pretraining schedule; "
                          "drop --ft_lr")
    check_schedule_flags()
    parse_int_list(FLAGS.latency_batch_sizes, "latency_batch_sizes")
    if FLAGS.pruning_ratio is not None:
        parse_ratio(FLAGS.pruning_ratio)
