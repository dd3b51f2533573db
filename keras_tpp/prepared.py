"""Reading and finishing a prepared model: its masks, applying them, and stripping the
pruning wrappers.

Masks are the one representation of "what is removed": {layer path: bool (N,), True =
kept}; :func:`keras_tpp.surgery.plan_from_masks` turns them into a surgery plan.

    keras_tpp.get_masks(pmodel)      # {layer path: bool array of kept output channels}
    keras_tpp.apply_masks(pmodel)    # zero pruned filters, biases, BN γ/β now
    plain = keras_tpp.strip(pmodel)  # plain, uncompiled Keras model, same shapes
"""
from __future__ import annotations

import keras
import numpy as np

from keras_tpp import cloning, keras_internals
from keras_tpp.constraints import ChannelMask
from keras_tpp.graph import iter_layers
from keras_tpp.wrappers import PruningWrapper, find_wrappers


def wrappers_by_path(model: keras.Model) -> dict[str, PruningWrapper]:
    """{layer path: PruningWrapper} of a model, e.g. ``{"conv": ..., "backbone/conv": ...}``.

    Paths join the names from the top model down with "/", so layers of nested models that
    share a name with another layer keep distinct keys.
    """
    found = {}
    for ref in iter_layers(model):
        if isinstance(ref.layer, PruningWrapper):
            found[ref.path_str] = ref.layer
    return found


def _require_prepared(model: keras.Model, what: str) -> dict[str, PruningWrapper]:
    wrappers = wrappers_by_path(model) if isinstance(model, keras.Model) else {}
    if not wrappers:
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(
            f"{what} needs a model returned by keras_tpp.prepare(); model '{name}' has no "
            "PruningWrapper layers.")
    return wrappers


def get_masks(model: keras.Model, include_norms: bool = False) -> dict[str, np.ndarray]:
    """{producer layer path: bool array, True = kept} of a prepared model.

    Channel-level methods give one entry per output channel, shape (N,); weight-level
    methods (e.g. ``"magnitude"``) give a mask of the kernel's shape.

    Keys are layer paths ("conv1", or "backbone/conv1" inside a nested model), the keys
    :func:`keras_tpp.shrink` accepts in a plan. With ``include_norms`` the wrapped batch
    norms are listed too.

    Example:
        >>> masks = keras_tpp.get_masks(pmodel)
        >>> thin = keras_tpp.shrink(keras_tpp.strip(pmodel), masks)  # False = removed
    """
    return {
        path: keras.ops.convert_to_numpy(w.keep_mask.value) > 0.5
        for path, w in _require_prepared(model, "get_masks").items()
        if include_norms or w.is_producer
    }


def apply_masks(model: keras.Model, enforce: bool = True) -> None:
    """Zero the pruned filters, their biases and the following BN γ/β now.

    With ``enforce`` (default) the pruned entries are also held at zero by the variables'
    constraints during any further training.
    """
    for wrapper in _require_prepared(model, "apply_masks").values():
        wrapper.zero_pruned()
        if enforce:
            wrapper.enforce.assign(1.0)
    hold_masks_in_train_step(model)


def hold_masks_in_train_step(model: keras.Model) -> bool:
    """JAX: make ``fit`` apply the masks' constraints after every optimizer update.

    Keras' JAX trainer updates the weights in ``optimizer.stateless_apply``, which does not
    see the wrappers' mask variables; this wraps the model's train step so that every
    :class:`~keras_tpp.constraints.ChannelMask` is applied right after the update, with the
    mask and the on/off switch of the training state (see
    :func:`keras_tpp.keras_internals.after_train_step`). ``prepare``, :func:`apply_masks` and
    the pruning callbacks call it; a prepared model loaded from a file and trained on JAX
    without them needs it once. On other backends the constraint runs inside the optimizer
    update and this is a no-op.

    Args:
        model: a prepared model (nested prepared models included).

    Returns:
        True when the train step was wrapped now (the train function is retraced).

    Example:
        >>> pmodel = keras.models.load_model("pruning.keras")
        >>> keras_tpp.prepared.hold_masks_in_train_step(pmodel)
        >>> pmodel.fit(x, y)
    """
    if keras.backend.backend() != "jax":
        return False
    pairs = [(variable, variable.constraint) for wrapper in find_wrappers(model)
             for variable, _ in wrapper.masked_variables()
             if isinstance(variable.constraint, ChannelMask)]
    if not pairs:
        return False
    hook = getattr(model, "_keras_tpp_mask_hook", None)
    if hook is None:
        def hook() -> None:
            for variable, constraint in pairs:
                variable.assign(constraint.mask(variable.value))

        model._keras_tpp_mask_hook = hook
    return keras_internals.after_train_step(model, hook)


def check_pruned_channels_zero(model: keras.Model) -> None:
    """Raise ValueError unless every pruned filter, bias and BN γ/β of ``model`` is zero.

    Removing channels that are not zero would change the network's outputs; the explicit
    step that zeroes them is :func:`apply_masks` (or the end of the pruning schedule).
    """
    for path, wrapper in _require_prepared(model, "shrink(model) without a plan").items():
        if wrapper.granularity == "weight":
            raise ValueError(
                f"Layer '{path}' has a weight-level (unstructured) mask: shrink removes whole "
                "channels, and a sparse model keeps its shapes. Use keras_tpp.strip(model) "
                "for the plain sparse model (its masked weights are exactly zero once the "
                "masks are applied) and keras_tpp.export(..., sparse=True) to store it "
                "compactly.")
        mask = keras.ops.convert_to_numpy(wrapper.keep_mask.value) > 0.5
        for variable, axis in wrapper.masked_variables():
            value = keras.ops.convert_to_numpy(variable.value)
            pruned = np.take(value, np.flatnonzero(~mask), axis=axis % value.ndim)
            if np.any(pruned != 0):
                raise ValueError(
                    f"Layer '{path}' still has non-zero pruned channels in "
                    f"'{variable.name}': removing them would change the model's outputs. "
                    "Call keras_tpp.apply_masks(model) first, or train until the pruning "
                    "schedule's pruned phase.")


def strip(model: keras.Model) -> keras.Model:
    """A plain, uncompiled Keras model with the same architecture and weights, without
    keras_tpp objects.

    The pruned channels are still there (zero after :func:`apply_masks`); use
    :func:`keras_tpp.shrink` to remove them physically. The pruning stage's optimizer is not
    carried over: compile the result for fine-tuning.
    """
    _require_prepared(model, "strip")

    def replace(layer: keras.layers.Layer, copy: cloning.LayerCopier):
        return copy(layer.layer) if isinstance(layer, PruningWrapper) else None

    return cloning.clone(model, replace=replace).model
