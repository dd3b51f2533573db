"""Sparse TFLite export: file size and XNNPack latency of dense vs 90%-sparse weights.

For each model: zero the smallest-|w| ``--sparsity`` (default 90%) of every Conv2D and Dense
kernel, per layer (``keras_tpp.sparsity.magnitude_masks(ranking="layer")``) — 3×3, 7×7 and
1×1 convolutions, stems, projection shortcuts and classifier heads alike; depthwise kernels,
biases and batch norms keep all their weights. The weights are random (``weights=None``), so
the batch-norm statistics are then set from one batch of random images (``training=True``
with momentum 0), which keeps activations O(1) and makes the export's output check
meaningful. The model is exported twice with ``keras_tpp.export`` (float32, BN folded,
outputs checked against Keras): dense and ``sparse=True``. Both files are then timed in the
same process with the TFLite interpreter (its default CPU path, XNNPack) at batch 1 on
``--threads`` threads: ``--warmup`` untimed calls each, then ``--rounds`` rounds that time
``--runs`` calls of each file in alternating order (short rounds, so that load from other
processes hits both files alike); the median and the minimum over all timed calls are
reported, and the speed-up as the median over rounds of the ratio of the two files' round
medians (with its quartiles, a measure of the machine's noise). "load" is interpreter
creation + tensor allocation + the first call (where the sparse file's weights are
densified), the faster of two.

    python benchmarks/sparse_tflite.py --out sparse_tflite.json
    python benchmarks/sparse_tflite.py --quick          # 128×128 inputs, fewer calls
    python benchmarks/sparse_tflite.py --models mobilenet_xnn,resnet20

Models:
- mobilenet: keras.applications.MobileNet (v1, alpha 1.0, weights=None), 224×224.
- mobilenet_xnn: the same layers (same widths, parameters and MACs) in the layout XNNPack's
  sparse inference accepts: explicit symmetric ZeroPadding2D(1) before the stride-2 stem and
  stride-2 depthwise convs (Keras' MobileNet pads stride-2 layers by 0 before / 1 after,
  which XNNPack does not run sparsely), global average pooling kept 4-D.
- resnet50: keras.applications.ResNet50(weights=None), 224×224.
- resnet20: keras_tpp.models.cifar_resnet(20), 32×32 (not resized by --quick).
- mlp, mlp_1x4: Dense 1024→2048→2048→10 (ReLU), pruned unstructured (mlp) or in 1×4 blocks
  (mlp_1x4: 4 consecutive input weights of an output zeroed together, blocks ranked by
  L1 norm). The converter stores 1×4-block Dense weights in the format of TFLite's own
  sparse FULLY_CONNECTED kernel (no DENSIFY; XNNPack leaves those nodes to it), which runs
  on any CPU; unstructured ones are densified like convolutions.

XNNPack runs a model sparsely only when the file has sparse weights, the graph is a
MobileNet-like chain (3×3 stride-2 stem with 3 input channels and padding 1, 1×1 convs,
3×3/5×5 depthwise convs with symmetric padding, add/mul, unary activations) ending in a
spatial mean, at least 2/3 of the 1×1 conv weights are zero — and the CPU is ARM or an x86
without AVX (on AVX machines XNNPack keeps dense kernels, expecting them to be faster). The
script prints which case the machine running it is.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_tpp  # noqa: E402
from keras_tpp import deployment, models  # noqa: E402
from keras_tpp.sparsity import magnitude_masks  # noqa: E402

L = keras.layers

#: MobileNet v1's depthwise-separable blocks: (pointwise filters, depthwise stride).
MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def mobilenet_xnn(size: int = 224, classes: int = 1000) -> keras.Model:
    """MobileNet v1 (alpha 1.0) with the paddings XNNPack's sparse inference accepts.

    Layer for layer Keras' MobileNet (same names, widths, parameters and MACs, ReLU6, BN
    after every conv, 1×1 conv classifier on the pooled features, softmax), except that the
    stride-2 stem and depthwise convs get an explicit ZeroPadding2D(1) on every side and
    "valid" padding: the same output sizes, the padding XNNPack needs for its NCHW kernels.
    """
    inputs = keras.Input((size, size, 3), name="input_layer")
    x = L.ZeroPadding2D(1, name="conv1_pad")(inputs)
    x = L.Conv2D(32, 3, strides=2, use_bias=False, name="conv1")(x)
    x = L.BatchNormalization(name="conv1_bn")(x)
    x = L.ReLU(6.0, name="conv1_relu")(x)
    for block, (filters, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        if stride == 2:
            x = L.ZeroPadding2D(1, name=f"conv_pad_{block}")(x)
        x = L.DepthwiseConv2D(3, strides=stride, padding="same" if stride == 1 else "valid",
                              use_bias=False, name=f"conv_dw_{block}")(x)
        x = L.BatchNormalization(name=f"conv_dw_{block}_bn")(x)
        x = L.ReLU(6.0, name=f"conv_dw_{block}_relu")(x)
        x = L.Conv2D(filters, 1, use_bias=False, name=f"conv_pw_{block}")(x)
        x = L.BatchNormalization(name=f"conv_pw_{block}_bn")(x)
        x = L.ReLU(6.0, name=f"conv_pw_{block}_relu")(x)
    x = L.GlobalAveragePooling2D(keepdims=True, name="global_average_pooling2d")(x)
    x = L.Conv2D(classes, 1, name="conv_preds")(x)
    x = L.Reshape((classes,), name="reshape_2")(x)
    outputs = L.Activation("softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="mobilenet_xnn")


def mlp(inputs: int = 1024, width: int = 2048, classes: int = 10) -> keras.Model:
    """Dense inputs→width→width→classes with ReLU: where TFLite has a sparse kernel."""
    features = keras.Input((inputs,), name="features")
    x = L.Dense(width, activation="relu", name="fc1")(features)
    x = L.Dense(width, activation="relu", name="fc2")(x)
    return keras.Model(features, L.Dense(classes, name="classifier")(x), name="mlp")


def _settings(size: int) -> dict[str, tuple[Callable[[], keras.Model], int]]:
    """{name: (builder, block)}: ``block`` consecutive input weights are pruned together."""
    shape = (size, size, 3)
    return {
        "mobilenet": (lambda: keras.applications.MobileNet(weights=None, input_shape=shape,
                                                           alpha=1.0), 1),
        "mobilenet_xnn": (lambda: mobilenet_xnn(size), 1),
        "resnet50": (lambda: keras.applications.ResNet50(weights=None, input_shape=shape), 1),
        "resnet20": (lambda: models.cifar_resnet(20), 1),
        "mlp": (mlp, 1),
        "mlp_1x4": (mlp, 4),
    }


def prunable_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers whose kernels are zeroed: every Conv2D and Dense (not depthwise/separable)."""
    return [layer for layer in model.layers if isinstance(layer, (L.Conv2D, L.Dense))]


def _block_scores(kernel: np.ndarray, block: int) -> np.ndarray:
    """L1 norms of ``block`` consecutive input weights per output: (rows / block, outputs).

    The kernel is viewed as (inputs, outputs) — Dense (in, out), Conv (kh·kw·in, out) — so a
    block is contiguous in TFLite's (out, ..., in) layout.
    """
    rows = kernel.reshape(-1, kernel.shape[-1])
    if rows.shape[0] % block:
        raise ValueError(f"{rows.shape[0]} inputs do not split into blocks of {block}.")
    return np.abs(rows).reshape(rows.shape[0] // block, block, -1).sum(axis=1)


def zero_smallest(model: keras.Model, sparsity: float, block: int = 1) -> dict[str, Any]:
    """Zero the smallest ``sparsity`` of each prunable kernel, layer by layer.

    ``block`` 1 ranks single weights by |w|; ``block`` b > 1 ranks blocks of b consecutive
    input weights of one output by their L1 norm and zeros whole blocks.
    Returns counts: pruned layers, their weights and zeros, and the same for 1×1 convs.
    """
    layers = prunable_layers(model)
    kernels = {layer.name: np.array(layer.kernel) for layer in layers}
    scores = {k: _block_scores(v, block) if block > 1 else v for k, v in kernels.items()}
    masks = magnitude_masks(scores, {k: np.ones(v.shape, bool) for k, v in scores.items()},
                            sparsity, ranking="layer")
    if block > 1:
        masks = {k: np.repeat(m, block, axis=0).reshape(kernels[k].shape)
                 for k, m in masks.items()}
    for layer in layers:
        layer.kernel.assign(np.where(masks[layer.name], kernels[layer.name], 0.0))
    pointwise = [layer.name for layer in layers
                 if isinstance(layer, L.Conv2D) and tuple(layer.kernel_size) == (1, 1)]
    return {
        "layers": len(layers),
        "weights": int(sum(m.size for m in masks.values())),
        "zeros": int(sum(m.size - m.sum() for m in masks.values())),
        "conv1x1_layers": len(pointwise),
        "conv1x1_zero_fraction": (
            float(sum(masks[n].size - masks[n].sum() for n in pointwise)
                  / sum(masks[n].size for n in pointwise)) if pointwise else None),
        "model_params": int(model.count_params()),
    }


def calibrate_batchnorm(model: keras.Model, batch: int = 8, seed: int = 0) -> None:
    """Set every BN's moving statistics to those of one batch of random [0, 1) images."""
    norms = [layer for layer in model.layers if isinstance(layer, L.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    x = np.random.default_rng(seed).random((batch,) + tuple(model.inputs[0].shape[1:]),
                                           np.float32)
    try:
        for layer in norms:
            layer.momentum = 0.0
        model(x, training=True)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum


def xnnpack_sparse_possible() -> tuple[bool, str]:
    """Whether XNNPack may run sparse kernels on this CPU (ARM, or x86 without AVX)."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True, f"{machine}: XNNPack's sparse (NCHW) kernels are available"
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False, f"{machine}: unknown CPU flags, XNNPack's choice unknown"
    if " avx" in flags:
        return False, (f"{machine} with AVX: XNNPack keeps dense kernels (its sparse ones are "
                       "SSE-only), so sparse files can only save size here")
    return True, f"{machine} without AVX: XNNPack's SSE sparse kernels are available"


def _time_calls(interpreter: Any, x: np.ndarray, runs: int) -> list[float]:
    """Milliseconds of each of ``runs`` interpreter calls on ``x``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        deployment._run_tflite(interpreter, x)
        times.append((time.perf_counter() - start) * 1000)
    return times


def _load_ms(content: bytes, x: np.ndarray, threads: int) -> float:
    """Milliseconds to create an interpreter for ``content`` and run it once."""
    start = time.perf_counter()
    interpreter = deployment._interpreter(content, num_threads=threads)
    deployment._run_tflite(interpreter, x)
    return (time.perf_counter() - start) * 1000


def compare_latency(contents: dict[str, bytes], shape: tuple, threads: int, warmup: int,
                    rounds: int, runs: int) -> dict[str, dict[str, Any]]:
    """Batch-1 latency (median, minimum, per-round medians) and load time of each file.

    The files are timed in alternation, ``runs`` calls per round, so that each round's
    medians of two files were measured under the same machine load.
    """
    x = np.random.default_rng(1).random((1,) + tuple(shape), np.float32)
    loads = {name: [] for name in contents}
    for _ in range(2):
        for name, content in contents.items():
            loads[name].append(_load_ms(content, x, threads))
    interpreters = {name: deployment._interpreter(c, num_threads=threads)
                    for name, c in contents.items()}
    for interpreter in interpreters.values():
        _time_calls(interpreter, x, warmup)
    rounds_ms = {name: [] for name in contents}
    order = list(contents)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            rounds_ms[name].append(_time_calls(interpreters[name], x, runs))
    out = {}
    for name, per_round in rounds_ms.items():
        times = [t for calls in per_round for t in calls]
        out[name] = {"median_ms": statistics.median(times), "min_ms": min(times),
                     "load_ms": min(loads[name]),
                     "round_medians_ms": [statistics.median(calls) for calls in per_round]}
    return out


def paired_speedup(dense_rounds: list[float], sparse_rounds: list[float]) -> dict[str, float]:
    """Median and quartiles over rounds of (dense round median / sparse round median)."""
    ratios = [d / s for d, s in zip(dense_rounds, sparse_rounds)]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"median": statistics.median(ratios), "q1": q1, "q3": q3}


def run(args: argparse.Namespace) -> dict:
    """Prune, export and time every model of ``args.models``; print and return the results."""
    size = 128 if args.quick else 224
    settings = _settings(size)
    names = args.models.split(",")
    unknown = [n for n in names if n not in settings]
    if unknown:
        raise SystemExit(f"Unknown --models {unknown}; choose from {sorted(settings)}.")
    possible, why = xnnpack_sparse_possible()
    import tensorflow as tf

    results = {"platform": platform.platform(), "machine": platform.machine(),
               "keras": keras.__version__, "tensorflow": tf.__version__,
               "cpus": os.cpu_count(), "threads": args.threads, "sparsity": args.sparsity,
               "warmup": args.warmup, "rounds": args.rounds, "runs": args.runs,
               "quick": args.quick, "xnnpack_sparse_possible": possible,
               "xnnpack_note": why, "models": []}
    print(f"XNNPack sparse inference on this CPU: {'possible' if possible else 'no'} ({why})")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            keras.utils.set_random_seed(0)
            build, block = settings[name]
            model = build()
            pruned = zero_smallest(model, args.sparsity, block)
            calibrate_batchnorm(model)
            shape = tuple(model.inputs[0].shape[1:])
            entry = {"name": name, "input": list(shape), "block": block, "pruned": pruned}
            contents = {}
            for kind, sparse in (("dense", False), ("sparse", True)):
                start = time.perf_counter()
                path = os.path.join(tmp, f"{name}_{kind}.tflite")
                report = keras_tpp.export(model, path, sparse=sparse, latency_runs=0)
                entry[kind] = {"size_bytes": report.size_bytes, "max_error": report.max_error,
                               "export_s": time.perf_counter() - start}
                with open(path, "rb") as handle:
                    contents[kind] = handle.read()
            latency = compare_latency(contents, shape, args.threads, args.warmup,
                                      args.rounds, args.runs)
            for kind in contents:
                entry[kind].update(latency[kind])
            entry["size_ratio"] = entry["sparse"]["size_bytes"] / entry["dense"]["size_bytes"]
            entry["speedup"] = paired_speedup(entry["dense"]["round_medians_ms"],
                                              entry["sparse"]["round_medians_ms"])
            results["models"].append(entry)
            d, s = entry["dense"], entry["sparse"]
            print(f"\n== {name} {shape}: {pruned['layers']} Conv2D/Dense kernels at "
                  f"{pruned['zeros'] / pruned['weights']:.1%} zeros"
                  f"{f' in 1x{block} blocks' if block > 1 else ''} "
                  f"({pruned['conv1x1_layers']} of them 1x1), {pruned['model_params']:,} params")
            for kind, r in (("dense", d), ("sparse", s)):
                print(f"  {kind:<6} {r['size_bytes'] / 1e6:8.2f} MB  {r['median_ms']:8.2f} ms "
                      f"(min {r['min_ms']:.2f})  load {r['load_ms']:7.1f} ms  "
                      f"max error {r['max_error']:.1e}  export {r['export_s']:.1f} s")
            print(f"  size sparse/dense {entry['size_ratio']:.3f}, "
                  f"speed-up dense/sparse {entry['speedup']['median']:.2f}x (median over "
                  f"rounds, quartiles {entry['speedup']['q1']:.2f}-{entry['speedup']['q3']:.2f})")
    print(f"\nsummary ({args.threads} threads, batch 1, median of "
          f"{args.rounds * args.runs} calls each)")
    print(f"{'model':<15}{'input':>10}{'dense MB':>10}{'sparse MB':>10}{'ratio':>7}"
          f"{'dense ms':>10}{'sparse ms':>10}{'speed-up':>10}{'quartiles':>12}")
    for e in results["models"]:
        print(f"{e['name']:<15}{'x'.join(map(str, e['input'][:2])):>10}"
              f"{e['dense']['size_bytes'] / 1e6:>10.2f}{e['sparse']['size_bytes'] / 1e6:>10.2f}"
              f"{e['size_ratio']:>7.3f}{e['dense']['median_ms']:>10.2f}"
              f"{e['sparse']['median_ms']:>10.2f}{e['speedup']['median']:>9.2f}x"
              f"{e['speedup']['q1']:>7.2f}-{e['speedup']['q3']:.2f}")
    return results


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run the comparison, optionally write it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models",
                        default="mobilenet,mobilenet_xnn,resnet50,resnet20,mlp,mlp_1x4",
                        help="comma-separated: mobilenet, mobilenet_xnn, resnet50, resnet20, "
                             "mlp, mlp_1x4")
    parser.add_argument("--sparsity", type=float, default=0.9,
                        help="fraction of each Conv2D/Dense kernel zeroed")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per file")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating rounds of timed calls")
    parser.add_argument("--runs", type=int, default=None, help="timed calls per round")
    parser.add_argument("--quick", action="store_true",
                        help="128x128 inputs (ImageNet models) and fewer calls")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    defaults = (3, 10, 2) if args.quick else (5, 20, 5)
    for attr, value in zip(("warmup", "rounds", "runs"), defaults):
        if getattr(args, attr) is None:
            setattr(args, attr, value)
    if not 0.0 <= args.sparsity < 1.0:
        parser.error(f"--sparsity must be in [0, 1), got {args.sparsity}.")
    results = run(args)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2, default=str)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
