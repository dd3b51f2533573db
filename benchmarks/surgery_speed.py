"""Does physical pruning pay off on CPU, and how long does the surgery take?

For each model: prune it (L1, the papers' layer sets), then measure inference latency of the
original and the thin model at batch 1 and 64 (``profiling.measure_latency``: compiled
``predict_on_batch``, median of ``--runs`` timed calls), next to the theoretical speed-up
(MACs before / MACs after) and the fraction of it that is realized. For ResNet-50 it also
times the surgery itself (``shrink`` of the masked model, including the graph analysis).

    python benchmarks/surgery_speed.py --runs 5 --out surgery_speed.json
    python benchmarks/surgery_speed.py --models resnet56 --batch-sizes 1,64
    python benchmarks/surgery_speed.py --fold-bn   # also the BN-folded (deployment) forms

Settings (the TPP paper's):
- resnet56@0.5, resnet56@0.9: cifar_resnet(56), first conv of every block ("*_conv1").
- resnet50@2.31x: keras.applications.ResNet50(weights=None), 224×224, conv1 and conv2 of
  every bottleneck ("*_1_conv", "*_2_conv"), ratios 0.6/0.6/0.6/0.21 for conv2_x..conv5_x.
- resnet50@2.31x/16 (extra, not the paper's): the same with kept widths rounded up to multiples of
  16 (``round_to=16``), which oneDNN's blocked kernels run at full efficiency.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

from keras_tpp import folding, models, profiling, surgery  # noqa: E402

RESNET50_2_31X = {
    f"conv{stage}_*_{conv}_conv": ratio
    for stage, ratio in ((2, 0.6), (3, 0.6), (4, 0.6), (5, 0.21))
    for conv in (1, 2)
}


def _resnet50() -> keras.Model:
    return keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))


def _settings(names: list[str]) -> list[tuple[str, callable, dict, int | None]]:
    table = {
        "resnet56": [
            ("resnet56@0.5", lambda: models.cifar_resnet(56), {"*_conv1": 0.5}, None),
            ("resnet56@0.9", lambda: models.cifar_resnet(56), {"*_conv1": 0.9}, None),
        ],
        "resnet50": [("resnet50@2.31x", _resnet50, RESNET50_2_31X, None)],
        # Not the paper's exact setting: kept widths rounded up to multiples of 16.
        "resnet50_r16": [("resnet50@2.31x/16", _resnet50, RESNET50_2_31X, 16)],
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"Unknown --models {unknown}; choose from {sorted(table)}.")
    return [entry for n in names for entry in table[n]]


def _time_surgery(model: keras.Model, ratios: dict, repeats: int) -> dict:
    plan = surgery.make_plan(model, ratios)
    start = time.perf_counter()
    masked = surgery.zero_channels(model, plan)
    zero_s = time.perf_counter() - start
    shrink_s = []
    for _ in range(repeats):
        start = time.perf_counter()
        surgery.shrink(masked, plan)
        shrink_s.append(time.perf_counter() - start)
    return {"zero_channels_s": zero_s, "shrink_s_median": statistics.median(shrink_s),
            "shrink_s_all": shrink_s}


def run(args: argparse.Namespace) -> dict:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    results = {"platform": platform.platform(), "keras": keras.__version__,
               "backend": keras.backend.backend(), "cpus": os.cpu_count(),
               "runs": args.runs, "warmup": args.warmup, "settings": []}
    for name, build, ratios, round_to in _settings(args.models.split(",")):
        model = build()
        keras.utils.set_random_seed(0)
        start = time.perf_counter()
        thin = surgery.prune(model, ratios, round_to=round_to)
        prune_s = time.perf_counter() - start
        entry = {"name": name, "prune_s": prune_s}
        entry.update(profiling.compare(
            model, thin, batch_sizes=batch_sizes, warmup=args.warmup, runs=args.runs,
            print_table=False))
        if args.fold_bn:
            # Deployment form of both models: inference-mode BN folded into the convs.
            entry["folded"] = profiling.compare(
                folding.fold_batchnorm(model), folding.fold_batchnorm(thin),
                batch_sizes=batch_sizes, warmup=args.warmup, runs=args.runs,
                print_table=False)
            entry["folded"]["name"] = name + " folded"
        if name == "resnet50@2.31x":
            entry["surgery"] = _time_surgery(model, ratios, repeats=3)
        results["settings"].append(entry)
        print(f"\n== {name}  (prune: {prune_s:.2f} s)")
        print(profiling.format_comparison(entry))
        if "surgery" in entry:
            s = entry["surgery"]
            print(f"surgery: zero_channels {s['zero_channels_s']:.2f} s, "
                  f"shrink {s['shrink_s_median']:.2f} s (median of {len(s['shrink_s_all'])})")
    print("\nsummary (speed-up measured / theoretical MAC ratio)")
    print(f"{'setting':<22}{'MAC ratio':>10}" + "".join(
        f"{'b' + str(b) + ' speedup':>14}{'b' + str(b) + ' realized':>14}" for b in batch_sizes))
    rows = [(e["name"], e) for e in results["settings"]]
    rows += [(e["name"] + " +fold", e["folded"]) for e in results["settings"] if "folded" in e]
    for name, entry in rows:
        row = f"{name:<22}{entry['macs_ratio']:>9.2f}x"
        for b in batch_sizes:
            lat = entry["latency"][b]
            row += f"{lat['speedup']:>13.2f}x{lat['speedup_vs_macs']:>14.2f}"
        print(row)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet56,resnet50,resnet50_r16",
                        help="comma-separated: resnet56, resnet50, resnet50_r16")
    parser.add_argument("--runs", type=int, default=10, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--fold-bn", dest="fold_bn", action="store_true",
                        help="also time both models with BN folded (keras_tpp.fold_batchnorm)")
    args = parser.parse_args(argv)
    results = run(args)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2, default=str)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
