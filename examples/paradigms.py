r"""The pruning paradigms side by side on one model and dataset.

Wang, Qin, Zhang & Fu's survey ("Emerging Paradigms of Neural Network Pruning") sees one
pipeline — train → score & mask → choose the starting weights → (re)train — with different
choices at each step. This script runs each paradigm with keras_tpp's pieces, from the same
initialization, at one or more target sparsities, on the same training budget:

===============  ==========  =====================================================================
method           granularity  pipeline
===============  ==========  =====================================================================
dense            —           the unpruned network trained for the whole budget (reference)
l1               channel     PaT: pretrain, one-shot L1-norm filter pruning (keras_tpp.prune),
                             fine-tune the thin model
tpp              channel     PaT: pretrain, TPP's growing penalties (prepare(method="tpp") +
                             PruningCallback), keras_tpp.shrink, fine-tune the thin model
lottery          weight      LTH: IMP with rewinding (keras_tpp.lottery): train, remove 20 % of
                             the remaining weights by global magnitude, rewind the survivors to
                             θ_k, repeat until the target; train the last ticket
snip, grasp,     weight      PaI: score the untrained network (keras_tpp.scores via
synflow,                     prepare(method=...)), fix the masks, train sparse from scratch
random_init                  (PruningCallback holds the masked weights at zero)
gmp, granet      weight      sparse training: gradual magnitude pruning (GMP) and GraNet's
                             pruning + regeneration (SparseTrainingCallback)
===============  ==========  =====================================================================

The budget. ``--epochs`` E gives T = E · (iterations per epoch) training iterations to every
method; every training run uses SGD (momentum 0.9) with its learning rate ×0.1 at 50 % and
75 % of the run.

- dense, PaI, GMP, GraNet: one run of T iterations from the initialization (GMP / GraNet
  reach the target sparsity at ``--prune_end_fraction`` of T, 0.5 by default).
- PaT: the dense network is pretrained for P = ``--pat_pretrain_fraction`` · T iterations
  (0.5; one pretraining shared by l1 and tpp, counted in both budgets); l1 then fine-tunes
  for T − P; tpp spends ``--tpp_stage_fraction`` (0.25) of T − P in its penalty stage (3/4
  growing λ at ``--prune_lr``, 1/4 holding it), then fine-tunes for the rest.
- lottery: L = the rounds that reach the target removing ``--lottery_rate`` of the remaining
  weights per round (11 for 0.9). ``--lottery_budget total`` (default) splits T into L + 1
  runs: round 0 trains R iterations, each rewound ticket trains the R − k iterations from θ_k
  to the end of its schedule (k = ``--rewind_fraction`` · R), R + L·(R − k) ≤ T.
  ``--lottery_budget per_round`` trains every round for T (the papers' recipe; (L+1)× the
  budget).

Channel-level methods remove whole filters. With ``--channel_ratio match`` (default) the
fraction of filters removed from every prunable layer is chosen so that the thin model keeps
the same number of kernel weights as a weight-level result at that sparsity (up to whole
filters); ``same`` removes that fraction of filters instead.

Reported per method and sparsity: the test accuracy at the end, the accuracy and the mean
Jacobian singular value (keras_tpp.metrics; on ``--jsv_examples`` test inputs) right after
pruning — for PaT after the pruning step, for lottery the last rewound ticket, for PaI the
masked initialization, for GMP / GraNet when the pruning window ends — the achieved sparsity
of the prunable kernels, the parameters of the final model, its kernel non-zeros, its MACs
(for weight-level results the MACs of each layer × its density) and the wall time.

Outputs in ``--output_dir``: ``results/<method>_s<sparsity>.json`` per result (written
atomically; a rerun with the same flags skips the results already there, so a killed run
goes on with the remaining methods; ``--noresume`` redoes them), ``pretrained.keras`` (the
shared PaT pretraining), ``results.csv``, ``results.json`` and, with several sparsities,
``accuracy_vs_sparsity.png``.

CPU profile (MNIST, MLP-7-Linear; on 2 CPU cores about 9 minutes per sparsity; see the
README for the measured table)::

    python examples/paradigms.py --data_dir <mnist.npz> --sparsities 0.8,0.9,0.95 \
        --epochs 10 --update_frequency 100 --output_dir runs/paradigms_cpu

GPU profile (the papers' recipes, not run here): CIFAR-10 small CNN, 160 epochs, batch 128,
LR 0.1, weight decay 5e-4, every round of the lottery a full training, SNIP/GraSP on 10
examples per class, SynFlow 100 rounds, GraNet ΔT = 1000::

    python examples/paradigms.py --model cnn --data_source folder \
        --data_dir <cifar10-jpeg.tar.gz> --sparsities 0.8,0.9,0.95 --epochs 160 \
        --batch_size 128 --lr 0.1 --ft_lr 0.01 --weight_decay 5e-4 \
        --lottery_budget per_round --rewind_fraction 0.02 --update_frequency 1000 \
        --output_dir runs/paradigms_gpu
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FLAGS = flags.FLAGS

#: method → (paradigm, granularity), in the order of the table.
METHODS: dict[str, tuple[str, str]] = {
    "dense": ("dense", "-"),
    "l1": ("PaT", "channel"),
    "tpp": ("PaT", "channel"),
    "lottery": ("LTH", "weight"),
    "snip": ("PaI", "weight"),
    "grasp": ("PaI", "weight"),
    "synflow": ("PaI", "weight"),
    "random_init": ("PaI", "weight"),
    "gmp": ("sparse training", "weight"),
    "granet": ("sparse training", "weight"),
}
PAI = ("snip", "grasp", "synflow", "random_init")
SPARSE_TRAINING = ("gmp", "granet")
# Flags that do not change a result (left out of its fingerprint).
NOT_RESULT_FLAGS = frozenset({"output_dir", "methods", "sparsities", "resume", "verbose"})
RESULTS_DIR = "results"
CSV_COLUMNS = ("method", "paradigm", "granularity", "target_sparsity", "sparsity",
               "final_accuracy", "accuracy_after_pruning", "jsv_after_pruning", "params",
               "nonzero_weights", "macs", "effective_macs", "train_steps", "wall_s")

flags.DEFINE_enum("model", "mlp", ("mlp", "cnn"),
                  "mlp: MLP-7-Linear (keras_tpp.models.mlp_linear, inputs flattened); cnn: "
                  "keras_tpp.models.small_cnn (3 conv stages).")
flags.DEFINE_enum("data_source", "mnist", ("mnist", "folder", "synthetic"),
                  "mnist: Keras' mnist.npz (--data_dir, else $KERAS_HOME/datasets), resized "
                  "to 32×32; folder: an image folder or .tar.gz with train/<class>/ and "
                  "test/<class>/ (e.g. the CIFAR-10 JPEG copy); synthetic: keras_tpp's "
                  "synthetic shapes in gray (10 classes, for tests).")
flags.DEFINE_string("data_dir", None, "mnist.npz (or a directory holding it), or the image "
                    "folder / archive.")
flags.DEFINE_integer("train_examples", None, "Use only the first N training examples.",
                     lower_bound=1)
flags.DEFINE_integer("test_examples", None, "Use only the first N test examples.",
                     lower_bound=1)
flags.DEFINE_list("sparsities", ["0.9"], "Target sparsities (fractions of the prunable "
                  "kernel weights removed), e.g. 0.9 or 0.8,0.9,0.95.")
flags.DEFINE_list("methods", list(METHODS), f"Methods to run: a subset of "
                  f"{', '.join(METHODS)}.")
flags.DEFINE_integer("epochs", 20, "E: the training budget of every method, in epochs.",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 100, "Batch size.", lower_bound=1)
flags.DEFINE_float("lr", 0.01, "Learning rate of training from the initialization (SGD, "
                   "momentum 0.9, ×0.1 at 50% and 75% of each run).", lower_bound=0)
flags.DEFINE_float("ft_lr", 0.01, "PaT: fine-tuning learning rate (same shape).",
                   lower_bound=0)
flags.DEFINE_float("weight_decay", 0.0, "Coupled weight decay (gradient += wd·w).",
                   lower_bound=0)
flags.DEFINE_float("pat_pretrain_fraction", 0.5, "PaT: fraction of the budget spent on "
                   "pretraining the dense network.")
flags.DEFINE_float("tpp_stage_fraction", 0.25, "TPP: fraction of the post-pretraining "
                   "budget spent in the penalty stage (3/4 growing λ, 1/4 holding it).")
flags.DEFINE_float("prune_lr", 1e-3, "TPP: learning rate of the penalty stage.",
                   lower_bound=0)
flags.DEFINE_enum("channel_ratio", "match", ("match", "same"),
                  "Channel-level methods: match = remove the fraction of filters that leaves "
                  "as many kernel weights as the weight-level results; same = remove the "
                  "target fraction of filters.")
flags.DEFINE_enum("lottery_budget", "total", ("total", "per_round"),
                  "total: the lottery's rounds share the budget; per_round: every round "
                  "trains for the whole budget (the papers' recipe).")
flags.DEFINE_float("lottery_rate", 0.2, "Lottery: fraction of the remaining weights removed "
                   "per round.")
flags.DEFINE_float("rewind_fraction", 0.05, "Lottery: k, the rewind point, as a fraction of "
                   "a round's iterations (0 = the original lottery ticket, θ_0).")
flags.DEFINE_float("prune_end_fraction", 0.5, "GMP / GraNet: fraction of the budget at which "
                   "the target sparsity is reached (pruning starts at iteration 0).")
flags.DEFINE_integer("update_frequency", 100, "GMP / GraNet: ΔT, iterations between mask "
                     "updates.", lower_bound=1)
flags.DEFINE_float("regrow_ratio", 0.5, "GraNet: the regeneration rate at the start (cosine "
                   "decay to 0.005).")
flags.DEFINE_integer("score_examples", 100, "SNIP / GraSP: training examples scored on "
                     "(balanced over the classes: 100 = 10 per class).", lower_bound=1)
flags.DEFINE_float("grasp_temperature", 200.0, "GraSP: T, the logits are divided by it.")
flags.DEFINE_integer("synflow_rounds", 100, "SynFlow: scoring rounds (exponential schedule).",
                     lower_bound=1)
flags.DEFINE_integer("jsv_examples", 200, "Test inputs of the Jacobian singular values.",
                     lower_bound=1)
flags.DEFINE_string("output_dir", "runs/paradigms", "Where the results, the tables and the "
                    "figure go.")
flags.DEFINE_bool("resume", True, "Skip the results already in --output_dir from a run with "
                  "the same flags.")
flags.DEFINE_integer("seed", 0, "Random seed (initialization, data order, random masks).")
flags.DEFINE_integer("verbose", 0, "Keras verbosity (0 silent, 2 one line per epoch).",
                     lower_bound=0, upper_bound=2)


# ----------------------------------------------------------------------- flag checks


def parse_sparsities() -> list[float]:
    """--sparsities as floats in (0, 1), sorted and without duplicates."""
    values = []
    for text in FLAGS.sparsities:
        text = text.strip()
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 < value < 1:
            raise common.usage_error("sparsities", f"{text!r} is not a sparsity in (0, 1) "
                                     "(expected e.g. 0.9 or 0.8,0.9,0.95)")
        values.append(value)
    if not values:
        raise common.usage_error("sparsities", "give at least one sparsity, e.g. 0.9")
    return sorted(set(values))


def parse_methods() -> list[str]:
    """--methods as a list in table order."""
    chosen = [m.strip() for m in FLAGS.methods if m.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise common.usage_error("methods", f"unknown {', '.join(map(repr, unknown)) or 'empty'}"
                                 f"; expected a comma-separated subset of {', '.join(METHODS)}")
    return [m for m in METHODS if m in chosen]


def check_fraction(name: str, low_open: bool = True, high_open: bool = True) -> None:
    """A UsageError unless --name is in (0, 1) (or a half-closed version of it)."""
    value = FLAGS[name].value
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise common.usage_error(name, f"must be in {interval}, got {value:g}")


def check_flags() -> tuple[list[float], list[str]]:
    """Every check that needs no TensorFlow; the sparsities and the methods."""
    sparsities = parse_sparsities()
    methods = parse_methods()
    for name in ("pat_pretrain_fraction", "tpp_stage_fraction", "lottery_rate",
                 "prune_end_fraction"):
        check_fraction(name)
    check_fraction("rewind_fraction", low_open=False)
    check_fraction("regrow_ratio", low_open=False)
    if not FLAGS.grasp_temperature > 0:
        raise common.usage_error("grasp_temperature", f"must be > 0, got "
                                 f"{FLAGS.grasp_temperature:g}")
    if FLAGS.data_source == "mnist":
        if FLAGS.data_dir and not os.path.exists(FLAGS.data_dir):
            raise common.usage_error("data_dir", f"{FLAGS.data_dir} does not exist; expected "
                                     "mnist.npz or a directory holding (datasets/)mnist.npz")
    elif FLAGS.data_source == "folder":
        common.check_cifar_data_flags("folder", FLAGS.data_dir)
    if os.path.isfile(FLAGS.output_dir):
        raise common.usage_error("output_dir", f"{FLAGS.output_dir} is a file")
    return sparsities, methods


# ----------------------------------------------------------------------- data


@dataclass
class Data:
    """Arrays of one dataset: images (n, H, W, C) float32 or flat rows, int64 labels."""

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    note: str

    @property
    def num_classes(self) -> int:
        """The number of classes (labels are 0..K−1)."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def _synthetic(n: int, seed: int):
    import numpy as np

    from keras_tpp.data import synthetic_shapes

    x, y = synthetic_shapes(n, image_size=32, seed=seed)
    gray = x.astype("float32").mean(axis=-1, keepdims=True) / 255.0
    return ((gray - gray.mean()) / (gray.std() + 1e-6)).astype(np.float32), y.astype(np.int64)


def _folder_arrays(split: str, limit: int | None):
    import numpy as np

    from keras_tpp.data import cifar_pipeline

    ds = cifar_pipeline(split, source="folder", data_dir=FLAGS.data_dir, batch_size=500,
                        training=False, max_examples=limit, cache=False)
    xs, ys = [], []
    for xb, yb in ds:
        xs.append(xb.numpy())
        ys.append(yb.numpy())
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def load_data() -> Data:
    """The --data_source arrays (a UsageError naming --data_dir if they cannot be read)."""
    if FLAGS.data_source == "synthetic":
        n_train = FLAGS.train_examples or 2000
        n_test = FLAGS.test_examples or 500
        return Data(*_synthetic(n_train, FLAGS.seed), *_synthetic(n_test, FLAGS.seed + 1),
                    note="keras_tpp synthetic shapes, gray 32×32 (10 classes)")
    if FLAGS.data_source == "mnist":
        from keras_tpp.data import mnist_arrays

        try:
            with common.blame("data_dir"):
                (x_train, y_train), (x_test, y_test) = mnist_arrays(
                    32, flatten=False, source="keras", data_dir=FLAGS.data_dir,
                    train_examples=FLAGS.train_examples, test_examples=FLAGS.test_examples)
        except common.UsageError:
            raise
        except Exception as e:  # a failed download or a broken file
            raise common.usage_error(
                "data_dir", f"could not load MNIST ({type(e).__name__}: {common.one_line(e)});"
                " give --data_dir with mnist.npz or set KERAS_HOME") from e
        return Data(x_train, y_train, x_test, y_test, note="MNIST resized to 32×32")
    try:
        with common.blame("data_dir"):
            train = _folder_arrays("train", FLAGS.train_examples)
            test = _folder_arrays("test", FLAGS.test_examples)
    except common.UsageError:
        raise
    except Exception as e:  # unreadable images, a broken archive
        raise common.usage_error("data_dir", common.one_line(e)) from e
    return Data(*train, *test, note="image folder without augmentation (the offline "
                "CIFAR-10 copy is JPEG-compressed: accuracies below the published ones)")


def balanced_subset(x, y, n: int, num_classes: int):
    """The first ⌈n / K⌉ examples of every class, cut to n (SNIP / GraSP's scoring batch)."""
    import numpy as np

    per_class = math.ceil(n / num_classes)
    picked = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(num_classes)])
    picked = np.sort(picked)[:n] if len(picked) > n else np.sort(picked)
    return x[picked], y[picked]


# ----------------------------------------------------------------------- training helpers


class Trainer:
    """Builds the model, trains for exact iteration counts and measures models."""

    def __init__(self, data: Data) -> None:
        import numpy as np

        self.data = data
        if FLAGS.model == "mlp":
            self.x_train = data.x_train.reshape(len(data.x_train), -1)
            self.x_test = data.x_test.reshape(len(data.x_test), -1)
        else:
            self.x_train, self.x_test = data.x_train, data.x_test
        self.steps_per_epoch = len(self.x_train) // FLAGS.batch_size
        if self.steps_per_epoch < 1:
            raise common.usage_error("batch_size", f"{FLAGS.batch_size} is larger than the "
                                     f"{len(self.x_train)} training examples")
        self.total_steps = FLAGS.epochs * self.steps_per_epoch
        self.x_jsv = self.x_test[:FLAGS.jsv_examples]
        self.x_score, self.y_score = balanced_subset(self.x_train, data.y_train,
                                                     FLAGS.score_examples, data.num_classes)
        self._decayed: set[int] = set()
        self._dataset = None
        self._np = np

    def build(self):
        """A fresh network with the run's initialization (the same for every method)."""
        import keras

        from keras_tpp import models

        keras.utils.set_random_seed(FLAGS.seed)
        if FLAGS.model == "mlp":
            return models.mlp_linear(input_dim=int(self.x_train.shape[1]),
                                     num_classes=self.data.num_classes)
        return models.small_cnn(num_classes=self.data.num_classes,
                                input_shape=tuple(int(d) for d in self.x_train.shape[1:]))

    def dataset(self):
        """The training set as an endless shuffled tf.data pipeline of batches."""
        import tensorflow as tf

        if self._dataset is None:
            self._dataset = (tf.data.Dataset.from_tensor_slices((self.x_train,
                                                                 self.data.y_train))
                             .shuffle(len(self.x_train), seed=FLAGS.seed,
                                      reshuffle_each_iteration=True)
                             .batch(FLAGS.batch_size, drop_remainder=True).repeat()
                             .prefetch(2))
        return self._dataset

    def compile(self, model, learning_rate: float, run_steps: int | None) -> None:
        """A fresh SGD (momentum 0.9) whose LR drops ×0.1 at 50 % and 75 % of a run of
        ``run_steps`` iterations (constant for ``run_steps=None``)."""
        import keras

        from keras_tpp.experiments.training import add_coupled_weight_decay
        from keras_tpp.lr_schedules import FineTuneSchedule

        drops = ([] if run_steps is None else
                 [round(0.5 * run_steps), round(0.75 * run_steps)])
        values = [learning_rate * 0.1 ** i for i in range(3)]
        values = values[sum(1 for d in drops if d <= 0):]  # drops at step 0 (tiny runs)
        boundaries = [d for d in drops if d > 0]
        while len(boundaries) > 1 and boundaries[0] >= boundaries[1]:
            boundaries.pop(0)
            values.pop(0)
        schedule = (FineTuneSchedule(boundaries=boundaries, values=values) if boundaries
                    else FineTuneSchedule(learning_rate=values[0]))
        if id(model) not in self._decayed:  # coupled decay: once per model
            add_coupled_weight_decay(model, FLAGS.weight_decay)
            self._decayed.add(id(model))
        model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])

    def fit(self, model, steps: int, callbacks: tuple = ()) -> int:
        """Train ``steps`` iterations (or until a callback stops); the iterations run."""
        import keras

        if steps <= 0:
            return 0
        stop = _StopAfter(steps)
        epochs = math.ceil(steps / self.steps_per_epoch)
        model.fit(self.dataset(), epochs=epochs, steps_per_epoch=self.steps_per_epoch,
                  callbacks=[stop, *callbacks], verbose=FLAGS.verbose, shuffle=False)
        return int(keras.ops.convert_to_numpy(model.optimizer.iterations)) - stop.start

    def accuracy(self, model, x=None, y=None) -> float:
        """Top-1 accuracy of ``model`` (inference mode) on the test set."""
        import keras

        np = self._np
        x = self.x_test if x is None else x
        y = self.data.y_test if y is None else y
        correct = 0
        for start in range(0, len(x), 1000):
            logits = keras.ops.convert_to_numpy(model(x[start:start + 1000], training=False))
            correct += int(np.sum(np.argmax(logits, axis=-1) == y[start:start + 1000]))
        return correct / len(x)

    def jsv(self, model) -> float:
        """Mean singular value of ∂logits/∂input over the JSV examples."""
        from keras_tpp.metrics import jacobian_singular_values

        return float(jacobian_singular_values(model, self.x_jsv)["mean"])


def _stop_after_class():
    import keras

    class StopAfter(keras.callbacks.Callback):
        """Stop ``fit`` after exactly ``steps`` iterations of this call."""

        def __init__(self, steps: int) -> None:
            super().__init__()
            self.steps = steps
            self.start = 0

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.start = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            now = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            if now - self.start >= self.steps:
                self.model.stop_training = True

    return StopAfter


def _StopAfter(steps: int):  # noqa: N802 - a class made once Keras is imported
    global _STOP_AFTER
    if _STOP_AFTER is None:
        _STOP_AFTER = _stop_after_class()
    return _STOP_AFTER(steps)


_STOP_AFTER = None


def _at_step_class():
    import keras

    class AtStep(keras.callbacks.Callback):
        """Call ``fn(model)`` once, after iteration ``step`` of this ``fit``."""

        def __init__(self, step: int, fn: Callable[[Any], None]) -> None:
            super().__init__()
            self.step, self.fn, self.start, self.done = step, fn, 0, False

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.start = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            now = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            if not self.done and now - self.start >= self.step:
                self.done = True
                self.fn(self.model)

    return AtStep


# ----------------------------------------------------------------------- measurements


def measure_final(trainer: Trainer, model, dense_size: int, pmodel=None) -> dict:
    """Accuracy, sparsity, params, non-zeros and MACs of a final model (``pmodel``: the
    prepared model of a weight-level result, whose masks give the exact masked count)."""
    import keras_tpp

    report = keras_tpp.sparsity_report(model)
    prof = keras_tpp.profile(model)
    density = {path: layer.density for path, layer in report.layers.items()}
    effective = sum(entry["macs"] * density.get(entry["path"], 1.0)
                    for entry in prof["per_layer"])
    out = {"final_accuracy": trainer.accuracy(model), "params": int(prof["params"]),
           "nonzero_weights": int(report.size - report.zeros), "prunable_weights": dense_size,
           "macs": int(prof["macs"]), "effective_macs": int(round(effective))}
    if pmodel is not None:
        masked = sum(layer.masked or 0 for layer in keras_tpp.sparsity_report(pmodel)
                     .layers.values())
        out.update(masked_weights=int(masked), sparsity=masked / dense_size)
    else:  # channel level or dense: kernel weights removed or zero
        out["sparsity"] = 1.0 - out["nonzero_weights"] / dense_size
    return out


def after_pruning(trainer: Trainer, model) -> dict:
    """Accuracy and mean JSV of a model right after pruning."""
    return {"accuracy_after_pruning": trainer.accuracy(model),
            "jsv_after_pruning": trainer.jsv(model)}


def channel_ratio(dense, sparsity: float) -> float:
    """The fraction of filters to remove from every prunable layer for ``sparsity``
    (--channel_ratio match: the thin model keeps about (1 − s) of the kernel weights)."""
    import keras_tpp

    if FLAGS.channel_ratio == "same":
        return sparsity
    size = keras_tpp.sparsity_report(dense).size
    low, high = 0.0, 0.99

    def kept(ratio: float) -> int:
        return keras_tpp.sparsity_report(keras_tpp.prune(dense, ratio, method="l1")).size

    goal = (1.0 - sparsity) * size
    if kept(high) > goal:
        return high
    for _ in range(14):
        mid = (low + high) / 2
        if kept(mid) > goal:
            low = mid
        else:
            high = mid
    return low if abs(kept(low) - goal) <= abs(kept(high) - goal) else high


# ----------------------------------------------------------------------- the paradigms


def run_dense(trainer: Trainer, sparsity: float, ctx: dict) -> dict:
    """The unpruned network trained for the whole budget."""
    model = trainer.build()
    trainer.compile(model, FLAGS.lr, trainer.total_steps)
    steps = trainer.fit(model, trainer.total_steps)
    return {**measure_final(trainer, model, ctx["dense_size"]), "train_steps": steps,
            "accuracy_after_pruning": None, "jsv_after_pruning": None}


def pretrained(trainer: Trainer, ctx: dict):
    """The shared PaT pretraining (P iterations), loaded from --output_dir when it was
    made with the same flags; (model, P, wall seconds)."""
    import keras

    from keras_tpp.experiments import atomic_save_model, atomic_write_json, read_json_or

    steps = round(FLAGS.pat_pretrain_fraction * trainer.total_steps)
    path = os.path.join(ctx["output_dir"], "pretrained.keras")
    info_path = os.path.join(ctx["output_dir"], "pretrained.json")
    info = read_json_or(info_path, None)
    if (FLAGS.resume and isinstance(info, dict) and info.get("fingerprint") == ctx["fingerprint"]
            and os.path.isfile(path)):
        print(f"[pat] using the pretrained network in {path}", flush=True)
        return keras.models.load_model(path, compile=False), steps, float(info["wall_s"])
    print(f"[pat] pretraining the dense network for {steps} iterations", flush=True)
    start = time.time()
    model = trainer.build()
    trainer.compile(model, FLAGS.lr, steps)
    trainer.fit(model, steps)
    wall = time.time() - start
    atomic_save_model(model, path)
    atomic_write_json(info_path, {"fingerprint": ctx["fingerprint"], "steps": steps,
                                  "wall_s": wall, "accuracy": trainer.accuracy(model)})
    return keras.models.load_model(path, compile=False), steps, wall


def run_pat(trainer: Trainer, sparsity: float, ctx: dict, method: str) -> dict:
    """PaT: the shared pretraining, then L1 or TPP pruning of filters and fine-tuning."""
    import keras_tpp

    if "pretrained" not in ctx:
        ctx["pretrained"] = pretrained(trainer, ctx)
    dense, pre_steps, pre_wall = ctx["pretrained"]
    ratio = channel_ratio(dense, sparsity)
    budget = trainer.total_steps - pre_steps
    notes = {"channel_ratio": ratio, "pretrain_steps": pre_steps, "pretrain_wall_s": pre_wall}
    if method == "l1":
        thin = keras_tpp.prune(dense, ratio, method="l1")
        stage_steps = 0
    else:
        stage = max(2, round(FLAGS.tpp_stage_fraction * budget))
        ramp = max(1, round(0.75 * stage))
        pmodel = keras_tpp.prepare(dense, ratio, method="tpp")
        trainer.compile(pmodel, FLAGS.prune_lr, None)  # constant over the stage
        callback = keras_tpp.PruningCallback(delta=None, ramp_steps=ramp, interval=1,
                                             stabilize_steps=stage - ramp,
                                             stop_when_pruned=True)
        stage_steps = trainer.fit(pmodel, stage + 5, (callback,))
        thin = keras_tpp.shrink(pmodel)
        notes.update(tpp_stage_steps=stage_steps, tpp_ramp_steps=ramp)
    measured = after_pruning(trainer, thin)
    ft_steps = budget - stage_steps
    trainer.compile(thin, FLAGS.ft_lr, ft_steps)
    steps = trainer.fit(thin, ft_steps)
    final = measure_final(trainer, thin, ctx["dense_size"])
    return {**final, **measured, "train_steps": pre_steps + stage_steps + steps,
            "extra_wall_s": pre_wall, "notes": notes}


def lottery_plan(total_steps: int, prunable: int, sparsity: float) -> tuple[int, int, int]:
    """(L rounds, R iterations of a full run, rewind point k) of the lottery at ``sparsity``;
    a UsageError when the budget leaves no iteration after the rewind point."""
    from keras_tpp import lottery

    rounds = lottery.rounds_needed(sparsity, FLAGS.lottery_rate, total=prunable)
    if FLAGS.lottery_budget == "per_round":
        run = total_steps
        rewind = round(FLAGS.rewind_fraction * run)
    else:  # R + L·(R − k) ≤ T with k = f·R: R = T / (1 + L·(1 − f))
        run = int(total_steps // (1 + rounds * (1 - FLAGS.rewind_fraction)))
        rewind = round(FLAGS.rewind_fraction * run)
        while run > 0 and run + rounds * (run - rewind) > total_steps:
            run -= 1
            rewind = round(FLAGS.rewind_fraction * run)
    if run - rewind < 1:
        raise common.usage_error("epochs", f"the lottery's {rounds + 1} training runs at "
                                 f"sparsity {sparsity:g} leave {run} iterations per run "
                                 f"(rewind point {rewind}) of the {total_steps}-iteration "
                                 "budget; give more --epochs or --lottery_budget per_round")
    return rounds, run, rewind


def run_lottery(trainer: Trainer, sparsity: float, ctx: dict) -> dict:
    """LTH: iterative magnitude pruning with rewinding to θ_k."""
    import keras_tpp
    from keras_tpp import lottery

    pmodel = keras_tpp.prepare(trainer.build(), sparsity,
                               method=keras_tpp.methods.Lottery(rate=FLAGS.lottery_rate))
    rounds, run, rewind = lottery_plan(trainer.total_steps, ctx["dense_size"], sparsity)
    if lottery.remaining_rounds(pmodel) != rounds:  # pragma: no cover - a library change
        raise RuntimeError(f"keras_tpp.lottery plans {lottery.remaining_rounds(pmodel)} "
                           f"rounds, rounds_needed said {rounds}")
    point = lottery.RewindPoint(step=rewind)
    trainer.compile(pmodel, FLAGS.lr, run)
    steps = trainer.fit(pmodel, run, (keras_tpp.PruningCallback(), point))
    measured: dict = {}
    for index in range(rounds):
        report = lottery.lottery_round(pmodel, point.snapshot, rate=FLAGS.lottery_rate)
        if FLAGS.verbose:
            print(f"[lottery] round {index + 1}/{rounds}: sparsity {report.sparsity:.4f}",
                  flush=True)
        if index == rounds - 1:
            measured = after_pruning(trainer, pmodel)
        trainer.compile(pmodel, FLAGS.lr, run)
        lottery.resume_schedule(pmodel)  # the LR schedule goes on from the rewind step
        steps += trainer.fit(pmodel, run - rewind, (keras_tpp.PruningCallback(),))
    final = measure_final(trainer, keras_tpp.strip(pmodel), ctx["dense_size"], pmodel)
    return {**final, **measured, "train_steps": steps,
            "notes": {"rounds": rounds, "run_steps": run, "rewind_step": rewind}}


def run_pai(trainer: Trainer, sparsity: float, ctx: dict, method: str) -> dict:
    """PaI: score the untrained network, fix the masks, train sparse from scratch."""
    import keras_tpp
    from keras_tpp import methods

    spec = {"snip": methods.SNIP(),
            "grasp": methods.GraSP(temperature=FLAGS.grasp_temperature),
            "synflow": methods.SynFlow(rounds=FLAGS.synflow_rounds),
            "random_init": methods.RandomInit()}[method]
    data = (trainer.x_score, trainer.y_score) if spec.needs_data else None
    start = time.time()
    pmodel = keras_tpp.prepare(trainer.build(), sparsity, method=spec, data=data,
                               seed=FLAGS.seed)
    score_s = time.time() - start
    keras_tpp.apply_masks(pmodel)
    measured = after_pruning(trainer, pmodel)
    trainer.compile(pmodel, FLAGS.lr, trainer.total_steps)
    steps = trainer.fit(pmodel, trainer.total_steps, (keras_tpp.PruningCallback(),))
    final = measure_final(trainer, keras_tpp.strip(pmodel), ctx["dense_size"], pmodel)
    return {**final, **measured, "train_steps": steps, "notes": {"score_s": score_s}}


def run_sparse_training(trainer: Trainer, sparsity: float, ctx: dict, method: str) -> dict:
    """GMP / GraNet: prune gradually from the initialization to the target sparsity."""
    import keras_tpp

    total = trainer.total_steps
    end = max(1, round(FLAGS.prune_end_fraction * total))
    with common.blame("update_frequency"):
        callback = keras_tpp.SparseTrainingCallback(
            total_steps=total, prune_start_step=0, prune_end_step=end,
            update_frequency=FLAGS.update_frequency, regrow_ratio=FLAGS.regrow_ratio)
    pmodel = keras_tpp.prepare(trainer.build(), sparsity, method=method, seed=FLAGS.seed)
    measured: dict = {}

    def measure(model) -> None:
        measured.update(after_pruning(trainer, model))

    at_end = _at_step_class()(end, measure)
    trainer.compile(pmodel, FLAGS.lr, total)
    steps = trainer.fit(pmodel, total, (callback, at_end))
    final = measure_final(trainer, keras_tpp.strip(pmodel), ctx["dense_size"], pmodel)
    return {**final, **measured, "train_steps": steps, "notes": {"prune_end_step": end}}


def run_method(trainer: Trainer, method: str, sparsity: float, ctx: dict) -> dict:
    """One result: the method's pipeline, timed."""
    import keras_tpp

    start = time.time()
    try:
        if method == "dense":
            result = run_dense(trainer, sparsity, ctx)
        elif method in ("l1", "tpp"):
            result = run_pat(trainer, sparsity, ctx, method)
        elif method == "lottery":
            result = run_lottery(trainer, sparsity, ctx)
        elif method in PAI:
            result = run_pai(trainer, sparsity, ctx, method)
        else:
            result = run_sparse_training(trainer, sparsity, ctx, method)
    except keras_tpp.NonFiniteError as e:  # a result too: this method diverged
        print(f"[{method} @ {sparsity:g}] diverged: {common.one_line(e)[:300]}", flush=True)
        result = {key: None for key in CSV_COLUMNS[4:]}
        result["diverged"] = common.one_line(e)
    paradigm, granularity = METHODS[method]
    wall = time.time() - start + result.pop("extra_wall_s", 0.0)
    return {"method": method, "paradigm": paradigm, "granularity": granularity,
            "target_sparsity": 0.0 if method == "dense" else sparsity, **result,
            "wall_s": wall, "fingerprint": ctx["fingerprint"]}


# ----------------------------------------------------------------------- outputs


def result_path(output_dir: str, method: str, sparsity: float) -> str:
    """Where one result is written (the dense reference has one for all sparsities)."""
    name = "dense.json" if method == "dense" else f"{method}_s{sparsity:g}.json"
    return os.path.join(output_dir, RESULTS_DIR, name)


def fingerprint() -> dict:
    """The flags a result depends on, JSON-normalized."""
    from keras_tpp.experiments.atomic import json_default

    values = {k: v for k, v in common.flag_values().items() if k not in NOT_RESULT_FLAGS}
    return json.loads(json.dumps(values, default=json_default))


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "acc":
        return f"{100 * value:.2f}"
    if kind == "f4":
        return f"{value:.4f}"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "s":
        return f"{value:.0f}"
    return str(value)


def table(results: list[dict]) -> str:
    """The printed table, one row per result."""
    from keras_tpp.experiments import format_table

    header = ["method", "paradigm", "gran.", "target", "sparsity", "acc %", "acc % pruned",
              "JSV pruned", "params", "nonzeros", "MACs (eff.)", "iters", "wall s"]
    rows = [[r["method"], r["paradigm"], r["granularity"], f"{r['target_sparsity']:g}",
             _fmt(r["sparsity"], "f4"),
             "diverged" if r.get("diverged") else _fmt(r["final_accuracy"], "acc"),
             _fmt(r["accuracy_after_pruning"], "acc"), _fmt(r["jsv_after_pruning"], "f4"),
             _fmt(r["params"], "int"), _fmt(r["nonzero_weights"], "int"),
             _fmt(r["effective_macs"], "int"), _fmt(r["train_steps"], "int"),
             _fmt(r["wall_s"], "s")] for r in results]
    return format_table(header, rows)


def write_csv(path: str, results: list[dict]) -> None:
    """results.csv (atomically)."""
    from keras_tpp.experiments import atomic_write

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(results)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(buffer.getvalue())

    atomic_write(path, write)


def plot(path: str, results: list[dict], sparsities: list[float]) -> None:
    """Final accuracy against sparsity, one line per method (dense as a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_tpp.experiments import atomic_write

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        points = sorted((r["target_sparsity"], 100 * r["final_accuracy"]) for r in results
                        if r["method"] == method and r["final_accuracy"] is not None)
        if not points:
            continue
        if method == "dense":
            ax.axhline(points[0][1], color="k", ls="--", lw=0.8, label="dense")
            continue
        style = "-" if METHODS[method][1] == "weight" else ":"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o",
                label=f"{method} ({METHODS[method][0]})")
    ax.set_xticks(sparsities)
    ax.set_xlabel("target sparsity (fraction of kernel weights removed)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{FLAGS.model} on {FLAGS.data_source}, {FLAGS.epochs}-epoch budget")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


# ----------------------------------------------------------------------- main


def main() -> None:
    sparsities, methods = check_flags()
    common.setup_tensorflow()
    # Calling a one-input functional model on a bare array (accuracy, JSV) is fine.
    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
    import keras_tpp
    from keras_tpp.experiments import atomic_write_json, read_json_or, remove_stale_temporaries

    started = time.time()
    output_dir = os.path.abspath(FLAGS.output_dir)
    os.makedirs(output_dir, exist_ok=True)
    remove_stale_temporaries(output_dir)
    data = load_data()
    trainer = Trainer(data)
    if "gmp" in methods or "granet" in methods:
        from keras_tpp.sparsity import SparseTrainingSchedule

        end = max(1, round(FLAGS.prune_end_fraction * trainer.total_steps))
        with common.blame("update_frequency"):
            SparseTrainingSchedule(trainer.total_steps, 0, end, FLAGS.update_frequency)
    ctx = {"output_dir": output_dir, "fingerprint": fingerprint(),
           "dense_size": keras_tpp.sparsity_report(trainer.build()).size}
    if "lottery" in methods:  # a budget too small for the rounds: an error before training
        for sparsity in sparsities:
            lottery_plan(trainer.total_steps, ctx["dense_size"], sparsity)
    print(f"== {FLAGS.model} on {data.note}: {len(trainer.x_train):,} training / "
          f"{len(trainer.x_test):,} test examples; budget {FLAGS.epochs} epochs = "
          f"{trainer.total_steps:,} iterations; sparsities {', '.join(map(str, sparsities))};"
          f" methods {', '.join(methods)}", flush=True)

    jobs = [(m, s) for s in sparsities for m in methods if m != "dense"]
    if "dense" in methods:
        jobs.insert(0, ("dense", sparsities[0]))
    results = []
    for method, sparsity in jobs:
        path = result_path(output_dir, method, sparsity)
        old = read_json_or(path, None)
        if FLAGS.resume and isinstance(old, dict) and old.get("fingerprint") == ctx[
                "fingerprint"]:
            print(f"[{method} @ {sparsity:g}] done before ({os.path.relpath(path, output_dir)})"
                  f"; skipped", flush=True)
            results.append(old)
            continue
        print(f"[{method} @ {sparsity:g}] running", flush=True)
        result = run_method(trainer, method, sparsity, ctx)
        atomic_write_json(path, result)
        if result["final_accuracy"] is not None:
            print(f"[{method} @ {sparsity:g}] accuracy {result['final_accuracy']:.4f}, "
                  f"sparsity {result['sparsity']:.4f}, {result['wall_s']:.0f} s", flush=True)
        results.append(result)

    print()
    print(table(results), flush=True)
    summary = {"results": results, "sparsities": sparsities, "methods": methods,
               "data": {"source": FLAGS.data_source, "note": data.note,
                        "train_examples": int(len(trainer.x_train)),
                        "test_examples": int(len(trainer.x_test))},
               "budget": {"epochs": FLAGS.epochs, "steps_per_epoch": trainer.steps_per_epoch,
                          "total_steps": trainer.total_steps},
               "flags": common.flag_values(), "wall_s": time.time() - started}
    atomic_write_json(os.path.join(output_dir, "results.json"), summary)
    write_csv(os.path.join(output_dir, "results.csv"), results)
    written = ["results.json", "results.csv"]
    if len(sparsities) > 1:
        plot(os.path.join(output_dir, "accuracy_vs_sparsity.png"), results, sparsities)
        written.append("accuracy_vs_sparsity.png")
    print(f"wrote {', '.join(written)} to {output_dir}", flush=True)


if __name__ == "__main__":
    common.run_main(main)
