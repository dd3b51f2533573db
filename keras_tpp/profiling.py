"""Cost of a model: parameters, multiply-accumulates (MACs) and measured latency.

MACs are counted for one example, for the layers that multiply weights with activations:

- Conv (1D/2D/3D): out_positions · prod(kernel_size) · C_in / groups · C_out
- DepthwiseConv: out_positions · prod(kernel_size) · C_in · depth_multiplier
- SeparableConv: the depthwise part plus out_positions · C_in · depth_multiplier · C_out
- ConvTranspose: in_positions · prod(kernel_size) · C_in · C_out
- Dense: positions · C_in · C_out (positions = product of the non-batch, non-channel dims)

Batch norm, activations, pooling, additions and biases are ignored (as if BN were folded), as
are layers without a formula here (e.g. attention); nested models are counted call by call.

Latency is measured with ``model.predict_on_batch`` — Keras' compiled (graph-mode) predict
step, without XLA — on random float32 inputs, after warm-up calls; this was the fastest sane
path on CPU (eager ``model(x)`` pays Python dispatch per layer; hand-written compiled
functions are backend specific).
"""
from __future__ import annotations

import math
import time
from typing import Any, Sequence

import keras
import numpy as np

from keras_tpp import cloning
from keras_tpp.graph import CallSite, walk
from keras_tpp.layer_roles import CONV as _CONV
from keras_tpp.layer_roles import DENSE as _DENSE
from keras_tpp.layer_roles import DEPTHWISE as _DEPTHWISE
from keras_tpp.layer_roles import SEPARABLE as _SEPARABLE
from keras_tpp.layer_roles import TRANSPOSE as _TRANSPOSE


def _prod(values: Sequence[Any]) -> int:
    return int(math.prod(int(v) for v in values))


def layer_macs(layer: keras.layers.Layer, input_shape: tuple, output_shape: tuple) -> int:
    """MACs of one call of ``layer`` for one example (shapes include the batch axis)."""
    if isinstance(layer, _SEPARABLE):
        out_pos = _prod(output_shape[1:-1])
        c_in, mult = int(input_shape[-1]), int(layer.depth_multiplier)
        depthwise = out_pos * _prod(layer.kernel_size) * c_in * mult
        return depthwise + out_pos * c_in * mult * int(output_shape[-1])
    if isinstance(layer, _DEPTHWISE):
        return (_prod(output_shape[1:-1]) * _prod(layer.kernel_size) * int(input_shape[-1])
                * int(layer.depth_multiplier))
    if isinstance(layer, _TRANSPOSE):
        return (_prod(input_shape[1:-1]) * _prod(layer.kernel_size) * int(input_shape[-1])
                * int(output_shape[-1]))
    if isinstance(layer, _CONV):
        groups = int(getattr(layer, "groups", 1) or 1)
        return (_prod(output_shape[1:-1]) * _prod(layer.kernel_size)
                * int(input_shape[-1]) // groups * int(output_shape[-1]))
    if isinstance(layer, _DENSE):
        return _prod(input_shape[1:-1]) * int(input_shape[-1]) * int(output_shape[-1])
    return 0


def with_input_shape(model: keras.Model, input_shape: Any) -> keras.Model:
    """Same architecture on inputs of fixed shape (weights are not needed for shapes)."""
    shapes = input_shape if isinstance(input_shape, list) else [input_shape]
    originals = list(keras.tree.flatten(model.inputs))
    if len(shapes) != len(originals):
        raise ValueError(f"Model '{model.name}' has {len(originals)} inputs; got "
                         f"{len(shapes)} input shapes.")
    full = [(None,) + tuple(s) for s in shapes]
    return cloning.clone(model, input_shapes=lambda m: full if m is model else None,
                         copy_weights=False).model


def input_shapes(model: keras.Model, input_shape: Any) -> list[tuple]:
    """The per-example input shapes to profile or time ``model`` at (no batch axis).

    Args:
        model: the model.
        input_shape: one shape or a list of shapes (one per input), or None for the model's
            own (ValueError if they have unknown sizes).
    Returns:
        One tuple of ints per input.
    """
    if input_shape is not None:
        shapes = input_shape if isinstance(input_shape, list) else [input_shape]
        return [tuple(int(d) for d in s) for s in shapes]
    shapes = [tuple(t.shape[1:]) for t in keras.tree.flatten(model.inputs)]
    for shape in shapes:
        if any(d is None for d in shape):
            raise ValueError(f"Model '{model.name}' has inputs of unknown size {shape}; pass "
                             "input_shape (without the batch axis).")
    return shapes


def _shaped(model: keras.Model, input_shape: Any) -> keras.Model:
    """``model`` itself, or a copy on fixed input shapes when ``input_shape`` is given or the
    model's inputs have unknown sizes."""
    if input_shape is not None or any(
            d is None for t in keras.tree.flatten(model.inputs) for d in t.shape[1:]):
        return with_input_shape(model, input_shapes(model, input_shape))
    return model


def _site_macs(site: CallSite) -> int:
    """MACs per example of one layer call (0 without a MAC formula or known shapes)."""
    if not (site.input_shapes and site.output_shapes):
        return 0
    return layer_macs(site.ref.layer, site.input_shapes[0], site.output_shapes[0])


def profile(model: keras.Model, *, input_shape: Any = None) -> dict:
    """Parameter count and MACs of one example.

    Args:
        model: functional or Sequential model (nested models allowed).
        input_shape: shape without batch axis (list of shapes for several inputs); needed
            when the model's inputs have unknown sizes.
    Returns:
        {"params": int, "macs": int, "per_layer": [{"path", "class", "macs",
        "output_shape"}, ...]} with one entry per layer call that has a MAC formula.
    """
    shaped = _shaped(model, input_shape)
    per_layer = []

    def visit(site: CallSite) -> list[None]:
        macs = _site_macs(site)
        if macs:
            per_layer.append({
                "path": site.ref.path_str,
                "class": type(site.ref.layer).__name__,
                "macs": int(macs),
                "output_shape": tuple(site.output_shapes[0][1:]),
            })
        return [None] * len(site.output_shapes)

    inputs = [None] * len(keras.tree.flatten(shaped.inputs))
    walk(shaped, inputs, visit)
    return {
        "params": int(model.count_params()),
        "macs": int(sum(entry["macs"] for entry in per_layer)),
        "per_layer": per_layer,
    }


#: Layers the roofline counts as free: no-ops or views at inference (a folded BN becomes an
#: Identity; Dropout passes its input through; Flatten/Reshape only relabel the shape).
ROOFLINE_FREE_LAYERS = (keras.layers.Identity, keras.layers.InputLayer, keras.layers.Dropout,
                        keras.layers.Flatten, keras.layers.Reshape)


def roofline(
    model: keras.Model,
    *,
    peak_macs_per_s: float,
    bytes_per_s: float,
    batch_size: int = 1,
    input_shape: Any = None,
    bytes_per_element: int = 4,
    free_layers: tuple = ROOFLINE_FREE_LAYERS,
) -> dict:
    """Inference time of ``model`` predicted per layer by a roofline cost model.

    Every leaf layer call costs ``max(macs / peak_macs_per_s, bytes / bytes_per_s)``
    seconds, where ``macs`` is :func:`layer_macs` × ``batch_size`` (0 for batch norms,
    activations, additions, pooling) and ``bytes`` = ``bytes_per_element`` × (input elements
    + output elements, both × ``batch_size``, + the layer's weight elements, read once per
    batch). Layers of the ``free_layers`` classes cost nothing. No other fusion, no caching
    and no per-call overhead is modelled: the result is a lower-bound-style estimate whose ratio
    between two models (e.g. dense / thin) says how much of a MAC reduction the memory
    traffic lets through.

    Args:
        model: functional or Sequential model (nested models allowed).
        peak_macs_per_s: attainable multiply-accumulates per second (e.g. measured with a
            large matmul: 2·n³ FLOPs = n³ MACs).
        bytes_per_s: attainable memory bandwidth in bytes per second (e.g. a large copy:
            read + write bytes / seconds).
        batch_size: examples per call.
        input_shape: shape without batch axis (list for several inputs); needed when the
            model's inputs have unknown sizes.
        bytes_per_element: 4 for float32.
        free_layers: layer classes that cost nothing (default
            :data:`ROOFLINE_FREE_LAYERS`); add e.g. ``keras.layers.ReLU`` for a runtime that
            fuses activations into the layer before them (TFLite).
    Returns:
        {"seconds": predicted total, "compute_s": sum of the MAC terms, "memory_s": sum of
        the byte terms, "macs", "bytes" (totals for the batch), "per_layer": [{"path",
        "class", "macs", "bytes", "seconds", "bound": "compute" | "memory"}, ...]} with one
        entry per leaf layer call that is not free.
    """
    if peak_macs_per_s <= 0 or bytes_per_s <= 0 or batch_size < 1:
        raise ValueError("roofline needs peak_macs_per_s > 0, bytes_per_s > 0 and "
                         "batch_size >= 1.")
    shaped = _shaped(model, input_shape)
    per_layer = []

    def visit(site: CallSite) -> list[None]:
        layer = site.ref.layer
        if not isinstance(layer, tuple(free_layers)):
            macs = _site_macs(site)
            elements = sum(_prod(s[1:]) for s in site.input_shapes + site.output_shapes)
            n_weights = sum(_prod(w.shape) for w in layer.weights)
            nbytes = bytes_per_element * (elements * batch_size + n_weights)
            compute_s = macs * batch_size / peak_macs_per_s
            memory_s = nbytes / bytes_per_s
            per_layer.append({
                "path": site.ref.path_str, "class": type(layer).__name__,
                "macs": int(macs * batch_size), "bytes": int(nbytes),
                "seconds": max(compute_s, memory_s),
                "bound": "compute" if compute_s >= memory_s else "memory",
            })
        return [None] * len(site.output_shapes)

    walk(shaped, [None] * len(keras.tree.flatten(shaped.inputs)), visit)
    return {
        "seconds": float(sum(e["seconds"] for e in per_layer)),
        "compute_s": float(sum(e["macs"] for e in per_layer) / peak_macs_per_s),
        "memory_s": float(sum(e["bytes"] for e in per_layer) / bytes_per_s),
        "macs": int(sum(e["macs"] for e in per_layer)),
        "bytes": int(sum(e["bytes"] for e in per_layer)),
        "per_layer": per_layer,
    }


def _random_inputs(model: keras.Model, batch_size: int, input_shape: Any, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    shapes = input_shapes(model, input_shape)
    xs = [rng.random((batch_size,) + shape, dtype=np.float32) for shape in shapes]
    return xs[0] if len(xs) == 1 else xs


def _summary(times_ms: list[float], batch_size: int) -> dict:
    times = np.asarray(times_ms)
    return {
        "median_ms": float(np.median(times)),
        "p10_ms": float(np.percentile(times, 10)),
        "p90_ms": float(np.percentile(times, 90)),
        "min_ms": float(times.min()),
        "mean_ms": float(times.mean()),
        "batch_size": int(batch_size),
        "runs": int(times.size),
    }


def measure_interleaved(nets: Sequence[keras.Model], batch_size: int, warmup: int, runs: int,
                 input_shape: Any, seed: int) -> list[dict]:
    """Time several models in alternation (A B A B ...), so that load from other processes
    affects them alike.

    Args:
        nets: the models.
        batch_size, warmup, runs: as in :func:`measure_latency`.
        input_shape: as in :func:`input_shapes` (None: each model's own).
        seed: seed of the random float32 inputs.
    Returns:
        One :func:`measure_latency` summary (milliseconds) per model, in order.
    """
    if runs < 1 or warmup < 0 or batch_size < 1:
        raise ValueError("measure_latency needs runs >= 1, warmup >= 0 and batch_size >= 1.")
    xs = [_random_inputs(net, batch_size, input_shape, seed) for net in nets]
    for net, x in zip(nets, xs):
        for _ in range(max(warmup, 1)):  # the first call traces the graph
            net.predict_on_batch(x)
    times: list[list[float]] = [[] for _ in nets]
    for _ in range(runs):
        for net, x, bucket in zip(nets, xs, times):
            start = time.perf_counter()
            net.predict_on_batch(x)
            bucket.append((time.perf_counter() - start) * 1e3)
    return [_summary(bucket, batch_size) for bucket in times]


def measure_latency(
    model: keras.Model,
    batch_size: int = 1,
    *,
    warmup: int = 5,
    runs: int = 20,
    input_shape: Any = None,
    seed: int = 0,
) -> dict:
    """Milliseconds per batch of inference with ``model.predict_on_batch`` (graph mode).

    Random float32 inputs of shape (batch_size, *input_shape); ``warmup`` untimed calls
    (the first traces the graph), then ``runs`` timed calls.
    Returns {"median_ms", "p10_ms", "p90_ms", "min_ms", "mean_ms", "batch_size", "runs"}.
    """
    return measure_interleaved([model], batch_size, warmup, runs, input_shape, seed)[0]


def compare(
    before: keras.Model,
    after: keras.Model,
    *,
    batch_sizes: Sequence[int] = (1,),
    latency: bool = True,
    print_table: bool = True,
    **latency_kwargs: Any,
) -> dict:
    """Params, MACs and (optionally) latency of two models side by side.

    The two models are timed in alternation (A B A B ...) so that other load on the machine
    affects both alike; latencies are medians. Returns {"before": {...}, "after": {...},
    "params_ratio", "macs_ratio" (before/after, i.e. the theoretical speed-up), "latency":
    {batch: {"before_ms", "after_ms", "before_min_ms", "after_min_ms", "speedup",
    "speedup_vs_macs"}}} and prints a table unless ``print_table`` is False.
    ``latency_kwargs``: warmup, runs, input_shape, seed as in :func:`measure_latency`.
    """
    input_shape = latency_kwargs.get("input_shape")
    p_before = profile(before, input_shape=input_shape)
    p_after = profile(after, input_shape=input_shape)
    result: dict = {
        "before": {"params": p_before["params"], "macs": p_before["macs"]},
        "after": {"params": p_after["params"], "macs": p_after["macs"]},
        "params_ratio": p_before["params"] / max(p_after["params"], 1),
        "macs_ratio": p_before["macs"] / max(p_after["macs"], 1),
        "latency": {},
    }
    if latency:
        kwargs = {"warmup": 5, "runs": 20, "input_shape": None, "seed": 0}
        unknown = set(latency_kwargs) - set(kwargs)
        if unknown:
            raise TypeError(f"compare() got unexpected keyword arguments {sorted(unknown)}.")
        kwargs.update(latency_kwargs)
        for batch in batch_sizes:
            lat_b, lat_a = measure_interleaved([before, after], int(batch), kwargs["warmup"],
                                        kwargs["runs"], kwargs["input_shape"], kwargs["seed"])
            speedup = lat_b["median_ms"] / lat_a["median_ms"]
            result["latency"][int(batch)] = {
                "before_ms": lat_b["median_ms"], "after_ms": lat_a["median_ms"],
                "before_min_ms": lat_b["min_ms"], "after_min_ms": lat_a["min_ms"],
                "speedup": speedup, "speedup_vs_macs": speedup / result["macs_ratio"],
            }
    if print_table:
        print(format_comparison(result))
    return result


def format_comparison(result: dict) -> str:
    """A plain-text table of :func:`compare`'s result."""
    rows = [
        ("params", f"{result['before']['params']:,}", f"{result['after']['params']:,}",
         f"{result['params_ratio']:.2f}x"),
        ("MACs", f"{result['before']['macs']:,}", f"{result['after']['macs']:,}",
         f"{result['macs_ratio']:.2f}x"),
    ]
    for batch, lat in result["latency"].items():
        rows.append((f"latency b{batch} (ms)", f"{lat['before_ms']:.2f}",
                     f"{lat['after_ms']:.2f}",
                     f"{lat['speedup']:.2f}x ({lat['speedup_vs_macs']:.2f} of MACs)"))
    header = ("", "before", "after", "ratio")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(4)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
