"""PruningWrapper: a Keras layer wrapper that carries a layer's pruning state.

It wraps a producer (Conv*, Dense, SeparableConv*, Conv*Transpose) or a BatchNormalization
that follows one, and owns these non-trainable variables, saved with the model:

- ``keep_mask`` (N,) float32, 1 = kept, 0 = pruned;
- ``strength`` λ, the penalty strength on pruned channels;
- ``kept_strength`` λ_kept, an L2 strength on kept channels (GReg-2 uses a small negative one);
- ``enforce`` 0/1: when 1, pruned channels are held at exactly zero after every step;
- ``stopped_at``: iteration at which this layer's λ stopped growing (GReg), −1 while growing;
- ``ratio_ema``: EMA of mean|w_kept| / mean|w_pruned| (GReg's stopping criterion);
- ``step_size``: the optimizer's learning rate η as last seen by the pruning callback (read by
  the bounded gram term; 0 = unknown);
- ``train_steps`` (int64): training steps run through this layer, incremented in every
  forward pass with ``training=True``, i.e. once per train step, *including* the steps that a
  LossScaleOptimizer skips (whose ``iterations`` do not advance). The schedule follows it;
- ``mask_updated_at`` (int64, weight-level masks only): the train step of the last mask
  update of sparse training (−1 before any), so a resumed run neither repeats nor skips one.

At build time it attaches TPP's penalties as regularizers (:mod:`keras_tpp.penalties`) and a
:class:`~keras_tpp.constraints.ChannelMask` to the wrapped layer's variables, composed with
any regularizer or constraint the layer already had. Its forward pass is the wrapped layer's,
unchanged: training overhead is only the penalties' cost.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import keras
import numpy as np

from keras_tpp import filters
from keras_tpp.constraints import ChannelMask
from keras_tpp.penalties import GRAM_FORMULATIONS, GramPenalty, MaskedL2, RegularizerSum
from keras_tpp.validation import finite_float, non_negative_int, one_of


#: Mask granularities: one entry per output channel, or one per kernel weight.
GRANULARITIES = ("channel", "weight")


def is_norm(layer: keras.layers.Layer) -> bool:
    """True for the normalization layers whose γ/β get TPP's batch-norm penalty."""
    return isinstance(layer, keras.layers.BatchNormalization)


def can_wrap(layer: keras.layers.Layer) -> bool:
    """Whether PruningWrapper supports this layer."""
    return filters.is_producer(layer) or is_norm(layer)


@keras.saving.register_keras_serializable(package="keras_tpp")
class PruningWrapper(keras.layers.Wrapper):
    """Carries a layer's keep-mask and penalty strength; attaches the penalties.

    Args:
        layer: a producer layer or a BatchNormalization.
        method: the pruning method the model was prepared for ("tpp", "greg1", ...).
        method_options: that method's options (its ``get_config()``), which the pruning
            callback uses to rebuild it.
        gram_coefficient: c_gram of the gram term on the kernel; 0 disables it (producers).
        gram_formulation: "bounded" (default) or "exact": how the gram term is weighted,
            see :class:`~keras_tpp.penalties.GramPenalty`.
        l2_penalty: whether the masked L2 term is attached (kernel and bias of producers,
            γ and β of batch norms).
        num_pruned: how many channels the method removes (known before the mask for GReg-2).
        group: name of the channel group this layer belongs to.
        segments: batch norms only: the channel groups whose channels this layer carries,
            as ``[(group, offset, size), ...]`` (behind a Concatenate, several; channels of
            no listed group are never pruned). None: all of them belong to ``group``.
        granularity: "channel" (``keep_mask`` has one entry per output channel) or
            "weight" (``keep_mask`` has the output kernel's shape: unstructured sparsity;
            the mask alone: ``gram_coefficient`` and ``l2_penalty`` are not used).
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        method: str = "tpp",
        gram_coefficient: float = 1000.0,
        l2_penalty: bool = True,
        num_pruned: int = 0,
        group: str | None = None,
        gram_formulation: str = "bounded",
        method_options: dict | None = None,
        granularity: str = "channel",
        segments: Sequence[Sequence[Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        granularity = one_of(granularity, "granularity", GRANULARITIES)
        segments = _check_segments(segments, layer)
        gram_coefficient = finite_float(gram_coefficient, "gram_coefficient", minimum=0.0)
        gram_formulation = one_of(gram_formulation, "gram_formulation", GRAM_FORMULATIONS)
        num_pruned = non_negative_int(num_pruned, "num_pruned")
        if not isinstance(l2_penalty, bool):
            raise ValueError(f"l2_penalty must be True or False, got {l2_penalty!r}.")
        if not can_wrap(layer):
            raise ValueError(
                f"PruningWrapper cannot wrap layer '{layer.name}' of type "
                f"{type(layer).__name__}: only channel producers (Conv, Dense, SeparableConv, "
                "ConvTranspose) and BatchNormalization are supported."
            )
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.method = method
        self.method_options = dict(method_options or {})
        self.gram_coefficient = gram_coefficient
        self.gram_formulation = gram_formulation
        self.l2_penalty = l2_penalty
        self.num_pruned = int(num_pruned)
        self.group = group or layer.name
        self.segments = segments
        self.granularity = granularity
        if granularity == "weight" and not filters.is_producer(layer):
            raise ValueError(f"Weight-level masks apply to Conv/Dense kernels; layer "
                             f"'{layer.name}' is a {type(layer).__name__}.")
        self._layer_call_args = set(inspect.signature(layer.call).parameters)

    @property
    def is_producer(self) -> bool:
        return filters.is_producer(self.layer)

    @property
    def num_channels(self) -> int:
        if self.is_producer:
            return filters.num_filters(self.layer)
        return int(self.layer.moving_mean.shape[0])

    def build(self, input_shape: Any = None) -> None:
        if not self.layer.built:
            self.layer.build(input_shape)
        for group, offset, size in self.segments or ():
            if offset + size > self.num_channels:
                raise ValueError(
                    f"Segment ({group!r}, {offset}, {size}) of '{self.name}' ends past its "
                    f"{self.num_channels} channels.")
        shape = ((self.num_channels,) if self.granularity == "channel"
                 else tuple(filters.output_kernel(self.layer).shape))
        self.keep_mask = self.add_weight(
            name="keep_mask", shape=shape, initializer="ones", trainable=False)
        self.strength = self.add_weight(
            name="strength", shape=(), initializer="zeros", trainable=False)
        self.kept_strength = self.add_weight(
            name="kept_strength", shape=(), initializer="zeros", trainable=False)
        self.enforce = self.add_weight(
            name="enforce", shape=(), initializer="zeros", trainable=False)
        self.stopped_at = self.add_weight(
            name="stopped_at", shape=(), initializer=keras.initializers.Constant(-1.0),
            trainable=False)
        self.ratio_ema = self.add_weight(
            name="ratio_ema", shape=(), initializer="zeros", trainable=False)
        self.step_size = self.add_weight(
            name="step_size", shape=(), initializer="zeros", trainable=False)
        self.train_steps = self.add_weight(
            name="train_steps", shape=(), dtype="int64", initializer="zeros",
            trainable=False, aggregation="only_first_replica")
        if self.granularity == "weight":
            self.mask_updated_at = self.add_weight(
                name="mask_updated_at", shape=(), dtype="int64",
                initializer=keras.initializers.Constant(-1), trainable=False,
                aggregation="only_first_replica")
        self._attach_penalties()
        self.built = True

    def masked_variables(self) -> list[tuple[Any, int | None]]:
        """(variable, channel axis) pairs whose pruned channels are zeroed by the mask; the
        axis is None for the kernel of a weight-level mask (one entry per weight)."""
        layer = self.layer
        if self.granularity == "weight":
            return [(filters.output_kernel(layer), None)]
        if self.is_producer:
            pairs = [(filters.output_kernel(layer), filters.output_axis(layer))]
            if getattr(layer, "use_bias", False) and layer.bias is not None:
                pairs.append((layer.bias, -1))
            return pairs
        return [(v, -1) for v in (layer.gamma, layer.beta) if v is not None]

    def _attach_penalties(self) -> None:
        for index, (variable, axis) in enumerate(self.masked_variables()):
            ours = []
            if axis is None:  # a weight-level mask: the constraint alone
                variable.constraint = ChannelMask(None, inner=variable.constraint).bind(
                    self.keep_mask, self.enforce)
                continue
            if self.is_producer and index == 0 and self.gram_coefficient > 0:
                ours.append(GramPenalty(
                    self.gram_coefficient, axis, self.gram_formulation).bind(
                        self.keep_mask, self.strength, step_size=self.step_size
                    ).set_num_pruned(self.num_pruned))
            if self.l2_penalty:
                ours.append(MaskedL2(axis).bind(
                    self.keep_mask, self.strength, self.kept_strength))
            if ours:
                existing = variable.regularizer
                variable.regularizer = RegularizerSum(
                    ([existing] if existing is not None else []) + ours)
            variable.constraint = ChannelMask(axis, inner=variable.constraint).bind(
                self.keep_mask, self.enforce)

    def zero_pruned(self) -> None:
        """Set the pruned channels of every masked variable to exactly zero, now."""
        mask = keras.ops.convert_to_numpy(self.keep_mask.value).astype(bool)
        for variable, axis in self.masked_variables():
            value = keras.ops.convert_to_numpy(variable.value).copy()
            if axis is None:
                variable.assign(np.where(mask, value, 0.0).astype(value.dtype))
                continue
            index = [slice(None)] * value.ndim
            index[axis % value.ndim] = ~mask
            value[tuple(index)] = 0.0
            variable.assign(value)

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if training is True:
            # Counts train steps even when the optimizer skips the update (mixed precision).
            self.train_steps.assign_add(keras.ops.ones((), dtype="int64"))
        kwargs = {}
        if "training" in self._layer_call_args:
            kwargs["training"] = training
        if mask is not None and "mask" in self._layer_call_args:
            kwargs["mask"] = mask
        return self.layer(inputs, **kwargs)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.layer.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({
            "method": self.method,
            "method_options": self.method_options,
            "granularity": self.granularity,
            "gram_coefficient": self.gram_coefficient,
            "gram_formulation": self.gram_formulation,
            "l2_penalty": self.l2_penalty,
            "num_pruned": self.num_pruned,
            "group": self.group,
            "segments": None if self.segments is None else [list(s) for s in self.segments],
        })
        return config

    def channel_segments(self) -> list[tuple[str, int, int]]:
        """The (group, offset, size) ranges of this layer's channels that channel groups own:
        ``segments``, or the whole range for ``group``."""
        if self.segments is not None:
            return list(self.segments)
        return [(self.group, 0, self.num_channels)]

    def follow(self, group_masks: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """A batch norm's keep-mask from its groups' masks: each group's mask at its offset,
        ones where no group in ``group_masks`` reaches. None if no group does.

        Args:
            group_masks: {group name: bool keep-mask of shape (group size,)}.
        Returns:
            bool array of shape (num_channels,), or None.
        Raises:
            ValueError: a group's mask does not fit its range (a model prepared before
                keras-tpp 0.5 behind a Concatenate, without ``segments``).
        """
        mask = np.ones(self.num_channels, dtype=bool)
        reached = False
        for group, offset, size in self.channel_segments():
            values = group_masks.get(group)
            if values is None:
                continue
            if np.shape(values) != (size,):
                raise ValueError(
                    f"Batch norm '{self.name}' cannot follow group '{group}': its mask has "
                    f"shape {np.shape(values)}, the norm's range for it {size} channels. A "
                    "model prepared by keras-tpp before 0.5 does not record which groups a "
                    "batch norm behind a Concatenate carries: prepare it again.")
            mask[offset:offset + size] &= np.asarray(values, dtype=bool)
            reached = True
        return mask if reached else None


def _check_segments(segments: Sequence[Sequence[Any]] | None,
                    layer: keras.layers.Layer) -> list[tuple[str, int, int]] | None:
    """``segments`` as a list of (str, int, int), or ValueError naming ``layer``."""
    if segments is None:
        return None
    if not is_norm(layer):
        raise ValueError(f"segments apply to batch norms only; layer '{layer.name}' is a "
                         f"{type(layer).__name__}.")
    checked = []
    for segment in segments:
        ok = (isinstance(segment, (list, tuple)) and len(segment) == 3
              and isinstance(segment[0], str)
              and all(isinstance(v, int) and not isinstance(v, bool) for v in segment[1:])
              and segment[1] >= 0 and segment[2] > 0)
        if not ok:
            raise ValueError(f"segments of '{layer.name}' must be (group name, offset >= 0, "
                             f"size > 0) triples, got {segment!r}.")
        checked.append((segment[0], int(segment[1]), int(segment[2])))
    return checked


#: Names of the pruning-state variables a PruningWrapper owns (``mask_updated_at``: weight-level
#: masks only).
STATE_VARIABLES = ("keep_mask", "strength", "kept_strength", "enforce", "stopped_at", "ratio_ema",
                   "step_size", "train_steps", "mask_updated_at")


def find_wrappers(model: keras.Model) -> list[PruningWrapper]:
    """Every PruningWrapper in ``model``, nested models included, in layer order."""
    found = []
    for layer in model.layers:
        if isinstance(layer, PruningWrapper):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(find_wrappers(layer))
    return found
