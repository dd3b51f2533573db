"""Lottery tickets: iterative magnitude pruning (IMP) with rewinding, weight or channel level.

The loop of Frankle & Carbin (ICLR 2019) with rewinding (Frankle et al., ICML 2020):
save the weights θ_k at train step k (k = 0: the original lottery ticket; rewinding:
k ≈ 500–1000 on CIFAR ResNets), train to the end, remove ``rate`` (20 %) of the REMAINING
weights by global magnitude over every Conv and Dense kernel, put the survivors back to θ_k,
repeat; after L rounds the sparsity is 1 − 0.8^L (exact counts: ⌊0.8·kept⌋ stay each round);
finally train the last mask to the end.

Channel level (``prepare(model, 0.5, method="lottery", granularity="channel")``): each
round, every channel group (the producers a residual sum couples) keeps ⌊0.8·kept⌋ of its
remaining channels, ranked by their L1 norm as L1 pruning ranks them, until it reaches the
target width; the batch norms behind it lose the same channels; survivors are rewound the
same way. ``keras_tpp.apply_masks`` then ``keras_tpp.shrink`` give the thin ticket.

What is rewound: every variable of the model except the pruning state, i.e. kernels
(masked entries zero), biases, BatchNormalization γ/β AND moving mean/variance, as the
reference implementations do (they reload the whole saved state of the network). The
masks are not rewound: they only lose entries, round after round (nested). The wrappers'
train-step counter goes back to k. The optimizer is not part of the snapshot: compile the
model again (a fresh optimizer) before each round's training.

Runnable example (a tiny CNN on random data, one epoch per round):

    import keras, numpy as np, keras_tpp
    from keras_tpp import lottery

    x = np.random.rand(64, 16, 16, 3).astype("float32"); y = np.random.randint(0, 10, 64)
    model = keras_tpp.models.small_cnn(widths=(8, 8, 8), input_shape=(16, 16, 3))
    pmodel = keras_tpp.prepare(model, 0.8, method="lottery")      # dense; target 80 %

    def train(pmodel, *extra):
        pmodel.compile(keras.optimizers.SGD(0.05, momentum=0.9),  # a fresh optimizer
                       "sparse_categorical_crossentropy")
        pmodel.fit(x, y, batch_size=16, epochs=1, verbose=0,
                   callbacks=[keras_tpp.PruningCallback(), *extra])

    rewind = lottery.RewindPoint(step=2, path="/tmp/rewind.npz")   # θ_k, also on disk
    train(pmodel, rewind)                                          # round 0: dense
    while lottery.remaining_rounds(pmodel):
        report = lottery.lottery_round(pmodel, rewind.snapshot)    # prune 20 %, rewind
        pmodel.save("/tmp/ticket.keras")                           # masks + θ_k
        train(pmodel)
    print(report.sparsity)            # 0.8: the last round stops at the target

Resuming a killed run: ``pmodel = keras.models.load_model("/tmp/ticket.keras")`` (the masks
live in the model) and ``snapshot = lottery.Snapshot.load("/tmp/rewind.npz")`` (or a
``RewindPoint`` with the same ``path``, which loads the file instead of snapshotting again),
then continue the loop with that round's training.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import keras
import numpy as np

from keras_tpp import filters, importance, keras_internals
from keras_tpp.callbacks.pruning import model_method
from keras_tpp.experiments.atomic import atomic_write_bytes
from keras_tpp.graph import iter_layers
from keras_tpp.methods.lottery import Lottery, check_rate
from keras_tpp.prepared import wrappers_by_path
from keras_tpp.sparsity.masks import kept_count, magnitude_masks
from keras_tpp.validation import finite_float, non_negative_int
from keras_tpp.wrappers import STATE_VARIABLES, PruningWrapper, find_wrappers

__all__ = ["RewindPoint", "RoundReport", "Snapshot", "lottery_round", "model_variables",
           "remaining_rounds", "resume_schedule", "rounds_needed", "train_step"]

#: Version of the snapshot file layout written by :meth:`Snapshot.save`.
SNAPSHOT_FORMAT = 1


# -- the model's rewindable variables --------------------------------------------------------
def _state_ids(model: keras.Model) -> set[int]:
    """ids of the PruningWrappers' own variables (masks, counters, λ): never rewound."""
    ids = set()
    for wrapper in find_wrappers(model):
        for name in STATE_VARIABLES:
            variable = getattr(wrapper, name, None)
            if variable is not None:
                ids.add(id(variable))
    return ids


def model_variables(model: keras.Model) -> list[tuple[str, Any]]:
    """(key, variable) of every variable a snapshot holds: all of ``model.weights`` but the
    pruning wrappers' state, keyed "<layer path>/<variable name>" (e.g. "conv1/kernel",
    "backbone/bn1/moving_mean"; "#n" appended to a repeated key). Layer paths, unlike
    variable paths, are the same after a .keras save and load.

    Args:
        model: a Keras model, prepared or not.

    Example:
        >>> [key for key, _ in keras_tpp.lottery.model_variables(pmodel)][:2]
        ['conv1/kernel', 'conv1/bias']
    """
    skip = _state_ids(model)
    seen_keys: dict[str, int] = {}
    found: list[tuple[str, Any]] = []

    def add(key: str, variable: Any) -> None:
        if id(variable) in skip:
            return
        skip.add(id(variable))
        count = seen_keys.get(key, 0)
        seen_keys[key] = count + 1
        found.append((key if count == 0 else f"{key}#{count}", variable))

    for ref in iter_layers(model):
        for variable in ref.layer.weights:
            add(f"{ref.path_str}/{variable.name}", variable)
    for variable in model.weights:  # held outside any leaf layer (rare)
        add(variable.path, variable)
    return found


def _architecture(variables: list[tuple[str, Any]]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return tuple((key, tuple(int(d) for d in v.shape), str(v.dtype)) for key, v in variables)


def _fingerprint(architecture: tuple) -> str:
    text = json.dumps([list(entry) for entry in architecture])
    return hashlib.sha256(text.encode()).hexdigest()


def train_step(model: keras.Model) -> int:
    """The model's train-step counter, as :class:`keras_tpp.PruningCallback` reads it: the
    PruningWrappers' ``train_steps`` (``optimizer.iterations`` for an unprepared model).

    Args:
        model: a Keras model, prepared or not.

    Example:
        >>> keras_tpp.lottery.train_step(pmodel)   # 0 before training
        0
    """
    wrappers = find_wrappers(model)
    if wrappers:
        return int(keras.ops.convert_to_numpy(wrappers[0].train_steps.value))
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return 0
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def _host_array(variable: Any) -> np.ndarray:
    value = np.array(keras.ops.convert_to_numpy(variable.value), copy=True)
    if value.dtype.kind not in "biufc":  # e.g. bfloat16: exact in float32
        value = value.astype(np.float32)
    return value


# -- snapshots -------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Snapshot:
    """The weights of a model at one train step: what a lottery round rewinds to.

    Args:
        step: the train step at which the weights were taken (0 = before training).
        weights: {variable key: array}, keys as :func:`model_variables` gives them.
        architecture: ((key, shape, dtype), ...) of those variables, in model order: a
            snapshot only rewinds a model with the same one.

    Example:
        >>> snapshot = Snapshot.capture(pmodel)      # the weights now
        >>> snapshot.save("rewind.npz"); Snapshot.load("rewind.npz").step
        0
    """

    step: int
    weights: Mapping[str, np.ndarray] = field(repr=False)
    architecture: tuple = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the architecture (variable keys, shapes, dtypes)."""
        return _fingerprint(self.architecture)

    @classmethod
    def capture(cls, model: keras.Model, step: int | None = None) -> "Snapshot":
        """A copy of ``model``'s weights (pruning state excluded), at ``step`` (default: the
        model's train-step counter)."""
        variables = model_variables(model)
        return cls(step=train_step(model) if step is None else non_negative_int(step, "step"),
                   weights={key: _host_array(v) for key, v in variables},
                   architecture=_architecture(variables))

    def check(self, model: keras.Model) -> list[tuple[str, Any]]:
        """``model``'s (key, variable) pairs; ValueError if its architecture is not the
        snapshot's (variable keys, shapes or dtypes differ)."""
        variables = model_variables(model)
        mine = _architecture(variables)
        if mine == tuple(self.architecture):
            return variables
        theirs = {key: (shape, dtype) for key, shape, dtype in self.architecture}
        ours = {key: (shape, dtype) for key, shape, dtype in mine}
        problems = [f"'{k}' missing from the model" for k in theirs if k not in ours]
        problems += [f"'{k}' not in the snapshot" for k in ours if k not in theirs]
        problems += [f"'{k}': snapshot {theirs[k]}, model {ours[k]}"
                     for k in ours if k in theirs and ours[k] != theirs[k]]
        if not problems:
            problems = ["the variables come in another order"]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(
            f"The snapshot was taken from another architecture than model '{model.name}': "
            f"{'; '.join(problems[:5])}{more}. Rewind a model prepared from the same network "
            "(the snapshot is taken on the model that keras_tpp.prepare returned).")

    def save(self, path: str | os.PathLike) -> None:
        """Write the snapshot to ``path`` (an .npz archive) atomically: a killed run leaves
        the previous file or the new one, never a torn one."""
        arrays = {f"w{i}": np.asarray(self.weights[key])
                  for i, (key, _, _) in enumerate(self.architecture)}
        meta = {"format": SNAPSHOT_FORMAT, "step": int(self.step),
                "architecture": [list(entry) for entry in self.architecture],
                "fingerprint": self.fingerprint}
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
        atomic_write_bytes(os.fspath(path), buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Snapshot":
        """The snapshot written by :meth:`save` to ``path``; ValueError if the file is not
        one (or is damaged), OSError if it cannot be read."""
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as archive:
                meta = json.loads(str(archive["meta"]))
                architecture = tuple((str(k), tuple(int(d) for d in s), str(t))
                                     for k, s, t in meta["architecture"])
                weights = {key: archive[f"w{i}"] for i, (key, _, _) in enumerate(architecture)}
        except OSError:
            raise
        except Exception as err:  # zip, JSON or key errors: not a snapshot file
            raise ValueError(f"{path} is not a keras_tpp lottery snapshot ({err}).") from None
        if meta.get("format") != SNAPSHOT_FORMAT or meta.get("fingerprint") != _fingerprint(
                architecture):
            raise ValueError(f"{path} is not a keras_tpp lottery snapshot of format "
                             f"{SNAPSHOT_FORMAT} (or it is damaged).")
        for key, shape, _ in architecture:
            if weights[key].shape != shape:
                raise ValueError(f"{path} is damaged: '{key}' has shape "
                                 f"{weights[key].shape}, expected {shape}.")
        return cls(step=int(meta["step"]), weights=weights, architecture=architecture)


class RewindPoint(keras.callbacks.Callback):
    """Snapshot the model's weights when its train-step counter reaches ``step``.

    The counter is the one :class:`keras_tpp.PruningCallback` reads (the PruningWrappers'
    ``train_steps``; ``optimizer.iterations`` for an unprepared model). ``step=0`` takes the
    snapshot before the first step (the original lottery ticket); ``step=k`` after the k-th
    step. The snapshot stays in memory (:attr:`snapshot`) and, with ``path``, is written to
    that file atomically; a RewindPoint whose file already exists loads it instead of taking
    a new one (a resumed run rewinds to the same weights). Once it holds a snapshot it does
    nothing more, so it can stay in the callbacks of every round.

    Args:
        step: k, the train step to snapshot at (>= 0).
        path: optional .npz file for the snapshot (:meth:`Snapshot.save`).

    Example:
        >>> rewind = keras_tpp.lottery.RewindPoint(step=500, path="run/rewind.npz")
        >>> pmodel.fit(ds, epochs=160, callbacks=[keras_tpp.PruningCallback(), rewind])
        >>> keras_tpp.lottery.lottery_round(pmodel, rewind.snapshot)
    """

    def __init__(self, step: int = 0, path: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.step = non_negative_int(step, "step")
        self.path = None if path is None else os.fspath(path)
        self.snapshot: Snapshot | None = None

    def _take(self) -> None:
        self.snapshot = Snapshot.capture(self.model, self.step)
        if self.path is not None:
            self.snapshot.save(self.path)

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.snapshot is not None:
            return
        keras_internals.sync_training_state(self.model)
        if self.path is not None and os.path.exists(self.path):
            snapshot = Snapshot.load(self.path)
            snapshot.check(self.model)
            if snapshot.step != self.step:
                raise ValueError(f"{self.path} holds a snapshot of step {snapshot.step}, not "
                                 f"of step {self.step}.")
            self.snapshot = snapshot
            return
        now = train_step(self.model)
        if now > self.step:
            raise ValueError(
                f"Model '{self.model.name}' has already run {now} train steps, past the rewind "
                f"step {self.step}" + (f", and {self.path} does not exist" if self.path else "")
                + ": start from the model before training, or load the saved snapshot.")
        every = int(getattr(self.model, "steps_per_execution", 1) or 1)
        if (self.step - now) % every:
            raise ValueError(
                f"steps_per_execution={every} runs {every} steps between callbacks: the "
                f"counter never stops at step {self.step} (from {now}). Compile with a "
                "steps_per_execution that divides the rewind step.")
        if now == self.step:
            self._take()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.snapshot is not None:
            return
        keras_internals.sync_training_state(self.model)  # JAX: variables hold the state
        now = train_step(self.model)
        if now == self.step:
            self._take()
        elif now > self.step:
            raise ValueError(f"The train-step counter went from below {self.step} to {now} "
                             "without stopping at the rewind step.")

    def get_config(self) -> dict[str, Any]:
        return {"step": self.step, "path": self.path}


# -- rounds ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundReport:
    """What one :func:`lottery_round` did.

    Args:
        sparsity: fraction of the masked weights now removed (channel level: of the pruned
            groups' channels, each group counted once).
        previous_sparsity: that fraction before the round.
        kept: weights (channels) kept, over all masked kernels (groups).
        removed: weights (channels) removed by this round.
        total: masked weights in all (every masked kernel's size; channel level: the
            groups' widths).
        target: the target sparsity given to prepare (a float, or {layer: target}).
        rate: the fraction of the remaining weights this round removed (before capping).
        reached_target: whether the target is now reached (no round is left).
        step: the train step the weights were rewound to.
        layers: {producer path: (kept, size)}, in weights (channels).

    Example:
        >>> report = keras_tpp.lottery.lottery_round(pmodel, snapshot)
        >>> print(f"{report.sparsity:.3f}: {report.kept}/{report.total} kept")
    """

    sparsity: float
    previous_sparsity: float
    kept: int
    removed: int
    total: int
    target: Any
    rate: float
    reached_target: bool
    step: int
    layers: dict = field(repr=False)


def _lottery_wrappers(pmodel: Any) -> tuple[Lottery, dict[str, PruningWrapper]]:
    wrappers = wrappers_by_path(pmodel) if isinstance(pmodel, keras.Model) else {}
    if not wrappers:
        raise ValueError(
            f"Lottery rounds need a model returned by keras_tpp.prepare(model, ratio, "
            f"method='lottery'); {getattr(pmodel, 'name', type(pmodel).__name__)!r} has no "
            "PruningWrapper layers.")
    method = model_method(list(wrappers.values()))
    if not isinstance(method, Lottery):
        raise ValueError(f"Lottery rounds need a model prepared with method='lottery'; this "
                         f"one was prepared with '{method.name}'.")
    return method, wrappers


def _targets(method: Lottery, paths: list[str]) -> dict[str, float]:
    final = method.final_ratio
    if isinstance(final, Mapping):
        return {path: float(final.get(path, 0.0)) for path in paths}
    return {path: float(final or 0.0) for path in paths}


def _mask(wrapper: PruningWrapper) -> np.ndarray:
    return keras.ops.convert_to_numpy(wrapper.keep_mask.value) > 0.5


@dataclass(frozen=True)
class _Unit:
    """What a round ranks together: the layer paths, the entries kept now, their number,
    and the entries the target keeps (weights, or channels of one group)."""

    paths: tuple[str, ...]
    kept: int
    size: int
    floor: int

    def next_kept(self, rate: float) -> int:
        """⌊(1 − rate)·kept⌋, never fewer than the target keeps."""
        if self.kept <= self.floor:
            return self.kept
        return max(kept_count(self.kept, rate), self.floor)

    def rounds(self, rate: float) -> int:
        """Rounds until the target is reached."""
        count, unit = 0, self
        while unit.kept > unit.floor:
            unit = _Unit(unit.paths, unit.next_kept(rate), unit.size, unit.floor)
            count += 1
        return count


# -- what one round keeps: weight level -------------------------------------------------------
def _weight_units(method: Lottery, wrappers: dict[str, PruningWrapper]) -> list[_Unit]:
    """Weight level: one unit over all kernels ("global") or one per kernel ("layer")."""
    masks = {path: _mask(w) for path, w in wrappers.items()}
    if method.ranking == "layer":
        targets = _targets(method, list(masks))
        return [_Unit((path,), int(m.sum()), m.size, kept_count(m.size, targets[path]))
                for path, m in masks.items()]
    size = sum(m.size for m in masks.values())
    return [_Unit(tuple(masks), sum(int(m.sum()) for m in masks.values()), size,
                  kept_count(size, float(method.final_ratio or 0.0)))]


def _weight_masks(method: Lottery, wrappers: dict[str, PruningWrapper],
                  units: list[_Unit], rate: float) -> dict[str, np.ndarray]:
    """The new kernel masks: the ⌊(1 − rate)·kept⌋ largest |w| of each unit stay."""
    masks = {path: _mask(w) for path, w in wrappers.items()}
    kernels = {path: keras.ops.convert_to_numpy(filters.output_kernel(w.layer))
               for path, w in wrappers.items()}
    if method.ranking == "layer":
        ratios = {unit.paths[0]: 1.0 - unit.next_kept(rate) / unit.size for unit in units}
        return magnitude_masks(kernels, masks, ratios, ranking="layer")
    (unit,) = units
    return magnitude_masks(kernels, masks, 1.0 - unit.next_kept(rate) / unit.size,
                           ranking="global")


# -- what one round keeps: channel level ------------------------------------------------------
def _channel_units(wrappers: dict[str, PruningWrapper]) -> list[_Unit]:
    """Channel level: one unit per channel group (its producers share one mask); the target
    is the group's ``num_pruned``, fixed by prepare."""
    groups: dict[str, list[str]] = {}
    for path, wrapper in wrappers.items():
        if wrapper.is_producer:
            groups.setdefault(wrapper.group, []).append(path)
    units = []
    for paths in groups.values():
        first = wrappers[paths[0]]
        mask = _mask(first)
        units.append(_Unit(tuple(paths), int(mask.sum()), mask.size,
                           mask.size - first.num_pruned))
    return units


def _channel_masks(wrappers: dict[str, PruningWrapper],
                   units: list[_Unit], rate: float) -> dict[str, np.ndarray]:
    """New (N,) masks of every wrapper: each group keeps its ⌊(1 − rate)·kept⌋ remaining
    channels of the largest combined L1 norm (:func:`keras_tpp.importance.group_l1_scores`,
    the members' scores mean-normalized); the batch norms that follow a group take its mask
    at their offset (behind a Concatenate, several groups')."""
    new: dict[str, np.ndarray] = {}
    for unit in units:
        members = [wrappers[path] for path in unit.paths]
        scores = importance.group_l1_scores([w.layer for w in members])
        scores = np.where(_mask(members[0]), scores, -np.inf)  # gone stays gone
        count = unit.size - unit.next_kept(rate)
        mask = importance.keep_mask(unit.size, importance.lowest(scores, count))
        for path in unit.paths:
            new[path] = mask
    group_masks = {wrappers[unit.paths[0]].group: new[unit.paths[0]] for unit in units}
    for path, wrapper in wrappers.items():
        if not wrapper.is_producer:  # a norm no group reaches keeps its own mask
            followed = wrapper.follow(group_masks)
            new[path] = _mask(wrapper) if followed is None else followed
    return new


def _count_rounds(kept: int, size: int, rate: float, target: float) -> int:
    return _Unit((), kept, size, kept_count(size, target)).rounds(rate)


def rounds_needed(target: float, rate: float = 0.2, total: int | None = None) -> int:
    """The number of rounds that reach sparsity ``target`` removing ``rate`` of the remaining
    weights per round: the smallest L with 1 − (1 − rate)^L >= target, or, given ``total``
    (the number of masked weights), the rounds of the exact counts.

    Args:
        target: the target sparsity, in [0, 1).
        rate: the fraction of the remaining weights removed per round, in (0, 1).
        total: optional number of masked weights, for exact (floored) counts.

    Example:
        >>> rounds_needed(0.9, 0.2)   # 1 − 0.8^11 = 0.914
        11
    """
    target = finite_float(target, "target", minimum=0.0, maximum=1.0, exclusive_maximum=True)
    rate = check_rate(rate)
    if total is not None:
        return _count_rounds(non_negative_int(total, "total"), int(total), rate, target)
    if target == 0:
        return 0
    return max(0, math.ceil(math.log1p(-target) / math.log1p(-rate) - 1e-9))


def _units(method: Lottery, wrappers: dict[str, PruningWrapper]) -> list[_Unit]:
    if method.granularity == "channel":
        return _channel_units(wrappers)
    return _weight_units(method, wrappers)


def remaining_rounds(pmodel: keras.Model, rate: float | None = None) -> int:
    """The rounds still to run before ``pmodel``'s masks reach the target given to prepare
    (0: train the last mask to the end), with exact counts (channel level: the most any
    group needs).

    Args:
        pmodel: a model prepared with ``method="lottery"`` (e.g. reloaded to resume).
        rate: fraction of the remaining weights removed per round (default: the method's).

    Example:
        >>> while keras_tpp.lottery.remaining_rounds(pmodel):
        ...     keras_tpp.lottery.lottery_round(pmodel, snapshot); train(pmodel)
    """
    method, wrappers = _lottery_wrappers(pmodel)
    rate = method.rate if rate is None else check_rate(rate)
    return max((unit.rounds(rate) for unit in _units(method, wrappers)), default=0)


def lottery_round(pmodel: keras.Model, snapshot: Snapshot,
                  rate: float | None = None) -> RoundReport:
    """One round of iterative magnitude pruning: prune, then rewind to ``snapshot``.

    Weight level: removes ``rate`` of the remaining (unmasked) weights with the smallest |w|
    at the current (trained) values, exactly ⌊(1 − rate)·kept⌋ staying (globally, or per
    layer with ``ranking="layer"``). Channel level (``prepare(..., granularity="channel")``):
    each channel group keeps the ⌊(1 − rate)·kept⌋ of its remaining channels with the
    largest L1 norm (members' norms mean-normalized, as L1 pruning ranks them), and the batch
    norms behind it lose the same channels. Never beyond the target given to prepare.

    Then sets every weight of the model (kernels, biases, BN γ/β and moving statistics) to
    the snapshot's, masked entries zero, and the train-step counter to the snapshot's step.
    Masks only lose entries (nested across rounds). Compile the model again (a fresh
    optimizer) before training the next round.

    Args:
        pmodel: a model prepared with ``keras_tpp.prepare(model, target, method="lottery")``
            and trained for this round.
        snapshot: the weights to rewind to (:attr:`RewindPoint.snapshot` or
            :meth:`Snapshot.load`), taken from this model's architecture.
        rate: fraction of the remaining weights removed, in (0, 1) (default: the method's).

    Returns:
        A :class:`RoundReport`: the new sparsity and the counts (channel level: channels of
        the pruned groups, each group counted once).

    Raises:
        ValueError, leaving the model untouched: a model not prepared with "lottery", a
        snapshot of another architecture, a rate outside (0, 1), or masks already at the
        target.

    Example:
        >>> report = keras_tpp.lottery.lottery_round(pmodel, rewind.snapshot)
        >>> report.sparsity, report.kept, report.removed
    """
    method, wrappers = _lottery_wrappers(pmodel)
    rate = method.rate if rate is None else check_rate(rate)
    if not isinstance(snapshot, Snapshot):
        raise ValueError(f"snapshot must be a keras_tpp.lottery.Snapshot (RewindPoint.snapshot "
                         f"or Snapshot.load(path)), got {type(snapshot).__name__}.")
    variables = snapshot.check(pmodel)

    units = _units(method, wrappers)
    if all(unit.next_kept(rate) == unit.kept for unit in units):
        raise ValueError(_at_target(method))
    if method.granularity == "channel":
        new = _channel_masks(wrappers, units, rate)
        counted = {unit.paths[0]: new[unit.paths[0]] for unit in units}
    else:
        new = _weight_masks(method, wrappers, units, rate)
        counted = new
    expected = sum(unit.next_kept(rate) for unit in units)
    kept = sum(int(mask.sum()) for mask in counted.values())
    if kept != expected:  # pragma: no cover - a floating-point slip in the counts
        raise RuntimeError(f"lottery_round kept {kept} entries instead of {expected}.")

    # Everything is decided: rewind, then zero the masked entries.
    for key, variable in variables:
        variable.assign(keras.ops.cast(snapshot.weights[key], variable.dtype))
    for path, wrapper in wrappers.items():
        mask = new[path]
        wrapper.keep_mask.assign(mask.astype("float32"))
        if wrapper.granularity == "weight":
            wrapper.num_pruned = int((~mask).sum())
        wrapper.enforce.assign(1.0)
        wrapper.zero_pruned()
        wrapper.train_steps.assign(snapshot.step)

    total = sum(unit.size for unit in units)
    before = sum(unit.kept for unit in units)
    reached = remaining_rounds(pmodel, rate) == 0
    layers = {path: (int(new[path].sum()), int(new[path].size))
              for path, w in wrappers.items() if w.is_producer}
    return RoundReport(sparsity=1.0 - kept / total, previous_sparsity=1.0 - before / total,
                       kept=kept, removed=before - kept, total=total,
                       target=method.final_ratio, rate=rate, reached_target=reached,
                       step=snapshot.step, layers=layers)


def resume_schedule(pmodel: keras.Model) -> int:
    """Start the freshly compiled optimizer of ``pmodel`` at the rewind step k, so that its
    learning-rate schedule continues from k after a rewind (as the reference code resumes a
    rewound run at iteration k) instead of restarting at 0.

    Builds the optimizer on the model's trainable variables and sets its iteration counter
    to the model's train step (:func:`train_step`, k after :func:`lottery_round`). Call it
    after ``compile`` and before ``fit``.

    Args:
        pmodel: a compiled model whose optimizer has not run a step yet.

    Returns:
        k, the step the optimizer now starts at.

    Raises:
        ValueError: the model is not compiled, or its optimizer has already run steps
            (compile again with a fresh optimizer).

    Example:
        >>> lottery.lottery_round(pmodel, rewind.snapshot)
        >>> pmodel.compile(keras.optimizers.SGD(schedule, momentum=0.9), loss)
        >>> lottery.resume_schedule(pmodel)   # the schedule goes on from k
        500
    """
    if not isinstance(pmodel, keras.Model):
        raise ValueError(f"resume_schedule needs a compiled keras.Model, got "
                         f"{type(pmodel).__name__}.")
    optimizer = getattr(pmodel, "optimizer", None)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(f"Model '{pmodel.name}' is not compiled: compile it with a fresh "
                         "optimizer, then call resume_schedule.")
    if int(keras.ops.convert_to_numpy(optimizer.iterations)) != 0:
        raise ValueError(f"The optimizer of model '{pmodel.name}' has already run "
                         f"{int(keras.ops.convert_to_numpy(optimizer.iterations))} steps: "
                         "compile again with a fresh optimizer after the rewind.")
    step = train_step(pmodel)
    if not optimizer.built:
        optimizer.build(pmodel.trainable_variables)
    optimizer.iterations.assign(step)
    return step


def _at_target(method: Lottery) -> str:
    return (f"The masks are already at the target sparsity ({method.final_ratio}) given to "
            "prepare: no lottery round is left; train this last mask to the end.")
