"""The tensorflow-model-optimization arms of benchmarks/gmp_vs_tfmot.py (run by the driver).

Imports TensorFlow, tf_keras and tensorflow_model_optimization only (never Keras 3 or
keras_tpp): builds the shared architecture in tf_keras, loads the shared initial weights,
wraps it with ``prune_low_magnitude`` and ``PolynomialDecay(0, s, start, end, power=3,
frequency=ΔT)``, trains with ``UpdatePruningStep``, strips it and converts it to TFLite,
dense and with ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``. Arm ``tf_keras-dense`` trains the
same model without pruning (the tf_keras reference for accuracy and step time).

    python benchmarks/_arm_tfmot.py --config <work>/config.json --arm tfmot --out tfmot.json
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402

import gmp_vs_tfmot as common  # noqa: E402


def _tflite_bytes(model: Any, sparse: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return converter.convert()


def run(cfg: dict[str, Any], arm: str, out: str) -> dict[str, Any]:
    """Train (arm "tfmot": pruned; "tf_keras-dense": not), strip, measure and convert;
    write and return the result dict."""
    tf_keras.utils.set_random_seed(cfg["seed"])
    x_train, y_train, x_test, y_test = common.load_data(cfg)
    model = common.build_model(tf_keras, cfg["arch"], x_train.shape[1:], cfg["num_classes"])
    with np.load(cfg["init_weights"]) as f:
        init = dict(f)
    common.load_named_weights(model, init)
    callbacks = []
    if arm == "tfmot":
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=cfg["sparsity"],
            begin_step=cfg["prune_start_step"], end_step=cfg["tfmot_end_step"], power=3,
            frequency=cfg["update_frequency"])
        pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
        # Wrapping must keep the shared initial weights.
        init_match = common.same_weights(tfmot.sparsity.keras.strip_pruning(pruned), init)
        callbacks.append(tfmot.sparsity.keras.UpdatePruningStep())
    else:
        pruned = model
        init_match = True
    pruned.compile(optimizer=common.sgd(tf_keras, cfg),
                   loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    timer = common.step_timer(tf_keras)
    start = time.perf_counter()
    history = pruned.fit(common.train_dataset(tf, x_train, y_train, cfg),
                         epochs=cfg["epochs"], steps_per_epoch=cfg["steps_per_epoch"],
                         callbacks=callbacks + [timer], shuffle=False, verbose=2)
    train_s = time.perf_counter() - start
    stripped = tfmot.sparsity.keras.strip_pruning(pruned) if arm == "tfmot" else model
    dense_tflite = _tflite_bytes(stripped, sparse=False)
    sparse_tflite = _tflite_bytes(stripped, sparse=True)
    path = os.path.join(cfg["work_dir"], f"{arm}_sparse.tflite")
    with open(path, "wb") as f:
        f.write(sparse_tflite)
    sparsity = common.kernel_sparsity(common.model_kernels(stripped))
    checked = int(cfg["tflite_check_examples"])
    result = {
        "arm": arm,
        "init_weights_match": bool(init_match),
        "framework": f"tf_keras {tf_keras.__version__}, tfmot {tfmot.__version__}",
        "test_accuracy": common.accuracy(stripped, x_test, y_test),
        "tflite_sparse_test_accuracy": common.tflite_accuracy(
            tf, sparse_tflite, x_test[:checked], y_test[:checked]),
        "tflite_checked_examples": int(len(x_test[:checked])),
        "sparsity": sparsity["sparsity"],
        "layer_sparsity": {k: v["sparsity"] for k, v in sparsity["layers"].items()},
        "train_s": train_s,
        "final_train_loss": float(history.history["loss"][-1]),
        "final_train_accuracy": float(history.history["accuracy"][-1]),
        "tflite_dense_bytes": len(dense_tflite),
        "tflite_sparse_bytes": len(sparse_tflite),
        "tflite_sparse_path": path,
    }
    result.update(timer.summary())
    result["imported"] = common.imported_frameworks()
    common.write_json(out, result)
    return result


def main() -> None:
    """Command line: --config, --arm (tfmot or tf_keras-dense), --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--arm", default="tfmot", choices=["tfmot", "tf_keras-dense"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = run(common.read_config(args.config), args.arm, args.out)
    print({k: v for k, v in result.items() if k != "layer_sparsity"})


if __name__ == "__main__":
    main()
