"""Latency-aware pruning: measured per-group latency tables, kernel-speed rounding and plans
that target a latency ratio instead of a channel ratio.

Equal channel ratios do not give equal speed: kernels run some widths (odd ones, or widths
that are not a multiple of the vector length) slowly, and a channel of one group costs more
milliseconds per MAC than a channel of another (memory-bound depthwise and batch-norm layers,
large spatial sizes). This module measures that once per machine and backend:

- :func:`latency_table` times, for every prunable channel group, the layers whose width the
  group changes (its producers, per-channel followers and consumers, each at its own input
  shape) at a sweep of kept widths, and the whole dense model.
- :func:`fastest_width` / ``make_plan(..., round_to="auto", latency_table=table)`` keep, per
  group, the measured width at least as large as the requested kept count that ran fastest.
- :func:`latency_ratios` / ``make_plan(..., target_latency=0.6, latency_table=table)`` choose
  per-group kept widths that reach a predicted latency with the least L1 mass removed.

Prediction (first order): predicted(plan) = model_ms − Σ_g (ms_g(N_g) − ms_g(w_g)), where
ms_g(w) is the group's sub-model at kept width w. Savings of two groups that share a layer
(a conv whose input is one group and output another) are added, so the prediction is a little
optimistic when both shrink; layers a group does not touch (activations, additions, pooling)
are not in its sub-model. :func:`keras_tpp.profiling.measure_latency` on the thin model gives
the real value.
"""
from __future__ import annotations

import glob
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import keras
import numpy as np

from keras_tpp import importance, selection
from keras_tpp.graph import ChannelGroup, DependencyGraph
from keras_tpp.graph import operations as _operations

#: Version of the serialized table format.
FORMAT_VERSION = 1


@dataclass
class GroupLatency:
    """The measured latency of one channel group's layers at a sweep of kept widths.

    Attributes:
        name: the group's first producer path (the key :func:`keras_tpp.make_plan` uses).
        size: N, the group's channel count in the dense model.
        producers: every producer path of the group.
        layers: paths of the layers timed (producers, followers, consumers).
        widths: kept widths measured, increasing; the last is ``size``.
        ms: median milliseconds per batch of the group's sub-model at each width.
    """

    name: str
    size: int
    producers: list[str]
    layers: list[str]
    widths: list[int]
    ms: list[float]

    @property
    def dense_ms(self) -> float:
        """Milliseconds at full width N."""
        return float(self.ms[self.widths.index(self.size)])

    def ms_at(self, width: int) -> float:
        """Measured milliseconds at ``width`` (a width of the sweep; others are a KeyError)."""
        try:
            return float(self.ms[self.widths.index(int(width))])
        except ValueError:
            raise KeyError(f"Width {width} of group '{self.name}' was not measured; measured "
                           f"widths: {self.widths}.") from None

    def get_config(self) -> dict:
        """A JSON-serializable dict (:meth:`from_config` rebuilds the entry)."""
        return {"name": self.name, "size": int(self.size), "producers": list(self.producers),
                "layers": list(self.layers), "widths": [int(w) for w in self.widths],
                "ms": [float(t) for t in self.ms]}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "GroupLatency":
        """The entry of :meth:`get_config`; inconsistent widths/ms are a ValueError."""
        widths = [int(w) for w in config["widths"]]
        ms = [float(t) for t in config["ms"]]
        size = int(config["size"])
        if len(widths) != len(ms) or size not in widths or widths != sorted(set(widths)):
            raise ValueError(f"Invalid latency entry for group '{config.get('name')}': widths "
                             "must be increasing, include the group size and match ms.")
        return cls(name=str(config["name"]), size=size,
                   producers=[str(p) for p in config["producers"]],
                   layers=[str(p) for p in config["layers"]], widths=widths, ms=ms)


@dataclass
class LatencyTable:
    """Measured latency of a model's channel groups as a function of their kept width.

    Built by :func:`latency_table`; valid for the machine, Keras backend, batch size and input
    shape it was measured with (``backend``, ``batch_size``, ``input_shape``, ``device``).

    Attributes:
        model: the model's name.
        backend: the Keras backend measured.
        batch_size: examples per timed batch.
        input_shape: the model's input shape(s), without the batch axis.
        model_ms: median milliseconds per batch of the whole dense model.
        groups: {group name (first producer path): :class:`GroupLatency`}.
        device: a short description of the machine (informative only).
        statistic: "median" or "min": how the timed runs were summarized.
        fitted: True for a table from :meth:`fitted` (ms replaced by a per-group fit).

    Example::

        table = keras_tpp.latency_table(model, batch_size=1)
        table.save("latency.json")
        table = keras_tpp.LatencyTable.load("latency.json")
        table.predict({"conv1": 48})   # predicted model ms with conv1's group kept at 48
    """

    model: str
    backend: str
    batch_size: int
    input_shape: list
    model_ms: float
    groups: dict[str, GroupLatency] = field(default_factory=dict)
    device: str = ""
    statistic: str = "median"
    fitted: bool = False

    # -- queries ------------------------------------------------------------------------------

    def group(self, name: str) -> GroupLatency:
        """The entry of group ``name`` (its first producer path); unknown names raise."""
        try:
            return self.groups[name]
        except KeyError:
            raise ValueError(f"Group '{name}' is not in the latency table of model "
                             f"'{self.model}'. Groups: {', '.join(self.groups) or '(none)'}."
                             ) from None

    def predict(self, widths: Mapping[str, int]) -> float:
        """Predicted milliseconds per batch of the model with the given kept widths.

        Args:
            widths: {group name: kept width (one of its measured widths)}; groups not named
                stay at full width.
        Returns:
            ``model_ms − Σ (dense_ms − ms at width)`` (first order; see the module docstring).
        """
        saved = 0.0
        for name, width in widths.items():
            entry = self.group(name)
            saved += entry.dense_ms - entry.ms_at(width)
        return self.model_ms - saved

    def check_graph(self, graph: DependencyGraph) -> None:
        """Raise ValueError unless every group of the table is a prunable group of
        ``graph``'s model with the same channel count (a table measured on another model)."""
        by_name = {g.producers[0].path_str: g for g in graph.groups}
        for name, entry in self.groups.items():
            group = by_name.get(name)
            if group is None or group.size != entry.size or not group.prunable:
                found = ("no such group" if group is None else
                         f"{group.size} channels" if group.size != entry.size else
                         f"unprunable: {group.reason}")
                raise ValueError(
                    f"This latency table (model '{self.model}') does not fit model "
                    f"'{graph.model.name}': its group '{name}' ({entry.size} channels) "
                    f"is not in the model ({found}). Measure a table for this model with "
                    "keras_tpp.latency_table(model).")

    def fitted_table(self) -> "LatencyTable":
        """A copy whose per-group ms are a least-squares fit of the measurements.

        Per group: ms(w) ≈ a + b·w + c·[w is not a multiple of 8] (the odd-width term when the
        sweep has such widths and at least two multiples of 8; a + b·w with two or more
        widths; the measurement itself otherwise). Planning on the raw medians chases timing
        noise (a width that happened to run fast); the fit pools every width's runs into a
        slope in ms per channel and an odd-width penalty. ``model_ms`` is kept as measured.

        Returns:
            A new :class:`LatencyTable` with ``fitted=True`` (the widths are unchanged).

        Example::

            plan = keras_tpp.make_plan(model, target_latency=0.6,
                                       latency_table=table.fitted_table())
        """
        groups = {}
        for name, entry in self.groups.items():
            widths = np.asarray(entry.widths, dtype=np.float64)
            odd = (np.asarray(entry.widths) % 8 != 0).astype(np.float64)
            columns = [np.ones_like(widths)]
            if widths.size >= 2:
                columns.append(widths)
            if odd.any() and (odd == 0).sum() >= 2 and widths.size >= 4:
                columns.append(odd)
            design = np.stack(columns, axis=1)
            coef, *_ = np.linalg.lstsq(design, np.asarray(entry.ms, dtype=np.float64),
                                       rcond=None)
            groups[name] = GroupLatency(
                name=entry.name, size=entry.size, producers=list(entry.producers),
                layers=list(entry.layers), widths=list(entry.widths),
                ms=[float(v) for v in design @ coef])
        return LatencyTable(model=self.model, backend=self.backend, batch_size=self.batch_size,
                            input_shape=self.input_shape, model_ms=self.model_ms,
                            groups=groups, device=self.device, statistic=self.statistic,
                            fitted=True)

    # -- serialization --------------------------------------------------------------------------

    def get_config(self) -> dict:
        """A JSON-serializable dict (:meth:`from_config` rebuilds the table)."""
        return {"format": FORMAT_VERSION, "model": self.model, "backend": self.backend,
                "batch_size": int(self.batch_size),
                "input_shape": json.loads(json.dumps(self.input_shape)),
                "model_ms": float(self.model_ms), "device": self.device,
                "statistic": self.statistic, "fitted": bool(self.fitted),
                "groups": [entry.get_config() for entry in self.groups.values()]}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "LatencyTable":
        """The table of :meth:`get_config`; another format version is a ValueError."""
        if config.get("format") != FORMAT_VERSION:
            raise ValueError(f"Unknown latency table format {config.get('format')!r}; "
                             f"expected {FORMAT_VERSION}.")
        groups = [GroupLatency.from_config(c) for c in config["groups"]]
        return cls(model=str(config["model"]), backend=str(config["backend"]),
                   batch_size=int(config["batch_size"]), input_shape=config["input_shape"],
                   model_ms=float(config["model_ms"]), device=str(config.get("device", "")),
                   statistic=str(config.get("statistic", "median")),
                   fitted=bool(config.get("fitted", False)),
                   groups={g.name: g for g in groups})

    def to_json(self) -> str:
        """The table as a JSON string (:meth:`from_json` reads it back)."""
        return json.dumps(self.get_config(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "LatencyTable":
        """The table of :meth:`to_json`."""
        return cls.from_config(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write the table as JSON, atomically (a temporary file renamed over ``path``)."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".latency-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(self.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        """The table :meth:`save` wrote to ``path`` (ValueError naming the file if it is not
        one)."""
        with open(path) as handle:
            text = handle.read()
        try:
            return cls.from_json(text)
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{os.fspath(path)!r} is not a latency table saved by "
                             f"LatencyTable.save: {err}") from err


# -- measuring --------------------------------------------------------------------------------


def default_widths(size: int) -> list[int]:
    """The kept widths :func:`latency_table` measures for a group of ``size`` channels.

    Multiples of 8 from the full width down to about size/8 in steps of max(8, size/8 rounded
    up to a multiple of 8), the full width itself, and two odd widths (one above the 3/4 and
    1/2 points) that show how much slower odd widths run: about 10 widths. Increasing.
    """
    size = int(size)
    step = max(8, int(math.ceil(size / 8 / 8)) * 8)
    widths = {size}
    w = (size // 8) * 8
    while w >= max(1, size // 8):
        widths.add(w)
        w -= step
    for fraction in (0.75, 0.5):
        w = (int(size * fraction) // 8) * 8 + 1
        if 1 < w < size:
            widths.add(w)
    return sorted(x for x in widths if 1 <= x <= size)


def _touched_steps(graph: DependencyGraph, group: ChannelGroup) -> list:
    """The graph's layer calls whose width ``group`` changes (producers, followers that are
    layers, consumers), in graph order."""
    members = {id(r.layer) for r in group.producers}
    members |= {id(s.ref.layer) for s in group.follower_slots}
    members |= {id(c.ref.layer) for c in group.consumers}
    return [step for step in graph.steps
            if id(step.ref.layer) in members and step.input_shapes and step.inputs
            and isinstance(step.ref.layer, keras.layers.Layer)
            and not _operations.is_operation(step.ref.layer)]


def _group_submodel(graph: DependencyGraph, group: ChannelGroup, width: int,
                    steps: Sequence) -> keras.Model:
    """One model with a branch per touched layer call, at the group's kept ``width``.

    Its one output is the sum of the branches' means per example: the branches' outputs are
    read once (as the next layer would read them) but not copied out of the backend, which
    would cost more than the layers themselves."""
    from keras_tpp.surgery.edits import Surgeon

    surgeon = Surgeon(graph, {group.id: np.arange(group.size - width, dtype=np.int64)})
    inputs, outputs = [], []
    for i, step in enumerate(steps):
        layer = step.ref.layer
        shape = tuple(step.input_shapes[0][1:-1]) + (surgeon.kept_channels(step.inputs[0]),)
        config = surgeon.new_config(layer)
        config["name"] = f"t{i}_{layer.name}"
        x = keras.Input(shape, name=f"in{i}")
        inputs.append(x)
        y = type(layer).from_config(config)(x)
        outputs.append(keras.ops.mean(y, axis=tuple(range(1, len(y.shape)))))
    total = outputs[0]
    for y in outputs[1:]:
        total = keras.ops.add(total, y)
    return keras.Model(inputs, total, name=f"latency_{group.id}_w{width}")


def _time_interleaved(nets: Sequence[keras.Model], xs: Sequence[Any], warmup: int,
                      runs: int, rng: np.random.Generator, statistic: str = "median"
                      ) -> list[float]:
    """Median (or minimum) ms of ``predict_on_batch`` per net, the nets timed in a shuffled
    order each round so that machine load hits them alike."""
    for net, x in zip(nets, xs):
        for _ in range(max(warmup, 1)):
            net.predict_on_batch(x)
    times: list[list[float]] = [[] for _ in nets]
    for _ in range(runs):
        for j in rng.permutation(len(nets)):
            start = time.perf_counter()
            nets[j].predict_on_batch(xs[j])
            times[j].append((time.perf_counter() - start) * 1e3)
    reduce = np.median if statistic == "median" else np.min
    return [float(reduce(t)) for t in times]


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def latency_table(
    model: keras.Model,
    *,
    batch_size: int = 1,
    widths: Any = None,
    input_shape: Any = None,
    layers: Iterable[str] | str | None = None,
    exclude: Iterable[str] | str | None = None,
    runs: int = 15,
    warmup: int = 2,
    model_runs: int = 20,
    seed: int = 0,
    statistic: str = "median",
    on_unsupported: str = "report",
    allow_renormalization: bool = False,
    verbose: bool = False,
) -> LatencyTable:
    """Measure how each prunable group's layers slow down or speed up with its kept width.

    For every prunable channel group (or those with a producer matching ``layers``, minus
    ``exclude``), builds one small model per kept width holding the group's producers,
    per-channel followers and consumers at their input shapes in the dense model (the group
    at that width, every other channel at full width; fresh weights), and times them with
    ``predict_on_batch`` on random float32 inputs: ``warmup`` untimed calls each, then
    ``runs`` rounds in which every width is timed once in a shuffled order; the median (or,
    with ``statistic="min"``, the fastest run: steadier on a loaded machine) is kept. The
    whole dense model is timed too (``model_runs`` runs, same statistic).

    Args:
        model: a functional or Sequential model (read only; inputs of known size or
            ``input_shape`` given).
        batch_size: examples per timed batch (time what you will deploy).
        widths: kept widths to measure: None for :func:`default_widths`, a sequence of
            kept fractions in (0, 1] (each rounded to a channel count), or a callable
            ``widths(size) -> list of ints``. The full width is always added.
        input_shape: input shape without the batch axis (list for several inputs), needed
            when the model's inputs have unknown sizes.
        layers, exclude: name patterns restricting the groups measured, as in
            :func:`keras_tpp.make_plan`.
        runs, warmup, model_runs: timed rounds, untimed calls and runs of the dense model.
        seed: seed of the random inputs and of the timing order.
        statistic: "median" or "min" of the timed runs.
        on_unsupported, allow_renormalization: as in :func:`keras_tpp.make_plan`.
        verbose: print one line per group measured.
    Returns:
        A :class:`LatencyTable` (milliseconds per batch of ``batch_size``).

    Example::

        table = keras_tpp.latency_table(model, batch_size=1)
        plan = keras_tpp.make_plan(model, 0.3, round_to="auto", latency_table=table)
        plan = keras_tpp.make_plan(model, target_latency=0.6, latency_table=table)
    """
    from keras_tpp import profiling

    if not isinstance(model, keras.Model):
        raise ValueError(f"latency_table expects a keras.Model, got {type(model).__name__}.")
    batch_size = _check_int(batch_size, "batch_size", 1)
    runs = _check_int(runs, "runs", 1)
    warmup = _check_int(warmup, "warmup", 0)
    model_runs = _check_int(model_runs, "model_runs", 1)
    seed = selection.check_seed(seed) or 0
    if statistic not in ("median", "min"):
        raise ValueError(f"statistic must be 'median' or 'min', got {statistic!r}.")
    width_fn = _width_function(widths)
    shapes = profiling.input_shapes(model, input_shape)
    shaped = model
    if input_shape is not None or any(
            d is None for t in keras.tree.flatten(model.inputs) for d in t.shape[1:]):
        shaped = profiling.with_input_shape(model, shapes)
    graph = DependencyGraph(shaped, on_unsupported=on_unsupported,
                            allow_renormalization=allow_renormalization)
    if layers is None and exclude is None:
        selected = [g for g in graph.groups if g.prunable]
    else:
        ids = selection.resolve_group_ratios(graph, 0.0, layers=layers, exclude=exclude)
        selected = [g for g in graph.groups if g.id in ids]
    if not selected:
        raise ValueError(f"Model '{model.name}' has no prunable channel group to measure.")
    plan_widths = {g.id: _widths_for(g, width_fn) for g in selected}

    rng = np.random.default_rng(seed)
    model_ms = profiling.measure_interleaved([shaped], batch_size, warmup, model_runs,
                                      None, seed)[0][f"{statistic}_ms"]
    entries: dict[str, GroupLatency] = {}
    for group in selected:
        steps = _touched_steps(graph, group)
        name = group.producers[0].path_str
        ws = plan_widths[group.id]
        nets = [_group_submodel(graph, group, w, steps) for w in ws]
        # backend tensors, so that no numpy copy of the (width-dependent) inputs is timed
        xs = [[keras.ops.convert_to_tensor(
            rng.random((batch_size,) + tuple(int(d) for d in t.shape[1:]), dtype=np.float32))
            for t in net.inputs] for net in nets]
        ms = _time_interleaved(nets, xs, warmup, runs, rng, statistic)
        entries[name] = GroupLatency(
            name=name, size=group.size, producers=[r.path_str for r in group.producers],
            layers=list(dict.fromkeys(s.ref.path_str for s in steps)), widths=ws, ms=ms)
        if verbose:
            print(f"{name}: N={group.size} " + " ".join(
                f"{w}:{t:.3f}" for w, t in zip(ws, ms)), flush=True)
        del nets
    return LatencyTable(model=model.name, backend=keras.backend.backend(),
                        batch_size=batch_size, input_shape=[list(s) for s in shapes],
                        model_ms=float(model_ms), groups=entries, statistic=statistic,
                        device=f"{platform.machine()} {platform.processor()} "
                               f"{os.cpu_count()} cpus".strip())


def _width_function(widths: Any):
    if widths is None:
        return default_widths
    if callable(widths):
        return widths
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Iterable):
        raise ValueError("widths must be None, a sequence of kept fractions in (0, 1] or a "
                         f"callable size -> widths, got {widths!r}.")
    fractions = list(widths)
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"widths fractions must be numbers in (0, 1], got {f!r}.")
    return lambda size: [max(1, int(round(f * size))) for f in fractions]


def _widths_for(group: ChannelGroup, width_fn) -> list[int]:
    ws = {int(w) for w in width_fn(group.size)} | {group.size}
    bad = [w for w in ws if not 1 <= w <= group.size]
    if bad:
        raise ValueError(f"Widths {sorted(bad)} for group '{group.producers[0].path_str}' are "
                         f"outside [1, {group.size}].")
    return sorted(ws)


# -- choosing widths ----------------------------------------------------------------------------


def fastest_width(entry: GroupLatency, at_least: int) -> int:
    """The measured width >= ``at_least`` with the lowest measured latency (ties: the wider).

    Args:
        entry: a group's :class:`GroupLatency`.
        at_least: the requested kept channel count.
    Returns:
        A kept width (channels) of the sweep; the full width qualifies, so one always exists.

    Example::

        fastest_width(table.group("conv1"), 45)   # e.g. 48
    """
    candidates = [(t, -w) for w, t in zip(entry.widths, entry.ms) if w >= at_least]
    return -min(candidates)[1]


def _group_names(graph: DependencyGraph) -> dict[int, str]:
    return {g.id: g.producers[0].path_str for g in graph.groups}


def _table_entry(table: LatencyTable, graph: DependencyGraph, group: ChannelGroup
                 ) -> GroupLatency:
    name = group.producers[0].path_str
    if name not in table.groups:
        raise ValueError(f"Group '{name}' ({group.size} channels) is not in the latency table "
                         f"of model '{table.model}' (measured groups: "
                         f"{', '.join(list(table.groups)[:8])}{', ...' if len(table.groups) > 8 else ''}); "
                         "measure it (latency_table(..., layers=...)) or exclude it.")
    return table.groups[name]


def check_table(table: Any, graph: DependencyGraph) -> LatencyTable:
    """``table`` if it is a :class:`LatencyTable` measured on ``graph``'s model, else a
    ValueError saying why."""
    if not isinstance(table, LatencyTable):
        raise ValueError(f"latency_table must be a keras_tpp.LatencyTable (from "
                         f"keras_tpp.latency_table), got {type(table).__name__}.")
    table.check_graph(graph)
    return table


def auto_round_ratios(graph: DependencyGraph, ratios: Mapping[int, float],
                      table: LatencyTable) -> dict[int, float]:
    """``round_to="auto"``: {group id: ratio} whose kept width is the fastest measured width
    at least as large as the kept count each ratio asks for.

    Args:
        graph: the model's dependency graph.
        ratios: {group id: pruning ratio} (from :func:`keras_tpp.selection.resolve_group_ratios`).
        table: the model's :class:`LatencyTable`.
    Returns:
        {group id: (N − w) / N} with w = :func:`fastest_width` (exact when turned back into a
        channel count by ceil).
    """
    check_table(table, graph)
    by_id = {g.id: g for g in graph.groups}
    entries = {gid: _table_entry(table, graph, by_id[gid]) for gid in ratios}  # check all
    out = {}
    for gid, ratio in ratios.items():
        group = by_id[gid]
        kept = group.size - importance.num_pruned(group.size, ratio)
        width = fastest_width(entries[gid], kept)
        out[gid] = (group.size - width) / group.size
    return out


@dataclass
class _Option:
    width: int
    saving: float
    cost: float


def _options(group: ChannelGroup, entry: GroupLatency, max_ratio: float) -> list[_Option]:
    """A group's choices: (kept width, ms saved, L1 mass removed) for each measured width
    that keeps at least (1 − max_ratio)·N channels and saves time (the full width: 0, 0)."""
    scores = np.sort(importance.group_l1_scores([p.layer for p in group.producers]))
    mass = np.concatenate([[0.0], np.cumsum(scores)])  # mass[k]: the k lowest removed
    smallest = group.size - importance.num_pruned(group.size, max_ratio)
    options = [_Option(group.size, 0.0, 0.0)]
    for w, t in zip(entry.widths, entry.ms):
        if smallest <= w < group.size and entry.dense_ms - t > 0:
            options.append(_Option(int(w), float(entry.dense_ms - t),
                                   float(mass[group.size - w])))
    return options


def choose_widths(savings: Sequence[Sequence[float]], costs: Sequence[Sequence[float]],
                  required: float, *, max_states: int = 20000) -> list[int] | None:
    """Pick one option per group with total saving >= ``required`` and the least total cost.

    The multiple-choice knapsack behind :func:`latency_ratios`, solved exactly by dynamic
    programming over Pareto frontiers: after each group, keep the (saving, cost) states not
    dominated by another (savings above ``required`` count as ``required``). When a frontier
    exceeds ``max_states`` states, savings are bucketed into ``max_states`` bins (the cheapest
    state per bin kept), so the result may then be slightly sub-optimal.

    Args:
        savings: per group, the ms each option saves (option 0 is usually "keep all": 0).
        costs: per group, the L1 mass each option removes (same shape).
        required: ms to save.
    Returns:
        The chosen option index per group, or None when no choice saves ``required``.
    """
    state_s = np.zeros(1)
    state_c = np.zeros(1)
    parents: list[tuple[np.ndarray, np.ndarray]] = []
    for s_opts, c_opts in zip(savings, costs):
        s_opts = np.asarray(s_opts, dtype=np.float64)
        c_opts = np.asarray(c_opts, dtype=np.float64)
        s = np.minimum(state_s[:, None] + s_opts[None, :], required).ravel()
        c = (state_c[:, None] + c_opts[None, :]).ravel()
        src = np.repeat(np.arange(state_s.size), s_opts.size)
        opt = np.tile(np.arange(s_opts.size), state_s.size)
        order = np.lexsort((c, -s))  # saving decreasing, then cost increasing
        s, c, src, opt = s[order], c[order], src[order], opt[order]
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(c)[:-1]])
        keep = c < best_before  # strictly cheaper than every state saving at least as much
        s, c, src, opt = s[keep], c[keep], src[keep], opt[keep]
        if s.size > max_states:
            bins = np.floor(s / max(required, 1e-12) * (max_states - 1)).astype(np.int64)
            order = np.lexsort((c, bins))
            first = np.ones(order.size, dtype=bool)
            first[1:] = bins[order][1:] != bins[order][:-1]
            pick = order[first]
            s, c, src, opt = s[pick], c[pick], src[pick], opt[pick]
        state_s, state_c = s, c
        parents.append((src, opt))
    reach = np.flatnonzero(state_s >= required - 1e-12)
    if reach.size == 0:
        return None
    index = int(reach[np.argmin(state_c[reach])])
    choice = []
    for src, opt in reversed(parents):
        choice.append(int(opt[index]))
        index = int(src[index])
    return choice[::-1]


def latency_widths(
    model: keras.Model,
    table: LatencyTable,
    target_latency: float,
    *,
    layers: Iterable[str] | str | None = None,
    exclude: Iterable[str] | str | None = None,
    max_ratio: float = 0.8,
    graph: DependencyGraph | None = None,
    on_unsupported: str = "report",
    allow_renormalization: bool = False,
) -> dict[str, int]:
    """Per-group kept widths whose predicted latency is at most ``target_latency`` × the
    dense model's, removing the least L1 mass.

    Each selected group (every prunable group of the table, or those matching ``layers``
    minus ``exclude``) keeps one of its measured widths ≥ (1 − max_ratio)·N. Keeping w removes
    its N − w lowest channels by :func:`keras_tpp.importance.group_l1_scores` (each producer's
    L1 filter norms divided by their mean, so one channel weighs about 1) and saves
    ``dense_ms − ms(w)``; :func:`choose_widths` picks the widths that save at least
    ``(1 − target_latency)·model_ms`` with the least removed mass in total.

    Args:
        model: the model the table was measured on (read only).
        table: its :class:`LatencyTable`.
        target_latency: predicted latency / dense latency, in (0, 1].
        layers, exclude: name patterns restricting the groups, as in :func:`keras_tpp.make_plan`.
        max_ratio: the most any group may lose, in [0, 1).
        graph: the model's dependency graph, if already built.
    Returns:
        {group name (first producer path): kept width} for the groups that lose channels.
    Raises:
        ValueError: target outside (0, 1], a table of another model, a selected group missing
            from the table, or a target the table predicts unreachable (the reachable minimum
            is in the message). Nothing is modified.

    Example::

        widths = keras_tpp.latency.latency_widths(model, table, 0.6)
        print(table.predict(widths) / table.model_ms)   # <= 0.6
    """
    groups, required = _target_problem(model, table, target_latency, layers, exclude,
                                       max_ratio, graph, on_unsupported, allow_renormalization)
    options = [opts for _, opts in groups]
    choice = choose_widths([[o.saving for o in opts] for opts in options],
                           [[o.cost for o in opts] for opts in options], required)
    if choice is None:
        best = table.model_ms - sum(max(o.saving for o in opts) for opts in options)
        raise ValueError(
            f"target_latency={target_latency} is not reachable with this table: the lowest "
            f"predicted latency with max_ratio={max_ratio} is {best:.3f} ms of "
            f"{table.model_ms:.3f} ms ({best / table.model_ms:.3f}). Raise target_latency or "
            "max_ratio, or measure smaller widths.")
    return {group.producers[0].path_str: opts[k].width
            for (group, opts), k in zip(groups, choice) if opts[k].width < group.size}


def _target_problem(model, table, target_latency, layers, exclude, max_ratio, graph,
                    on_unsupported, allow_renormalization):
    if (isinstance(target_latency, bool) or not isinstance(target_latency, (int, float))
            or not 0 < target_latency <= 1 or math.isnan(target_latency)):
        raise ValueError(f"target_latency must be a number in (0, 1] (predicted latency / "
                         f"dense latency), got {target_latency!r}.")
    max_ratio = importance.check_ratio(max_ratio)
    graph = graph or DependencyGraph(model, on_unsupported=on_unsupported,
                                     allow_renormalization=allow_renormalization)
    check_table(table, graph)
    if layers is None and exclude is None:
        ids = [g.id for g in graph.groups if g.producers[0].path_str in table.groups]
    else:
        ids = list(selection.resolve_group_ratios(graph, 0.0, layers=layers, exclude=exclude))
    by_id = {g.id: g for g in graph.groups}
    groups = [(by_id[i], _options(by_id[i], _table_entry(table, graph, by_id[i]), max_ratio))
              for i in ids]
    return groups, (1.0 - float(target_latency)) * table.model_ms


def latency_ratios(model: keras.Model, table: LatencyTable, target_latency: float,
                   **kwargs: Any) -> dict[str, float]:
    """:func:`latency_widths` as {producer-path pattern: pruning ratio}, the form
    :func:`keras_tpp.make_plan`, :func:`keras_tpp.prune` and :func:`keras_tpp.prepare` take.

    Each ratio is (N − w)/N, which ``make_plan`` turns back into exactly N − w channels; every
    producer of a coupled group is listed (with the same ratio). Keys are escaped fnmatch
    patterns matching exactly that path.

    Example::

        ratios = keras_tpp.latency_ratios(model, table, 0.6)
        thin = keras_tpp.prune(model, ratios)
    """
    graph = kwargs.pop("graph", None) or DependencyGraph(
        model, on_unsupported=kwargs.get("on_unsupported", "report"),
        allow_renormalization=kwargs.get("allow_renormalization", False))
    widths = latency_widths(model, table, target_latency, graph=graph, **kwargs)
    out: dict[str, float] = {}
    for group in graph.groups:
        name = group.producers[0].path_str
        if name in widths:
            for ref in group.producers:
                out[glob.escape(ref.path_str)] = (group.size - widths[name]) / group.size
    return out


def plan_widths(graph: DependencyGraph, plan: Mapping[str, Any]) -> dict[str, int]:
    """{group name: kept width} of a surgery plan (for :meth:`LatencyTable.predict`)."""
    from keras_tpp.surgery.plan import resolve_plan

    names = _group_names(graph)
    return {names[gid]: graph.groups[gid].size - len(idx)
            for gid, idx in resolve_plan(graph, plan).items()}
