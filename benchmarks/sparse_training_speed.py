"""Cost of sparse training (GraNet) against dense training, measured in one run.

1. Training-step time: CIFAR ResNet-20 (keras_tpp.models.cifar_resnet), batch 128, SGD
   with Nesterov momentum, dense and after ``keras_tpp.prepare(model, 0.9,
   method="granet")`` driven by SparseTrainingCallback, on steps without a mask update
   (what remains: the kernels' mask constraint, the slot masking and the gradient copy
   after each optimizer update, the callback's per-batch step read). Timed blocks of
   ``--steps`` steps alternate between the two models; the ratio of medians is printed
   (target ≤ 1.10), and the ratio of the fastest blocks (on a shared machine, the blocks
   nothing else slowed down).
2. One mask update (global gradual pruning + regeneration, reading the kernels, masks and
   gradients from the model and writing masks, kernels and optimizer slots back) on
   keras.applications.ResNet50 (ImageNet shape, 25.5 M prunable weights), timed through
   the callback as ``fit`` runs it (target < 1 s).

    python benchmarks/sparse_training_speed.py
"""
from __future__ import annotations

import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_tpp  # noqa: E402
from keras_tpp import models  # noqa: E402
from keras_tpp.prepared import wrappers_by_path  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 20, "CIFAR ResNet depth (6n+2) of the step-time comparison.")
flags.DEFINE_integer("batch_size", 128, "Batch size of one training step.")
flags.DEFINE_integer("steps", 8, "Training steps per timed block.")
flags.DEFINE_integer("rounds", 15, "Timed blocks per model (alternating).")
flags.DEFINE_integer("update_repeats", 5, "Timed ResNet-50 mask updates (median).")
flags.DEFINE_bool("skip_resnet50", False, "Only the step-time comparison.")
flags.DEFINE_string("out", None, "Optional JSON file for the results.")


def _compile(model: keras.Model) -> keras.Model:
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _block(model: keras.Model, x: np.ndarray, y: np.ndarray, callbacks: list) -> float:
    start = time.perf_counter()
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=1, verbose=0, shuffle=False,
              callbacks=callbacks)
    return (time.perf_counter() - start) / FLAGS.steps


def step_time_ratio() -> dict:
    """Median step time of GraNet over dense, ResNet-20 CIFAR shape."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = FLAGS.batch_size * FLAGS.steps
    x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=n)
    dense = _compile(models.cifar_resnet(FLAGS.depth))
    sparse = _compile(keras_tpp.prepare(dense, 0.9, method="granet", initial_ratio=0.5))
    # Mask updates only every 10^6 steps: these blocks time the steps between updates.
    callback = keras_tpp.SparseTrainingCallback(total_steps=10**7, update_frequency=10**6)
    _block(dense, x, y, [])  # trace and warm up
    _block(sparse, x, y, [callback])
    times: dict[str, list[float]] = {"dense": [], "granet": []}
    for _ in range(FLAGS.rounds):
        times["dense"].append(_block(dense, x, y, []))
        times["granet"].append(_block(sparse, x, y, [callback]))
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"model": f"resnet{FLAGS.depth} 32x32x3", "batch_size": FLAGS.batch_size,
            "dense_step_s": medians["dense"], "granet_step_s": medians["granet"],
            "ratio": medians["granet"] / medians["dense"],
            "best_block_ratio": min(times["granet"]) / min(times["dense"]), "blocks": times}


def resnet50_update_time() -> dict:
    """Median wall time of one GraNet mask update on ResNet-50, through the callback."""
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    pmodel = _compile(keras_tpp.prepare(model, 0.9, method="granet"))
    pmodel.optimizer.build(pmodel.trainable_variables)
    callback = keras_tpp.SparseTrainingCallback(total_steps=10**6, prune_end_step=5 * 10**5,
                                                update_frequency=4000)
    callback.set_model(pmodel)
    callback.on_train_begin()
    wrappers = list(wrappers_by_path(pmodel).values())
    times = []
    for i in range(1, FLAGS.update_repeats + 1):
        for wrapper in wrappers:  # as if 4000·i train steps had run
            wrapper.train_steps.assign(4000 * i)
        start = time.perf_counter()
        callback.on_train_batch_end(0, {})
        times.append(time.perf_counter() - start)
        assert callback.last_update is not None and callback.last_update.step == 4000 * i
    weights = sum(callback.controller.sizes.values())
    return {"model": "ResNet50 224x224x3", "prunable_weights": weights,
            "update_s": statistics.median(times), "updates": times,
            "sparsity_after": callback.last_update.sparsity}


def main(argv: list[str]) -> None:
    del argv
    results = {"step_time": step_time_ratio()}
    s = results["step_time"]
    print(f"{s['model']}, batch {s['batch_size']}: dense {s['dense_step_s'] * 1e3:.1f} ms/step, "
          f"granet {s['granet_step_s'] * 1e3:.1f} ms/step, ratio {s['ratio']:.3f} "
          f"(best blocks: {s['best_block_ratio']:.3f}; target <= 1.10)")
    if not FLAGS.skip_resnet50:
        results["mask_update"] = u = resnet50_update_time()
        print(f"{u['model']}: one GraNet mask update over {u['prunable_weights']:,} weights "
              f"takes {u['update_s']:.2f} s (median of {len(u['updates'])}: "
              f"{', '.join(f'{t:.2f}' for t in u['updates'])}; target < 1 s)")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
