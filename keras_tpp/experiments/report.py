"""Plain-text before/after tables for the end of an experiment."""
from __future__ import annotations

from typing import Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; one line per row, header first."""
    table = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def _ratio(before: float | None, after: float | None) -> str:
    if not before or not after:
        return ""
    return f"{before / after:.2f}x"


def before_after_rows(before: dict, after: dict,
                      latency_ms: dict | None = None) -> list[tuple[str, str, str, str]]:
    """Rows (what, before, after, change) of a pruning result.

    Args:
      before: the dense model's ``accuracy`` (fraction), ``params`` and ``macs`` (per
        example); missing entries print as ``-``.
      after: the same for the pruned (and fine-tuned) model.
      latency_ms: {batch size: {"before_ms": ms, "after_ms": ms}} (milliseconds per batch).
    """
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    rows = []
    acc_b, acc_a = before.get("accuracy"), after.get("accuracy")
    rows.append(("test accuracy", fmt(acc_b, ".4f"), fmt(acc_a, ".4f"),
                 "" if acc_b is None or acc_a is None else f"{acc_a - acc_b:+.4f}"))
    for key, name in (("params", "params"), ("macs", "MACs")):
        rows.append((name, fmt(before.get(key), ","), fmt(after.get(key), ","),
                     _ratio(before.get(key), after.get(key))))
    for batch, lat in (latency_ms or {}).items():
        b, a = lat.get("before_ms"), lat.get("after_ms")
        rows.append((f"latency batch {batch} (ms)", fmt(b, ".2f"), fmt(a, ".2f"),
                     _ratio(b, a)))
    return rows


def summary_result(stages: dict) -> dict:
    """summary.json's ``result``: dense vs pruned vs final, from the per-stage entries.

    Args:
      stages: {"pretrain" | "prune" | "finetune": the stage's summary entry}.
    """
    dense, pruned, final = (stages.get(s, {}) for s in ("pretrain", "prune", "finetune"))
    result: dict = {}
    if dense:
        result["dense"] = {k: dense.get(k) for k in ("accuracy", "params", "macs")}
    if pruned:
        result["pruned"] = {"accuracy_before_finetune": pruned.get("accuracy"),
                            "params": pruned.get("params"), "macs": pruned.get("macs"),
                            "latency_ms": pruned.get("latency_ms")}
        result["dense_latency_ms"] = pruned.get("dense_latency_ms")
        if pruned.get("dense_params"):
            result["params_ratio"] = pruned["dense_params"] / max(pruned["params"], 1)
            result["macs_ratio"] = pruned["dense_macs"] / max(pruned["macs"], 1)
    if final:
        result["final_accuracy"] = final.get("accuracy")
        if dense.get("accuracy") is not None:
            result["accuracy_change"] = final["accuracy"] - dense["accuracy"]
    return result


def print_report(summary: dict, summary_path: str, plot: str | None = None) -> None:
    """Prints the before/after table of a stage runner's summary, the plot and summary paths.

    Args:
      summary: the contents of summary.json (its ``stages`` entries are read).
      summary_path: where it was written.
      plot: the training plot's path, if one was written.
    """
    stages = summary.get("stages", {})
    dense, pruned, final = (stages.get(s, {}) for s in ("pretrain", "prune", "finetune"))
    before = {"accuracy": dense.get("accuracy"),
              "params": pruned.get("dense_params", dense.get("params")),
              "macs": pruned.get("dense_macs", dense.get("macs"))}
    after = {"accuracy": final.get("accuracy", pruned.get("accuracy")),
             "params": pruned.get("params", final.get("params")),
             "macs": pruned.get("macs", final.get("macs"))}
    latency = {b: {"before_ms": (pruned.get("dense_latency_ms") or {}).get(b),
                   "after_ms": ms} for b, ms in (pruned.get("latency_ms") or {}).items()}
    label = (f"after ({pruned.get('method', '?')}, thin"
             + (", fine-tuned)" if final else ", not fine-tuned)"))
    print()
    print(format_table(("", "before (dense)", label, "change"),
                       before_after_rows(before, after, latency)))
    if pruned.get("accuracy") is not None and final:
        print(f"(accuracy right after pruning, before fine-tuning: {pruned['accuracy']:.4f})")
    if plot:
        print(f"plot of λ, loss and accuracy per iteration: {plot}")
    print(f"summary: {summary_path}", flush=True)
