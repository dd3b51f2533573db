"""How much of each keras.applications family keras_tpp prunes, and whether shrinking is exact.

For one representative per family (plus MobileNetV3Small/Large and ConvNeXtTiny), built with
``weights=None`` at a small input size: ``prepare(model, ratio)`` (L1) → ``apply_masks`` →
``shrink``, then on random inputs the relative output difference between the prepared model
and the thin one, the groups prunable / total, the share of MACs in layers a prunable group
thins (``coverage_report.prunable_macs_fraction``), and the MACs of the thin model.

    python benchmarks/applications_coverage.py                       # markdown table
    python benchmarks/applications_coverage.py --families ConvNeXtTiny --allow-renormalization
    python benchmarks/applications_coverage.py --json coverage.json

About 10-40 s per family on 2 CPU cores (model construction and cloning dominate).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # keras_tpp

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_tpp  # noqa: E402

#: (constructor, input size): one representative per family, at (about) its minimum size.
FAMILIES = [
    ("ConvNeXtTiny", 32), ("DenseNet121", 32), ("EfficientNetB0", 32),
    ("EfficientNetV2B0", 32), ("InceptionResNetV2", 75), ("InceptionV3", 75),
    ("MobileNet", 32), ("MobileNetV2", 32), ("MobileNetV3Small", 32), ("MobileNetV3Large", 32),
    ("NASNetMobile", 32), ("ResNet50", 32), ("ResNet50V2", 32), ("VGG16", 32),
    ("Xception", 71),
]


def measure(name: str, size: int, ratio: float = 0.3, *, allow_renormalization: bool = False,
            seed: int = 0) -> dict:
    """prepare → apply_masks → shrink on one family; returns the row of the table.

    Args:
        name: a ``keras.applications`` constructor name.
        size: input height and width.
        ratio: the pruning ratio of every prunable group.
        allow_renormalization: prune through LayerNormalization too (not exact).
        seed: seed of the random inputs.
    Returns:
        {"family", "input", "groups", "prunable_groups", "prunable_macs_fraction", "macs",
        "thin_macs", "relative_difference", "left_alone": [reason, ...], "seconds"}.

    Example::

        measure("MobileNetV3Small", 32)
    """
    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", keras_tpp.CoverageWarning)
        pmodel = keras_tpp.prepare(model, ratio, method="l1",
                                   allow_renormalization=allow_renormalization)
        keras_tpp.apply_masks(pmodel)
        thin = keras_tpp.shrink(pmodel, allow_renormalization=allow_renormalization)
    seconds = time.perf_counter() - start
    x = np.random.default_rng(seed).uniform(0, 255, (2, size, size, 3)).astype("float32")
    before = np.asarray(keras.ops.convert_to_numpy(pmodel(x, training=False)), np.float64)
    after = np.asarray(keras.ops.convert_to_numpy(thin(x, training=False)), np.float64)
    report = pmodel.coverage_report
    return {
        "family": name, "input": size, "groups": len(report.groups),
        "prunable_groups": len(report.prunable),
        "prunable_macs_fraction": report.prunable_macs_fraction,
        "macs": keras_tpp.profile(model)["macs"], "thin_macs": keras_tpp.profile(thin)["macs"],
        "relative_difference": float(np.max(np.abs(after - before))
                                     / max(np.max(np.abs(before)), 1e-12)),
        "left_alone": [str(g.reason) for g in report.left_alone],
        "warnings": sum(isinstance(w.message, keras_tpp.CoverageWarning) for w in caught),
        "seconds": round(seconds, 1),
    }


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| family (input) | groups prunable / total | MACs in prunable layers | "
             "MACs after 0.3 | max rel. output diff | left alone (besides the head) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        left = (f"{len(r['left_alone'])} group(s), e.g. {r['left_alone'][0][:90]}"
                if r["left_alone"] else "none")
        lines.append(
            f"| {r['family']} ({r['input']}×{r['input']}) | {r['prunable_groups']} / "
            f"{r['groups']} | {100 * r['prunable_macs_fraction']:.1f}% | "
            f"{r['thin_macs'] / r['macs']:.2f}× | {r['relative_difference']:.1e} | {left} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=None,
                        help="constructor names (default: one per family)")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--allow-renormalization", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    sizes = dict(FAMILIES)
    names = args.families or [n for n, _ in FAMILIES]
    rows = []
    for name in names:
        row = measure(name, sizes.get(name, 32), args.ratio,
                      allow_renormalization=args.allow_renormalization)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
