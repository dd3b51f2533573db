"""One way to rebuild a model: clone its graph with some layers replaced or reconfigured,
then set the new layers' weights.

Every keras_tpp function that returns a new model goes through :func:`clone`: ``prepare``
(wrap layers), ``strip`` (unwrap them), ``shrink`` and ``zero_channels`` (new widths / new
values), ``fold_batchnorm``, ``orthp`` and ``profile`` (new input shapes). The user's model is
only read.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import keras
import numpy as np

from keras_tpp import keras_internals
from keras_tpp.graph import UnsupportedModelError, is_functional, iter_layers
from keras_tpp.wrappers import STATE_VARIABLES, PruningWrapper

#: ``copy(layer, config=None)``: a new, unbuilt layer of the same class (see :func:`clone`).
LayerCopier = Callable[..., keras.layers.Layer]


def check_functional(model: keras.Model, what: str = "keras_tpp") -> None:
    """Raise UnsupportedModelError unless ``model`` and its nested models are functional."""
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(
            f"{what} expects a keras.Model, got {type(model).__name__}.")
    if not is_functional(model):
        raise UnsupportedModelError(
            f"Model '{model.name}' is a subclassed model ({type(model).__name__}): {what} "
            "needs the layer graph of a Functional or Sequential model to know how channels "
            "flow. Rebuild it with the functional API.")
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            check_functional(layer, what)


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


@dataclass
class Cloned:
    """What :func:`clone` returns: the new model and {id(original layer): its new layer}."""

    model: keras.Model
    new_of: dict[int, keras.layers.Layer]


def _unwrap(layer: keras.layers.Layer) -> keras.layers.Layer:
    return layer.layer if isinstance(layer, PruningWrapper) else layer


class _Copier:
    """Copies layers from their config with variables created as zeros (random
    initializers of large kernels would dominate the time, and the values are overwritten),
    then puts each layer's own initializers back once it is built, so its config is kept."""

    def __init__(self) -> None:
        self._pending: list[tuple[keras.layers.Layer, dict]] = []

    def __call__(self, layer: keras.layers.Layer, config: dict | None = None) -> keras.layers.Layer:
        config = layer.get_config() if config is None else config
        if isinstance(layer, keras.layers.Lambda):
            # A Lambda's Python function cannot be deserialized safely: reuse the function.
            return keras.layers.Lambda(
                layer.function, output_shape=keras_internals.lambda_output_shape(layer),
                mask=layer.mask, arguments=layer.arguments, name=config.get("name", layer.name),
                dtype=layer.dtype_policy)
        keys = [k for k, v in config.items() if k.endswith("_initializer") and v is not None]
        try:
            new = layer.__class__.from_config(dict(config, **{k: "zeros" for k in keys}))
        except Exception as err:  # noqa: BLE001 - re-raised with the layer's name
            raise ValueError(f"Cannot rebuild layer '{layer.name}' ({type(layer).__name__}) "
                             f"from its config: {err}") from err
        if keys:
            self._pending.append((new, {k: keras.initializers.get(config[k]) for k in keys}))
        return new

    def restore_initializers(self) -> None:
        for layer, initializers in self._pending:
            for key, initializer in initializers.items():
                if hasattr(layer, key):
                    setattr(layer, key, initializer)
        self._pending.clear()


def _call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
    # A node records the keyword arguments of the layer it was built with (a wrapper takes
    # ``mask``/``training``); pass on only those the replacing layer accepts.
    params = inspect.signature(layer.call).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return layer(*args, **kwargs)


def _new_inputs(model: keras.Model, shapes: Sequence[tuple]) -> Any:
    """Fresh Input tensors of the given full shapes (batch axis included) for ``model``."""
    originals = list(keras.tree.flatten(model.inputs))
    if len(shapes) != len(originals):
        raise ValueError(f"Model '{model.name}' has {len(originals)} inputs; got "
                         f"{len(shapes)} input shapes.")
    inputs = [keras.Input(batch_shape=tuple(s), dtype=t.dtype, name=t.name)
              for s, t in zip(shapes, originals)]
    if isinstance(model, keras.Sequential) or len(inputs) == 1:
        return inputs[0]
    return keras.tree.pack_sequence_as(model.input, inputs)


def _assign(new: keras.layers.Layer, values: list[np.ndarray], path: str) -> None:
    targets = new.weights
    if len(targets) != len(values) or any(
            tuple(t.shape) != tuple(np.shape(v)) for t, v in zip(targets, values)):
        raise RuntimeError(
            f"Internal error: new weights of '{path}' do not match the rebuilt layer "
            f"({[tuple(np.shape(v)) for v in values]} vs {[tuple(t.shape) for t in targets]}).")
    for target, value in zip(targets, values):
        target.assign(np.asarray(value).astype(target.dtype))


def clone(
    model: keras.Model,
    *,
    replace: Callable[[keras.layers.Layer, LayerCopier], keras.layers.Layer | None] | None = None,
    config: Callable[[keras.layers.Layer], dict] | None = None,
    input_shapes: Callable[[keras.Model], Sequence[tuple] | None] | None = None,
    weights: Callable[[keras.layers.Layer], list[np.ndarray] | None] | None = None,
    copy_weights: bool = True,
    compiled: bool = False,
    call_args: Callable[[Any, tuple, dict], tuple[tuple, dict]] | None = None,
) -> Cloned:
    """Rebuild ``model`` (nested models too) and set the new layers' weights.

    Args:
        model: a Functional or Sequential model; only read.
        replace: ``replace(layer, copy)`` may return the layer to use instead of a copy
            (e.g. a PruningWrapper around ``copy(layer)``); None keeps the default copy.
        config: the config of a leaf layer's copy (default: ``layer.get_config()``).
        input_shapes: full input shapes (batch axis included) of a rebuilt model, the top
            model or a nested one; None keeps its own.
        weights: values for a new layer's weights in order (None: copy the original's).
            A PruningWrapper is looked through on both sides; when both are wrappers their
            pruning state is copied too.
        copy_weights: False leaves the new weights as initialized (shapes only).
        compiled: keep Keras' compiled clone (default: hand back an uncompiled model).
        call_args: ``call_args(original operation, args, kwargs) -> (args, kwargs)``: the
            arguments of each call in the new graph (e.g. per-channel constants of keras.ops
            operations sliced by surgery); None keeps them.
    Returns:
        :class:`Cloned` with the new model and {id(original leaf layer): new layer}.
    """
    new_of: dict[int, keras.layers.Layer] = {}
    original_of: dict[int, Any] = {}  # id(new operation) -> the original (call_args)
    copier = _Copier()

    def call_new(operation: Any, *args: Any, **kwargs: Any) -> Any:
        original = original_of.get(id(operation))
        if original is not None:
            args, kwargs = call_args(original, args, kwargs)
        return _call(operation, *args, **kwargs)

    def inputs_for(nested: keras.Model) -> Any:
        shapes = input_shapes(nested) if input_shapes is not None else None
        return None if shapes is None else _new_inputs(nested, shapes)

    def clone_graph(graph_model: keras.Model) -> keras.Model:
        # Sequential models do not call their layers while cloning: no call_function.
        call = None if isinstance(graph_model, keras.Sequential) else (
            _call if call_args is None else call_new)
        return keras.models.clone_model(graph_model, input_tensors=inputs_for(graph_model),
                                        clone_function=make_layer, call_function=call)

    def make_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.Model):
            new = clone_graph(layer)
        else:
            new = replace(layer, copier) if replace is not None else None
            if new is None:
                new = copier(layer, config(layer) if config is not None else None)
        new_of[id(layer)] = new
        if call_args is not None:
            original_of[id(new)] = layer
        return new

    result = clone_graph(model)
    copier.restore_initializers()
    if copy_weights:
        for ref in iter_layers(model):
            old, new = ref.layer, new_of.get(id(ref.layer))
            if new is None or not old.weights:
                continue
            if isinstance(old, PruningWrapper) and isinstance(new, PruningWrapper):
                for name in STATE_VARIABLES:
                    if hasattr(old, name) and hasattr(new, name):
                        getattr(new, name).assign(getattr(old, name).value)
            values = weights(old) if weights is not None else None
            if values is None:
                values = [keras.ops.convert_to_numpy(v) for v in _unwrap(old).weights]
            _assign(_unwrap(new), values, ref.path_str)
    return Cloned(result if compiled else uncompiled(result), new_of)
