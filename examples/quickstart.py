"""keras-tpp in a few minutes on a CPU: pretrain → TPP → shrink → fine-tune.

No flags, no download, no GPU needed::

    python examples/quickstart.py

A small CNN (keras_tpp.models.small_cnn) learns keras_tpp's embedded synthetic-shapes
dataset; TPP (prepare + TPPCallback on a short schedule) then drives half of every conv's
filters to zero, keras_tpp.shrink removes them physically, and the thin model is fine-tuned
with a fresh optimizer. The script prints a before/after table — accuracy, parameters, MACs
and measured latency at batch 1 and 64 — and writes it to <out_dir>/summary.json (the thin
model to <out_dir>/thin.keras, per-phase CSV logs to <out_dir>/logs/).
"""
from __future__ import annotations

import math
import os
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "runs/quickstart", "Where summary.json, thin.keras and logs go.")
flags.DEFINE_integer("train_examples", 6000, "Synthetic training images.", lower_bound=64)
flags.DEFINE_integer("test_examples", 1000, "Synthetic test images.", lower_bound=10)
flags.DEFINE_integer("epochs", 10, "Pretraining epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Batch size.", lower_bound=1)
flags.DEFINE_float("lr", 0.05, "Pretraining learning rate (×0.1 at 50% and 75%).",
                   lower_bound=0)
flags.DEFINE_float("pruning_ratio", 0.5, "Fraction of each conv's filters to remove.",
                   lower_bound=0, upper_bound=0.95)
flags.DEFINE_float("prune_lr", 0.01, "Learning rate while TPP's penalties grow.",
                   lower_bound=0)
flags.DEFINE_integer("ramp_steps", 300, "Iterations for λ to grow from 0 to 1.",
                     lower_bound=1)
flags.DEFINE_integer("interval", 5, "λ grows every this many iterations.", lower_bound=1)
flags.DEFINE_integer("stabilize_steps", 100, "Iterations at λ = 1 before pruning.",
                     lower_bound=0)
flags.DEFINE_integer("finetune_epochs", 6, "Fine-tuning epochs of the thin model.",
                     lower_bound=1)
flags.DEFINE_float("finetune_lr", 0.01, "Fine-tuning learning rate (×0.1 at 50%, 75%).",
                   lower_bound=0)
flags.DEFINE_integer("latency_runs", 20, "Timed runs per latency measurement (0 = skip).",
                     lower_bound=0)
flags.DEFINE_integer("seed", 0, "Random seed (data and initialization).")
flags.DEFINE_integer("verbose", 1, "Keras verbosity (1 progress bars, 2 one line per epoch).",
                     lower_bound=0, upper_bound=2)


def main() -> None:
    if FLAGS.ramp_steps < FLAGS.interval:
        raise common.usage_error("ramp_steps", f"must be >= --interval={FLAGS.interval}")
    common.setup_tensorflow()
    import keras

    import keras_tpp
    from keras_tpp import lr_schedules
    from keras_tpp.data import cifar_pipeline, synthetic_shapes
    from keras_tpp.experiments import before_after_rows, format_table
    from keras_tpp.experiments.training import (
        compile_classifier,
        label_masks,
        logging_callbacks,
        sgd,
    )

    start = time.time()
    keras.utils.set_random_seed(FLAGS.seed)
    # The same accuracies run to run on one machine: deterministic TensorFlow kernels
    # (seeded data and initialization alone leave thread-order float differences).
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    out_dir = os.path.abspath(FLAGS.out_dir)
    log_dir = os.path.join(out_dir, "logs")
    arrays = {"train": synthetic_shapes(FLAGS.train_examples, seed=FLAGS.seed),
              "test": synthetic_shapes(FLAGS.test_examples, seed=FLAGS.seed + 1)}
    data = dict(source="arrays", arrays=arrays, batch_size=FLAGS.batch_size, augment=False,
                seed=FLAGS.seed)
    train = cifar_pipeline("train", training=True, **data)
    test = cifar_pipeline("test", training=False, **data)
    steps_per_epoch = FLAGS.train_examples // FLAGS.batch_size
    verbose = FLAGS.verbose

    def fit(model, epochs, name, callbacks=()):
        model.fit(train, epochs=epochs, validation_data=test, verbose=verbose,
                  shuffle=False,  # a tf.data.Dataset: shuffled by the pipeline
                  callbacks=list(callbacks) + logging_callbacks(log_dir, name, False))

    def accuracy(model):
        return float(model.evaluate(test, verbose=0, return_dict=True)["accuracy"])

    # 1. Pretrain the dense model.
    print(f"== 1/4 pretrain small_cnn: {FLAGS.epochs} epochs on "
          f"{FLAGS.train_examples} synthetic images", flush=True)
    dense = keras_tpp.models.small_cnn()
    compile_classifier(dense, sgd(lr_schedules.StepDecay(
        FLAGS.lr, [0.5 * FLAGS.epochs, 0.75 * FLAGS.epochs], 0.1, steps_per_epoch)), 5e-4)
    fit(dense, FLAGS.epochs, "pretrain")
    dense_acc = accuracy(dense)

    # 2. TPP: grow the penalties on the filters to remove, hold, then zero them.
    pmodel = keras_tpp.prepare(dense, pruning_ratio=FLAGS.pruning_ratio, method="tpp")
    compile_classifier(pmodel, sgd(FLAGS.prune_lr), 5e-4)
    tpp = keras_tpp.TPPCallback(ramp_steps=FLAGS.ramp_steps, interval=FLAGS.interval,
                                ceiling=1.0, stabilize_steps=FLAGS.stabilize_steps,
                                stop_when_pruned=True)
    end_step = tpp.schedule.end_step
    print(f"== 2/4 TPP on {len(keras_tpp.get_masks(pmodel))} layers: λ 0 → 1 in "
          f"{FLAGS.ramp_steps} iterations, hold {FLAGS.stabilize_steps}, prune at "
          f"iteration {end_step}", flush=True)
    fit(pmodel, math.ceil((end_step + 2) / steps_per_epoch), "prune", [tpp])
    pruned_acc = accuracy(pmodel)

    # 3. Remove the zeroed channels physically.
    thin = keras_tpp.shrink(pmodel)
    print(f"== 3/4 shrink: {dense.count_params():,} → {thin.count_params():,} parameters; "
          f"accuracy right after pruning {pruned_acc:.3f}", flush=True)

    # 4. Fine-tune the thin model with a fresh optimizer.
    print(f"== 4/4 fine-tune the thin model: {FLAGS.finetune_epochs} epochs", flush=True)
    compile_classifier(thin, sgd(lr_schedules.StepDecay(
        FLAGS.finetune_lr, [0.5 * FLAGS.finetune_epochs, 0.75 * FLAGS.finetune_epochs], 0.1,
        steps_per_epoch)), 5e-4)
    fit(thin, FLAGS.finetune_epochs, "finetune")
    thin_acc = accuracy(thin)

    comparison = keras_tpp.compare(dense, thin, batch_sizes=(1, 64),
                                   latency=FLAGS.latency_runs > 0,
                                   runs=max(FLAGS.latency_runs, 1), print_table=False)
    rows = before_after_rows({"accuracy": dense_acc, **comparison["before"]},
                             {"accuracy": thin_acc, **comparison["after"]},
                             comparison["latency"])
    print()
    print(format_table(("", "before (dense)", "after (TPP, thin)", "change"), rows))
    print(f"(accuracy right after pruning, before fine-tuning: {pruned_acc:.4f})")

    summary = {
        "before": {"accuracy": dense_acc, **comparison["before"]},
        "after": {"accuracy": thin_acc, **comparison["after"]},
        "accuracy_after_pruning_before_finetune": pruned_acc,
        "params_ratio": comparison["params_ratio"],
        "macs_ratio": comparison["macs_ratio"],
        "latency_ms": {str(b): v for b, v in comparison["latency"].items()},
        "pruned_channels": label_masks(keras_tpp.get_masks(pmodel)),
        "prune_iterations": int(pmodel.optimizer.iterations.numpy()),
        "flags": common.flag_values(),
        "data": "keras_tpp.data.synthetic_shapes (10 classes, 32x32)",
        "wall_s": time.time() - start,
    }
    common.atomic_save_model(thin, os.path.join(out_dir, "thin.keras"))
    common.atomic_write_json(os.path.join(out_dir, "summary.json"), summary)
    print(f"wrote {os.path.join(out_dir, 'summary.json')} ({summary['wall_s']:.0f} s)")


if __name__ == "__main__":
    common.run_main(main)
