"""The keras_tpp arms of benchmarks/gmp_vs_tfmot.py, and its data preparation (run by the driver).

Imports TensorFlow, Keras 3 and keras_tpp only (never tf_keras or tfmot).

- ``--stage prepare``: load the data set (keras_tpp.data), write ``data.npz`` (normalized
  float32 images, int64 labels) and build the architecture once in Keras 3 from the seed,
  writing its initial weights by layer name (``init_weights.npz``) for every arm.
- ``--stage train --arm keras_tpp-gmp | keras_tpp-gmp-layer | keras_tpp-granet | dense``:
  ``keras_tpp.prepare`` + ``SparseTrainingCallback``, ``strip``, ``sparsity_report`` and
  ``keras_tpp.export`` (dense and ``sparse=True``); ``dense`` trains without pruning.

    python benchmarks/_arm_keras_tpp.py --config <work>/config.json --stage prepare
    python benchmarks/_arm_keras_tpp.py --config <work>/config.json --arm keras_tpp-gmp \\
        --out keras_tpp-gmp.json
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # keras_tpp

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import gmp_vs_tfmot as common  # noqa: E402
import keras_tpp  # noqa: E402
from keras_tpp import data as tpp_data  # noqa: E402

ARMS = ("keras_tpp-gmp", "keras_tpp-gmp-layer", "keras_tpp-granet", "dense")
SYNTHETIC_SIZE = 16  # side of the synthetic test images


def _cifar_arrays(split: str, cfg: dict[str, Any], count: int | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    ds = tpp_data.cifar_pipeline(split, batch_size=1000, training=False, source="folder",
                                 data_dir=cfg["data_dir"], max_examples=count, cache=False)
    xs, ys = [], []
    for x, y in ds.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def _synthetic_arrays(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = tpp_data.synthetic_shapes(count, image_size=SYNTHETIC_SIZE, seed=seed)
    return ((x.astype(np.float32) / 255.0 - 0.5) / 0.25), y.astype(np.int64)


def prepare(cfg: dict[str, Any]) -> None:
    """Write ``data.npz`` and ``init_weights.npz`` into the work folder."""
    n_train, n_test = cfg["train_examples"], cfg["test_examples"]
    if cfg["data"] == "mnist":
        (x_train, y_train), (x_test, y_test) = tpp_data.mnist_arrays(
            None, flatten=False, data_dir=cfg["data_dir"], normalize=True,
            train_examples=n_train, test_examples=n_test)
    elif cfg["data"] == "cifar10":
        if not cfg["data_dir"]:
            raise SystemExit("CIFAR-10 needs --data_dir or $KERAS_TPP_DATA (the JPEG folder).")
        x_train, y_train = _cifar_arrays("train", cfg, n_train)
        x_test, y_test = _cifar_arrays("test", cfg, n_test)
    else:
        x_train, y_train = _synthetic_arrays(n_train, cfg["seed"])
        x_test, y_test = _synthetic_arrays(n_test, cfg["seed"] + 1)
    np.savez(cfg["data_file"], x_train=x_train, y_train=y_train, x_test=x_test,
             y_test=y_test)
    keras.utils.set_random_seed(cfg["seed"])
    model = common.build_model(keras, cfg["arch"], x_train.shape[1:], cfg["num_classes"])
    np.savez(cfg["init_weights"], **common.named_weights(model))
    print(f"data {x_train.shape} / {x_test.shape}, {model.count_params()} parameters")


def _method(arm: str) -> Any:
    if arm == "keras_tpp-gmp-layer":
        return keras_tpp.methods.GMP(ranking="layer")
    return {"keras_tpp-gmp": "gmp", "keras_tpp-granet": "granet"}[arm]


def _callback(arm: str, cfg: dict[str, Any]) -> Any:
    kwargs = dict(total_steps=cfg["total_steps"], prune_start_step=cfg["prune_start_step"],
                  prune_end_step=cfg["keras_tpp_prune_end_step"],
                  update_frequency=cfg["update_frequency"])
    if arm == "keras_tpp-granet":
        kwargs.update(regrow_ratio=cfg["regrow_ratio"],
                      final_regrow_ratio=cfg["final_regrow_ratio"])
    return keras_tpp.SparseTrainingCallback(**kwargs)


def train(cfg: dict[str, Any], arm: str, out: str) -> dict[str, Any]:
    """Train one arm, strip, measure and export; write and return the result dict."""
    keras.utils.set_random_seed(cfg["seed"])
    x_train, y_train, x_test, y_test = common.load_data(cfg)
    model = common.build_model(keras, cfg["arch"], x_train.shape[1:], cfg["num_classes"])
    with np.load(cfg["init_weights"]) as f:
        init = dict(f)
    common.load_named_weights(model, init)
    callbacks = []
    if arm == "dense":
        trained = model
        init_match = True
    else:
        trained = keras_tpp.prepare(model, pruning_ratio=cfg["sparsity"], method=_method(arm),
                                    initial_ratio=0.0, seed=cfg["seed"])
        # prepare() must keep the shared initial weights (dense start: nothing masked yet).
        init_match = common.same_weights(keras_tpp.strip(trained), init)
        callbacks.append(_callback(arm, cfg))
    trained.compile(optimizer=common.sgd(keras, cfg),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    timer = common.step_timer(keras)
    start = time.perf_counter()
    history = trained.fit(common.train_dataset(tf, x_train, y_train, cfg),
                          epochs=cfg["epochs"], steps_per_epoch=cfg["steps_per_epoch"],
                          callbacks=callbacks + [timer], shuffle=False, verbose=2)
    train_s = time.perf_counter() - start
    result: dict[str, Any] = {"arm": arm, "framework": f"keras {keras.__version__}",
                              "init_weights_match": bool(init_match)}
    if arm == "dense":
        plain = model
    else:
        masks = keras_tpp.get_masks(trained)
        kept = sum(int(np.count_nonzero(m)) for m in masks.values())
        total = sum(int(np.size(m)) for m in masks.values())
        result["mask_sparsity"] = 1.0 - kept / max(1, total)
        result["logged_sparsity"] = [float(v) for v in history.history.get("sparsity", [])]
        result["logged_regrow_rate"] = [float(v) for v in
                                        history.history.get("regrow_rate", [])]
        plain = keras_tpp.strip(trained)
        report = keras_tpp.sparsity_report(plain)
        result["report_sparsity"] = float(report.global_sparsity)
    exports = {}
    for sparse in (False, True):
        path = os.path.join(cfg["work_dir"], f"{arm}_{'sparse' if sparse else 'dense'}.tflite")
        exports[sparse] = keras_tpp.export(plain, path, sparse=sparse, latency_runs=0)
    with open(exports[True].path, "rb") as f:
        sparse_tflite = f.read()
    sparsity = common.kernel_sparsity(common.model_kernels(plain))
    checked = int(cfg["tflite_check_examples"])
    result.update({
        "test_accuracy": common.accuracy(plain, x_test, y_test),
        "tflite_sparse_test_accuracy": common.tflite_accuracy(
            tf, sparse_tflite, x_test[:checked], y_test[:checked]),
        "tflite_checked_examples": int(len(x_test[:checked])),
        "sparsity": sparsity["sparsity"],
        "layer_sparsity": {k: v["sparsity"] for k, v in sparsity["layers"].items()},
        "train_s": train_s,
        "final_train_loss": float(history.history["loss"][-1]),
        "final_train_accuracy": float(history.history["accuracy"][-1]),
        "tflite_dense_bytes": int(exports[False].size_bytes),
        "tflite_sparse_bytes": int(exports[True].size_bytes),
        "tflite_sparse_path": exports[True].path,
    })
    result.update(timer.summary())
    result["imported"] = common.imported_frameworks()
    common.write_json(out, result)
    return result


def main() -> None:
    """Command line: --config, --stage prepare|train, --arm, --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--stage", default="train", choices=["prepare", "train"])
    parser.add_argument("--arm", choices=ARMS)
    parser.add_argument("--out")
    args = parser.parse_args()
    cfg = common.read_config(args.config)
    if args.stage == "prepare":
        prepare(cfg)
        return
    if not args.arm or not args.out:
        parser.error("--stage train needs --arm and --out.")
    result = train(cfg, args.arm, args.out)
    print({k: v for k, v in result.items() if k != "layer_sparsity"})


if __name__ == "__main__":
    main()
