"""How much of a thin model's MAC reduction becomes speed on CPU, and what bounds it?

For each setting (the TPP paper's pruning of ResNet-56 and ResNet-50, L1 one-shot) the
dense model and its thin variants — kept widths as
chosen, and rounded up to multiples of ``--round-to`` (``make_plan(..., round_to=k)``) — are
timed in alternation, round-robin, in up to three forms:

- ``keras``: ``predict_on_batch`` (Keras' compiled predict step, TF backend, no XLA), BN
  as trained (not folded);
- ``keras_fold``: the same after ``keras_tpp.fold_batchnorm`` (the deployment form);
- ``tflite``: the BN-folded model converted to float32 TFLite (``keras_tpp.deployment``'s
  converter), run by the TFLite interpreter with its default XNNPack delegate and
  ``--threads`` threads; its outputs are checked against Keras'.

Per form and batch size it prints each variant's MAC ratio (dense MACs / its own MACs:
rounding up keeps more channels, so a rounded variant is judged against its own ratio), the
median and quartiles of the latency, the speed-up (dense median / variant median) and the
realized fraction (speed-up / MAC ratio). Next to it, the memory-aware bound: the ratio of
the dense and the thin model's times predicted by ``keras_tpp.profiling.roofline`` (per
layer max(MACs / peak MAC rate, bytes moved / bandwidth), float32) with the peak MAC rate
(a large matmul) and the bandwidth (a large ReLU: read + write) measured by this script in
the same backend; "of bound" = speed-up / bound. "paired" is the realized fraction from the
median of the per-round ratios (dense and variant timed moments apart: robust to load that
changes during the run); "nonconv" is the roofline's share of the predicted time outside
the convolutions (BN, activations, additions, pooling). ``--breakdown`` also times every distinct
layer call of the dense and the thin model in isolation (Keras, BN folded) and sums the
time of the convolutions and of everything else.

    python benchmarks/realized_fraction.py --quick                  # a few min, ResNet-56 pr 0.5
    python benchmarks/realized_fraction.py --threads 1 --out realized.json   # all settings
    python benchmarks/realized_fraction.py --settings resnet50 --round-to none,16 --runs 7

Settings and batch sizes (``--keras-batches``/``--tflite-batches`` override them):
- resnet56@0.5, resnet56@0.9: cifar_resnet(56), "*_conv1"; Keras and TFLite at batch 1, 64.
- resnet50@2.31x: keras.applications.ResNet50(weights=None), 224², "conv{2..5}_*_{1,2}_conv"
  at 0.6/0.6/0.6/0.21; Keras at batch 16, TFLite at batch 1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_tpp import deployment, folding, layer_roles, models, profiling, surgery  # noqa: E402
from keras_tpp.graph import CallSite, walk  # noqa: E402

RESNET50_2_31X = models.resnet50_ratios("2.31x")  # SPEC's 2.31× preset

#: name -> (builder, ratios, Keras batch sizes, TFLite batch sizes)
SETTINGS: dict[str, tuple[Callable[[], keras.Model], dict, list[int], list[int]]] = {
    "resnet56@0.5": (lambda: models.cifar_resnet(56), {"*_conv1": 0.5}, [1, 64], [1, 64]),
    "resnet56@0.9": (lambda: models.cifar_resnet(56), {"*_conv1": 0.9}, [1, 64], [1, 64]),
    "resnet50@2.31x": (lambda: keras.applications.ResNet50(weights=None,
                                                           input_shape=(224, 224, 3)),
                       RESNET50_2_31X, [16], [1]),
}
GROUPS = {"resnet56": ["resnet56@0.5", "resnet56@0.9"], "resnet50": ["resnet50@2.31x"]}
FORMS = ("keras", "keras_fold", "tflite")
#: TFLite fuses a ReLU into the CONV_2D / ADD before it: the roofline counts it as free there.
TFLITE_FREE = profiling.ROOFLINE_FREE_LAYERS + (keras.layers.ReLU, keras.layers.Activation)


# ----------------------------------------------------------------------------- timing

def _stats(times_ms: list[float]) -> dict:
    t = np.asarray(times_ms)
    return {"median_ms": float(np.median(t)), "q1_ms": float(np.percentile(t, 25)),
            "q3_ms": float(np.percentile(t, 75)), "min_ms": float(t.min()), "runs": int(t.size)}


def _round_robin(calls: list[Callable[[], Any]], warmup: int, runs: int,
                 raw: list | None = None) -> list[dict]:
    """Time ``calls`` in alternation (A B C A B C ...) after ``warmup`` rounds.

    ``raw`` (optional) receives the per-call lists of milliseconds."""
    for _ in range(max(1, warmup)):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for call, bucket in zip(calls, times):
            start = time.perf_counter()
            call()
            bucket.append((time.perf_counter() - start) * 1e3)
    if raw is not None:
        raw.extend(times)
    return [_stats(bucket) for bucket in times]


def _keras_call(model: keras.Model, batch: int) -> Callable[[], Any]:
    x = np.random.default_rng(0).random((batch,) + tuple(model.inputs[0].shape[1:]),
                                        dtype=np.float32)
    return lambda: model.predict_on_batch(x)


def _tflite_interpreter(folded: keras.Model, batch: int, threads: int,
                        content: bytes | None = None) -> Any:
    content = content or deployment._tflite_bytes(folded, None, False)
    interpreter = deployment._interpreter(content, num_threads=threads)
    inp = interpreter.get_input_details()[0]
    if batch != int(inp["shape"][0]):
        interpreter.resize_tensor_input(inp["index"], [batch] + list(inp["shape"][1:]))
        interpreter.allocate_tensors()
    return interpreter


def _tflite_call(interpreter: Any, batch: int) -> Callable[[], Any]:
    inp = interpreter.get_input_details()[0]
    x = np.random.default_rng(0).random([batch] + list(inp["shape"][1:]), dtype=np.float32)
    interpreter.set_tensor(inp["index"], x)
    return interpreter.invoke


def _tflite_error(interpreter: Any, model: keras.Model, batch: int) -> float:
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    x = np.random.default_rng(1).random([batch] + list(inp["shape"][1:]), dtype=np.float32)
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    got = np.array(interpreter.get_tensor(out["index"]))
    expected = np.asarray(model.predict_on_batch(x))
    return deployment._relative_error(got, expected)


# ----------------------------------------------------------------- machine parameters

def _measure_keras_machine(runs: int) -> dict:
    """Peak MAC rate (2048² matmul) and bandwidth (ReLU of 64 MB) in TF graph mode."""
    import tensorflow as tf

    n = 2048
    a = tf.random.uniform((n, n))
    matmul = tf.function(lambda x: tf.matmul(x, x))
    big = tf.random.uniform((16 * 1024 * 1024,))
    relu = tf.function(tf.nn.relu)
    mm = _round_robin([lambda: matmul(a).numpy()[0, 0], lambda: relu(big).numpy()[0]], 2, runs)
    # .numpy() of a CPU tensor shares its buffer (no copy); TF allocates the ReLU's 64 MB
    # output afresh each call, as it does for activations, so that cost is included.
    return {"peak_macs_per_s": n ** 3 / (mm[0]["min_ms"] / 1e3),
            "bytes_per_s": 2 * big.shape[0] * 4 / (mm[1]["min_ms"] / 1e3),
            "matmul_ms": mm[0], "relu_ms": mm[1]}


def _measure_tflite_machine(threads: int, runs: int) -> dict:
    """Peak MAC rate (1024×1024 by 1024×1024 fully connected) and bandwidth (ReLU, 64 MB)."""
    n = 1024
    fc_in = keras.Input((n,), batch_size=n)
    fc = keras.Model(fc_in, keras.layers.Dense(n, use_bias=False)(fc_in))
    relu_in = keras.Input((4096, 4096), batch_size=1)
    relu = keras.Model(relu_in, keras.layers.ReLU()(relu_in))
    fc_i = _tflite_interpreter(fc, n, threads)
    relu_i = _tflite_interpreter(relu, 1, threads)
    mm = _round_robin([_tflite_call(fc_i, n), _tflite_call(relu_i, 1)], 2, runs)
    return {"peak_macs_per_s": n ** 3 / (mm[0]["min_ms"] / 1e3),
            "bytes_per_s": 2 * 4096 * 4096 * 4 / (mm[1]["min_ms"] / 1e3),
            "matmul_ms": mm[0], "relu_ms": mm[1]}


# ------------------------------------------------------------------------- breakdown

def _layer_breakdown(model: keras.Model, batch: int, runs: int) -> dict:
    """Sum of the isolated times of every layer call, split into convolutions and the rest.

    Each distinct (layer config, input shapes) is rebuilt alone as a small Keras model and
    timed with ``predict_on_batch`` (median of ``runs``), in alternation with an Identity
    model on its first input's shape, whose time (dispatch, feeding the input, copying the
    output back) is subtracted; a call's time counts once per occurrence. Isolated layers
    do not share caches with their neighbours, so the sum differs from the whole model's
    time; the split between convolutions and the rest is what matters.
    """
    keyed: dict[str, dict] = {}

    def visit(site: CallSite) -> list[None]:
        layer = site.ref.layer
        if not isinstance(layer, profiling.ROOFLINE_FREE_LAYERS):
            config = dict(layer.get_config(), name="probe")
            key = json.dumps([type(layer).__name__, config, site.input_shapes[0:]],
                             default=str, sort_keys=True)
            entry = keyed.setdefault(key, {"layer": layer, "shapes": site.input_shapes,
                                           "count": 0})
            entry["count"] += 1
        return [None] * len(site.output_shapes)

    walk(model, [None], visit)
    totals = {"conv_ms": 0.0, "other_ms": 0.0, "overhead_ms": 0.0, "by_class_ms": {}}
    for entry in keyed.values():
        layer = entry["layer"]
        inputs = [keras.Input(tuple(s[1:]), batch_size=batch) for s in entry["shapes"]]
        clone = type(layer).from_config(dict(layer.get_config(), name="probe"))
        out = clone(inputs[0] if len(inputs) == 1 else inputs)
        probe = keras.Model(inputs, out)
        if layer.weights:
            probe.set_weights([np.asarray(w) for w in layer.get_weights()])
        rng = np.random.default_rng(0)
        xs = [rng.random((batch,) + tuple(s[1:]), dtype=np.float32) for s in entry["shapes"]]
        arg = xs[0] if len(xs) == 1 else xs
        idle_in = keras.Input(tuple(entry["shapes"][0][1:]), batch_size=batch)
        idle = keras.Model(idle_in, keras.layers.Identity()(idle_in))
        timed = _round_robin([lambda: probe.predict_on_batch(arg),
                              lambda: idle.predict_on_batch(xs[0])], 2, runs)
        ms = max(0.0, timed[0]["median_ms"] - timed[1]["median_ms"])
        totals["overhead_ms"] += timed[1]["median_ms"] * entry["count"]
        total = ms * entry["count"]
        name = type(layer).__name__
        totals["by_class_ms"][name] = totals["by_class_ms"].get(name, 0.0) + total
        kind = "conv_ms" if isinstance(layer, (layer_roles.CONV, layer_roles.DENSE)) \
            else "other_ms"
        totals[kind] += total
    return totals


# ---------------------------------------------------------------------------- running

def _variants(model: keras.Model, ratios: dict, round_tos: list) -> list[tuple[str, Any]]:
    out = []
    for r in round_tos:
        keras.utils.set_random_seed(0)
        label = "thin" if r is None else f"thin/{r}"
        try:
            out.append((label, surgery.prune(model, ratios, round_to=r)))
        except (ValueError, TypeError) as err:  # e.g. round_to="auto" not available yet
            print(f"  skipped {label}: {err}")
    return out


def _forms_of(nets: list[tuple[str, keras.Model]], form: str) -> list[tuple[str, keras.Model]]:
    if form == "keras":
        return nets
    return [(label, folding.fold_batchnorm(net)) for label, net in nets]


def run_setting(name: str, args: argparse.Namespace, machine: dict) -> dict:
    build, ratios, keras_batches, tflite_batches = SETTINGS[name]
    if args.keras_batches:
        keras_batches = [int(b) for b in args.keras_batches.split(",")]
    if args.tflite_batches:
        tflite_batches = [int(b) for b in args.tflite_batches.split(",")]
    dense = build()
    nets = [("dense", dense)] + _variants(dense, ratios, args.round_to)
    macs = {label: profiling.profile(net)["macs"] for label, net in nets}
    entry: dict = {"name": name, "ratios": ratios,
                   "macs": macs, "mac_ratio": {k: macs["dense"] / v for k, v in macs.items()},
                   "forms": {}}
    for form in args.forms:
        batches = tflite_batches if form == "tflite" else keras_batches
        if not batches:
            continue
        formed = _forms_of(nets, form)
        backend = "tflite" if form == "tflite" else "keras"
        params = machine[backend]
        entry["forms"][form] = {}
        contents: dict[str, bytes] = {}
        free = TFLITE_FREE if form == "tflite" else profiling.ROOFLINE_FREE_LAYERS
        for batch in batches:
            if form == "tflite":
                for label, net in formed:
                    if label not in contents:
                        contents[label] = deployment._tflite_bytes(net, None, False)
                interpreters = [_tflite_interpreter(net, batch, args.threads, contents[label])
                                for label, net in formed]
                errors = {label: _tflite_error(i, net, batch)
                          for (label, net), i in zip(formed, interpreters)}
                calls = [_tflite_call(i, batch) for i in interpreters]
            else:
                errors = {}
                calls = [_keras_call(net, batch) for _, net in formed]
            raw: list = []
            stats = _round_robin(calls, args.warmup, args.runs, raw)
            predicted = {label: profiling.roofline(
                net, peak_macs_per_s=params["peak_macs_per_s"],
                bytes_per_s=params["bytes_per_s"], batch_size=batch, free_layers=free)
                for label, net in formed}
            rows = {}
            for (label, _), st, times in zip(formed, stats, raw):
                pred = predicted[label]
                speedup = stats[0]["median_ms"] / st["median_ms"]
                # Median of the per-round ratios (dense and variant timed moments apart).
                paired = float(np.median(np.asarray(raw[0]) / np.asarray(times)))
                bound = predicted["dense"]["seconds"] / pred["seconds"]
                conv_s = sum(e["seconds"] for e in pred["per_layer"] if e["macs"])
                rows[label] = dict(st, mac_ratio=entry["mac_ratio"][label], speedup=speedup,
                                   paired_speedup=paired,
                                   realized=speedup / entry["mac_ratio"][label],
                                   bound=bound, of_bound=speedup / bound,
                                   predicted_ms=pred["seconds"] * 1e3,
                                   predicted_nonconv_share=1 - conv_s / pred["seconds"],
                                   tflite_error=errors.get(label))
            entry["forms"][form][batch] = rows
            _print_block(name, form, batch, rows, args)
    if args.breakdown:
        folded = dict(_forms_of(nets[:2], "keras_fold"))
        batch = max(keras_batches)
        entry["breakdown"] = {"batch": batch}
        for label in ("dense", "thin"):
            entry["breakdown"][label] = _layer_breakdown(folded[label], batch, args.runs)
        b = entry["breakdown"]
        print(f"  isolated layer times, keras_fold b{batch} (ms): "
              f"conv {b['dense']['conv_ms']:.1f} -> {b['thin']['conv_ms']:.1f} "
              f"({b['dense']['conv_ms'] / b['thin']['conv_ms']:.2f}x), "
              f"other {b['dense']['other_ms']:.1f} -> {b['thin']['other_ms']:.1f}; "
              f"thin: {b['thin']['other_ms'] / (b['thin']['conv_ms'] + b['thin']['other_ms']):.0%}"
              f" of the time outside convolutions")
    return entry


def _print_block(name: str, form: str, batch: int, rows: dict, args: argparse.Namespace) -> None:
    threads = f", {args.threads} threads" if form == "tflite" else ""
    print(f"\n== {name}  {form}{threads}  batch {batch}")
    print(f"{'variant':<10}{'MACs':>7}{'median ms':>11}{'q1–q3 ms':>17}{'speed-up':>10}"
          f"{'realized':>10}{'paired':>8}{'bound':>8}{'of bound':>10}{'nonconv':>9}")
    for label, r in rows.items():
        print(f"{label:<10}{r['mac_ratio']:>6.2f}x{r['median_ms']:>11.2f}"
              f"{r['q1_ms']:>8.2f}–{r['q3_ms']:<8.2f}{r['speedup']:>9.2f}x"
              f"{r['realized']:>10.2f}{r['paired_speedup'] / r['mac_ratio']:>8.2f}"
              f"{r['bound']:>7.2f}x{r['of_bound']:>10.2f}"
              f"{r['predicted_nonconv_share']:>9.0%}")


def _write_json(path: str, results: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-realized-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _parse_round_to(text: str) -> list:
    out: list = []
    for item in text.split(","):
        item = item.strip().lower()
        out.append(None if item in ("none", "") else item if item == "auto" else int(item))
    return out


def run(args: argparse.Namespace) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    names = [n for item in args.settings.split(",") for n in GROUPS.get(item, [item])]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"Unknown --settings {unknown}; choose from "
                         f"{sorted(SETTINGS) + sorted(GROUPS)}.")
    load = os.getloadavg()
    machine = {}
    if any(f != "tflite" for f in args.forms):
        machine["keras"] = _measure_keras_machine(args.runs)
    if "tflite" in args.forms:
        machine["tflite"] = _measure_tflite_machine(args.threads, args.runs)
    for backend, m in machine.items():
        print(f"{backend}: peak {m['peak_macs_per_s'] / 1e9:.1f} GMAC/s, "
              f"bandwidth {m['bytes_per_s'] / 1e9:.1f} GB/s")
    results = {"platform": platform.platform(), "keras": keras.__version__,
               "tensorflow": tf.__version__, "cpus": os.cpu_count(), "threads": args.threads,
               "runs": args.runs, "warmup": args.warmup, "load_before": load,
               "machine": machine, "round_to": args.round_to, "settings": []}
    start = time.perf_counter()
    for name in names:
        results["settings"].append(run_setting(name, args, machine))
        if args.out:  # keep what was measured if a later setting fails
            _write_json(args.out, results)
    results["load_after"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - start
    print(f"\nload average before {load[0]:.2f}, after {results['load_after'][0]:.2f}; "
          f"{results['wall_s']:.0f} s")
    if args.out:
        _write_json(args.out, results)
        print(f"wrote {args.out}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="resnet56,resnet50",
                        help="comma-separated: resnet56, resnet50 or single settings "
                             f"({', '.join(SETTINGS)})")
    parser.add_argument("--round-to", dest="round_to", default="none,8,16,32",
                        type=_parse_round_to,
                        help="thin variants: 'none' (widths as chosen) and/or multiples to "
                             "round kept widths up to; 'auto' is passed to make_plan as is "
                             "(skipped where make_plan does not accept it)")
    parser.add_argument("--forms", default=",".join(FORMS), type=lambda s: s.split(","),
                        help=f"comma-separated subset of {FORMS}")
    parser.add_argument("--keras-batches", default=None, help="override the Keras batch sizes")
    parser.add_argument("--tflite-batches", default=None,
                        help="override the TFLite batch sizes")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="TFLite interpreter threads and TF intra-op threads")
    parser.add_argument("--runs", type=int, default=15, help="timed rounds per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each layer call in isolation (conv vs the rest)")
    parser.add_argument("--quick", action="store_true",
                        help="short run: resnet56@0.5 only, round_to none,16, 5 runs")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    bad = [f for f in args.forms if f not in FORMS]
    if bad:
        raise SystemExit(f"Unknown --forms {bad}; choose from {FORMS}.")
    if args.quick:
        args.settings = "resnet56@0.5" if args.settings == parser.get_default("settings") \
            else args.settings
        if args.round_to == _parse_round_to(parser.get_default("round_to")):
            args.round_to = [None, 16]
        args.runs, args.warmup = min(args.runs, 5), min(args.warmup, 1)
    run(args)


if __name__ == "__main__":
    main()
