"""Training-step overhead of a TPP-prepared model against the same model unprepared.

Measures, in one run, the median time of one SGD training step (batch 128, CIFAR shape) of
ResNet-56 as built by keras_tpp.models.cifar_resnet, plain and after
``keras_tpp.prepare(model, 0.5, layers="*_conv1")`` with λ > 0 (the gram, weight and BN
penalties all active), and prints the ratio prepared / plain (target ≤ 1.05).

Both models train through ``model.fit``'s compiled step on the same in-memory batch; timed
blocks alternate between the two models so that machine noise hits both alike.

    python benchmarks/prepared_step_time.py --depth 56 --batch_size 128 --steps 10 --rounds 5
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
flags.DEFINE_integer("depth", 56, "CIFAR ResNet depth (6n+2).")
flags.DEFINE_integer("batch_size", 128, "Batch size of one training step.")
flags.DEFINE_integer("steps", 10, "Training steps per timed block.")
flags.DEFINE_integer("rounds", 5, "Timed blocks per model (alternating).")
flags.DEFINE_float("pruning_ratio", 0.5, "Ratio of the first conv of each block.")
flags.DEFINE_string("out", None, "Optional JSON file for the results.")


def _compiled(model: keras.Model) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3, momentum=0.9, weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=FLAGS.steps,
    )
    return model


def _time_block(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    start = time.perf_counter()
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=1, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / FLAGS.steps


def main(argv: list[str]) -> None:
    del argv
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = FLAGS.batch_size * FLAGS.steps
    x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=n)
    plain = _compiled(models.cifar_resnet(FLAGS.depth))
    prepared = keras_tpp.prepare(plain, FLAGS.pruning_ratio, layers="*_conv1")
    for wrapper in keras_tpp.wrappers.find_wrappers(prepared):
        wrapper.strength.assign(0.5)  # penalties on, as mid-schedule
    _compiled(prepared)
    for model in (plain, prepared):  # trace and warm up
        _time_block(model, x, y)
    times = {"plain": [], "prepared": []}
    for _ in range(FLAGS.rounds):
        times["plain"].append(_time_block(plain, x, y))
        times["prepared"].append(_time_block(prepared, x, y))
    result = {
        "model": f"resnet{FLAGS.depth}",
        "batch_size": FLAGS.batch_size,
        "plain_step_ms": 1000 * float(np.median(times["plain"])),
        "prepared_step_ms": 1000 * float(np.median(times["prepared"])),
        "plain_best_step_ms": 1000 * float(np.min(times["plain"])),
        "prepared_best_step_ms": 1000 * float(np.min(times["prepared"])),
        "blocks_ms": {k: [round(1000 * t, 1) for t in v] for k, v in times.items()},
    }
    result["ratio"] = result["prepared_step_ms"] / result["plain_step_ms"]
    # The fastest block of each model is the least disturbed by other load on the machine.
    result["best_ratio"] = result["prepared_best_step_ms"] / result["plain_best_step_ms"]
    print(f"{result['model']} batch {FLAGS.batch_size}: median plain "
          f"{result['plain_step_ms']:.1f} ms/step, prepared {result['prepared_step_ms']:.1f} "
          f"ms/step, ratio {result['ratio']:.3f}; best-block ratio {result['best_ratio']:.3f} "
          "(target <= 1.05)")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
