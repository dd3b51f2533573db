"""keras_tpp's GMP and GraNet against tensorflow-model-optimization's pruning (the reference).

Trains one architecture on one data set with one budget three (or four) times and prints,
for each, the test accuracy at the same final sparsity, the mean training-step time (and its
ratio to tfmot's) and the TFLite file size, dense and with sparse weight storage:

- ``tfmot``: ``tfmot.sparsity.keras.prune_low_magnitude`` with ``PolynomialDecay(0, s,
  begin_step, end_step, power=3, frequency=ΔT)`` on a tf_keras (Keras 2) model,
  ``UpdatePruningStep``, ``strip_pruning``, ``TFLiteConverter`` with
  ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``. Per-layer magnitude ranking.
- ``keras_tpp-gmp-layer``: ``keras_tpp.prepare(..., method=GMP(ranking="layer"))`` — the
  like-for-like arm (per-layer ranking, as tfmot).
- ``keras_tpp-gmp``: ``method="gmp"`` (keras_tpp's default: global magnitude ranking).
- ``keras_tpp-granet``: ``method="granet"`` (GMP + neuroregeneration, dense start).
- ``tf_keras-dense`` and ``dense``: the same training without pruning in tf_keras and in
  Keras 3, the references for accuracy and for each framework's step time.

Every arm runs in a fresh ``python`` process: ``benchmarks/_arm_tfmot.py`` imports only
TensorFlow, tf_keras and tensorflow_model_optimization (importing tfmot switches ``tf.keras``
to tf_keras for the whole process); ``benchmarks/_arm_keras_tpp.py`` imports only TensorFlow,
Keras 3 and keras_tpp. This driver imports neither (numpy and absl only).

Equal in all arms: the architecture (built by :func:`build_model` from the same code with
``keras`` or ``tf_keras``), the initial weights (built once in Keras 3, saved by layer name,
loaded into every arm), the training examples and their order (:func:`batch_order`) and the
augmentation (stateless, seeded by the example's position), the optimizer (SGD, momentum
0.9, Nesterov, decoupled weight decay, LR ×0.1 at 50% and 75% of the steps), the number of
steps, the mask-update interval ΔT (tfmot's ``frequency``; keras_tpp's ``update_frequency``)
and the cubic sparsity targets at the same steps (tfmot's closed window [0, E] is keras_tpp's
[0, E + ΔT)), the final sparsity over all Conv/Dense kernels.
Not equal: the framework (tf_keras vs Keras 3, so traced graphs and kernels differ), the
mask-update mechanics (tfmot masks inside each wrapped layer's call; keras_tpp in a
callback after the optimizer step), the exact cubic schedule between updates and GraNet's
regeneration (tfmot has none). Step times come from one process at a time on a shared
machine; treat differences under ~10% as noise.

Profiles (``--profile``):
- ``cpu`` (default): MNIST 20,000 training examples (or CIFAR-10 6,400), a small CNN,
  3 epochs, batch 32, ΔT = 100 — about 1 (MNIST) or 1.5 (CIFAR) minutes per arm on 2 cores.
- ``gpu``: the GraNet paper's CIFAR recipe — ResNet-50 (CIFAR variant), all 50,000 training
  images, 160 epochs, batch 128, LR 0.1, weight decay 5e-4, pruning over epochs 0–80,
  ΔT = 1000 for every arm (tfmot's ``frequency`` too). For MNIST: all 60,000, 20 epochs.
- ``synthetic`` data (``--data synthetic``) is keras_tpp's embedded shapes set, for tests.

Data location: ``--data_dir`` (MNIST: ``mnist.npz`` or a folder holding it or
``datasets/mnist.npz``; CIFAR-10: the JPEG image folder or its ``.tar.gz``), else the
environment variable ``KERAS_TPP_DATA``, a folder searched for ``mnist.npz``,
``datasets/mnist.npz``, ``keras/datasets/mnist.npz``, ``cifar10-jpeg.tar.gz``,
``cifar10-jpeg`` or ``cifar10``. MNIST also falls back to ``$KERAS_HOME/datasets``.

    pip install -e ".[compare]"
    python benchmarks/gmp_vs_tfmot.py --data mnist --data_dir <dir> --out gmp_vs_tfmot.json
    python benchmarks/gmp_vs_tfmot.py --data cifar10 --data_dir <cifar10-jpeg.tar.gz>
    python benchmarks/gmp_vs_tfmot.py --data cifar10 --profile gpu --sparsity 0.95
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

TFMOT_ARMS = ("tfmot", "tf_keras-dense")
ALL_ARMS = TFMOT_ARMS + ("keras_tpp-gmp-layer", "keras_tpp-gmp", "keras_tpp-granet", "dense")
DEFAULT_ARMS = ALL_ARMS
KERNEL_LAYERS = ("Conv1D", "Conv2D", "Conv3D", "Dense")

# Per data set and profile: architecture, examples, schedule. None = the whole split.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "mnist": {
        "cpu": dict(arch="mnist_cnn", train_examples=20_000, test_examples=None, epochs=3,
                    batch_size=32, lr=0.01, weight_decay=5e-4, update_frequency=100,
                    augment=False),
        "gpu": dict(arch="mnist_cnn", train_examples=None, test_examples=None, epochs=20,
                    batch_size=128, lr=0.1, weight_decay=5e-4, update_frequency=1000,
                    augment=False),
    },
    "cifar10": {
        "cpu": dict(arch="cifar_cnn", train_examples=6_400, test_examples=2_000, epochs=3,
                    batch_size=32, lr=0.02, weight_decay=5e-4, update_frequency=100,
                    augment=True),
        "gpu": dict(arch="resnet50_cifar", train_examples=None, test_examples=None,
                    epochs=160, batch_size=128, lr=0.1, weight_decay=5e-4,
                    update_frequency=1000, augment=True),
    },
    "synthetic": {
        "cpu": dict(arch="tiny_cnn", train_examples=320, test_examples=160, epochs=2,
                    batch_size=32, lr=0.05, weight_decay=5e-4, update_frequency=2,
                    augment=False),
    },
}
PRUNE_END_FRACTION = 0.5  # GraNet: pruning over epochs 0-80 of 160
REGROW_RATIO, FINAL_REGROW_RATIO = 0.5, 0.005  # GraNet's cosine regeneration rate
TFLITE_CHECK_EXAMPLES = 1000  # test examples run through each sparse TFLite model


# --------------------------------------------------------------------------------------
# Shared by the arm processes (no TensorFlow / Keras import at module level).


def build_model(km: Any, arch: str, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """Build ``arch`` with the Keras module ``km`` (``keras`` or ``tf_keras``).

    The same code builds the same functional graph in both frameworks, with explicit layer
    names, so weights can be moved between them by name. Conv layers have no bias (a batch
    norm follows); the classifier outputs logits.
    """
    layers = km.layers
    count: dict[str, int] = {}

    def name(kind: str) -> str:
        count[kind] = count.get(kind, 0) + 1
        return f"{kind}{count[kind]}"

    def conv_bn(x: Any, filters: int, kernel: int = 3, strides: int = 1,
                relu: bool = True) -> Any:
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name=name("conv"))(x)
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name("bn"))(x)
        return layers.Activation("relu", name=name("relu"))(x) if relu else x

    inputs = layers.Input(shape=tuple(input_shape), name="image")
    if arch == "tiny_cnn":
        x = conv_bn(inputs, 8)
        x = layers.MaxPooling2D(2, name=name("pool"))(x)
        x = conv_bn(x, 16)
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    elif arch == "mnist_cnn":
        x = conv_bn(inputs, 32)
        x = layers.MaxPooling2D(2, name=name("pool"))(x)
        x = conv_bn(x, 64)
        x = layers.MaxPooling2D(2, name=name("pool"))(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(128, activation="relu", name=name("dense"))(x)
    elif arch in ("cifar_cnn", "vgg19_bn"):
        plan = ([32, 32, "M", 64, 64, "M", 128, 128, "M"] if arch == "cifar_cnn" else
                [64, 64, "M", 128, 128, "M"] + [256] * 4 + ["M"] + [512] * 4 + ["M"]
                + [512] * 4)
        x = inputs
        for item in plan:
            x = (layers.MaxPooling2D(2, name=name("pool"))(x) if item == "M"
                 else conv_bn(x, int(item)))
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    elif arch == "resnet50_cifar":
        x = conv_bn(inputs, 64)
        for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                shortcut = x
                y = conv_bn(x, width, 1)
                y = conv_bn(y, width, 3, strides)
                y = conv_bn(y, 4 * width, 1, relu=False)
                if block == 0:
                    shortcut = conv_bn(x, 4 * width, 1, strides, relu=False)
                x = layers.Add(name=name("add"))([shortcut, y])
                x = layers.Activation("relu", name=name("relu"))(x)
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        raise ValueError(f"Unknown arch {arch!r}.")
    outputs = layers.Dense(num_classes, name=name("dense"))(x)
    return km.Model(inputs, outputs, name=arch)


def named_weights(model: Any) -> dict[str, np.ndarray]:
    """``{"<layer name>/<i>": array}`` for every weight of every layer (in layer order)."""
    out = {}
    for layer in model.layers:
        for i, w in enumerate(layer.get_weights()):
            out[f"{layer.name}/{i}"] = np.asarray(w)
    return out


def load_named_weights(model: Any, weights: dict[str, np.ndarray]) -> None:
    """Set every layer's weights from :func:`named_weights`' output, checking shapes."""
    used = set()
    for layer in model.layers:
        current = layer.get_weights()
        if not current:
            continue
        new = []
        for i, w in enumerate(current):
            key = f"{layer.name}/{i}"
            if key not in weights or weights[key].shape != w.shape:
                raise ValueError(f"No weight {key} of shape {w.shape} in the initial weights.")
            new.append(weights[key])
            used.add(key)
        layer.set_weights(new)
    unused = sorted(set(weights) - used)
    if unused:
        raise ValueError(f"Initial weights not used: {unused[:5]}...")


def same_weights(model: Any, weights: dict[str, np.ndarray]) -> bool:
    """Whether a plain model's weights equal ``weights`` (:func:`named_weights`), exactly."""
    mine = named_weights(model)
    return set(mine) == set(weights) and all(
        np.array_equal(mine[k], weights[k]) for k in weights)


def kernel_sparsity(kernels: dict[str, np.ndarray]) -> dict[str, Any]:
    """Zeros over all given kernels: ``{"sparsity", "zeros", "size", "layers": {...}}``."""
    layers = {k: {"size": int(v.size), "zeros": int(np.count_nonzero(v == 0))}
              for k, v in kernels.items()}
    size = sum(v["size"] for v in layers.values())
    zeros = sum(v["zeros"] for v in layers.values())
    for v in layers.values():
        v["sparsity"] = v["zeros"] / max(1, v["size"])
    return {"sparsity": zeros / max(1, size), "zeros": zeros, "size": size, "layers": layers}


def model_kernels(model: Any) -> dict[str, np.ndarray]:
    """The kernels of the Conv/Dense layers of a plain (stripped) model, by layer name."""
    return {layer.name: np.asarray(layer.get_weights()[0]) for layer in model.layers
            if type(layer).__name__ in KERNEL_LAYERS}


def batch_order(num_examples: int, epochs: int, batch_size: int, seed: int) -> np.ndarray:
    """Example indices, shape (epochs, steps_per_epoch * batch_size): one permutation per
    epoch (remainder dropped), a pure function of the arguments."""
    steps = num_examples // batch_size
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(num_examples)[:steps * batch_size]
                     for _ in range(epochs)])


def train_dataset(tf: Any, x: np.ndarray, y: np.ndarray, cfg: dict[str, Any]) -> Any:
    """An endless ``tf.data.Dataset`` of the batches of :func:`batch_order`, in order.

    Endless, so that neither Keras 3 nor tf_keras restarts it between epochs (``fit`` is
    given ``steps_per_epoch``). Augmentation (CIFAR) pads 4 pixels, crops and flips with a
    stateless seed taken from the example's position in the whole run.
    """
    order = batch_order(len(x), cfg["epochs"], cfg["batch_size"], cfg["seed"]).reshape(-1)
    images = tf.constant(x)
    labels = tf.constant(y.astype(np.int64))
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(order, tf.int64), tf.range(len(order), dtype=tf.int64)))
    augment = bool(cfg["augment"])
    seed = int(cfg["seed"])

    def example(index: Any, position: Any) -> tuple[Any, Any]:
        image = tf.gather(images, index)
        if augment:
            seeds = tf.random.experimental.stateless_split(
                tf.stack([tf.constant(seed, tf.int64), position]), 2)
            shape = tf.shape(image)
            padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
            image = tf.image.stateless_random_crop(padded, shape, seed=seeds[0])
            image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
        return image, tf.gather(labels, index)

    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(cfg["batch_size"], drop_remainder=True).repeat().prefetch(2)


def lr_schedule(km: Any, cfg: dict[str, Any]) -> Any:
    """LR ``lr``, ×0.1 at 50% and ×0.01 at 75% of the steps (the GraNet CIFAR recipe)."""
    total = cfg["total_steps"]
    lr = cfg["lr"]
    return km.optimizers.schedules.PiecewiseConstantDecay(
        [max(1, total // 2), max(2, (3 * total) // 4)], [lr, lr * 0.1, lr * 0.01])


def sgd(km: Any, cfg: dict[str, Any]) -> Any:
    """The optimizer of every arm: SGD, momentum 0.9, Nesterov, decoupled weight decay."""
    return km.optimizers.SGD(lr_schedule(km, cfg), momentum=0.9, nesterov=True,
                             weight_decay=cfg["weight_decay"])


def step_timer(km: Any) -> Any:
    """A callback recording the wall time of every training step (batch end to batch end).

    Its ``summary()`` averages the steps of every epoch after the first (tracing, warm-up),
    each epoch's first step excluded; with one epoch, the second half of its steps.
    """

    class StepTimer(km.callbacks.Callback):
        """Batch-end timestamps per epoch."""

        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[list[float]] = []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epochs.append([time.perf_counter()])

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.epochs[-1].append(time.perf_counter())

        def summary(self) -> dict[str, float]:
            steps = [np.diff(stamps) for stamps in self.epochs]
            if len(steps) > 1:
                kept = np.concatenate([s[1:] for s in steps[1:]])
            else:
                kept = steps[0][len(steps[0]) // 2:]
            return {"step_ms_mean": 1000 * float(np.mean(kept)),
                    "step_ms_median": 1000 * float(np.median(kept)),
                    "steps_timed": int(len(kept)),
                    "epoch_s": [float(s.sum()) for s in steps]}

    return StepTimer()


def accuracy(model: Any, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model``'s logits on ``(x, y)``."""
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def tflite_accuracy(tf: Any, content: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a TFLite model (``tf.lite.Interpreter``), one example at a time."""
    interpreter = tf.lite.Interpreter(model_content=content)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    hits = 0
    for i in range(len(x)):
        interpreter.set_tensor(inp, x[i:i + 1])
        interpreter.invoke()
        hits += int(np.argmax(interpreter.get_tensor(out)[0]) == y[i])
    return hits / max(1, len(x))


def imported_frameworks() -> dict[str, bool]:
    """Which of keras_tpp, Keras 3, tf_keras and tfmot this process has imported."""
    return {"keras_tpp": "keras_tpp" in sys.modules, "keras3": "keras.src" in sys.modules,
            "tf_keras": "tf_keras" in sys.modules,
            "tfmot": "tensorflow_model_optimization" in sys.modules}


def read_config(path: str) -> dict[str, Any]:
    """The run configuration written by the driver."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_data(cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` from the prepared ``data.npz``."""
    with np.load(cfg["data_file"]) as f:
        return f["x_train"], f["y_train"], f["x_test"], f["y_test"]


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (temporary file in the same folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# --------------------------------------------------------------------------------------
# The driver.


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_enum("data", "mnist", ["mnist", "cifar10", "synthetic"], "Data set.")
    flags.DEFINE_string("data_dir", None, "MNIST npz (or its folder) / CIFAR-10 JPEG folder "
                        "or .tar.gz. Default: searched under $KERAS_TPP_DATA.")
    flags.DEFINE_enum("profile", "cpu", ["cpu", "gpu"], "Recipe size (see the docstring).")
    flags.DEFINE_float("sparsity", 0.9, "Final fraction of zero Conv/Dense kernel weights.")
    flags.DEFINE_integer("epochs", None, "Override the profile's epochs.")
    flags.DEFINE_integer("batch_size", None, "Override the profile's batch size.")
    flags.DEFINE_integer("train_examples", None, "Override the training-set size.")
    flags.DEFINE_integer("test_examples", None, "Override the test-set size.")
    flags.DEFINE_integer("update_frequency", None,
                         "Override ΔT, the mask-update interval of every arm.")
    flags.DEFINE_string("arch", None, "Override the architecture "
                        "(tiny_cnn, mnist_cnn, cifar_cnn, vgg19_bn, resnet50_cifar).")
    flags.DEFINE_list("arms", list(DEFAULT_ARMS), f"Arms to run, from {list(ALL_ARMS)}.")
    flags.DEFINE_integer("seed", 0, "Seed of the initial weights and the data order.")
    flags.DEFINE_string("out", None, "JSON file for the results (written atomically).")
    flags.DEFINE_string("work_dir", None, "Keep the intermediate files (data, weights, "
                        "TFLite files, per-arm JSON) here; default: a temporary folder.")
    flags.DEFINE_integer("arm_timeout", None, "Seconds before an arm is stopped.")


def _find_data(data: str, data_dir: str | None) -> str | None:
    if data == "synthetic" or data_dir:
        return data_dir
    root = os.environ.get("KERAS_TPP_DATA")
    if not root:
        return None  # MNIST may still come from $KERAS_HOME
    names = {"mnist": ["mnist.npz", "datasets/mnist.npz", "keras/datasets/mnist.npz"],
             "cifar10": ["cifar10-jpeg.tar.gz", "cifar10-jpeg", "cifar10"]}[data]
    for name in names:
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    raise SystemExit(f"KERAS_TPP_DATA={root} holds none of {names}; pass --data_dir.")


def _run(script: str, args: list[str], env: dict[str, str], log: str,
         timeout: int | None) -> tuple[int, str]:
    """Run ``python benchmarks/<script> args`` in a fresh process; (rc, output tail)."""
    cmd = [sys.executable, os.path.join(HERE, script)] + args
    with open(log, "w", encoding="utf-8") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = -9
    with open(log, encoding="utf-8", errors="replace") as f:
        tail = f.read()[-3000:]
    return rc, tail


def _config(flags_: Any) -> dict[str, Any]:
    profiles = PROFILES[flags_.data]
    profile = "cpu" if flags_.data == "synthetic" else flags_.profile
    cfg = dict(profiles[profile])
    for key in ("epochs", "batch_size", "train_examples", "test_examples",
                "update_frequency", "arch"):
        value = getattr(flags_, key)
        if value is not None:
            cfg[key] = value
    cfg.update(data=flags_.data, profile=profile, sparsity=flags_.sparsity, seed=flags_.seed,
               data_dir=_find_data(flags_.data, flags_.data_dir),
               regrow_ratio=REGROW_RATIO, final_regrow_ratio=FINAL_REGROW_RATIO,
               num_classes=10, tflite_check_examples=TFLITE_CHECK_EXAMPLES)
    return cfg


def _finish_config(cfg: dict[str, Any]) -> None:
    """Steps and the pruning window, once the training-set size is known."""
    with np.load(cfg["data_file"]) as f:
        n = int(len(f["y_train"]))
        cfg["num_test"] = int(len(f["y_test"]))
    cfg["num_train"] = n
    cfg["steps_per_epoch"] = n // cfg["batch_size"]
    if cfg["steps_per_epoch"] < 1:
        raise SystemExit(f"{n} training examples make no batch of {cfg['batch_size']}.")
    cfg["total_steps"] = cfg["steps_per_epoch"] * cfg["epochs"]
    freq = cfg["update_frequency"]
    # The last pruning update E is a multiple of ΔT, so that tfmot's (at end_step) happens.
    end = (int(cfg["total_steps"] * PRUNE_END_FRACTION) // freq) * freq
    if end < freq or end + freq > cfg["total_steps"]:
        raise SystemExit(f"{cfg['total_steps']} steps leave no pruning window for ΔT={freq}.")
    cfg["prune_start_step"], cfg["prune_end_step"] = 0, end
    # Both libraries count completed train steps. tfmot's PolynomialDecay(begin 0, end E,
    # frequency ΔT) updates at steps 0, ΔT, ..., E (closed window, s_f at E); keras_tpp's
    # window [0, E + ΔT) updates at ΔT, ..., E (half-open, s_f at its last round, E): the
    # same targets s_f·(1 − (1 − t/E)³) at the same steps t (tfmot's step-0 update is to 0).
    cfg["tfmot_end_step"] = end
    cfg["keras_tpp_prune_end_step"] = end + freq


def _table(results: dict[str, dict[str, Any]], cfg: dict[str, Any]) -> str:
    ref = results.get("tfmot", {}).get("step_ms_mean")
    rows = [("arm", "test acc", "sparsity", "step ms", "median", "vs tfmot",
             "tflite dense KB", "tflite sparse KB")]
    for arm, r in results.items():
        if "error" in r:
            rows.append((arm, "failed: " + r["error"].splitlines()[0][:60]) + ("",) * 6)
            continue
        ratio = f"{r['step_ms_mean'] / ref:.2f}" if ref else "-"
        rows.append((arm, f"{r['test_accuracy']:.4f}", f"{r['sparsity']:.4f}",
                     f"{r['step_ms_mean']:.1f}", f"{r['step_ms_median']:.1f}", ratio,
                     f"{r['tflite_dense_bytes'] / 1024:.1f}",
                     f"{r['tflite_sparse_bytes'] / 1024:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    head = (f"{cfg['data']} ({cfg['num_train']} train / {cfg['num_test']} test), "
            f"{cfg['arch']}, profile {cfg['profile']}: {cfg['epochs']} epochs x "
            f"{cfg['steps_per_epoch']} steps of {cfg['batch_size']}, target sparsity "
            f"{cfg['sparsity']}, mask updates every {cfg['update_frequency']} steps, "
            f"pruning until step {cfg['prune_end_step']}")
    return "\n".join([head] + lines)


def main(argv: list[str]) -> None:
    """Prepare data and weights, run every arm in its own process, print and save."""
    del argv
    from absl import flags

    flags_ = flags.FLAGS
    unknown = [a for a in flags_.arms if a not in ALL_ARMS]
    if unknown:
        raise SystemExit(f"Unknown --arms {unknown}; choose from {list(ALL_ARMS)}.")
    cfg = _config(flags_)
    work = flags_.work_dir or tempfile.mkdtemp(prefix="gmp_vs_tfmot-")
    os.makedirs(work, exist_ok=True)
    cfg["work_dir"] = os.path.abspath(work)
    cfg["data_file"] = os.path.join(cfg["work_dir"], "data.npz")
    cfg["init_weights"] = os.path.join(cfg["work_dir"], "init_weights.npz")
    config_path = os.path.join(cfg["work_dir"], "config.json")
    write_json(config_path, cfg)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    tpp_env = dict(env, KERAS_BACKEND="tensorflow")
    tpp_env.pop("TF_USE_LEGACY_KERAS", None)
    start = time.perf_counter()
    rc, tail = _run("_arm_keras_tpp.py", ["--config", config_path, "--stage", "prepare"],
                    tpp_env, os.path.join(work, "prepare.log"), flags_.arm_timeout)
    if rc != 0:
        raise SystemExit(f"Preparing the data failed (rc {rc}):\n{tail}")
    _finish_config(cfg)
    write_json(config_path, cfg)
    results: dict[str, dict[str, Any]] = {}
    for arm in flags_.arms:
        out = os.path.join(work, f"{arm}.json")
        if arm in TFMOT_ARMS:
            script, arm_env = "_arm_tfmot.py", dict(env, TF_USE_LEGACY_KERAS="1")
        else:
            script, arm_env = "_arm_keras_tpp.py", tpp_env
        arm_start = time.perf_counter()
        print(f"[{time.perf_counter() - start:6.0f} s] arm {arm} ...", flush=True)
        rc, tail = _run(script, ["--config", config_path, "--arm", arm, "--out", out],
                        arm_env, os.path.join(work, f"{arm}.log"), flags_.arm_timeout)
        if rc == 0 and os.path.exists(out):
            with open(out, encoding="utf-8") as f:
                results[arm] = json.load(f)
        else:
            results[arm] = {"error": f"rc {rc}: " + (tail.strip().splitlines() or [""])[-1],
                            "log_tail": tail}
        results[arm]["process_s"] = time.perf_counter() - arm_start
    ref = results.get("tfmot", {}).get("step_ms_mean")
    for r in results.values():
        if ref and "step_ms_mean" in r:
            r["step_time_ratio_vs_tfmot"] = r["step_ms_mean"] / ref
    table = _table(results, cfg)
    print(table)
    summary = {"config": cfg, "arms": results, "table": table,
               "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
               "wall_s": time.perf_counter() - start}
    if flags_.out:
        write_json(flags_.out, summary)
    failed = [a for a, r in results.items() if "error" in r]
    if failed:
        for arm in failed:
            print(f"--- {arm} failed; end of its log ---\n{results[arm]['log_tail']}",
                  file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
