"""Training-step overhead of a TPP-prepared model against the same model unprepared.

Measures, in one run, the time of one SGD training step of a model, plain and after
``keras_tpp.prepare(model, pruning_ratio, layers=...)`` with λ > 0 (the gram, weight and BN
penalties, the gram term's curvature bound and the mask constraints all active), and prints
the ratio prepared / plain, median and fastest block.

- ``--model resnet56`` (default): CIFAR ResNet-56 as built by keras_tpp.models.cifar_resnet,
  CIFAR shape (32²), batch 128, ``layers="*_conv1"`` (the paper's layer set); target ≤ 1.05.
- ``--model resnet50``: keras.applications.ResNet50(weights=None) at ``--image_size``,
  every prunable layer (``--layers ''``); target ≤ 1.15 at batch 32 on 128² inputs.

Both models train through ``model.fit``'s compiled step on the same in-memory batches; timed
blocks alternate between the two models so that machine noise hits both alike.
``--compare_full`` adds a third model, prepared the same way but with every gram term told
nothing about its pruned count, so that it computes the whole W Wᵀ as before version 0.3
(before/after in one run). ``--step_size`` > 0 sets the wrappers' η as the pruning callback would (0: "unknown", the
bound then never cuts). ``--penalty_only`` also times the penalties alone (their sum and
its gradient in one compiled function), to show what remains of the overhead.

    python benchmarks/prepared_step_time.py --depth 56 --batch_size 128 --steps 10 --rounds 5
    python benchmarks/prepared_step_time.py --model resnet50 --image_size 128 \\
        --batch_size 32 --steps 3 --rounds 5
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
from keras_tpp import models  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "resnet56", ["resnet56", "resnet50"], "Model to time.")
flags.DEFINE_integer("depth", 56, "CIFAR ResNet depth (6n+2), --model resnet56.")
flags.DEFINE_integer("image_size", None, "Input side (default 32 for resnet56, 64 else).")
flags.DEFINE_string("layers", None,
                    "Layer pattern to prune (default '*_conv1' for resnet56, every prunable "
                    "layer for resnet50; '' = every prunable layer).")
flags.DEFINE_integer("batch_size", 128, "Batch size of one training step.")
flags.DEFINE_integer("steps", 10, "Training steps per timed block.")
flags.DEFINE_integer("rounds", 5, "Timed blocks per model (alternating).")
flags.DEFINE_float("pruning_ratio", 0.5, "Ratio of every pruned layer.")
flags.DEFINE_bool("preset_2_31x", False,
                  "--model resnet50: prune SPEC's 2.31× preset instead (conv1 and conv2 of "
                  "every bottleneck, ratios 0.6/0.6/0.6/0.21 for conv2_x..conv5_x); "
                  "overrides --layers and --pruning_ratio.")
flags.DEFINE_float("step_size", 0.0, "η given to the wrappers (0 = unknown, as before "
                   "the pruning callback runs).")
flags.DEFINE_bool("penalty_only", False, "Also time the penalties alone.")
flags.DEFINE_bool("compare_full", False,
                  "Also time a third model whose gram terms compute the whole W Wᵀ (the "
                  "formulation before version 0.3: GramPenalty.num_pruned = None).")
flags.DEFINE_string("out", None, "Optional JSON file for the results.")


def _compiled(model: keras.Model) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3, momentum=0.9, weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=FLAGS.steps,
    )
    return model


def _time_block(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Seconds per training step over one ``fit`` epoch of FLAGS.steps steps."""
    start = time.perf_counter()
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=1, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / FLAGS.steps


def _build() -> tuple[keras.Model, str, int, int, str | None]:
    """(plain model, its name, input side, number of classes, layer pattern)."""
    if FLAGS.model == "resnet56":
        side = FLAGS.image_size or 32
        layers = "*_conv1" if FLAGS.layers is None else (FLAGS.layers or None)
        return models.cifar_resnet(FLAGS.depth), f"resnet{FLAGS.depth}", side, 10, layers
    side = FLAGS.image_size or 64
    model = keras.applications.ResNet50(weights=None, input_shape=(side, side, 3),
                                        classifier_activation=None)
    if FLAGS.preset_2_31x:
        return model, "resnet50@2.31x", side, 1000, None
    return model, "resnet50", side, 1000, FLAGS.layers or None


RESNET50_2_31X = models.resnet50_ratios("2.31x")  # SPEC's 2.31× preset


def _gram_macs(model: keras.Model) -> int:
    """Multiply-adds of every gram term's value and gradient per step, as computed:
    (3N − P)·P·K over the pruned rows, 3·N²·K for the whole W Wᵀ (N filters of K weights,
    P pruned)."""
    total = 0
    for variable in model.weights:
        for reg in getattr(variable.regularizer, "regularizers", []):
            if not isinstance(reg, keras_tpp.penalties.GramPenalty):
                continue
            shape = tuple(variable.shape)
            n = shape[reg.axis]
            k = int(np.prod(shape)) // n
            p = reg.num_pruned
            full = n * n * k >= keras_tpp.penalties.PRUNED_ROWS_MIN_SIZE
            total += (3 * n - p) * p * k if p is not None and full else 3 * n * n * k
    return total


def _penalty_time(model: keras.Model, repeats: int = 5) -> float:
    """Fastest of ``repeats`` runs of one compiled function: Σ of the model's
    regularization losses and its gradient with respect to the trainable weights (s)."""
    import tensorflow as tf  # the benchmark runs on the TensorFlow backend

    weights = model.trainable_variables

    @tf.function(autograph=False)
    def penalties():
        with tf.GradientTape() as tape:
            total = tf.add_n(model.losses)
        grads = tape.gradient(total, weights)
        return total, [g for g in grads if g is not None]

    penalties()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = penalties()
        float(out[0])
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str]) -> None:
    del argv
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    plain, name, side, classes, layers = _build()
    n = FLAGS.batch_size * FLAGS.steps
    x = rng.normal(size=(n, side, side, 3)).astype("float32")
    y = rng.integers(0, classes, size=n)
    _compiled(plain)
    timed = {"plain": plain}
    for key in ("prepared", "prepared_full") if FLAGS.compare_full else ("prepared",):
        ratio = (RESNET50_2_31X if FLAGS.model == "resnet50" and FLAGS.preset_2_31x
                 else FLAGS.pruning_ratio)
        model = keras_tpp.prepare(plain, ratio, layers=layers)
        wrappers = keras_tpp.wrappers.find_wrappers(model)
        for wrapper in wrappers:
            wrapper.strength.assign(0.5)  # penalties on, as mid-schedule
            wrapper.step_size.assign(FLAGS.step_size)
        if key == "prepared_full":
            for variable in model.weights:
                for reg in getattr(variable.regularizer, "regularizers", []):
                    if isinstance(reg, keras_tpp.penalties.GramPenalty):
                        reg.set_num_pruned(None)
        timed[key] = _compiled(model)
    prepared = timed["prepared"]
    for model in timed.values():  # trace and warm up
        _time_block(model, x, y)
    times = {key: [] for key in timed}
    for _ in range(FLAGS.rounds):
        for key, model in timed.items():
            times[key].append(_time_block(model, x, y))
    result = {
        "model": name,
        "image_size": side,
        "batch_size": FLAGS.batch_size,
        "layers": layers,
        "wrappers": len(wrappers),
        "step_size": FLAGS.step_size,
        "plain_step_ms": 1000 * float(np.median(times["plain"])),
        "prepared_step_ms": 1000 * float(np.median(times["prepared"])),
        "plain_best_step_ms": 1000 * float(np.min(times["plain"])),
        "prepared_best_step_ms": 1000 * float(np.min(times["prepared"])),
        "blocks_ms": {k: [round(1000 * t, 1) for t in v] for k, v in times.items()},
    }
    result["ratio"] = result["prepared_step_ms"] / result["plain_step_ms"]
    # The fastest block of each model is the least disturbed by other load on the machine.
    result["best_ratio"] = result["prepared_best_step_ms"] / result["plain_best_step_ms"]
    # The ratio that multiply-add counts alone predict: a training step costs about 3× the
    # forward MACs (forward, input gradients, weight gradients), and the gram terms add
    # their own MACs whatever the batch size. Not a bound on time: the gram terms' large
    # matmuls run nearer the CPU's peak than convolutions do.
    step_macs = 3 * FLAGS.batch_size * keras_tpp.profile(plain)["macs"]
    result["step_macs"] = int(step_macs)
    result["gram_macs"] = int(_gram_macs(prepared))
    result["mac_ratio"] = 1.0 + result["gram_macs"] / step_macs
    if FLAGS.compare_full:
        result["full_step_ms"] = 1000 * float(np.median(times["prepared_full"]))
        result["full_best_step_ms"] = 1000 * float(np.min(times["prepared_full"]))
        result["full_ratio"] = result["full_step_ms"] / result["plain_step_ms"]
        result["full_best_ratio"] = result["full_best_step_ms"] / result["plain_best_step_ms"]
    if FLAGS.penalty_only:
        result["penalty_ms"] = 1000 * _penalty_time(prepared)
        if FLAGS.compare_full:
            result["full_penalty_ms"] = 1000 * _penalty_time(timed["prepared_full"])
    print(f"{name} {side}² batch {FLAGS.batch_size} ({len(wrappers)} wrappers): median plain "
          f"{result['plain_step_ms']:.1f} ms/step, prepared {result['prepared_step_ms']:.1f} "
          f"ms/step, ratio {result['ratio']:.3f}; best-block ratio {result['best_ratio']:.3f}"
          + (f"; penalties alone {result['penalty_ms']:.1f} ms" if FLAGS.penalty_only else ""))
    print(f"  gram terms {result['gram_macs'] / 1e9:.2f} G multiply-adds per step against "
          f"{step_macs / 1e9:.1f} G for the plain step (3 × forward): ratio of MAC counts "
          f"{result['mac_ratio']:.3f}")
    if FLAGS.compare_full:
        print(f"  whole W Wᵀ (before): median {result['full_step_ms']:.1f} ms/step, ratio "
              f"{result['full_ratio']:.3f}; best-block ratio {result['full_best_ratio']:.3f}"
              + (f"; penalties alone {result['full_penalty_ms']:.1f} ms"
                 if FLAGS.penalty_only else ""))
    print(json.dumps(result["blocks_ms"]))
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
