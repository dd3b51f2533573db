"""Surgery on long concatenation chains (DenseNet-like), where per-layer work is read once
per layer rather than once per concatenated segment; and the graph's name index."""
import keras
import numpy as np
import pytest
from keras import layers

from keras_tpp.graph import DependencyGraph
from keras_tpp.surgery import shrink, zero_channels


def _dense_block(x, name, convs, growth):
    for i in range(convs):
        y = layers.BatchNormalization(name=f"{name}_{i}_bn1")(x)
        y = layers.ReLU(name=f"{name}_{i}_relu1")(y)
        y = layers.Conv2D(8, 1, name=f"{name}_{i}_conv1")(y)  # 1x1: constants fold
        y = layers.BatchNormalization(name=f"{name}_{i}_bn2")(y)
        y = layers.Activation("swish", name=f"{name}_{i}_act2")(y)
        y = layers.Conv2D(growth, 3, padding="same", name=f"{name}_{i}_conv2")(y)
        x = layers.Concatenate(name=f"{name}_{i}_cat")([x, y])
    return x


def _densenet_like():
    """Two dense blocks (each BN sees one segment per earlier concatenation), a transition,
    then PReLU and a 'valid' depthwise conv over the last concatenation."""
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", name="stem")(inputs)
    x = _dense_block(x, "b1", 4, 4)
    x = layers.BatchNormalization(name="t_bn")(x)
    x = layers.ReLU(name="t_relu")(x)
    x = layers.Conv2D(10, 1, name="t_conv")(x)
    x = layers.AveragePooling2D(2, name="t_pool")(x)
    x = _dense_block(x, "b2", 3, 5)
    x = layers.BatchNormalization(name="final_bn")(x)
    x = layers.PReLU(shared_axes=[1, 2], name="final_prelu")(x)
    x = layers.DepthwiseConv2D(3, padding="valid", name="final_dw")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(3, name="head")(x))


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for var in layer.weights:
            name = var.path.split("/")[-1]
            if name in ("gamma", "moving_variance"):
                var.assign(rng.uniform(0.5, 1.5, var.shape))
            elif name in ("beta", "moving_mean", "bias", "alpha"):
                var.assign(rng.normal(0.0, 0.3, var.shape))


def _plan():
    # Different removed counts per segment (several distinct constant vectors behind each
    # concatenation) and equal ones (the same vector in several segments).
    plan = {"stem": [0, 5], "t_conv": [1, 2, 9]}
    for i in range(4):
        plan[f"b1_{i}_conv2"] = [i % 4] if i % 2 else [0, 3]
        plan[f"b1_{i}_conv1"] = [7]
    for i in range(3):
        plan[f"b2_{i}_conv2"] = [1, 4]
    return plan


def _zero_producers_only(model, plan):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name, idx in plan.items():
        layer = copy.get_layer(name)
        kernel = keras.ops.convert_to_numpy(layer.kernel).copy()
        kernel[..., idx] = 0
        layer.kernel.assign(kernel)
        if layer.use_bias:
            bias = keras.ops.convert_to_numpy(layer.bias).copy()
            bias[idx] = 0
            layer.bias.assign(bias)
    return copy


def _rel_diff(a, b):
    a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-12))


@pytest.fixture(scope="module")
def model():
    model = _densenet_like()
    _randomize(model)
    return model


def test_concatenation_chain_thin_equals_masked(model):
    plan = _plan()
    masked = zero_channels(model, plan)
    thin = shrink(masked, plan)
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    assert _rel_diff(masked(x, training=False), thin(x, training=False)) <= 1e-5
    # final_bn saw 6 + 4*4 + ... channels; the plan's channels are gone from every segment.
    removed = sum(len(v) for k, v in plan.items() if k.startswith("b2_")) + 3
    assert thin.get_layer("final_bn").gamma.shape[0] == (
        model.get_layer("final_bn").gamma.shape[0] - removed)
    assert thin.count_params() < model.count_params()


def test_concatenation_chain_constants_fold_per_segment(model):
    """Producers zeroed only: BN β/statistics, swish(0) and PReLU turn the removed channels
    into per-channel constants that are folded into the 1x1 convs, the transition and the
    head, segment by segment."""
    # (not the bottlenecks: their constants reach a 3x3 'same' conv, which cannot fold them)
    plan = {k: v for k, v in _plan().items() if not k.endswith("_conv1")}
    reference = _zero_producers_only(model, plan)
    thin = shrink(reference, plan)
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype("float32")
    assert _rel_diff(reference(x, training=False), thin(x, training=False)) <= 1e-5
    assert thin.get_layer("b1_3_conv1").use_bias
    assert np.any(keras.ops.convert_to_numpy(thin.get_layer("b1_3_conv1").bias)
                  != keras.ops.convert_to_numpy(reference.get_layer("b1_3_conv1").bias))
    assert thin.get_layer("t_conv").kernel.shape[-2] < model.get_layer("t_conv").kernel.shape[-2]


def test_find_by_object_path_name_and_errors():
    inner_in = keras.Input((4, 4, 3))
    inner = keras.Model(inner_in, layers.Conv2D(4, 1, name="conv")(inner_in), name="inner")
    other_in = keras.Input((4, 4, 4))
    other = keras.Model(other_in, layers.Conv2D(4, 1, name="dup")(other_in), name="other")
    other2_in = keras.Input((4, 4, 4))
    other2 = keras.Model(other2_in, layers.Conv2D(4, 1, name="dup")(other2_in), name="other2")
    inputs = keras.Input((4, 4, 3))
    conv = layers.Conv2D(3, 1, name="conv")
    x = other2(other(inner(conv(inputs))))
    outer = keras.Model(inputs, layers.Dense(2, name="out")(x))
    graph = DependencyGraph(outer)
    assert graph.find("conv").layer is conv  # the top-level path wins over a nested name
    assert graph.find(conv).path == ("conv",)
    assert graph.find("inner/conv").layer is inner.get_layer("conv")
    assert graph.find(("other", "dup")).layer is other.get_layer("dup")
    assert graph.find(graph.find("other2/dup")).layer is other2.get_layer("dup")
    assert graph.find(inner.get_layer("conv")).path == ("inner", "conv")
    with pytest.raises(ValueError, match="ambiguous"):
        graph.find("dup")
    with pytest.raises(ValueError, match="has no layer named"):
        graph.find("missing")
    with pytest.raises(ValueError, match="not part of model"):
        graph.find(layers.Dense(1, name="stranger"))
    assert graph.group_of("inner/conv") is not None
