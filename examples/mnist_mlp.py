r"""SPEC §1's MLP-7-Linear experiment: L1, L1 + OrthP and TPP side by side on MNIST.

MNIST resized to 32×32 and flattened; Dense 1024→100, five 100→100, 100→10, no activations.
The script pretrains the network, prunes fc1..fc6 with the same ratio three ways —

- ``l1``: one-shot L1-norm pruning (keras_tpp.prune);
- ``l1_orthp``: the same thin model with every kernel replaced by its orthogonal QR factor
  (keras_tpp.orthp, the oracle that restores exact dynamical isometry);
- ``tpp``: keras_tpp.prepare(method="tpp") + PruningCallback, then keras_tpp.shrink —

and reports, for each, the mean Jacobian singular value right after pruning (on
--jsv_examples test images; 1.0 = perfect isometry) and the test accuracy right after
pruning and after retraining (SGD, momentum 0.9, constant --retrain_lr; give several
comma-separated rates to run each). Writes summary.json and mnist_mlp.png to --model_dir.

The published table (SPEC §1; its pruning ratio is unverified): accuracy at LR 1e-2 / 1e-3 /
mean JSV: L1 91.36 / 90.54 / 0.0040, L1+OrthP 92.79 / 92.77 / 1.0000, TPP 92.82 / 92.77 /
3.4875.

    KERAS_HOME=<folder holding datasets/mnist.npz> python examples/mnist_mlp.py --retrain_lr 1e-2,1e-3
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
METHOD_NAMES = ("l1", "l1_orthp", "tpp")
PUBLISHED = {  # SPEC §1: accuracy (%) at LR 1e-2, at LR 1e-3, mean JSV after pruning
    "l1": {"acc_lr1e-2": 91.36, "acc_lr1e-3": 90.54, "jsv": 0.0040},
    "l1_orthp": {"acc_lr1e-2": 92.79, "acc_lr1e-3": 92.77, "jsv": 1.0},
    "tpp": {"acc_lr1e-2": 92.82, "acc_lr1e-3": 92.77, "jsv": 3.4875},
}

flags.DEFINE_enum("data_source", "keras", ("keras", "tfds"),
                  "keras: Keras' mnist.npz from --data_dir or $KERAS_HOME/datasets (else "
                  "keras.datasets downloads it); tfds: tfds.load('mnist', data_dir=--data_dir).")
flags.DEFINE_string("data_dir", None, "mnist.npz, a directory holding (datasets/)mnist.npz, "
                    "or the tfds data dir.")
flags.DEFINE_integer("train_examples", None, "Use only the first N training images.",
                     lower_bound=1)
flags.DEFINE_integer("test_examples", None, "Use only the first N test images.", lower_bound=1)
flags.DEFINE_string("model_dir", "runs/mnist_mlp", "Where summary.json, the figure and logs go.")
flags.DEFINE_integer("epochs", 90, "Pretraining epochs (LR ×0.1 at 50% and 75%).",
                     lower_bound=1)
flags.DEFINE_float("lr", 0.01, "Pretraining learning rate (SGD, momentum 0.9).", lower_bound=0)
flags.DEFINE_integer("batch_size", 100, "Batch size of every phase.", lower_bound=1)
flags.DEFINE_float("pruning_ratio", 0.5,
                   "Fraction of each of fc1..fc6's units to remove (the published table's "
                   "ratio is unverified).", lower_bound=0, upper_bound=0.99)
flags.DEFINE_list("methods", list(METHOD_NAMES), f"Which of {', '.join(METHOD_NAMES)} to run.")
flags.DEFINE_list("retrain_lr", ["1e-2"],
                  "Retraining learning rate(s), constant; e.g. 1e-2,1e-3 runs both.")
flags.DEFINE_integer("retrain_epochs", 90, "Retraining epochs.", lower_bound=1)
flags.DEFINE_float("prune_lr", 1e-3, "TPP: learning rate while the penalties grow.",
                   lower_bound=0)
flags.DEFINE_float("delta", 1e-4, "TPP: Δ, λ increment every --interval iterations.",
                   lower_bound=0)
flags.DEFINE_integer("interval", 10, "TPP: K_u.", lower_bound=1)
flags.DEFINE_float("ceiling", 1.0, "TPP: τ.", lower_bound=0)
flags.DEFINE_integer("stabilize_steps", 10_000, "TPP: K_s.", lower_bound=0)
flags.DEFINE_integer("jsv_examples", 500, "Test images for the Jacobian singular values.",
                     lower_bound=1)
flags.DEFINE_integer("latency_runs", 20, "Timed runs per latency measurement (0 = skip).",
                     lower_bound=0)
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("verbose", 2, "Keras verbosity.", lower_bound=0, upper_bound=2)


def parse_flags_lists():
    methods = [m.strip() for m in FLAGS.methods if m.strip()]
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown or not methods:
        raise common.usage_error("methods", f"expected a comma-separated subset of "
                                 f"{', '.join(METHOD_NAMES)}, got {','.join(FLAGS.methods)!r}")
    rates = []
    for text in FLAGS.retrain_lr:
        try:
            rate = float(text)
        except ValueError:
            rate = -1.0
        if not rate > 0:
            raise common.usage_error("retrain_lr", f"{text!r} is not a positive number "
                                     "(expected e.g. 1e-2 or 1e-2,1e-3)")
        rates.append(rate)
    if not 0 < FLAGS.delta <= FLAGS.ceiling:
        raise common.usage_error("delta", f"must be in (0, --ceiling={FLAGS.ceiling}]")
    return methods, rates


def load_data():
    from keras_tpp.data import mnist_arrays

    if FLAGS.data_dir and not os.path.exists(FLAGS.data_dir):
        raise common.usage_error("data_dir", f"{FLAGS.data_dir} does not exist; expected "
                                 "mnist.npz or a directory holding (datasets/)mnist.npz")
    try:
        with common.blame("data_dir"):
            return mnist_arrays(32, source=FLAGS.data_source, data_dir=FLAGS.data_dir,
                                train_examples=FLAGS.train_examples,
                                test_examples=FLAGS.test_examples)
    except common.UsageError:
        raise
    except Exception as e:  # a failed download, a broken file, tfds errors
        raise common.usage_error(
            "data_dir", f"could not load MNIST ({type(e).__name__}: {common.one_line(e)}); "
            "give --data_dir with mnist.npz or set KERAS_HOME") from e


def plot(results: dict, rates: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    width = 0.8 / (len(rates) + 1)
    x = np.arange(len(methods))
    ax1.bar(x, [100 * results[m]["accuracy_after_pruning"] for m in methods], width,
            label="right after pruning", color="0.75")
    for i, rate in enumerate(rates):
        ax1.bar(x + (i + 1) * width,
                [100 * results[m]["retrained"][f"{rate:g}"] for m in methods], width,
                label=f"retrained, LR {rate:g}")
    ax1.set_xticks(x + width * len(rates) / 2, methods)
    ax1.set_ylabel("test accuracy (%)")
    ax1.legend(fontsize=7)
    ax1.set_title("MLP-7-Linear on MNIST")
    ax2.bar(x, [results[m]["jsv"]["mean"] for m in methods], 0.5, color="tab:purple")
    ax2.axhline(1.0, color="k", lw=0.8, ls="--")
    ax2.set_yscale("log")
    ax2.set_xticks(x, methods)
    ax2.set_ylabel("mean JSV right after pruning")
    ax2.set_title("trainability (1 = isometry)")
    fig.tight_layout()
    from keras_tpp.experiments import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main() -> None:
    methods, rates = parse_flags_lists()
    common.setup_tensorflow()
    import keras

    import keras_tpp
    from keras_tpp import lr_schedules
    from keras_tpp.experiments.training import compile_classifier, logging_callbacks, sgd
    from keras_tpp.metrics import jacobian_singular_values

    start = time.time()
    keras.utils.set_random_seed(FLAGS.seed)
    (x_train, y_train), (x_test, y_test) = load_data()
    model_dir = os.path.abspath(FLAGS.model_dir)
    log_dir = os.path.join(model_dir, "logs")
    batch = FLAGS.batch_size
    steps_per_epoch = max(1, len(x_train) // batch)
    x_jsv = x_test[:FLAGS.jsv_examples]

    def fit(model, epochs, name, callbacks=(), steps=None):
        data = dict(x=x_train, y=y_train, batch_size=batch, shuffle=True)
        if steps is not None:  # a schedule of a given length: cycle the data
            ds = keras_tpp_dataset().repeat()
            data = dict(x=ds, steps_per_epoch=steps, shuffle=False)  # shuffled by tf.data
        model.fit(**data, epochs=epochs, validation_data=(x_test, y_test),
                  verbose=FLAGS.verbose,
                  callbacks=list(callbacks) + logging_callbacks(log_dir, name, False))

    def keras_tpp_dataset():
        import tensorflow as tf

        return (tf.data.Dataset.from_tensor_slices((x_train, y_train))
                .shuffle(len(x_train), seed=FLAGS.seed).batch(batch, drop_remainder=True))

    def accuracy(model):
        if getattr(model, "optimizer", None) is None:  # e.g. shrink's uncompiled model
            compile_classifier(model, sgd(0.0))
        return float(model.evaluate(x_test, y_test, verbose=0, batch_size=1000,
                                    return_dict=True)["accuracy"])

    def cost(model):
        out = {k: v for k, v in keras_tpp.profile(model).items() if k in ("params", "macs")}
        if FLAGS.latency_runs:
            out["latency_ms"] = {str(b): keras_tpp.measure_latency(
                model, b, runs=FLAGS.latency_runs)["median_ms"] for b in (1, 64)}
        return out

    def jsv(model):
        stats = jacobian_singular_values(model, x_jsv)
        return {k: stats[k] for k in ("mean", "std", "min", "max")}

    print(f"== pretrain MLP-7-Linear: {FLAGS.epochs} epochs on {len(x_train)} images",
          flush=True)
    dense = keras_tpp.models.mlp_linear()
    compile_classifier(dense, sgd(lr_schedules.StepDecay(
        FLAGS.lr, [0.5 * FLAGS.epochs, 0.75 * FLAGS.epochs], 0.1, steps_per_epoch)))
    fit(dense, FLAGS.epochs, "pretrain")
    dense_acc = accuracy(dense)
    dense_jsv = jsv(dense)
    print(f"pretrained: accuracy {dense_acc:.4f}, mean JSV {dense_jsv['mean']:.4f}", flush=True)
    ratio = {"fc[1-6]": FLAGS.pruning_ratio}

    thin = {}
    if "l1" in methods or "l1_orthp" in methods:
        l1 = keras_tpp.prune(dense, ratio, method="l1")
        if "l1" in methods:
            thin["l1"] = l1
        if "l1_orthp" in methods:
            thin["l1_orthp"] = keras_tpp.orthp(l1)
    tpp_iterations = None
    if "tpp" in methods:
        pmodel = keras_tpp.prepare(dense, ratio, method="tpp")
        compile_classifier(pmodel, sgd(FLAGS.prune_lr))
        callback = keras_tpp.PruningCallback(
            delta=FLAGS.delta, interval=FLAGS.interval, ceiling=FLAGS.ceiling,
            stabilize_steps=FLAGS.stabilize_steps, stop_when_pruned=True, verbose=1)
        end = callback.schedule.end_step
        epochs = math.ceil((end + 2) / steps_per_epoch)
        print(f"== TPP: λ 0 → {FLAGS.ceiling:g} (+{FLAGS.delta:g} every {FLAGS.interval} "
              f"iterations), hold {FLAGS.stabilize_steps}, prune at iteration {end}",
              flush=True)
        fit(pmodel, epochs, "tpp_prune", [callback], steps=steps_per_epoch)
        tpp_iterations = int(pmodel.optimizer.iterations.numpy())
        thin["tpp"] = keras_tpp.shrink(pmodel)
    thin = {m: thin[m] for m in methods}

    results = {}
    for name, model in thin.items():
        results[name] = {**cost(model), "jsv": jsv(model),
                         "accuracy_after_pruning": accuracy(model), "retrained": {}}
        print(f"{name}: right after pruning: accuracy "
              f"{results[name]['accuracy_after_pruning']:.4f}, mean JSV "
              f"{results[name]['jsv']['mean']:.4f}", flush=True)
        for rate in rates:
            print(f"== retrain {name} at LR {rate:g} for {FLAGS.retrain_epochs} epochs",
                  flush=True)
            retrained = keras_tpp.cloning.clone(model).model
            compile_classifier(retrained, sgd(rate))
            fit(retrained, FLAGS.retrain_epochs, f"{name}_lr{rate:g}")
            results[name]["retrained"][f"{rate:g}"] = accuracy(retrained)

    header = ["method", "params", "mean JSV after pruning", "acc after pruning"] + [
        f"acc retrained LR {r:g}" for r in rates]
    rows = [[m, f"{r['params']:,}", f"{r['jsv']['mean']:.4f}",
             f"{r['accuracy_after_pruning']:.4f}"] + [
                 f"{r['retrained'][f'{rate:g}']:.4f}" for rate in rates]
            for m, r in results.items()]
    rows.insert(0, ["dense", f"{dense.count_params():,}", f"{dense_jsv['mean']:.4f}",
                    f"{dense_acc:.4f}"] + ["" for _ in rates])
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    print()
    for row in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))

    os.makedirs(model_dir, exist_ok=True)
    figure = os.path.join(model_dir, "mnist_mlp.png")
    plot(results, rates, figure)
    summary = {
        "dense": {"accuracy": dense_acc, **cost(dense), "jsv": dense_jsv},
        "methods": results, "tpp_prune_iterations": tpp_iterations,
        "published": {m: PUBLISHED[m] for m in results},
        "data": {"source": FLAGS.data_source, "train_examples": int(len(x_train)),
                 "test_examples": int(len(x_test)), "jsv_examples": int(len(x_jsv))},
        "flags": common.flag_values(), "figure": figure, "wall_s": time.time() - start,
    }
    common.atomic_write_json(os.path.join(model_dir, "summary.json"), summary)
    print(f"wrote {os.path.join(model_dir, 'summary.json')} and {figure}")


if __name__ == "__main__":
    common.run_main(main)
