"""The one module of keras_tpp that reads Keras internals.

Keras 3 has no public API for a functional model's call graph, for the functional class
itself, or for rebuilding a user's in-memory Lambda layer; keras_tpp needs all three. Every
private access lives here, each with what it reads and the Keras version it was checked
against, so that a Keras upgrade breaks this file and nothing else.

Checked against Keras 3.15.1 (and the 3.6–3.15 range the package declares).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator

import keras

#: The Keras version every access below was checked against.
CHECKED_KERAS_VERSION = "3.15.1"

try:  # keras/src/models/functional.py: the class behind keras.Model(inputs, outputs).
    from keras.src.models.functional import Functional
except ImportError:  # pragma: no cover - a future Keras layout
    Functional = keras.Model

try:  # keras/src/backend/common/stateless_scope.py: the active StatelessScope, if any.
    from keras.src.backend.common.stateless_scope import get_stateless_scope as _stateless_scope
except ImportError:  # pragma: no cover
    def _stateless_scope() -> Any:
        return None

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


# -- JAX: the training state of a stateless trainer -----------------------------------------
# keras/src/backend/jax/trainer.py (JAXTrainer.fit): the train function is a pure jitted
# function of (trainable, non-trainable, optimizer, metrics) values; during fit the model's
# variables are purged (``_value = None``; reading one then gives its *initializer*'s value)
# and the values live in ``model._jax_state``, written back by ``jax_state_sync()`` only at
# epoch ends, unless a callback calls it; after a sync (``_jax_state_synced = True``) fit
# rereads every variable before the next step, so callback writes reach the training.

#: True while a train step wrapped by :func:`after_train_step` is being traced.
_IN_WRAPPED_STEP: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "keras_tpp_in_wrapped_step", default=False)


def sync_training_state(model: Any) -> None:
    """Write the values of a JAX ``fit`` in progress into the model's variables and make the
    next train step read the variables again (``JAXTrainer.jax_state_sync``).

    Call it in a callback before reading or assigning any model variable during ``fit`` on
    JAX. No-op on other backends, outside ``fit`` or when already synced.

    Args:
        model: the model being trained (``callback.model``).

    Example:
        >>> def on_train_batch_end(self, batch, logs=None):
        ...     sync_training_state(self.model)
        ...     wrapper.strength.assign(0.1)  # reaches the next train step
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None and keras.backend.backend() == "jax":
        sync()


def unmapped_in_stateless_scope(variable: Any) -> bool:
    """Whether ``variable`` is read inside a StatelessScope (JAX) that does not map it: its
    value is then not the training state's (``optimizer.stateless_apply`` maps only the
    trainable and optimizer variables; reading another one gives a stale or purged value
    that jit would bake into the compiled step).

    Args:
        variable: a Keras variable.

    Example:
        >>> if unmapped_in_stateless_scope(keep_mask):  # inside optimizer.stateless_apply
        ...     ...
    """
    scope = _stateless_scope() if keras.backend.backend() == "jax" else None
    return scope is not None and scope.get_current_value(variable) is None


def in_wrapped_train_step() -> bool:
    """Whether the code runs inside a train step wrapped by :func:`after_train_step`.

    Example:
        >>> in_wrapped_train_step()  # False outside fit
        False
    """
    return _IN_WRAPPED_STEP.get()


def after_train_step(model: Any, hook: Callable[[], None]) -> bool:
    """JAX: make ``model``'s train step call ``hook()`` after the optimizer update, in a
    StatelessScope that maps every trainable and non-trainable model variable to its value
    after the update; what ``hook`` assigns to them goes into the new training state.

    Wraps the instance's ``train_step(state, data)`` (``JAXTrainer.train_step``; state =
    (trainable, non-trainable, optimizer, metrics) values, in the order of
    ``model.trainable_variables`` / ``model.non_trainable_variables``) and drops the cached
    train function so that the next ``fit`` (or ``make_train_function(force=True)``) traces
    the wrapped step. Installing another hook replaces the previous one. No-op returning
    False on other backends and when ``hook`` is already installed (equal by ``==``).

    Args:
        model: a Keras model trained with ``fit`` on JAX.
        hook: ``() -> None``, assigns model variables (reads give the post-update state).

    Returns:
        True when the train step was wrapped now.

    Example:
        >>> after_train_step(model, lambda: kernel.assign(kernel.value * mask.value))
        True
    """
    return _wrap_train_step(model, hook, with_optimizer=False)


# -- keras.ops operations in functional graphs ------------------------------------------------


def operation_name(operation: Any) -> str | None:
    """``"numpy.Add"``, ``"nn.Relu6"``...: the submodule of ``keras.src.ops`` and class name
    of a keras.ops operation recorded in a functional graph (Keras 3 records ``x + 3`` or
    ``keras.ops.relu6(x)`` as ``Operation`` nodes, e.g. ``keras.src.ops.numpy.Add``); None for
    anything else (layers, operations defined outside ``keras.src.ops``)."""
    module = type(operation).__module__ or ""
    prefix = "keras.src.ops."
    if not module.startswith(prefix) or isinstance(operation, keras.layers.Layer):
        return None
    return f"{module[len(prefix):]}.{type(operation).__name__}"


def layer_scale_classes() -> tuple[type, ...]:
    """Per-channel scale layers of ``keras.applications`` (ConvNeXt's ``LayerScale``,
    ``keras.src.applications.convnext.LayerScale``: ``x * gamma``, gamma of shape (C,))."""
    try:
        from keras.src.applications.convnext import LayerScale
    except ImportError:  # pragma: no cover - a future Keras layout
        return ()
    return (LayerScale,)


def scaled_sum_classes() -> tuple[type, ...]:
    """Residual sums with a scalar scale of ``keras.applications``: InceptionResNetV2's
    ``CustomScaleLayer`` (``inputs[0] + inputs[1] * scale``,
    ``keras.src.applications.inception_resnet_v2.CustomScaleLayer``)."""
    try:
        from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
    except ImportError:  # pragma: no cover - a future Keras layout
        return ()
    return (CustomScaleLayer,)


# -- sparse training on JAX: state the optimizer update writes ------------------------------


def after_train_step_with_optimizer(model: Any, hook: Callable[[], None]) -> bool:
    """JAX: :func:`after_train_step` whose ``hook`` also sees the optimizer's variables.

    Wraps ``model.train_step`` like :func:`after_train_step` (the same original step, the
    same "inside a wrapped step" flag, so the mask constraints skip themselves inside
    ``optimizer.stateless_apply``), and calls ``hook()`` after the optimizer update in a
    StatelessScope that maps the trainable, non-trainable *and optimizer* variables
    (``model.optimizer.variables``, the third part of ``JAXTrainer`` state) to their values
    after the update; what ``hook`` assigns to any of them goes into the new training
    state. It replaces the hook of :func:`after_train_step` (and vice versa): ``hook`` must
    apply the masks itself. No-op returning False on other backends and when ``hook`` is
    already installed (equal by ``==``).

    Args:
        model: a compiled Keras model trained with ``fit`` on JAX.
        hook: ``() -> None``; reads give the post-update state, assignments are kept.

    Returns:
        True when the train step was wrapped now (the train function must be retraced).

    Example:
        >>> after_train_step_with_optimizer(model, lambda: slot.assign(slot * mask))
        True
    """
    return _wrap_train_step(model, hook, with_optimizer=True)


def _wrap_train_step(model: Any, hook: Callable[[], None], with_optimizer: bool) -> bool:
    """JAX: wrap ``model.train_step`` to run ``hook()`` after the update in a StatelessScope
    mapping the model's trainable and non-trainable variables (and, ``with_optimizer``, the
    optimizer's) to their post-update values; the scope's values become the new state.
    The wrapper replaces any earlier one (the original step is kept once). False when not
    on JAX or when ``hook`` is already installed."""
    if keras.backend.backend() != "jax":
        return False
    if getattr(model, "_keras_tpp_step_hook", None) == hook:
        return False
    original = getattr(model, "_keras_tpp_train_step", None)
    if original is None:
        original = model.train_step
        model._keras_tpp_train_step = original
    count = 3 if with_optimizer else 2  # state = (trainable, non_trainable, optimizer, ...)

    def train_step(state: Any, data: Any) -> Any:
        token = _IN_WRAPPED_STEP.set(True)
        try:
            logs, state = original(state, data)
        finally:
            _IN_WRAPPED_STEP.reset(token)
        values, rest = state[:count], state[count:]
        groups = (model.trainable_variables, model.non_trainable_variables,
                  model.optimizer.variables if with_optimizer else ())[:count]
        mapping = [pair for refs, vals in zip(groups, values) for pair in zip(refs, vals)]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            hook()
        new = [[scope.get_current_value(v) for v in refs] for refs in groups]
        return logs, (*new, *rest)

    model.train_step = train_step
    model._keras_tpp_step_hook = hook
    model.train_function = None
    return True


def add_unsaved_optimizer_variable(optimizer: Any, reference: Any, name: str) -> Any:
    """A zero float32 variable of ``reference``'s shape in the optimizer's state, left out of
    the optimizer's saved state.

    On JAX the optimizer update (``optimizer.stateless_apply``) keeps what it writes only
    to the optimizer's own variables, so a buffer written inside ``update_step`` (sparse
    training's growth gradient) must be one (``BaseOptimizer.add_variable`` on the
    LossScaleOptimizer's inner optimizer, whose variables the outer one lists). It is
    training scratch, not state to resume: the instance's ``save_own_variables`` and
    ``load_own_variables`` are wrapped to skip it, so a model saved during training loads
    its optimizer state into a fresh optimizer (and the reverse).

    Args:
        optimizer: a built Keras optimizer (the compiled one; a LossScaleOptimizer too).
        reference: a variable whose shape the buffer takes.
        name: the buffer's name.

    Returns:
        The new variable.

    Example:
        >>> buffer = add_unsaved_optimizer_variable(model.optimizer, kernel, "grad_conv1")
    """
    inner = base_optimizer(optimizer)
    variable = inner.add_variable(tuple(reference.shape), initializer="zeros",
                                  dtype="float32", name=name)
    remember = getattr(optimizer, "_keras_tpp_unsaved_add", None)
    if remember is None:
        unsaved: set[int] = set()  # ids (a set attribute would be copied by Keras' tracker)
        remember = optimizer._keras_tpp_unsaved_add = unsaved.add

        def saved() -> list:
            return [v for v in optimizer.variables if id(v) not in unsaved]

        def save_own_variables(store: Any) -> None:
            for i, v in enumerate(saved()):
                store[str(i)] = v.numpy()

        def load_own_variables(store: Any) -> None:
            variables = saved()
            if len(store.keys()) != len(variables):  # the original's message and skip
                return load_original(store)
            for i, v in enumerate(variables):
                v.assign(store[str(i)])

        load_original = optimizer.load_own_variables
        optimizer.save_own_variables = save_own_variables
        optimizer.load_own_variables = load_own_variables
    remember(id(variable))
    return variable


def after_variable_updates(optimizer: Any, hook: Any) -> bool:
    """:func:`after_update_step` on every backend: ``hook(index, gradient)`` right after the
    optimizer updates the trainable variable at ``index``, inside the train step.

    On TensorFlow and JAX it is :func:`after_update_step` (the per-variable
    ``update_step``). Keras' PyTorch optimizers (SGD, Adam, RMSprop... of
    ``keras/src/backend/torch/optimizers``) update all variables at once in
    ``_parallel_update_step`` and never call ``update_step``: there the instance's
    ``_backend_update_step(grads, trainable_variables, learning_rate)`` (``BaseOptimizer``'s,
    overridden by ``TorchParallelOptimizer``) is wrapped instead, and ``hook`` runs for
    each variable after it (before the constraints, as on the other backends). A
    LossScaleOptimizer's inner optimizer is the one wrapped, so skipped (non-finite) steps
    never reach the hook. Installing another hook replaces the previous one.

    Args:
        optimizer: a Keras optimizer (built).
        hook: ``(index, gradient) -> None``.

    Returns:
        True when the optimizer did not have this hook (equal by ``==``) before.

    Example:
        >>> after_variable_updates(optimizer, lambda i, g: buffers[i].assign(g))
        True
    """
    if keras.backend.backend() != "torch":
        return after_update_step(optimizer, hook)
    optimizer = base_optimizer(optimizer)
    original = getattr(optimizer, "_keras_tpp_backend_update_step", None)
    if original is None:
        original = optimizer._backend_update_step
        optimizer._keras_tpp_backend_update_step = original
    if getattr(optimizer, "_keras_tpp_hook", None) == hook:
        return False

    def backend_update_step(grads: Any, trainable_variables: Any, learning_rate: Any) -> Any:
        result = original(grads, trainable_variables, learning_rate)
        for gradient, variable in zip(grads, trainable_variables):
            hook(variable_index(optimizer, variable), gradient)
        return result

    optimizer._backend_update_step = backend_update_step
    optimizer._keras_tpp_hook = hook
    return True
