"""Reproduce SPEC §1's ResNet-56 / CIFAR-10 comparison, L1 vs TPP at pr 0.9, on any backend.

The TPP paper's claim at a high pruning ratio: removing 90 % of the first conv of every
ResNet-56 block, TPP (penalize, then cut) keeps the network trainable and beats L1 (cut at
once) by about 3 points, and loses less than L1 when the fine-tuning LR is small (1e-3). This
script runs that comparison end to end with the TensorFlow-free data path
(:class:`keras_tpp.data.CifarPyDataset`) on the backend Keras is set to (JAX by default):

    pretrain ResNet-56 → for L1 and TPP: prune ``*_conv1`` at 0.9 → shrink (exact surgery)
    → fine-tune the thin model at LR 1e-2 and at LR 1e-3 → test accuracy

and writes ``results.json``, ``results.csv`` and ``accuracy.png`` (with the published values)
to ``--output_dir``. Each finished piece (the pretrained model, each pruned model, each
fine-tuning) is saved atomically there and skipped when the script runs again: a killed run
resumes.

Profiles (``--profile``):

- ``full``: the paper's recipe (SPEC §1–2): pretrain 200 epochs (LR 0.1, ×0.1 at 100 and 150,
  weight decay 5e-4, batch 128); TPP Δ = 1e-4 every K_u = 10 iterations up to τ = 1 (100k
  iterations), K_s = 10k at LR 1e-3; fine-tune 120 epochs (×0.1 at 60, 90). Days on one GPU.
- ``gpu_short``: about 10 minutes of one modern GPU (estimated, not measured here): pretrain
  30 epochs, TPP's λ ramp over 1,000 iterations plus 300 held (Δ scaled up 100×), fine-tune
  15 epochs per LR. Shortened schedules: expect every accuracy a few points below the paper's,
  and compare L1 with TPP within the run.
- ``tiny``: a CPU smoke test (ResNet-20, 512 training images, one epoch per stage), minutes on
  2 cores; its accuracies mean nothing.

Usage (the CIFAR-10 JPEG copy, the ``train/<class>/*.jpg`` layout or its ``.tar.gz``)::

    KERAS_BACKEND=jax python benchmarks/reproduce_cifar.py \
        --data_dir cifar10-jpeg.tar.gz --profile gpu_short --output_dir runs/reproduce
    python benchmarks/reproduce_cifar.py --profile tiny --output_dir /tmp/reproduce  # synthetic

Without ``--data_dir`` (or ``KERAS_TPP_CIFAR``) it trains on keras_tpp's synthetic shapes.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: SPEC §1: ResNet-56 / CIFAR-10 at pr 0.9, test accuracy (%), mean of the paper's runs.
PUBLISHED = {("l1", 1e-2): 86.75, ("tpp", 1e-2): 89.63,
             ("l1", 1e-3): 87.57, ("tpp", 1e-3): 89.09}
PUBLISHED_DENSE = 93.78


@dataclass(frozen=True)
class Profile:
    """One recipe: model, data size and the length of every stage."""

    depth: int
    batch_size: int
    pretrain_epochs: int
    pretrain_lr: float
    weight_decay: float
    tpp_interval: int            # K_u
    tpp_ramp_steps: int | None   # λ reaches τ after this many steps (None: Δ = 1e-4)
    tpp_stabilize_steps: int     # K_s
    tpp_lr: float
    finetune_epochs: int
    max_train_examples: int | None = None
    max_test_examples: int | None = None


PROFILES = {
    "full": Profile(depth=56, batch_size=128, pretrain_epochs=200, pretrain_lr=0.1,
                    weight_decay=5e-4, tpp_interval=10, tpp_ramp_steps=None,
                    tpp_stabilize_steps=10_000, tpp_lr=1e-3, finetune_epochs=120),
    "gpu_short": Profile(depth=56, batch_size=128, pretrain_epochs=30, pretrain_lr=0.1,
                         weight_decay=5e-4, tpp_interval=10, tpp_ramp_steps=1_000,
                         tpp_stabilize_steps=300, tpp_lr=1e-3, finetune_epochs=15),
    "tiny": Profile(depth=20, batch_size=64, pretrain_epochs=1, pretrain_lr=0.05,
                    weight_decay=5e-4, tpp_interval=1, tpp_ramp_steps=4,
                    tpp_stabilize_steps=2, tpp_lr=1e-3, finetune_epochs=1,
                    max_train_examples=512, max_test_examples=256),
}
PRUNING_RATIO = {"*_conv1": 0.9}
FINETUNE_LRS = (1e-2, 1e-3)
METHODS = ("l1", "tpp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="gpu_short")
    parser.add_argument("--data_dir", default=os.environ.get("KERAS_TPP_CIFAR"),
                        help="CIFAR-10 image folder or .tar.gz (default: $KERAS_TPP_CIFAR; "
                             "none: synthetic shapes)")
    parser.add_argument("--output_dir", default="runs/reproduce_cifar")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="threads preparing training batches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of l1,tpp")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        parser.error(f"--methods takes a subset of {','.join(METHODS)}, got {args.methods!r}")
    args.methods = methods
    if args.data_dir is not None and not os.path.exists(args.data_dir):
        parser.error(f"--data_dir {args.data_dir} does not exist")
    return args


# -- files -----------------------------------------------------------------------------------
def _atomic_json(path: str, obj: object) -> None:
    from keras_tpp.experiments.atomic import atomic_write_json

    atomic_write_json(path, obj)


def _atomic_model(model, path: str) -> None:
    from keras_tpp.experiments.atomic import atomic_save_model

    atomic_save_model(model, path)


# -- data, model, training -------------------------------------------------------------------
def make_data(args: argparse.Namespace, profile: Profile):
    """(train, test) CifarPyDatasets of the real data or of synthetic shapes."""
    from keras_tpp.data import CifarPyDataset, synthetic_shapes

    source = ({"data_dir": args.data_dir} if args.data_dir else
              {"arrays": {"train": synthetic_shapes(profile.max_train_examples or 5000,
                                                    seed=args.seed),
                          "test": synthetic_shapes(profile.max_test_examples or 1000,
                                                   seed=args.seed + 1)}})
    train = CifarPyDataset("train", batch_size=profile.batch_size, training=True,
                           seed=args.seed, workers=args.workers,
                           max_examples=profile.max_train_examples, **source)
    test = CifarPyDataset("test", batch_size=500, training=False,
                          max_examples=profile.max_test_examples, **source)
    return train, test


def step_schedule(learning_rate: float, epochs: int, steps_per_epoch: int):
    """LR ×0.1 at 50 % and 75 % of the run (the papers' drops at 100/150 of 200 and 60/90
    of 120 epochs)."""
    import keras

    total = epochs * steps_per_epoch
    boundaries = sorted({max(1, round(0.5 * total)), max(2, round(0.75 * total))})
    values = [learning_rate * 0.1 ** i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def compile_sgd(model, learning_rate, weight_decay: float) -> None:
    """SGD with momentum 0.9 and the papers' coupled weight decay, logits loss."""
    from keras_tpp.experiments.training import compile_classifier, sgd

    compile_classifier(model, sgd(learning_rate), weight_decay)


def accuracy(model, test) -> float:
    """Top-1 test accuracy in % (inference mode)."""
    import numpy as np

    correct = total = 0
    for index in range(len(test)):
        x, y = test[index]
        logits = np.asarray(model.predict_on_batch(x))
        correct += int((logits.argmax(-1) == y).sum())
        total += len(y)
    return 100.0 * correct / total


def mean_jsv(model, test) -> float:
    """Mean Jacobian singular value of the logits w.r.t. 32 test inputs."""
    from keras_tpp.metrics import jacobian_singular_values

    x, _ = test[0]
    return float(jacobian_singular_values(model, x[:32])["mean"])


def pretrain(args, profile: Profile, train, test, log) -> object:
    """The dense ResNet, trained (or loaded from ``pretrained.keras``)."""
    import keras

    from keras_tpp import models

    path = os.path.join(args.output_dir, "pretrained.keras")
    if os.path.exists(path):
        log(f"[pretrain] loading {path}")
        return keras.models.load_model(path, compile=False)
    keras.utils.set_random_seed(args.seed)
    model = models.cifar_resnet(depth=profile.depth, num_classes=10)
    compile_sgd(model, step_schedule(profile.pretrain_lr, profile.pretrain_epochs, len(train)),
                profile.weight_decay)
    start = time.time()
    model.fit(train, epochs=profile.pretrain_epochs, shuffle=False, verbose=2)
    log(f"[pretrain] {time.time() - start:.0f} s, test accuracy {accuracy(model, test):.2f} %")
    _atomic_model(model, path)
    return model


def prune(args, profile: Profile, dense, method: str, train, log) -> tuple[object, float]:
    """The thin model of ``method`` (and the seconds its pruning stage took)."""
    import keras

    import keras_tpp

    path = os.path.join(args.output_dir, f"pruned_{method}.keras")
    meta_path = path + ".json"
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            seconds = json.load(f)["prune_seconds"]
        return keras.models.load_model(path, compile=False), seconds
    start = time.time()
    pmodel = keras_tpp.prepare(dense, PRUNING_RATIO, method=method)
    if method == "tpp":
        compile_sgd(pmodel, profile.tpp_lr, profile.weight_decay)
        callback = keras_tpp.PruningCallback(
            delta=None if profile.tpp_ramp_steps else 1e-4, interval=profile.tpp_interval,
            ramp_steps=profile.tpp_ramp_steps, stabilize_steps=profile.tpp_stabilize_steps,
            stop_when_pruned=True, penalty_log_interval=0)
        steps = keras_tpp.methods.get_method("tpp").last_step(callback.schedule) + 2
        pmodel.fit(train, epochs=math.ceil(steps / len(train)) + 1, shuffle=False,
                   callbacks=[callback], verbose=2)
    keras_tpp.apply_masks(pmodel)  # L1: the cut itself; TPP: already zero
    thin = keras_tpp.shrink(pmodel)
    seconds = time.time() - start
    _atomic_model(thin, path)
    _atomic_json(meta_path, {"prune_seconds": seconds})
    log(f"[prune {method}] {seconds:.0f} s, {thin.count_params():,} parameters")
    return thin, seconds


def finetune(args, profile: Profile, thin, method: str, lr: float, train, test, log) -> dict:
    """Fine-tune a copy of ``thin`` at ``lr``; the result row (cached in a JSON file)."""
    import keras

    import keras_tpp

    path = os.path.join(args.output_dir, f"finetune_{method}_lr{lr:g}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    keras.utils.set_random_seed(args.seed)
    model = keras.models.clone_model(thin)
    model.set_weights(thin.get_weights())
    after_pruning = accuracy(model, test)
    jsv = mean_jsv(model, test)
    compile_sgd(model, step_schedule(lr, profile.finetune_epochs, len(train)),
                profile.weight_decay)
    start = time.time()
    model.fit(train, epochs=profile.finetune_epochs, shuffle=False, verbose=2)
    row = {"method": method, "finetune_lr": lr, "accuracy": accuracy(model, test),
           "accuracy_after_pruning": after_pruning, "mean_jsv_after_pruning": jsv,
           "params": int(thin.count_params()),
           "macs": int(keras_tpp.profile(thin)["macs"]),
           "finetune_seconds": time.time() - start,
           "published": PUBLISHED[(method, lr)]}
    _atomic_json(path, row)
    log(f"[finetune {method} lr {lr:g}] accuracy {row['accuracy']:.2f} %")
    return row


# -- report ----------------------------------------------------------------------------------
def write_report(args, rows: list[dict], dense: dict, log) -> None:
    """results.json, results.csv, accuracy.png and a printed table."""
    from keras_tpp.experiments.atomic import atomic_write_bytes

    _atomic_json(os.path.join(args.output_dir, "results.json"),
                 {"profile": args.profile, "backend": dense["backend"],
                  "data": args.data_dir or "synthetic shapes", "dense": dense, "rows": rows})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(os.path.join(args.output_dir, "results.csv"), buffer.getvalue().encode())
    header = (f"{'method':6} {'FT LR':>6} {'acc %':>7} {'paper %':>8} {'acc after prune':>15} "
              f"{'mean JSV':>9} {'params':>9} {'MACs':>12}")
    lines = [f"dense ResNet-{dense['depth']}: {dense['accuracy']:.2f} % (paper "
             f"{PUBLISHED_DENSE}), {dense['params']:,} parameters; backend "
             f"{dense['backend']}, profile {args.profile}", header]
    for r in rows:
        lines.append(f"{r['method']:6} {r['finetune_lr']:>6g} {r['accuracy']:>7.2f} "
                     f"{r['published']:>8.2f} {r['accuracy_after_pruning']:>15.2f} "
                     f"{r['mean_jsv_after_pruning']:>9.4f} {r['params']:>9,} {r['macs']:>12,}")
    log("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no figure (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [f"{r['method'].upper()}\nLR {r['finetune_lr']:g}" for r in rows]
    positions = range(len(rows))
    ax.bar([p - 0.2 for p in positions], [r["accuracy"] for r in rows], 0.4,
           label=f"this run ({args.profile})")
    ax.bar([p + 0.2 for p in positions], [r["published"] for r in rows], 0.4,
           label="published (SPEC §1)")
    ax.set_xticks(list(positions), labels)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("ResNet-56 / CIFAR-10, *_conv1 pruned at 0.9")
    ax.legend(loc="lower right")
    low = min(min(r["accuracy"] for r in rows), min(PUBLISHED.values()))
    ax.set_ylim(max(0.0, low - 5), 100)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(os.path.join(args.output_dir, "accuracy.png"), buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import keras

    def log(text: str) -> None:
        print(text, flush=True)

    profile = PROFILES[args.profile]
    os.makedirs(args.output_dir, exist_ok=True)
    log(f"backend {keras.backend.backend()}, profile {args.profile}: {asdict(profile)}")
    train, test = make_data(args, profile)
    dense = pretrain(args, profile, train, test, log)
    dense_row = {"depth": profile.depth, "accuracy": accuracy(dense, test),
                 "params": int(dense.count_params()), "backend": keras.backend.backend()}
    rows = []
    for method in args.methods:
        thin, seconds = prune(args, profile, dense, method, train, log)
        for lr in FINETUNE_LRS:
            rows.append({**finetune(args, profile, thin, method, lr, train, test, log),
                         "prune_seconds": seconds})
    write_report(args, rows, dense_row, log)
    train.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
