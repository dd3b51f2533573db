"""The one module of keras_tpp that reads Keras internals.

Keras 3 has no public API for a functional model's call graph, for the functional class
itself, or for rebuilding a user's in-memory Lambda layer; keras_tpp needs all three. Every
private access lives here, each with what it reads and the Keras version it was checked
against, so that a Keras upgrade breaks this file and nothing else.

Checked against Keras 3.15.1 (and the 3.6–3.15 range the package declares).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import keras

#: The Keras version every access below was checked against.
CHECKED_KERAS_VERSION = "3.15.1"

try:  # keras/src/models/functional.py: the class behind keras.Model(inputs, outputs).
    from keras.src.models.functional import Functional
except ImportError:  # pragma: no cover - a future Keras layout
    Functional = keras.Model

try:  # keras/src/saving/serialization_lib.py: the scope that lifts safe_mode.
    from keras.src.saving.serialization_lib import SafeModeScope as _SafeModeScope
except ImportError:  # pragma: no cover
    _SafeModeScope = None


def is_functional_class(model: Any) -> bool:
    """True for functional models (``keras.Model(inputs, outputs)``), not for Sequential."""
    return isinstance(model, Functional) and Functional is not keras.Model


def sequential_graph(model: keras.Sequential) -> Any:
    """The functional model a built Sequential keeps (``Sequential._functional``), or None."""
    return getattr(model, "_functional", None)


def nodes_by_depth(graph: Any) -> dict[int, list]:
    """``Functional._nodes_by_depth``: {depth: [Node]}, outputs at depth 0."""
    return graph._nodes_by_depth


def node_call(node: Any, values: dict[int, Any]) -> tuple[tuple, dict]:
    """(args, kwargs) of a node's call with its input tensors replaced by ``values``
    (keyed by ``id(tensor)``): ``Node.arguments.fill_in``."""
    return node.arguments.fill_in(values)


def producing_layer(tensor: Any) -> Any:
    """The operation that produced a symbolic tensor (``tensor._keras_history``), or None."""
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history else None


def inbound_node_count(layer: keras.layers.Layer) -> int:
    """How many times ``layer`` was called in functional graphs (``_inbound_nodes``)."""
    return len(layer._inbound_nodes)


def outbound_node_count(layer: keras.layers.Layer) -> int:
    """How many layer calls consume ``layer``'s outputs (``_outbound_nodes``)."""
    return len(layer._outbound_nodes)


def lambda_output_shape(layer: keras.layers.Lambda) -> Any:
    """The ``output_shape`` argument a Lambda layer was built with (``_output_shape``)."""
    return layer._output_shape


@contextlib.contextmanager
def unsafe_deserialization() -> Iterator[None]:
    """Allow ``from_config`` of a Lambda's Python function.

    Used only to copy a user's own in-memory Lambda (not a file from elsewhere), where Keras'
    safe-mode refusal does not apply.
    """
    if _SafeModeScope is None:  # pragma: no cover
        yield
        return
    with _SafeModeScope(False):
        yield


def flatten_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model`` and of the models and wrappers inside it
    (``Layer._flatten_layers(include_self=False, recursive=True)``)."""
    return model._flatten_layers(include_self=False, recursive=True)


def learning_rate_schedule(optimizer: Any) -> Any:
    """The LearningRateSchedule an optimizer was built with (``Optimizer._learning_rate``),
    or its constant learning-rate variable, or None."""
    return getattr(optimizer, "_learning_rate", None)


def compile_metrics(model: keras.Model) -> Any:
    """The compiled metrics container of a model (``Trainer._compile_metrics``), or None."""
    return getattr(model, "_compile_metrics", None)


def symbolic_build_function(model: keras.Model) -> Any:
    """``Trainer._symbolic_build`` (builds metrics and optimizer from a batch), or None."""
    return getattr(model, "_symbolic_build", None)


# -- optimizers -------------------------------------------------------------------------------
#: Per-variable lists of an optimizer that are not state of the update rule.
_NOT_SLOTS = ("_accumulated_gradients", "_trainable_variables")


def base_optimizer(optimizer: Any) -> Any:
    """The optimizer that runs the update rule: a LossScaleOptimizer's ``inner_optimizer``
    (public attribute), else ``optimizer`` itself."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def variable_index(optimizer: Any, variable: Any) -> int:
    """Position of a trainable variable in the optimizer's lists
    (``BaseOptimizer._get_variable_index``; takes a Keras variable or, inside the update,
    the backend's variable or one replica's component of it)."""
    return optimizer._get_variable_index(variable)


def optimizer_slots(optimizer: Any, variable: Any) -> list:
    """The optimizer variables that hold per-weight state of ``variable`` (SGD momentum,
    Adam's moments, RMSprop's averages, EMA copies...): the entries at the variable's index
    of every per-variable list attribute of the optimizer (``self._momentums``,
    ``self.momentums``, ``self._velocities``...), of the variable's shape.

    Gradient accumulators are not slots (they hold gradients, not update state).
    """
    optimizer = base_optimizer(optimizer)
    count = len(getattr(optimizer, "_trainable_variables", []))
    index = variable_index(optimizer, variable)
    slots, seen = [], set()
    for name, value in vars(optimizer).items():
        if name in _NOT_SLOTS or not isinstance(value, (list, tuple)) or len(value) != count:
            continue
        slot = value[index]
        if (isinstance(slot, keras.Variable) and id(slot) not in seen
                and tuple(slot.shape) == tuple(variable.shape)):
            slots.append(slot)
            seen.add(id(slot))
    return slots


def uses_gradient_accumulation(optimizer: Any) -> bool:
    """Whether the optimizer accumulates gradients over several steps."""
    return bool(getattr(base_optimizer(optimizer), "gradient_accumulation_steps", None))


def after_update_step(optimizer: Any, hook: Any) -> bool:
    """Make the optimizer call ``hook(index, gradient)`` right after it updates the trainable
    variable at ``index`` (and its slots), inside the train step.

    Wraps the instance's ``update_step(gradient, variable, learning_rate)`` (the per-variable
    update every Keras optimizer implements; under tf.distribute it runs once per replica in
    the update context, with the all-reduced gradient). A LossScaleOptimizer's inner
    optimizer is the one wrapped, so skipped (non-finite) steps never reach the hook.
    Installing another hook replaces the previous one. Returns True when the optimizer did not
    have this hook (equal by ``==``) before (the caller must then retrace its train function).
    """
    optimizer = base_optimizer(optimizer)
    original = getattr(optimizer, "_keras_tpp_update_step", None)
    if original is None:
        original = optimizer.update_step
        optimizer._keras_tpp_update_step = original
    changed = getattr(optimizer, "_keras_tpp_hook", None) != hook  # bound methods compare ==
    if not changed:
        return False

    def update_step(gradient: Any, variable: Any, learning_rate: Any) -> Any:
        result = original(gradient, variable, learning_rate)
        hook(variable_index(optimizer, variable), gradient)
        return result

    optimizer.update_step = update_step
    optimizer._keras_tpp_hook = hook
    return changed


def installed_hook(optimizer: Any) -> Any:
    """The hook :func:`after_update_step` installed on ``optimizer``, or None."""
    return getattr(base_optimizer(optimizer), "_keras_tpp_hook", None)
