"""Clone a functional/Sequential model with some layers replaced, and copy weights across.

Used by :func:`keras_tpp.prepare` (wrap layers) and :func:`keras_tpp.strip` (unwrap them):
both return new models and leave the user's model untouched.
"""
from __future__ import annotations

import inspect
from typing import Callable

import keras
from keras.src.saving.serialization_lib import SafeModeScope  # no public alias

from keras_tpp.graph import UnsupportedModelError, is_functional
from keras_tpp.wrappers import STATE_VARIABLES, PruningWrapper


def check_functional(model: keras.Model, what: str = "keras_tpp") -> None:
    """Raise UnsupportedModelError unless ``model`` and its nested models are functional."""
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"{what} expects a keras.Model, got {type(model).__name__}.")
    is_graph = is_functional(model)
    if not is_graph:
        raise UnsupportedModelError(
            f"Model '{model.name}' is a subclassed model ({type(model).__name__}): {what} "
            "needs the layer graph of a Functional or Sequential model to know how channels "
            "flow. Rebuild it with the functional API.")
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            check_functional(layer, what)


def _unwrap(layer: keras.layers.Layer) -> keras.layers.Layer:
    return layer.layer if isinstance(layer, PruningWrapper) else layer


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy weights layer by layer (matched by name, nested models recursively).

    A PruningWrapper on either side is looked through: the wrapped layer's weights are
    copied. When both sides are wrappers, their pruning state is copied too.
    """
    targets = {layer.name: layer for layer in target.layers}
    for src in source.layers:
        dst = targets.get(src.name)
        if dst is None and not src.weights:
            continue  # e.g. an InputLayer, renamed by clone_model
        if dst is None:
            raise ValueError(f"Layer '{src.name}' has no counterpart in the cloned model.")
        if isinstance(src, keras.Model) and isinstance(dst, keras.Model):
            copy_weights(src, dst)
            continue
        if isinstance(src, PruningWrapper) and isinstance(dst, PruningWrapper):
            for name in STATE_VARIABLES:
                getattr(dst, name).assign(getattr(src, name).value)
        weights = _unwrap(src).get_weights()
        if weights:
            _unwrap(dst).set_weights(weights)


def uncompiled(model: keras.Model) -> keras.Model:
    """``model`` itself if it is not compiled, else an uncompiled model on the same layers.

    ``keras.models.clone_model`` compiles a clone of a compiled model with the same
    optimizer configuration; a model keras_tpp hands back (stripped, thin, masked) must not
    carry the pruning stage's optimizer into ``save()`` or fine-tuning.
    """
    if not getattr(model, "compiled", False):
        return model
    if isinstance(model, keras.Sequential):
        first = model.inputs[0]
        return keras.Sequential(
            [keras.Input(batch_shape=tuple(first.shape), dtype=first.dtype)] + model.layers,
            name=model.name)
    return keras.Model(model.inputs, model.outputs, name=model.name)


def clone_replacing(
    model: keras.Model,
    replace: Callable[[keras.layers.Layer], keras.layers.Layer | None],
    copy: bool = True,
    compiled: bool = True,
) -> keras.Model:
    """Clone ``model`` (nested models too); ``replace(layer)`` may return a new layer to use
    instead of a fresh copy. With ``copy``, weights are copied from ``model`` afterwards
    (:func:`copy_weights`); with ``compiled=False`` the clone is returned uncompiled even if
    ``model`` was compiled (:func:`uncompiled`)."""

    def clone_function(layer: keras.layers.Layer) -> keras.layers.Layer:
        new = replace(layer)
        if new is not None:
            return new
        return fresh_copy(layer)

    def call_function(layer: keras.layers.Layer, *args, **kwargs):
        # A node records the keyword arguments of the layer it was built with (a wrapper
        # takes ``mask``/``training``); pass on only those the replacing layer accepts.
        params = inspect.signature(layer.call).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        return layer(*args, **kwargs)

    clone = keras.models.clone_model(
        model, clone_function=clone_function, call_function=call_function, recursive=True)
    if copy:
        copy_weights(model, clone)
    return clone if compiled else uncompiled(clone)


def fresh_copy(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A new, unbuilt layer with the same configuration (and name)."""
    if isinstance(layer, keras.layers.Lambda):
        # The function is the caller's own in-memory object, not an untrusted file, so
        # Keras' safe-mode refusal of Python lambdas does not apply here.
        with SafeModeScope(False):
            return layer.__class__.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())
