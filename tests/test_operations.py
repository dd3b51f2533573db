"""keras.ops operation nodes, per-channel scale layers and channel LayerNormalization in the
dependency graph and surgery; the coverage report and its warning.

Every exactness check compares the thin model with an independent reference: the original
model with the pruned producers' filters and biases set to zero by hand (plain Keras, no
keras_tpp), or a numpy computation for the renormalized LayerNormalization.
"""
import re
import warnings

import keras
import numpy as np
import pytest
from keras import layers, ops

import keras_tpp
from keras_tpp import keras_internals
from keras_tpp.graph import DependencyGraph, UnsupportedModelError


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def _randomize(model, seed=0):
    """Random non-zero weights everywhere (biases, BN statistics, scales included)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for w in layer.weights:
            v = rng.normal(0.0, 0.5, tuple(w.shape))
            if "variance" in w.path:
                v = np.abs(v) + 0.5
            values.append(v.astype("float32"))
        if values:
            layer.set_weights(values)
    return model


def _zeroed_reference(model, plan):
    """The original model with the planned producers' output filters and biases zeroed
    (kernel's last axis), built with plain Keras."""
    ref = keras.models.clone_model(model)
    ref.set_weights(model.get_weights())
    for name, indices in plan.items():
        layer = ref.get_layer(name)
        kernel = _np(layer.kernel).copy()
        kernel[..., list(indices)] = 0.0
        values = [kernel.astype("float32")]
        if layer.use_bias:
            bias = _np(layer.bias).copy()
            bias[list(indices)] = 0.0
            values.append(bias.astype("float32"))
        layer.set_weights(values)
    return ref


def _assert_exact(thin, reference, x):
    want = _np(reference(x, training=False))
    got = _np(thin(x, training=False))
    assert got.shape == want.shape
    scale = max(np.max(np.abs(want)), 1e-6)
    assert np.max(np.abs(got - want)) <= 1e-5 * scale, np.max(np.abs(got - want)) / scale


def _x(shape=(2, 8, 8, 3), seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _head(x):
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dense(2, name="head")(x)


# ---------------------------------------------------------------------------------------
# elementwise operations with scalars: hard-swish, relu6, add, multiply, divide, clip
# ---------------------------------------------------------------------------------------


def test_scalar_operations_shrink_exactly():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    x = x * ops.relu6(x + 3.0) * (1.0 / 6.0)        # MobileNetV3's hard-swish
    x = ops.hard_silu(x) - 0.5                      # keras.ops.hard_swish, then a shift
    x = ops.clip(x / 2.0, -1.0, 4.0)
    x = layers.Conv2D(5, 1, name="c2")(x)           # 1x1: constants fold into its bias
    x = ops.maximum(ops.gelu(x), -0.1) * 2.0       # zero stays zero: no fold needed
    x = layers.Conv2D(4, 3, padding="same", name="c3")(x)
    model = _randomize(keras.Model(inputs, _head(x)))
    graph = DependencyGraph(model)
    assert graph.group_of("c1").prunable and graph.group_of("c2").prunable
    kinds = {s.ref.name: s.kind for s in graph.steps if s.call is not None}
    assert kinds and set(kinds.values()) <= {"pass", "merge"}
    plan = {"c1": [0, 2], "c2": [1, 3]}
    thin = keras_tpp.shrink(model, plan)
    assert thin.get_layer("c1").filters == 4 and thin.get_layer("c2").filters == 3
    _assert_exact(thin, _zeroed_reference(model, plan), _x())


def test_two_tensor_operations_couple_their_producers():
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(6, 3, padding="same", name="a")(inputs)
    b = layers.Conv2D(6, 1, name="b")(inputs)
    x = ops.add(a, b) * ops.sigmoid(b)              # a residual sum and a gate, as ops
    x = layers.Conv2D(4, 1, name="c")(x)
    model = _randomize(keras.Model(inputs, _head(x)))
    graph = DependencyGraph(model)
    assert graph.group_of("a") is graph.group_of("b")
    plan = {"a": [1, 4]}
    thin = keras_tpp.shrink(model, plan)
    assert thin.get_layer("b").filters == 4
    _assert_exact(thin, _zeroed_reference(model, {"a": [1, 4], "b": [1, 4]}), _x())


def test_per_channel_constants_are_sliced():
    scale = np.linspace(0.5, 1.5, 6).astype("float32")
    offset = np.linspace(-1.0, 1.0, 6).reshape(1, 1, 6).astype("float32")
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    x = x * scale + offset                          # per-channel scale and shift
    x = ops.mean(x, axis=(1, 2), keepdims=True)     # a reduction over positions
    x = layers.Conv2D(4, 1, name="c2")(x)           # sees offset in removed channels: folded
    model = _randomize(keras.Model(inputs, _head(x)))
    graph = DependencyGraph(model)
    group = graph.group_of("c1")
    assert group.prunable
    assert len([f for f in group.followers if f.name.startswith(("multiply", "add"))]) == 2
    plan = {"c1": [0, 3, 5]}
    thin = keras_tpp.shrink(model, plan)
    thin_constants = [np.shape(c) for n in keras_internals.nodes_by_depth(thin).values()
                      for node in n for c in node.arguments.args
                      if isinstance(c, np.ndarray)]
    assert sorted(thin_constants) == [(1, 1, 3), (3,)]
    _assert_exact(thin, _zeroed_reference(model, plan), _x())

    with warnings.catch_warnings(record=True) as caught:   # the prepare path: nothing to report
        warnings.simplefilter("always")
        pmodel = keras_tpp.prepare(model, 0.5, method="l1")
    assert not [w for w in caught if isinstance(w.message, keras_tpp.CoverageWarning)]
    keras_tpp.apply_masks(pmodel)
    masks = keras_tpp.get_masks(pmodel)
    thin = keras_tpp.shrink(pmodel)
    assert thin.get_layer("c1").filters == 3 and thin.get_layer("c2").filters == 2
    reference = _zeroed_reference(model, {k: np.flatnonzero(~m) for k, m in masks.items()})
    _assert_exact(thin, reference, _x())


def test_unknown_operation_is_named_or_reported():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    x = ops.transpose(x, (0, 2, 1, 3))             # not modelled
    x = layers.Conv2D(4, 3, padding="same", name="c2")(x)
    model = keras.Model(inputs, _head(layers.ReLU()(x)))
    (op_name,) = [s.ref.name for s in DependencyGraph(model, on_unsupported="report").steps
                  if s.call is not None]
    with pytest.raises(UnsupportedModelError,
                       match=f"Operation '{op_name}' \\(keras.ops numpy.Transpose\\)"):
        DependencyGraph(model)
    with pytest.raises(UnsupportedModelError, match="numpy.Transpose"):
        keras_tpp.prepare(model, 0.5, on_unsupported="raise")
    with pytest.warns(keras_tpp.CoverageWarning, match=f"'{op_name}'.*numpy.Transpose"):
        pmodel = keras_tpp.prepare(model, 0.5)
    assert set(keras_tpp.get_masks(pmodel)) == {"c2"}
    (left,) = pmodel.coverage_report.left_alone
    assert left.name == "c1" and "numpy.Transpose" in left.reason
    with pytest.raises(ValueError, match="'c1'.*numpy.Transpose"):
        keras_tpp.prepare(model, 0.5, layers="c1")


@pytest.mark.parametrize("op, why", [
    (lambda t: ops.mean(t, axis=-1, keepdims=True), "numpy.Mean.*reduction over the channel"),
    (lambda t: ops.softmax(t), None),
    (lambda t: ops.reshape(t, (-1, 4, 16, 6)), "numpy.Reshape.*not modelled"),
])
def test_operations_that_mix_or_move_channels_are_named(op, why):
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    model = keras.Model(inputs, _head(layers.Conv2D(4, 1, name="c2")(op(x))))
    if why is None:  # followed, but its channels are unprunable (like a Softmax layer)
        group = DependencyGraph(model).group_of("c1")
        assert not group.prunable and "softmax operation" in group.reason
        return
    with pytest.raises(UnsupportedModelError, match=why):
        DependencyGraph(model)
    report = keras_tpp.coverage(model)
    assert not report.groups[0].prunable and report.groups[1].prunable
    assert any(re.search(why, message) for message in report.unsupported)


def test_per_channel_constant_after_flatten_is_unprunable_with_reason():
    inputs = keras.Input((4, 4, 3))
    x = layers.Conv2D(2, 3, name="c1")(inputs)
    x = layers.Flatten()(x)                                 # 2x2 positions x 2 channels
    x = x * np.arange(1, 9, dtype="float32")                # a constant per flat position
    model = keras.Model(inputs, layers.Dense(2, name="head")(x))
    group = DependencyGraph(model).group_of("c1")
    assert not group.prunable
    assert "Flatten/Reshape" in group.reason and "constant cannot be sliced" in group.reason


# ---------------------------------------------------------------------------------------
# per-channel scale layers (ConvNeXt's LayerScale) and depthwise grouped convolutions
# ---------------------------------------------------------------------------------------


def test_layer_scale_and_depthwise_grouped_conv_are_followers():
    (layer_scale,) = keras_internals.layer_scale_classes()
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    x = layers.Conv2D(6, 3, padding="same", groups=6, name="dw")(x)   # ConvNeXt's depthwise
    x = layer_scale(0.5, 6, name="scale")(x)
    x = layers.Conv2D(4, 1, name="c2")(x)
    model = _randomize(keras.Model(inputs, _head(x)))
    group = DependencyGraph(model).group_of("c1")
    assert group.prunable
    assert {f.name for f in group.followers} == {"dw", "scale"}
    plan = {"c1": [1, 2]}
    thin = keras_tpp.shrink(model, plan)
    assert thin.get_layer("scale").projection_dim == 4
    assert thin.get_layer("dw").filters == 4 and thin.get_layer("dw").groups == 4
    np.testing.assert_array_equal(_np(thin.get_layer("scale").gamma),
                                  np.delete(_np(model.get_layer("scale").gamma), [1, 2]))
    _assert_exact(thin, _zeroed_reference(model, plan), _x())


def test_scaled_residual_sum_couples_exactly():
    (scaled_sum,) = keras_internals.scaled_sum_classes()   # InceptionResNetV2's x + r * s
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(6, 3, padding="same", name="a")(inputs)
    b = layers.Conv2D(6, 1, name="b")(inputs)
    b = layers.BatchNormalization(name="bn")(b)            # b's removed channels: beta
    x = scaled_sum(0.17, name="scaled")([a, b])
    x = layers.Conv2D(4, 1, name="c")(x)                   # 1x1: the constant folds
    model = _randomize(keras.Model(inputs, _head(x)))
    graph = DependencyGraph(model)
    assert graph.group_of("a") is graph.group_of("b") and graph.group_of("a").prunable
    thin = keras_tpp.shrink(model, {"b": [0, 5]})
    assert thin.get_layer("a").filters == 4
    _assert_exact(thin, _zeroed_reference(model, {"a": [0, 5], "b": [0, 5]}), _x())


# ---------------------------------------------------------------------------------------
# LayerNormalization over channels: unprunable by default, opt-in renormalization
# ---------------------------------------------------------------------------------------


def _layernorm_model():
    inputs = keras.Input((5,))
    x = layers.Dense(6, activation="relu", name="d0")(inputs)
    x = layers.Dense(8, name="d1")(x)
    x = layers.LayerNormalization(epsilon=1e-3, name="ln")(x)
    return _randomize(keras.Model(inputs, layers.Dense(3, name="d2")(x)))


def test_layernorm_is_unprunable_by_default_with_its_reason():
    model = _layernorm_model()
    group = DependencyGraph(model).group_of("d1")
    assert not group.prunable and "LayerNormalization 'ln'" in group.reason
    assert "allow_renormalization=True" in group.reason
    with pytest.raises(ValueError, match="'d1'.*LayerNormalization 'ln'"):
        keras_tpp.shrink(model, {"d1": [0, 1]})
    with pytest.raises(ValueError, match="'d1'.*LayerNormalization 'ln'"):
        keras_tpp.prepare(model, 0.5, layers="d1")
    with pytest.warns(keras_tpp.CoverageWarning, match="'d1'.*LayerNormalization 'ln'"):
        pmodel = keras_tpp.prepare(model, 0.5)
    assert set(keras_tpp.get_masks(pmodel)) == {"d0"}
    report = pmodel.coverage_report
    rows = {g.name: g for g in report.groups}
    assert (rows["d0"].width, rows["d0"].width_after) == (6, 3)
    assert (rows["d1"].width, rows["d1"].width_after) == (8, 8) and not rows["d1"].prunable
    assert "LayerNormalization 'ln'" in str(report)


def test_layernorm_opt_in_slices_gamma_beta_and_renormalizes():
    model = _layernorm_model()
    with pytest.raises(ValueError, match="allow_renormalization must be True or False"):
        keras_tpp.prepare(model, 0.5, allow_renormalization="yes")
    graph = DependencyGraph(model, allow_renormalization=True)
    assert graph.group_of("d1").prunable
    assert [r.name for r in graph.group_of("d1").renormalized] == ["ln"]
    removed = [0, 5, 6]
    with pytest.warns(keras_tpp.CoverageWarning, match="outputs"):
        thin = keras_tpp.shrink(model, {"d1": removed}, allow_renormalization=True)
    keep = np.setdiff1d(np.arange(8), removed)
    x = _x((4, 5))
    w0, b0 = (_np(v) for v in model.get_layer("d0").weights)
    w1, b1 = (_np(v) for v in model.get_layer("d1").weights)
    gamma, beta = (_np(v) for v in model.get_layer("ln").weights)
    w2, b2 = (_np(v) for v in model.get_layer("d2").weights)
    h = np.maximum(x @ w0 + b0, 0) @ w1[:, keep] + b1[keep]
    mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    want = ((h - mean) / np.sqrt(var + 1e-3) * gamma[keep] + beta[keep]) @ w2[keep] + b2
    np.testing.assert_allclose(_np(thin(x)), want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(_np(thin(x)), _np(model(x)), atol=1e-3)  # outputs do change

    with pytest.warns(keras_tpp.CoverageWarning, match="allow_renormalization=True"):
        pmodel = keras_tpp.prepare(model, 0.5, allow_renormalization=True)
    assert set(keras_tpp.get_masks(pmodel)) == {"d0", "d1"}
    keras_tpp.apply_masks(pmodel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", keras_tpp.CoverageWarning)
        thin = keras_tpp.shrink(pmodel, allow_renormalization=True)
    assert thin.get_layer("d1").units == 4 and tuple(thin.get_layer("ln").gamma.shape) == (4,)


# ---------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------


def test_coverage_report_counts_macs_and_prints_a_table():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = layers.Lambda(lambda t: t * 2.0, name="lam")(x)
    x = layers.Conv2D(6, 1, name="c2")(x)
    model = keras.Model(inputs, _head(layers.ReLU()(x)))
    report = keras_tpp.coverage(model)
    assert [(g.name, g.prunable) for g in report.groups] == [
        ("c1", False), ("c2", True), ("head", False)]
    c1_macs, c2_macs, head_macs = 8 * 8 * 9 * 3 * 4, 8 * 8 * 4 * 6, 6 * 2
    assert report.total_macs == c1_macs + c2_macs + head_macs
    assert report.prunable_macs == c2_macs + head_macs      # c2's filters, head's inputs
    assert report.prunable_macs_fraction == pytest.approx(
        (c2_macs + head_macs) / report.total_macs)
    text = str(report)
    assert "c1" in text and "Lambda layer 'lam'" in text and "%" in text
    assert len(report.unsupported) == 1 and "'lam'" in report.unsupported[0]

    thin = keras_tpp.prune(model, 0.5, exclude="head")
    assert thin.get_layer("c2").filters == 3
    assert [(g.name, g.width_after) for g in thin.coverage_report.groups] == [
        ("c1", 4), ("c2", 3), ("head", 2)]
