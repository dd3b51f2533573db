"""Stability of TPP's gram penalty: exact (c·λ·L_gram) against the bounded default.

1. For every layer of a keras.applications model that TPP prunes by default, gradient
   descent with heavy-ball momentum on the gram term alone (c = 1000, λ = 1, mask of a 0.5
   ratio, the layer's initial weights), over a grid of learning rates: the largest rate at
   which the exact and the bounded term stay finite and shrink. Pure numpy, seconds.
2. The cost of computing ``prune_penalty`` (the callback's log entry) per call, eagerly and
   as one compiled graph, against one training step.

    python benchmarks/tpp_stability.py --arch EfficientNetB0 --size 32
"""
from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_tpp  # noqa: E402
from keras_tpp import filters  # noqa: E402
from keras_tpp.callbacks import penalty_terms, prune_penalty  # noqa: E402
from keras_tpp.wrappers import find_wrappers  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("arch", "EfficientNetB0", "keras.applications model.")
flags.DEFINE_integer("size", 32, "Input height and width.")
flags.DEFINE_float("momentum", 0.9, "Heavy-ball momentum of the sweep.")
flags.DEFINE_integer("steps", 300, "Gradient steps per learning rate in the sweep.")
flags.DEFINE_integer("top", 5, "Layers to report (largest curvature bound first).")
flags.DEFINE_integer("batch_size", 16, "Batch of the timed training step.")
flags.DEFINE_string("out", None, "Optional JSON file for the results.")

LRS = [10.0 ** e for e in np.arange(-7, 0.01, 0.5)]


def _bound(w):
    g = w @ w.T
    return 12.0 * min(np.sqrt((g ** 2).sum()), np.abs(g).sum(axis=1).max()) / w.shape[0] ** 2


def _stable(w0, m, lr, bounded, c=1000.0, lam=1.0):
    """Heavy-ball descent on c·λ·L_gram alone: finite and ‖W‖ not growing."""
    w, v = w0.copy(), np.zeros_like(w0)
    off = 1.0 - np.outer(m, m)
    n = w.shape[0]
    for _ in range(FLAGS.steps):
        weight = c * lam
        if bounded:
            weight = min(weight, 1.0 / (lr * _bound(w)))
        grad = weight * 4.0 / n ** 2 * ((w @ w.T) * off) @ w
        v = FLAGS.momentum * v + grad
        w = w - lr * v
        if not np.all(np.isfinite(w)) or np.linalg.norm(w) > 10 * np.linalg.norm(w0):
            return False
    return True


def _largest_stable(w, m, bounded):
    stable = [lr for lr in LRS if _stable(w, m, lr, bounded)]
    return max(stable) if stable else 0.0


def main(argv):
    del argv
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, FLAGS.arch)(
        weights=None, input_shape=(FLAGS.size, FLAGS.size, 3), classes=10)
    pmodel = keras_tpp.prepare(model, 0.5, method="tpp")
    wrappers = find_wrappers(pmodel)
    layers = []
    for wrapper in wrappers:
        if wrapper.is_producer:
            w = keras.ops.convert_to_numpy(
                filters.layer_filter_matrix(wrapper.layer)).astype(np.float64)
            m = keras.ops.convert_to_numpy(wrapper.keep_mask.value).astype(np.float64)
            layers.append((_bound(w), wrapper.name, w, m))
    layers.sort(key=lambda item: -item[0])
    sweep = []
    for bound, name, w, m in layers[:FLAGS.top]:
        row = {"layer": name, "shape": list(w.shape), "H": bound,
               "exact_max_lr": _largest_stable(w, m, False),
               "bounded_max_lr": _largest_stable(w, m, True)}
        sweep.append(row)
        print(f"{name:28s} N×K={w.shape[0]}×{w.shape[1]:<5d} H={bound:9.3g}  largest stable "
              f"LR: exact {row['exact_max_lr']:.3g}, bounded {row['bounded_max_lr']:.3g}")

    for wrapper in wrappers:
        wrapper.strength.assign(0.5)
        wrapper.step_size.assign(0.1)
    terms = penalty_terms(wrappers)
    start = time.perf_counter()
    eager = prune_penalty(wrappers)
    eager_s = time.perf_counter() - start
    cb = keras_tpp.TPPCallback()
    cb.controller = type("C", (), {"wrappers": wrappers})()
    cb._compute_penalty()  # trace
    start = time.perf_counter()
    for _ in range(5):
        graph = cb._compute_penalty()
    graph_s = (time.perf_counter() - start) / 5
    pmodel.compile(keras.optimizers.SGD(1e-3), keras.losses.SparseCategoricalCrossentropy())
    x = np.random.default_rng(0).normal(
        size=(FLAGS.batch_size * 4, FLAGS.size, FLAGS.size, 3)).astype("float32")
    y = np.zeros(len(x), "int64")
    pmodel.fit(x[:FLAGS.batch_size], y[:FLAGS.batch_size], batch_size=FLAGS.batch_size,
               verbose=0)
    start = time.perf_counter()
    pmodel.fit(x, y, batch_size=FLAGS.batch_size, verbose=0)
    step_s = (time.perf_counter() - start) / 4
    print(f"prune_penalty over {len(terms)} terms: eager {eager_s * 1e3:.1f} ms, "
          f"compiled {graph_s * 1e3:.1f} ms per call (values {eager:.6g} / {graph:.6g}); "
          f"one training step (batch {FLAGS.batch_size}) {step_s * 1e3:.0f} ms")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump({"arch": FLAGS.arch, "sweep": sweep, "penalty_eager_s": eager_s,
                       "penalty_compiled_s": graph_s, "step_s": step_s}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
