"""Walking a functional or Sequential model's layer calls in topological order.

The call graph itself is read through :mod:`keras_tpp.keras_internals` (Keras has no
public API for it); everything else in keras_tpp walks models through this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import keras

from keras_tpp import keras_internals
from keras_tpp.graph.nodes import LayerRef, UnsupportedModelError


@dataclass(eq=False)
class CallSite:
    """One call of a leaf layer (or a nested model) during a walk of the graph.

    ``inputs``/``outputs`` hold the values the walker associated with the call's flattened
    input and output tensors; ``input_shapes``/``output_shapes`` the symbolic shapes.
    """

    ref: LayerRef
    args: tuple
    kwargs: dict
    inputs: list[Any]
    input_shapes: list[tuple]
    output_shapes: list[tuple]


def is_functional(model: Any) -> bool:
    """True for functional models and built Sequential models."""
    return isinstance(model, keras.Sequential) or keras_internals.is_functional_class(model)


def graph_of(model: keras.Model, path: tuple[str, ...] = ()) -> Any:
    """The functional graph behind ``model`` (a Sequential's inner functional model)."""
    where = "/".join(path) or model.name
    if isinstance(model, keras.Sequential):
        inner = keras_internals.sequential_graph(model)
        if inner is None:
            raise UnsupportedModelError(
                f"Sequential model '{where}' is not built; give it an Input (or call it once) "
                "so that its layers have known shapes."
            )
        return inner
    if keras_internals.is_functional_class(model):
        return model
    raise UnsupportedModelError(
        f"Model '{where}' is a subclassed model ({type(model).__name__}); keras_tpp can only "
        "follow the channels of functional and Sequential models, whose layer graph is known."
    )


def flat(structure: Any) -> list[Any]:
    """Keras' flattening of a nested structure of tensors."""
    return list(keras.tree.flatten(structure))


def walk(
    model: keras.Model,
    inputs: Sequence[Any],
    visit: Callable[[CallSite], Sequence[Any]],
    path: tuple[str, ...] = (),
    on_model: Callable[[LayerRef, list[Any]], None] | None = None,
) -> list[Any]:
    """Run ``visit`` on every leaf layer call of ``model`` in topological order.

    ``inputs`` are arbitrary values standing for the model's flattened inputs; ``visit``
    receives a :class:`CallSite` whose ``inputs`` are the values of the call's flattened
    input tensors and returns one value per output tensor. Nested functional/Sequential
    models are walked recursively (their calls get longer paths). Returns the values of the
    model's flattened outputs. ``on_model(ref, values)`` (optional) is told the input values
    of every nested model call before it is walked.
    """
    graph = graph_of(model, path)
    values: dict[int, Any] = {}
    graph_inputs = flat(graph.inputs)
    if len(graph_inputs) != len(inputs):
        raise UnsupportedModelError(
            f"Model '{'/'.join(path) or model.name}' expects {len(graph_inputs)} inputs, "
            f"got {len(inputs)}."
        )
    for tensor, value in zip(graph_inputs, inputs):
        values[id(tensor)] = value
    by_depth = keras_internals.nodes_by_depth(graph)
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            in_tensors = list(node.input_tensors)
            if any(id(t) not in values for t in in_tensors):
                continue  # not on a path from the inputs
            args, kwargs = keras_internals.node_call(node, values)
            layer = node.operation
            ref = LayerRef(layer, path + (layer.name,))
            site_inputs = [values[id(t)] for t in in_tensors]
            if isinstance(layer, keras.Model):
                if on_model is not None:
                    on_model(ref, site_inputs)
                outs = walk(layer, site_inputs, visit, ref.path, on_model)
            else:
                site = CallSite(
                    ref=ref, args=args, kwargs=kwargs, inputs=site_inputs,
                    input_shapes=[tuple(t.shape) for t in in_tensors],
                    output_shapes=[tuple(t.shape) for t in node.outputs],
                )
                outs = list(visit(site))
            if len(outs) != len(node.outputs):
                raise UnsupportedModelError(
                    f"Layer '{ref.path_str}' returned {len(outs)} values for "
                    f"{len(node.outputs)} outputs."
                )
            for tensor, value in zip(node.outputs, outs):
                values[id(tensor)] = value
    result = []
    for tensor in flat(graph.outputs):
        if id(tensor) not in values:
            raise UnsupportedModelError(
                f"Output '{tensor.name}' of model '{model.name}' is not computed from its inputs."
            )
        result.append(values[id(tensor)])
    return result


def output_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers that produce the model's outputs (one per output)."""
    names = []
    for tensor in flat(graph_of(model).outputs):
        layer = keras_internals.producing_layer(tensor)
        names.append(layer.name if layer is not None else str(tensor.name))
    return names


def iter_layers(model: keras.Model, path: tuple[str, ...] = ()) -> Iterator[LayerRef]:
    """Every leaf layer of a (nested) model with its path, depth first."""
    for layer in model.layers:
        ref = LayerRef(layer, path + (layer.name,))
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer, ref.path)
        else:
            yield ref
