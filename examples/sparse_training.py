r"""Sparse training of a CIFAR ResNet-50 / VGG-19 / ResNet-20 with GraNet, GMP or RigL.

Weight-level (unstructured) sparse training, SPEC §4 (Liu et al., NeurIPS 2021): every Conv
and Dense kernel gets a 0/1 mask; ``keras_tpp.prepare(..., method=--method)`` and
``keras_tpp.SparseTrainingCallback`` prune (cubic schedule, global magnitude ranking) and,
for GraNet and RigL, regenerate (death by |w|, growth by |gradient|) every
--update_frequency iterations. The defaults are the papers' CIFAR recipe:

    160 epochs, batch 128, SGD with Nesterov momentum 0.9, LR 0.1 ×0.1 at 50% and 75%,
    weight decay 5e-4, ΔT = 1000 iterations, pruning from epoch 0 to 80, regeneration rate
    0.5 → 0.005 (cosine), final sparsity --pruning_ratio 0.9.

Weight decay is the papers' (PyTorch's) coupled one, gradient += wd·w on every trainable
weight, added as an L2 regularizer (keras_tpp.experiments.training.add_coupled_weight_decay,
as in cifar.py); Keras' ``SGD(weight_decay=...)`` is decoupled (applied outside the
momentum) and would not be the recipe. The logged training loss includes the decay term.

Outputs in --output_dir: ``sparse.keras`` (the stripped model: plain Keras layers, pruned
weights exactly 0), ``summary.json`` (sparsity per layer, test accuracy, schedule, flags),
logs/train.csv (per epoch, with ``sparsity`` and ``regrow_rate``), logs/iterations/train.csv
(every --log_every iterations) and, with --export_tflite, ``sparse.tflite`` (sparse weight
storage). Every file is written atomically.

Resuming: training backs up the model (weights, masks, the schedule's position) and the
optimizer after every epoch into <output_dir>/backup/train (keras_tpp.experiments.backup).
After a kill at any moment, rerunning the same command resumes from the last completed
epoch; a backup made with other flags is discarded with a message naming them; a run that
already finished with the same flags is skipped (--noresume redoes it).

Examples::

    # the paper profile: ResNet-50 on the offline CIFAR-10 JPEG copy, GraNet at 90%
    python examples/sparse_training.py --data_source folder \
        --data_dir cifar10-jpeg.tar.gz --output_dir runs/granet_r50_90
    # a few minutes on a CPU: ResNet-20, 5,000 images, 4 epochs, mask updates every 10 steps
    python examples/sparse_training.py --model resnet20 --data_source folder \
        --data_dir cifar10-jpeg.tar.gz --max_train_examples 5000 \
        --max_test_examples 1000 --epochs 4 --update_frequency 10 --output_dir runs/cpu
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any, Iterator

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FLAGS = flags.FLAGS
METHODS = ("granet", "gmp", "rigl")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
MODEL_FILE = "sparse.keras"
TFLITE_FILE = "sparse.tflite"
SUMMARY_FILE = "summary.json"
STAGE = "train"  # the backup's and the logs' name; kill points "train.<point>"
# Flags that do not change the trained model (not in the fingerprint of a run).
NOT_RESULT_FLAGS = frozenset({"output_dir", "resume", "verbose", "log_every",
                              "validation_freq", "export_tflite"})

flags.DEFINE_enum("method", "granet", METHODS,
                  "granet: gradual magnitude pruning + regeneration (zero-cost "
                  "neuroregeneration); gmp: gradual magnitude pruning only; rigl: fixed "
                  "sparsity from a random (ERK) mask + regeneration.")
flags.DEFINE_float("pruning_ratio", 0.9, "Final sparsity s_f: the fraction of all Conv and "
                   "Dense kernel weights that are zero at the end (the papers: 0.9, 0.95, "
                   "0.98).")
flags.DEFINE_float("initial_ratio", None, "Initial sparsity s_i; default 0 (dense start) "
                   "for granet and gmp, --pruning_ratio for rigl. GraNet's sparse-to-sparse "
                   "variant uses 0.5.")
flags.DEFINE_enum("initial_mask", "erk", ("erk", "uniform"),
                  "Random initial mask when --initial_ratio > 0: erk (Erdős–Rényi-kernel "
                  "per-layer densities) or uniform (the same density in every layer).")
flags.DEFINE_enum("model", "resnet50_cifar", ("resnet50_cifar", "vgg19", "resnet20"),
                  "Architecture: resnet50_cifar (bottleneck ResNet-50, 3×3 stem, no "
                  "max-pooling), vgg19 (with batch norm), resnet20.")
flags.DEFINE_enum("dataset", "cifar10", tuple(NUM_CLASSES),
                  "Dataset (number of classes and normalization).")
flags.DEFINE_enum("data_source", "tfds", ("tfds", "folder", "synthetic"),
                  "tfds: tfds.load(--dataset, data_dir=--data_dir; tfds reads $TFDS_DATA_DIR "
                  "when it is not given); folder: an image folder or .tar.gz with "
                  "train/<class>/*.jpg and test/<class>/*.jpg (e.g. the offline CIFAR-10 "
                  "JPEG copy; archives are extracted once into $KERAS_TPP_CACHE); "
                  "synthetic: keras_tpp's synthetic shapes (10 classes, for tests).")
flags.DEFINE_string("data_dir", None, "tfds data dir, or the image folder / archive.")
flags.DEFINE_integer("max_train_examples", None, "Use only this many training examples.",
                     lower_bound=1)
flags.DEFINE_integer("max_test_examples", None, "Use only this many test examples.",
                     lower_bound=1)
flags.DEFINE_float("width_multiplier", 1.0, "Scale every layer's width (1.0 = the published "
                   "models; small values for quick tests).", lower_bound=0.01)
flags.DEFINE_integer("epochs", 160, "Training epochs (LR ×0.1 at 50% and 75%).",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
flags.DEFINE_integer("steps_per_epoch", None, "Optional cap on iterations per epoch.",
                     lower_bound=1)
flags.DEFINE_float("learning_rate", 0.1, "Initial learning rate (×0.1 at 50% and 75% of "
                   "--epochs; SGD, Nesterov momentum 0.9).", lower_bound=0)
flags.DEFINE_float("weight_decay", 5e-4, "Coupled weight decay (gradient += wd·w) on every "
                   "trainable weight, as in the papers.", lower_bound=0)
flags.DEFINE_integer("update_frequency", 1000, "ΔT: iterations between mask updates "
                     "(pruning rounds and regeneration).", lower_bound=1)
flags.DEFINE_integer("prune_start_epoch", 0, "Gradual pruning starts at this epoch.",
                     lower_bound=0)
flags.DEFINE_integer("prune_end_epoch", None, "Gradual pruning reaches --pruning_ratio at "
                     "this epoch; default half of --epochs (80 of the paper's 160).",
                     lower_bound=1)
flags.DEFINE_float("regrow_ratio", 0.5, "r_0: the regeneration rate at the start (fraction "
                   "of a layer's active weights regrown per update); granet and rigl.")
flags.DEFINE_float("final_regrow_ratio", 0.005, "The regeneration rate at the end of "
                   "training (cosine decay from --regrow_ratio).")
flags.DEFINE_string("output_dir", "runs/sparse_training",
                    "Where sparse.keras, summary.json, logs and the backup go.")
flags.DEFINE_bool("export_tflite", False, "Also write sparse.tflite (keras_tpp.export with "
                  "sparse=True: sparse weight storage).")
flags.DEFINE_bool("resume", True, "Skip training when <output_dir> holds the result of a "
                  "completed run with the same flags (a killed run always resumes from its "
                  "backup).")
flags.DEFINE_integer("validation_freq", 1, "Validate every N epochs.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Random seed (initialization, data order, random masks).")
flags.DEFINE_integer("verbose", 1, "Keras verbosity: 1 progress bars, 2 one line per epoch, "
                     "0 silent.", lower_bound=0, upper_bound=2)
flags.DEFINE_integer("log_every", 10, "Write loss, accuracy, sparsity and the learning rate "
                     "to logs/iterations/train.csv every this many iterations.",
                     lower_bound=1)


# ----------------------------------------------------------------------- flag checks


def initial_ratio() -> float:
    """--initial_ratio, or its default: 0 for granet / gmp, --pruning_ratio for rigl."""
    if FLAGS.initial_ratio is not None:
        return float(FLAGS.initial_ratio)
    return float(FLAGS.pruning_ratio) if FLAGS.method == "rigl" else 0.0


def prune_end_epoch() -> int:
    """--prune_end_epoch, or half of --epochs (at least 1)."""
    if FLAGS.prune_end_epoch is not None:
        return FLAGS.prune_end_epoch
    return max(1, FLAGS.epochs // 2)


def check_flags() -> None:
    """Every check that needs no TensorFlow; raises :class:`common.UsageError`."""
    ratio = FLAGS.pruning_ratio
    if not 0 < ratio < 1:
        raise common.usage_error("pruning_ratio", f"the final sparsity must be in (0, 1), "
                                 f"got {ratio:g} (0.9 = 90% of the weights are zero)")
    start = initial_ratio()
    if not 0 <= start < 1:
        raise common.usage_error("initial_ratio", f"must be in [0, 1), got {start:g}")
    if FLAGS.method == "rigl" and start != ratio:
        raise common.usage_error("initial_ratio", f"rigl keeps a fixed sparsity: leave it "
                                 f"out or give --pruning_ratio={ratio:g}, got {start:g}")
    if FLAGS.method in ("granet", "gmp") and start > ratio:
        raise common.usage_error("initial_ratio", f"{start:g} is above --pruning_ratio="
                                 f"{ratio:g}; gradual pruning only removes weights")
    if not 0 <= FLAGS.regrow_ratio < 1:
        raise common.usage_error("regrow_ratio", f"must be in [0, 1), got "
                                 f"{FLAGS.regrow_ratio:g}")
    if not 0 <= FLAGS.final_regrow_ratio <= FLAGS.regrow_ratio:
        raise common.usage_error("final_regrow_ratio", f"must be in [0, --regrow_ratio="
                                 f"{FLAGS.regrow_ratio:g}], got {FLAGS.final_regrow_ratio:g}")
    end = prune_end_epoch()
    if end > FLAGS.epochs:
        raise common.usage_error("prune_end_epoch", f"{end} is after the last epoch "
                                 f"(--epochs={FLAGS.epochs})")
    if FLAGS.prune_start_epoch >= end:
        raise common.usage_error("prune_start_epoch", f"{FLAGS.prune_start_epoch} must be "
                                 f"before --prune_end_epoch={end}")
    common.check_cifar_data_flags(FLAGS.data_source, FLAGS.data_dir)
    if os.path.isfile(FLAGS.output_dir):
        raise common.usage_error("output_dir", f"{FLAGS.output_dir} is a file")


def _schedule_error(total: int, start: int, end: int, every: int) -> str | None:
    """keras_tpp's objection to this schedule (no mask update inside the pruning window, so
    --pruning_ratio would never be reached), or None."""
    from keras_tpp.sparsity import SparseTrainingSchedule

    try:
        SparseTrainingSchedule(total, start, end, every)
    except ValueError as err:
        return str(err)
    return None


def check_schedule(steps_per_epoch: int) -> dict:
    """The callback's schedule in iterations; a UsageError (with the largest update
    frequency that works) unless keras_tpp accepts it."""
    total = FLAGS.epochs * steps_per_epoch
    start = FLAGS.prune_start_epoch * steps_per_epoch
    end = prune_end_epoch() * steps_per_epoch
    every = FLAGS.update_frequency
    problem = _schedule_error(total, start, end, every)
    if problem:
        largest = next((f for f in range(min(every - 1, end), 0, -1)
                        if _schedule_error(total, start, end, f) is None), None)
        hint = (f"lower --update_frequency to {largest} or less" if largest else
                "widen the window")
        raise common.usage_error(
            "update_frequency", f"{every} iterations between mask updates leave no pruning "
            f"round in the pruning window, iterations [{start}, {end}) (epochs "
            f"{FLAGS.prune_start_epoch}–{prune_end_epoch()} at {steps_per_epoch} iterations "
            f"per epoch), so --pruning_ratio would never be reached; {hint} ({problem})")
    return {"steps_per_epoch": steps_per_epoch, "total_steps": total,
            "prune_start_step": start, "prune_end_step": end, "update_frequency": every,
            "regrow_ratio": FLAGS.regrow_ratio, "final_regrow_ratio": FLAGS.final_regrow_ratio}


# ----------------------------------------------------------------------- data and model


def make_data() -> tuple[Any, Any, dict]:
    """(train, test) tf.data pipelines of CIFAR batches and a description for the summary."""
    from keras_tpp.data import cifar_pipeline, list_image_folder

    classes = NUM_CLASSES[FLAGS.dataset]
    options = dict(dataset=FLAGS.dataset, batch_size=FLAGS.batch_size, seed=FLAGS.seed)
    info: dict = {"source": FLAGS.data_source, "dataset": FLAGS.dataset}
    if FLAGS.data_source == "synthetic":
        return common.synthetic_cifar_data(FLAGS.max_train_examples, FLAGS.max_test_examples,
                                           FLAGS.seed, options, info)
    limits = dict(train=FLAGS.max_train_examples, test=FLAGS.max_test_examples)
    if FLAGS.data_source == "folder":
        from keras_tpp.data.folder import extract_archive

        if os.path.isfile(os.path.expanduser(FLAGS.data_dir)):
            with common.blame("data_dir"):
                found = extract_archive(FLAGS.data_dir)
            verb = "extracted" if found.extracted_now else "using the earlier extraction of"
            print(f"[data] {verb} {found.archive}: {found.files:,} files in "
                  f"{found.directory}", flush=True)
        for split in ("train", "test"):
            with common.blame("data_dir"):
                _, _, names = list_image_folder(FLAGS.data_dir, split)
            if len(names) != classes:
                raise common.usage_error(
                    "data_dir", f"{FLAGS.data_dir} has {len(names)} class directories in "
                    f"{split}/, --dataset {FLAGS.dataset} expects {classes}")
        source = dict(source="folder", data_dir=FLAGS.data_dir)
        info.update(data_dir=os.path.abspath(FLAGS.data_dir),
                    note="image folder (the offline CIFAR-10 copy is JPEG-compressed: "
                         "expect accuracies somewhat below the published ones)")
    else:
        source = dict(source="tfds", data_dir=FLAGS.data_dir)
        info.update(data_dir=FLAGS.data_dir)
    try:
        train = cifar_pipeline("train", training=True, max_examples=limits["train"],
                               **source, **options)
        test = cifar_pipeline("test", training=False, max_examples=limits["test"],
                              **source, **options)
    except Exception as e:  # tfds raises many kinds of errors for a missing dataset
        if FLAGS.data_source == "folder":
            raise common.usage_error("data_dir", common.one_line(e)) from e
        raise common.usage_error(
            "data_dir", f"tfds could not load '{FLAGS.dataset}' from data_dir="
            f"{FLAGS.data_dir!r} ({type(e).__name__}: {common.one_line(e)[:300]}); no "
            f"{FLAGS.dataset} is available offline here unless you prepared it: give "
            "--data_dir with a tfds data dir that holds it, or --data_source folder "
            f"--data_dir with an image folder of {classes} classes") from e
    return train, test, info


def build_model():
    """The --model architecture for --dataset, scaled by --width_multiplier."""
    from keras_tpp import models

    classes = NUM_CLASSES[FLAGS.dataset]
    scale = FLAGS.width_multiplier
    if FLAGS.model == "resnet50_cifar":
        return models.cifar_bottleneck_resnet(50, num_classes=classes,
                                              width=max(1, int(round(64 * scale))))
    if FLAGS.model == "vgg19":
        return models.cifar_vgg(19, num_classes=classes, width_multiplier=scale)
    return models.cifar_resnet(20, num_classes=classes, width=max(1, int(round(16 * scale))))


# ----------------------------------------------------------------------- the run


@contextlib.contextmanager
def blame_prepare() -> Iterator[None]:
    """A ValueError of keras_tpp.prepare as a UsageError naming the flag its message names
    (--method when it names none)."""
    try:
        yield
    except ValueError as e:
        text = str(e)
        flag = next((name for name in ("initial_ratio", "initial_mask", "pruning_ratio")
                     if name in text), "method")
        raise common.usage_error(flag, common.one_line(e)) from e


def fingerprint() -> dict:
    """The flags the trained model depends on, JSON-normalized."""
    from keras_tpp.experiments.atomic import json_default

    values = {k: v for k, v in common.flag_values().items() if k not in NOT_RESULT_FLAGS}
    return json.loads(json.dumps(values, default=json_default))


def completed(output_dir: str) -> dict | None:
    """The summary of a finished run with the same flags in ``output_dir``, or None."""
    from keras_tpp.experiments import read_json_or

    summary = read_json_or(os.path.join(output_dir, SUMMARY_FILE), None)
    if (isinstance(summary, dict) and summary.get("fingerprint") == fingerprint()
            and os.path.isfile(os.path.join(output_dir, MODEL_FILE))):
        return summary
    return None


def export_tflite(sparse_model, output_dir: str) -> dict:
    """Writes <output_dir>/sparse.tflite (sparse weight storage); its size and check."""
    import keras_tpp

    report = keras_tpp.export(sparse_model, os.path.join(output_dir, TFLITE_FILE),
                              sparse=True, latency_runs=0)
    print(f"[export] {report}", flush=True)
    return {"path": report.path, "size_bytes": report.size_bytes,
            "max_error": report.max_error}


def compile_for_training(pmodel, steps_per_epoch: int) -> None:
    """SGD (Nesterov momentum 0.9), LR ×0.1 at 50% and 75% of --epochs, coupled decay."""
    import keras

    from keras_tpp import lr_schedules
    from keras_tpp.experiments.training import compile_classifier

    schedule = lr_schedules.StepDecay(
        FLAGS.learning_rate, [0.5 * FLAGS.epochs, 0.75 * FLAGS.epochs], 0.1, steps_per_epoch)
    compile_classifier(pmodel, keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
                       FLAGS.weight_decay)


def sparse_training_callback(schedule: dict):
    """keras_tpp.SparseTrainingCallback with the run's schedule (in iterations)."""
    import keras_tpp

    with common.blame("update_frequency"):  # the library's own window check
        return keras_tpp.SparseTrainingCallback(
            total_steps=schedule["total_steps"], prune_start_step=schedule["prune_start_step"],
            prune_end_step=schedule["prune_end_step"],
            update_frequency=schedule["update_frequency"], regrow_ratio=FLAGS.regrow_ratio,
            final_regrow_ratio=FLAGS.final_regrow_ratio, verbose=1 if FLAGS.verbose else 0)


def train(pmodel, sparse_callback, train_ds, test_ds, output_dir: str) -> None:
    """``fit`` with the sparse-training callback, a crash-safe backup and the logs."""
    from keras_tpp.experiments import backup_callback, kill_point, prepare_backup_dir
    from keras_tpp.experiments.history import iteration_logger
    from keras_tpp.experiments.training import logging_callbacks

    backup = os.path.join(output_dir, "backup", STAGE)

    def log(message: str) -> None:
        print(f"[{STAGE}] {message}", flush=True)

    resuming = prepare_backup_dir(backup, fingerprint(), log=log)
    if resuming:
        log(f"resuming from the backup in {backup}")
    log_dir = os.path.join(output_dir, "logs")
    callbacks = [backup_callback(backup, stage=STAGE, log=print), sparse_callback]
    callbacks += logging_callbacks(log_dir, STAGE, append=resuming)
    callbacks.append(iteration_logger(os.path.join(log_dir, "iterations", f"{STAGE}.csv"),
                                      every=FLAGS.log_every))
    if FLAGS.steps_per_epoch:
        train_ds = train_ds.repeat()
    pmodel.fit(train_ds, epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch,
               validation_data=test_ds, validation_freq=FLAGS.validation_freq,
               callbacks=callbacks, shuffle=False, verbose=FLAGS.verbose)
    kill_point(f"{STAGE}.after_train")


def main() -> None:
    check_flags()
    common.setup_tensorflow()
    import keras

    import keras_tpp
    from keras_tpp.experiments import (
        atomic_save_model,
        atomic_write_json,
        discard_backup,
        remove_stale_temporaries,
    )
    from keras_tpp.experiments.training import cardinality, compile_classifier, sgd

    start_time = time.time()
    output_dir = os.path.abspath(FLAGS.output_dir)
    model_path = os.path.join(output_dir, MODEL_FILE)
    removed = remove_stale_temporaries(output_dir)
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by a killed run: "
              + ", ".join(os.path.relpath(p, output_dir) for p in removed), flush=True)
    done = completed(output_dir) if FLAGS.resume else None
    if done is not None:
        print(f"{model_path} exists from a completed run with the same flags; skipping "
              "training (--noresume redoes it)", flush=True)
        discard_backup(os.path.join(output_dir, "backup", STAGE))  # killed before cleanup
        if FLAGS.export_tflite and not os.path.isfile(os.path.join(output_dir, TFLITE_FILE)):
            sparse = keras.models.load_model(model_path, compile=False)
            done["tflite"] = export_tflite(sparse, output_dir)
            atomic_write_json(os.path.join(output_dir, SUMMARY_FILE), done)
        print(f"sparsity {done['sparsity']:.4f}, test accuracy {done['test_accuracy']:.4f}")
        return

    keras.utils.set_random_seed(FLAGS.seed)
    train_ds, test_ds, data_info = make_data()
    steps_per_epoch = FLAGS.steps_per_epoch or cardinality(train_ds)
    if not steps_per_epoch:
        raise common.usage_error("steps_per_epoch", "the training set is smaller than one "
                                 "batch or of unknown size; give --steps_per_epoch or a "
                                 "smaller --batch_size")
    schedule = check_schedule(steps_per_epoch)
    sparse_callback = sparse_training_callback(schedule)
    model = build_model()
    with blame_prepare():
        pmodel = keras_tpp.prepare(model, pruning_ratio=FLAGS.pruning_ratio,
                                   method=FLAGS.method, initial_ratio=initial_ratio(),
                                   initial_mask=FLAGS.initial_mask, seed=FLAGS.seed)
    compile_for_training(pmodel, steps_per_epoch)
    print(f"== {FLAGS.method} on {FLAGS.model} / {FLAGS.dataset}: sparsity "
          f"{initial_ratio():g} → {FLAGS.pruning_ratio:g} over iterations "
          f"[{schedule['prune_start_step']}, {schedule['prune_end_step']}) of "
          f"{schedule['total_steps']} ({FLAGS.epochs} epochs × {steps_per_epoch}), mask "
          f"updates every {FLAGS.update_frequency}", flush=True)

    train(pmodel, sparse_callback, train_ds, test_ds, output_dir)
    iterations = int(keras.ops.convert_to_numpy(pmodel.optimizer.iterations))
    masked = keras_tpp.sparsity_report(pmodel)  # the masks' counts (the pruning target)
    sparse = keras_tpp.strip(pmodel)
    report = keras_tpp.sparsity_report(sparse)  # exact zeros of the stripped kernels
    print(report, flush=True)
    atomic_save_model(sparse, model_path)
    compile_classifier(sparse, sgd(0.0))
    accuracy = float(sparse.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"])
    masked_count = sum(layer.masked or 0 for layer in masked.layers.values())
    sparsity = masked_count / masked.size
    print(f"[{STAGE}] sparsity {sparsity:.4f} (asked {FLAGS.pruning_ratio:g}; "
          f"{masked_count:,} of {masked.size:,} weights masked, {report.zeros:,} exactly zero "
          f"in the stripped model); test accuracy of the stripped model {accuracy:.4f}",
          flush=True)
    tflite = export_tflite(sparse, output_dir) if FLAGS.export_tflite else None

    layers = {}
    for name, zeros in report.layers.items():
        mask = masked.layers.get(name)
        layers[name] = {"size": zeros.size, "masked": mask.masked if mask else None,
                        "zeros": zeros.zeros, "density": zeros.density}
    summary = {
        "script": "sparse_training.py", "method": FLAGS.method,
        "model": FLAGS.model, "dataset": FLAGS.dataset,
        "pruning_ratio": FLAGS.pruning_ratio, "initial_ratio": initial_ratio(),
        "sparsity": sparsity, "masked_weights": masked_count,
        "zero_fraction": report.global_sparsity, "zero_weights": report.zeros,
        "prunable_weights": report.size,
        "params": int(sparse.count_params()), "test_accuracy": accuracy,
        "iterations": iterations, "schedule": schedule, "layers": layers,
        "model_file": model_path, "tflite": tflite, "data": data_info,
        "flags": common.flag_values(), "fingerprint": fingerprint(),
        "wall_s": time.time() - start_time,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(os.path.join(output_dir, SUMMARY_FILE), summary)
    # Only now, with the model and the summary written, is the backup redundant.
    discard_backup(os.path.join(output_dir, "backup", STAGE))
    print(f"wrote {model_path} and {os.path.join(output_dir, SUMMARY_FILE)}", flush=True)


if __name__ == "__main__":
    common.run_main(main)
