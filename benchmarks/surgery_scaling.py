"""How the graph analysis, planning, prepare and surgery times grow with the layer count.

For each keras.applications model (weights=None, small inputs, so that the time is the
graph work and not the arithmetic) it times, fastest of ``--repeats`` runs each:

- graph: ``DependencyGraph(model)``;
- make_plan: ``make_plan(model, ratio)`` (graph included, L1 scores);
- shrink: ``shrink(masked, plan)`` of the masked model ``zero_channels(model, plan)``;
- prepare: ``prepare(model, ratio)``;
- shrink(prepared): ``shrink(pmodel)`` after ``apply_masks(pmodel)`` (strips the
  wrappers first: one more rebuild of the model);

and prints them with the seconds per 100 layers (leaf layers, nested models counted by their
layers) of shrink and of shrink(prepared): about constant across model sizes when every step
is linear in the layer count. ``--check`` also compares the thin models' outputs with the
masked ones.

    python benchmarks/surgery_scaling.py
    python benchmarks/surgery_scaling.py --models resnet50,densenet121 --repeats 3 --check
    python benchmarks/surgery_scaling.py --clock cpu   # process CPU time (shared machines)

Wall-clock times on a shared machine vary with its load; ``--clock cpu`` reports the process'
CPU time (all threads), which varies less.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_tpp  # noqa: E402
from keras_tpp import surgery  # noqa: E402
from keras_tpp.graph import DependencyGraph, iter_layers  # noqa: E402

_APPS = keras.applications
MODELS: dict[str, Callable[[tuple], keras.Model]] = {
    "resnet50": lambda shape: _APPS.ResNet50(weights=None, input_shape=shape),
    "densenet121": lambda shape: _APPS.DenseNet121(weights=None, input_shape=shape),
    "densenet201": lambda shape: _APPS.DenseNet201(weights=None, input_shape=shape),
    "nasnetmobile": lambda shape: _APPS.NASNetMobile(weights=None, input_shape=shape),
    "efficientnetb7": lambda shape: _APPS.EfficientNetB7(weights=None, input_shape=shape),
}
DEFAULT_MODELS = "resnet50,densenet121,nasnetmobile,densenet201,efficientnetb7"


def _clock(kind: str) -> Callable[[], float]:
    return time.process_time if kind == "cpu" else time.perf_counter


def _fastest(fn: Callable[[], Any], repeats: int, clock: Callable[[], float]) -> tuple[float, Any]:
    """(fastest time of ``repeats`` calls, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = clock()
        result = fn()
        best = min(best, clock() - start)
    return best, result


def _max_output_diff(a: keras.Model, b: keras.Model, shape: tuple) -> float:
    x = np.random.default_rng(0).normal(size=(2,) + shape).astype("float32")
    ya = keras.ops.convert_to_numpy(a(x, training=False))
    yb = keras.ops.convert_to_numpy(b(x, training=False))
    return float(np.max(np.abs(ya - yb)))


def run_model(name: str, args: argparse.Namespace) -> dict:
    """Time one model's steps; returns the row."""
    shape = (args.size, args.size, 3)
    keras.utils.set_random_seed(0)
    model = MODELS[name](shape)
    clock = _clock(args.clock)
    layers = sum(1 for _ in iter_layers(model))
    row: dict[str, Any] = {"model": name, "layers": layers}
    row["graph_s"], _ = _fastest(lambda: DependencyGraph(model, on_unsupported="skip"),
                                 args.repeats, clock)
    row["make_plan_s"], plan = _fastest(lambda: surgery.make_plan(model, args.ratio),
                                        args.repeats, clock)
    masked = surgery.zero_channels(model, plan)
    row["shrink_s"], thin = _fastest(lambda: surgery.shrink(masked, plan), args.repeats, clock)
    row["prepare_s"], pmodel = _fastest(lambda: keras_tpp.prepare(model, args.ratio),
                                        args.repeats, clock)
    keras_tpp.apply_masks(pmodel)
    row["shrink_prepared_s"], thin_p = _fastest(lambda: keras_tpp.shrink(pmodel),
                                                args.repeats, clock)
    row["shrink_s_per_100"] = 100 * row["shrink_s"] / layers
    row["shrink_prepared_s_per_100"] = 100 * row["shrink_prepared_s"] / layers
    row["params_before"] = int(model.count_params())
    row["params_after"] = int(thin.count_params())
    if args.check:
        row["max_diff_plan"] = _max_output_diff(masked, thin, shape)
        row["max_diff_prepared"] = _max_output_diff(pmodel, thin_p, shape)
    return row


COLUMNS = [("model", "model", "{:<16}"), ("layers", "layers", "{:>7}"),
           ("graph_s", "graph s", "{:>9.3f}"), ("make_plan_s", "make_plan s", "{:>12.2f}"),
           ("shrink_s", "shrink s", "{:>10.2f}"), ("prepare_s", "prepare s", "{:>10.2f}"),
           ("shrink_prepared_s", "shrink(prep) s", "{:>15.2f}"),
           ("shrink_s_per_100", "shrink s/100L", "{:>14.3f}"),
           ("shrink_prepared_s_per_100", "shr(prep) s/100L", "{:>17.3f}")]


def format_row(row: dict) -> str:
    text = "".join(fmt.format(row[key]) for key, _, fmt in COLUMNS)
    if "max_diff_plan" in row:
        text += f"   max|thin-masked| {row['max_diff_plan']:.1e} / {row['max_diff_prepared']:.1e}"
    return text


def header() -> str:
    widths = [len(fmt.format(0 if "f" in fmt else "")) if "{:<" not in fmt else 16
              for _, _, fmt in COLUMNS]
    return "".join(
        (f"{title:<{w}}" if i == 0 else f"{title:>{w}}")
        for i, ((_, title, _), w) in enumerate(zip(COLUMNS, widths)))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma-separated, from: {', '.join(MODELS)}")
    parser.add_argument("--ratio", type=float, default=0.3, help="pruning ratio")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--repeats", type=int, default=3, help="runs per step; fastest kept")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall-clock time (default) or process CPU time")
    parser.add_argument("--check", action="store_true",
                        help="also compare the thin models' outputs with the masked models'")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"Unknown --models {unknown}; choose from {sorted(MODELS)}.")
    print(f"keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} CPUs, "
          f"{args.clock} clock, fastest of {args.repeats}, ratio {args.ratio}, "
          f"{args.size}x{args.size} inputs")
    print(header(), flush=True)
    rows = []
    for name in names:
        row = run_model(name, args)
        rows.append(row)
        print(format_row(row), flush=True)
    result = {"platform": platform.platform(), "keras": keras.__version__,
              "clock": args.clock, "repeats": args.repeats, "ratio": args.ratio,
              "size": args.size, "rows": rows}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
