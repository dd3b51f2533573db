"""Uniform vs latency-aware pruning plans at equal MACs: which thin model runs faster?

For each model (keras.applications, ``weights=None``):

1. ``keras_tpp.latency_table(model)`` measures every prunable group's layers at a sweep of
   kept widths on this machine and backend (saved next to the JSON output, reused with
   ``--reuse-tables``).
2. The latency-aware plan: ``make_plan(model, target_latency=T, latency_table=table)``.
3. Uniform plans at the same MACs: the one ratio for every prunable group (plain, and with
   ``round_to=8``) found by bisection so that the thin model's MACs match the
   latency-aware thin model's within ``--mac-tolerance`` (1%).
4. The dense and thin models are timed in alternation (``predict_on_batch``, medians),
   ``--repeats`` times, with :func:`keras_tpp.profiling.measure_latency`'s interleaving.

Example (the README's runs; the second command re-plans on the saved table's fit)::

    python benchmarks/latency_aware.py --models MobileNetV2 --size 128 --batch 8 \\
        --statistic min --table-runs 9 --runs 20 --out /tmp/la/mnv2.json
    python benchmarks/latency_aware.py --models MobileNetV2 --size 128 --batch 8 \\
        --statistic min --runs 20 --reuse-tables --fit --out /tmp/la/mnv2_fit.json
    # ResNet50: --size 128 --batch 4 --table-runs 7 --runs 15
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_tpp  # noqa: E402
from keras_tpp import latency, profiling  # noqa: E402


def thin_macs(model: keras.Model, plan: dict) -> tuple[keras.Model, int]:
    thin = keras_tpp.shrink(model, plan)
    return thin, profiling.profile(thin)["macs"]


def matched_uniform(model, graph, target_macs: int, tolerance: float, round_to=None):
    """The uniform ratio whose thin model's MACs are closest to ``target_macs`` (bisection on
    the ratio; MACs decrease with it)."""
    lo, hi = 0.0, 0.95
    best = None
    for _ in range(18):
        mid = (lo + hi) / 2
        plan = keras_tpp.make_plan(model, mid, graph=graph, round_to=round_to)
        thin, macs = thin_macs(model, plan)
        err = macs / target_macs - 1
        if best is None or abs(err) < abs(best[3]):
            best = (mid, plan, thin, err, macs)
        if abs(err) <= tolerance / 4:
            break
        if macs > target_macs:
            lo = mid
        else:
            hi = mid
    return best


def run_model(name: str, args, out_dir: str) -> dict:
    model = getattr(keras.applications, name)(weights=None,
                                              input_shape=(args.size, args.size, 3))
    graph = keras_tpp.DependencyGraph(model, on_unsupported="report")
    table_path = os.path.join(out_dir, f"latency_table_{name}_{args.size}_b{args.batch}.json")
    if args.reuse_tables and os.path.exists(table_path):
        table = keras_tpp.LatencyTable.load(table_path)
        table_s = 0.0
    else:
        start = time.perf_counter()
        table = keras_tpp.latency_table(model, batch_size=args.batch, runs=args.table_runs,
                                        statistic=args.statistic, verbose=args.verbose)
        table_s = time.perf_counter() - start
        table.save(table_path)
    print(f"{name}: table of {len(table.groups)} groups in {table_s:.0f} s "
          f"(dense model {table.model_ms:.2f} ms)", flush=True)

    if args.fit:
        table = table.fitted_table()
    dense_macs = profiling.profile(model)["macs"]
    plan_la = keras_tpp.make_plan(model, target_latency=args.target, latency_table=table,
                                  graph=graph)
    thin_la, macs_la = thin_macs(model, plan_la)
    predicted = table.predict(latency.plan_widths(graph, plan_la)) / table.model_ms
    variants = {"latency-aware": (plan_la, thin_la, macs_la, None)}
    for label, round_to in (("uniform", None), ("uniform round_to=8", 8)):
        ratio, plan, thin, err, macs = matched_uniform(model, graph, macs_la,
                                                       args.mac_tolerance, round_to)
        variants[label] = (plan, thin, macs, ratio)
        print(f"  {label}: ratio {ratio:.4f}, MACs {macs / macs_la - 1:+.2%} vs latency-aware",
              flush=True)

    labels = ["dense"] + list(variants)
    nets = [model] + [v[1] for v in variants.values()]
    rounds, mins = [], []
    for r in range(args.repeats):
        summaries = profiling.measure_interleaved(nets, args.batch, args.warmup, args.runs, None, r)
        rounds.append([s["median_ms"] for s in summaries])
        mins.append([s["min_ms"] for s in summaries])
        print(f"  round {r + 1}: " + ", ".join(
            f"{label} {ms:.2f}" for label, ms in zip(labels, rounds[-1])), flush=True)
    ms = np.median(np.asarray(rounds), axis=0)
    rows = []
    for i, label in enumerate(labels):
        macs = dense_macs if label == "dense" else variants[label][2]
        per_round = [rnd[0] / rnd[i] for rnd in rounds]
        rows.append({
            "variant": label, "macs": int(macs), "macs_ratio": dense_macs / macs,
            "ms": float(ms[i]), "ms_per_round": [float(rnd[i]) for rnd in rounds],
            "min_ms": float(np.min(np.asarray(mins)[:, i])),
            "speedup": float(np.median(per_round)),
            "ratio": None if label in ("dense", "latency-aware") else variants[label][3],
        })
    la = next(r for r in rows if r["variant"] == "latency-aware")
    uni = next(r for r in rows if r["variant"] == "uniform")
    la_vs_uniform = [rnd[labels.index("uniform")] / rnd[labels.index("latency-aware")]
                     for rnd in rounds]
    result = {
        "model": name, "input": [args.size, args.size, 3], "batch": args.batch,
        "target_latency": args.target, "table_statistic": table.statistic,
        "table_fitted": table.fitted,
        "predicted_latency_ratio": predicted,
        "measured_latency_ratio": la["ms"] / rows[0]["ms"],
        "latency_aware_vs_uniform": float(np.median(la_vs_uniform)),
        "latency_aware_vs_uniform_per_round": la_vs_uniform,
        "table_seconds": table_s, "table_model_ms": table.model_ms,
        "latency_aware_widths": latency.plan_widths(graph, plan_la),
        "group_sizes": {g.producers[0].path_str: g.size for g in graph.groups if g.prunable},
        "rows": rows,
    }
    print(f"\n{name} ({args.size}x{args.size}, batch {args.batch}; target {args.target}, "
          f"predicted {predicted:.3f}, measured {result['measured_latency_ratio']:.3f})")
    print(f"{'variant':<22}{'MACs':>14}{'MAC x':>8}{'ms':>10}{'min ms':>10}{'speed-up':>10}")
    for row in rows:
        print(f"{row['variant']:<22}{row['macs']:>14,}{row['macs_ratio']:>8.2f}"
              f"{row['ms']:>10.2f}{row['min_ms']:>10.2f}{row['speedup']:>9.2f}x")
    print(f"latency-aware vs uniform at equal MACs: {result['latency_aware_vs_uniform']:.3f}x "
          f"(per round: {', '.join(f'{x:.3f}' for x in la_vs_uniform)}); "
          f"uniform {uni['ms']:.2f} ms, latency-aware {la['ms']:.2f} ms", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="ResNet50,MobileNetV2")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--table-runs", type=int, default=15)
    parser.add_argument("--statistic", default="median", choices=("median", "min"))
    parser.add_argument("--mac-tolerance", type=float, default=0.01)
    parser.add_argument("--reuse-tables", action="store_true")
    parser.add_argument("--fit", action="store_true",
                        help="plan on LatencyTable.fitted_table() (a + b·w + odd-width term)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--out", default="latency_aware.json")
    args = parser.parse_args()
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    results = {"backend": keras.backend.backend(), "cpus": os.cpu_count(),
               "load_avg_start": os.getloadavg(), "models": []}
    for name in args.models.split(","):
        results["models"].append(run_model(name.strip(), args, out_dir))
    results["load_avg_end"] = os.getloadavg()
    tmp = args.out + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(results, handle, indent=1)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}; load average {results['load_avg_start']} -> "
          f"{results['load_avg_end']}")


if __name__ == "__main__":
    main()
