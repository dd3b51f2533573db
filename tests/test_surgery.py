"""Model surgery: thin models equal masked models; plans, folding, errors, save/export."""
import math
import os

import keras
import numpy as np
import pytest
from keras import layers

from keras_tpp import importance, models, profiling
from keras_tpp.graph import DependencyGraph
from keras_tpp.surgery import make_plan, plan_from_masks, prune, shrink, zero_channels


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _randomize(model, seed=0):
    """Non-trivial BN statistics and biases, so that zeroing and folding matter."""
    rng = np.random.default_rng(seed)
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
            continue
        for var in layer.weights:
            name = var.path.split("/")[-1]
            if name in ("gamma", "moving_variance"):
                var.assign(rng.uniform(0.5, 1.5, var.shape))
            elif name in ("beta", "moving_mean", "bias"):
                var.assign(rng.normal(0.0, 0.3, var.shape))


def _snapshot(model):
    return model.to_json(), [w.copy() for w in model.get_weights()]


def _assert_unchanged(model, snapshot):
    config, weights = snapshot
    assert model.to_json() == config
    after = model.get_weights()
    assert len(after) == len(weights)
    for a, b in zip(after, weights):
        np.testing.assert_array_equal(a, b)


def _inputs(model, batch=2, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch,) + tuple(model.input_shape[1:])).astype("float32")


def _max_rel_diff(a, b):
    a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-12))


def _check_equivalence(model, plan, tol=1e-5):
    """shrink(masked) == masked on random inputs; the user's model is untouched."""
    snapshot = _snapshot(model)
    masked = zero_channels(model, plan)
    thin = shrink(masked, plan)
    _assert_unchanged(model, snapshot)
    x = _inputs(model)
    expected = masked(x, training=False)
    got = thin(x, training=False)
    assert _max_rel_diff(expected, got) <= tol
    assert all(type(l).__module__.startswith("keras.") for l in _leaves(thin))
    assert thin.count_params() < model.count_params()
    return masked, thin


def _leaves(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaves(layer)
        else:
            yield layer


def _all_groups_plan(model, ratio=0.3, seed=0):
    plan = make_plan(model, ratio, method="random", seed=seed)
    assert plan
    return plan


# ---------------------------------------------------------------------------------------
# equivalence on reference architectures
# ---------------------------------------------------------------------------------------


def test_resnet56_first_convs_exact_params_and_macs():
    model = models.cifar_resnet(56)
    _randomize(model)
    plan = make_plan(model, {"*_conv1": 0.5})
    assert len(plan) == 27 and all(k.endswith("_conv1") for k in plan)
    _, thin = _check_equivalence(model, plan)
    # Independent count: conv1 (3x3, no bias) loses k filters, bn1 loses 4k numbers,
    # conv2 loses k input slices; MACs at the block's output resolution.
    d_params = d_macs = 0
    for stage in range(3):
        width, side = 16 * 2**stage, 32 // 2**stage
        for block in range(9):
            c_in = width // 2 if stage and block == 0 else width
            k = math.ceil(0.5 * width)
            d_params += 9 * c_in * k + 4 * k + 9 * k * width
            d_macs += side * side * 9 * (c_in * k + k * width)
    before, after = profiling.profile(model), profiling.profile(thin)
    assert before["params"] - after["params"] == d_params
    assert before["macs"] - after["macs"] == d_macs
    assert thin.get_layer("stage3_block4_conv1").filters == 32
    assert thin.get_layer("stage3_block4_conv2").filters == 64


def test_vgg19_flatten_head():
    model = models.cifar_vgg(19, head="flatten", width_multiplier=0.125)
    _randomize(model)
    # The TPP paper's VGG-19 set: every conv except the first; the classifier's inputs follow.
    plan = make_plan(model, 0.3, layers=[f"conv{i}" for i in range(2, 17)] + ["fc1"])
    assert "conv1" not in plan and "conv16" in plan and "fc1" in plan
    _, thin = _check_equivalence(model, plan)
    kept = 64 - len(plan["conv16"])
    assert thin.get_layer("fc1").kernel.shape[0] == 4 * kept  # 2x2 positions per channel


def test_keras_resnet50_all_groups():
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3),
                                        classifier_activation=None)
    _randomize(model)
    _check_equivalence(model, _all_groups_plan(model))


def test_keras_mobilenetv2_all_groups():
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.5,
                                           classifier_activation=None)
    _randomize(model)
    _check_equivalence(model, _all_groups_plan(model))


@pytest.mark.slow
def test_keras_vgg16_all_groups():
    model = keras.applications.VGG16(weights=None, input_shape=(64, 64, 3),
                                     classifier_activation=None)
    _check_equivalence(model, _all_groups_plan(model))


@pytest.mark.slow
def test_keras_efficientnet_and_densenet_all_groups():
    for build in (keras.applications.EfficientNetB0, keras.applications.DenseNet121):
        model = build(weights=None, input_shape=(64, 64, 3), classifier_activation=None)
        _randomize(model)
        _check_equivalence(model, _all_groups_plan(model))


def _concat_se_model():
    inputs = keras.Input((12, 12, 3))
    a = layers.Conv2D(6, 3, padding="same", name="a")(inputs)
    b = layers.Conv2D(5, 1, name="b")(inputs)
    x = layers.Concatenate(name="cat")([a, b])
    x = layers.BatchNormalization(name="cat_bn")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(8, 3, padding="same", name="body")(x)
    x = layers.BatchNormalization(name="body_bn")(x)
    x = layers.Activation("swish")(x)
    s = layers.GlobalAveragePooling2D(name="gap")(x)
    s = layers.Reshape((1, 1, 8), name="se_reshape")(s)
    s = layers.Conv2D(4, 1, activation="relu", name="se_reduce")(s)
    s = layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(s)
    x = layers.Multiply(name="se_mul")([x, s])
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Conv2D(6, 3, name="tail")(x)
    x = layers.BatchNormalization(name="tail_bn")(x)
    x = layers.ReLU()(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(10, name="fc")(x)
    x = layers.Dropout(0.5)(x)
    return keras.Model(inputs, layers.Dense(3, name="out")(x))


def test_concatenate_squeeze_excitation_flatten():
    model = _concat_se_model()
    _randomize(model)
    plan = {"a": [0, 5], "b": [1], "body": [2, 3, 7], "se_reduce": [0], "tail": [1, 4],
            "fc": [3]}
    _, thin = _check_equivalence(model, plan)
    assert thin.get_layer("se_reshape").target_shape[-1] == 5
    assert thin.get_layer("body").kernel.shape[-2] == 8  # 11 - 3 concatenated inputs
    assert thin.get_layer("se_expand").filters == 5  # coupled with 'body' through Multiply


def test_nested_backbone_with_pruned_inputs():
    backbone_in = keras.Input((8, 8, 6))
    x = layers.Conv2D(8, 3, padding="same", name="conv1")(backbone_in)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    backbone = keras.Model(backbone_in, x, name="backbone")
    inputs = keras.Input((8, 8, 3))
    y = layers.Conv2D(6, 3, padding="same", name="stem")(inputs)
    y = layers.BatchNormalization(name="stem_bn")(y)
    y = layers.ReLU()(y)
    y = backbone(y)
    y = layers.GlobalAveragePooling2D()(y)
    model = keras.Model(inputs, layers.Dense(3, name="classifier")(y))
    _randomize(model)
    plan = {"stem": [0, 3], "backbone/conv1": [1, 2, 5], "conv2": [7]}
    _, thin = _check_equivalence(model, plan)
    inner = thin.get_layer("backbone")
    assert inner.input_shape[-1] == 4 and inner.get_layer("conv1").filters == 5


def test_separable_transpose_and_sequential():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU()(x)
    x = layers.SeparableConv2D(12, 3, padding="same", depth_multiplier=2, name="sep")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2DTranspose(6, 3, strides=2, padding="same", name="up")(x)
    x = layers.BatchNormalization(name="bn3")(x)
    x = layers.PReLU(shared_axes=[1, 2], name="prelu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.Conv2D(4, 1, name="c2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(2, name="out")(x))
    _randomize(model)
    _check_equivalence(model, {"c1": [1, 6], "sep": [0, 5, 11], "up": [2], "c2": [3]})

    seq = keras.Sequential([
        keras.Input((10, 10, 2)), layers.Conv2D(6, 3, name="s1"),
        layers.BatchNormalization(name="sbn"), layers.ReLU(),
        layers.Conv2D(5, 3, name="s2"), layers.Flatten(), layers.Dense(4, name="sd"),
    ], name="seq")
    _randomize(seq)
    _check_equivalence(seq, {"s1": [0, 2], "s2": [4]})


# ---------------------------------------------------------------------------------------
# exactness: folding non-zero constants of removed channels, or refusing
# ---------------------------------------------------------------------------------------


def _zero_producers_only(model, plan):
    """A copy in which only the producers' filters and biases are zero (followers kept)."""
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


def _folding_model(consumer_kernel):
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(6, 3, padding="same", name="a")(inputs)
    x = layers.BatchNormalization(name="a_bn", beta_initializer="ones")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(5, consumer_kernel, padding="same", use_bias=False, name="b")(x)
    g = layers.Conv2D(4, 1, activation="sigmoid", name="gate")(inputs)
    g = layers.Dense(3, name="out_gate")(layers.Flatten()(g))  # sigmoid(0) x 36 positions
    y = layers.Dense(3, name="out")(layers.Flatten()(x))
    return keras.Model(inputs, layers.Add()([y, g]))


def test_constants_are_folded_into_1x1_conv_and_dense():
    model = _folding_model(1)
    plan = {"a": [1, 4], "gate": [0, 3]}
    producers_zeroed = _zero_producers_only(model, plan)
    thin = shrink(producers_zeroed, plan)  # BN beta=1 and sigmoid(0)=0.5 are folded
    x = _inputs(model)
    assert _max_rel_diff(producers_zeroed(x), thin(x)) <= 1e-5
    assert thin.get_layer("b").use_bias  # the 1x1 consumer gained a bias
    masked = zero_channels(model, plan)  # BN zeroed; sigmoid(0) = 0.5 stays and is folded
    assert _max_rel_diff(masked(x), shrink(masked, plan)(x)) <= 1e-5


def test_constants_that_cannot_be_folded_are_refused():
    model = _folding_model(3)
    plan = {"a": [1, 4]}
    producers_zeroed = _zero_producers_only(model, plan)
    snapshot = _snapshot(producers_zeroed)
    with pytest.raises(ValueError, match=r"group 'a'.*'b'.*padding='same'"):
        shrink(producers_zeroed, plan)
    _assert_unchanged(producers_zeroed, snapshot)
    masked = zero_channels(producers_zeroed, plan)  # zeroed followers: exact again
    x = _inputs(model)
    assert _max_rel_diff(masked(x), shrink(masked, plan)(x)) <= 1e-5


# ---------------------------------------------------------------------------------------
# plans, errors, prune
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("plan, message", [
    ({"nope": [0]}, "no layer named 'nope'"),
    ({"stage1_block1_bn1": [0]}, "'stage1_block1_bn1'.*does not produce channels"),
    ({"stage1_block1_conv1": [16]}, "removes channel 16.*'stage1_block1_conv1' has 16"),
    ({"stage1_block1_conv1": range(16)}, "removes all 16 channels of 'stage1_block1_conv1'"),
    ({"classifier": [0]}, "'classifier'.*reaches the model output 'classifier'"),
    ({"stage1_block1_conv2": [0], "stage1_block2_conv2": [1]}, "Conflicting.*coupled"),
    ({"stage1_block1_conv1": [0.5]}, "integer"),
])
def test_invalid_plans_raise_and_leave_model_unchanged(plan, message):
    model = models.cifar_resnet(20)
    snapshot = _snapshot(model)
    for fn in (shrink, zero_channels):
        with pytest.raises(ValueError, match=message):
            fn(model, plan)
    _assert_unchanged(model, snapshot)


def test_coupled_entries_apply_to_the_whole_group():
    model = models.cifar_resnet(20)
    _randomize(model)
    plan = {"stage2_block1_proj": [1, 2], "stage2_block3_conv2": [2, 1]}  # same set
    _, thin = _check_equivalence(model, plan)
    for name in ("stage2_block1_proj", "stage2_block1_conv2", "stage2_block3_conv2"):
        assert thin.get_layer(name).filters == 30
    assert thin.get_layer("stage3_block1_conv1").kernel.shape[-2] == 30


def test_prune_l1_random_and_errors():
    model = models.cifar_resnet(20)
    snapshot = _snapshot(model)
    plan = make_plan(model, {"*_conv1": 0.5})
    graph = DependencyGraph(model)
    for name, indices in plan.items():
        scores = importance.l1_scores(model.get_layer(name))
        expected = importance.lowest(scores, importance.num_pruned(len(scores), 0.5))
        np.testing.assert_array_equal(indices, expected)
    thin = prune(model, {"*_conv1": 0.5})
    assert thin.get_layer("stage1_block1_conv1").filters == 8
    r1 = make_plan(model, 0.3, method="random", seed=3)
    r2 = make_plan(model, 0.3, method="random", seed=3)
    assert r1.keys() == r2.keys() and all(np.array_equal(r1[k], r2[k]) for k in r1)
    assert {g.producers[0].name for g in graph.groups if g.prunable} == set(r1)
    rounded = make_plan(model, {"*_conv1": 0.6}, round_to=8)  # 16 -> keep 8, 64 -> keep 32
    assert len(rounded["stage1_block1_conv1"]) == 8 and len(rounded["stage3_block1_conv1"]) == 32
    order = np.argsort(importance.l1_scores(model.get_layer("stage1_block1_conv1")),
                       kind="stable")
    np.testing.assert_array_equal(rounded["stage1_block1_conv1"], np.sort(order[:8]))
    stage = make_plan(model, 0.5, layers=["stage2_*"])
    assert "stage2_block1_proj" in stage and "stage2_block2_conv1" in stage
    with pytest.raises(ValueError, match="valid methods: l1, random"):
        prune(model, 0.5, method="taylor")
    with pytest.raises(ValueError, match=r"'nothing_\*' matches no producer"):
        prune(model, {"nothing_*": 0.5})
    with pytest.raises(ValueError, match="'classifier' only matches unprunable"):
        prune(model, 0.5, layers=["classifier"])
    with pytest.raises(ValueError, match="pruning ratio"):
        prune(model, 1.0)
    _assert_unchanged(model, snapshot)


def test_plan_from_masks_and_skip_mode():
    masks = {"a": np.array([True, False, True, False]), "b": np.ones(3, bool)}
    plan = plan_from_masks(masks)
    np.testing.assert_array_equal(plan["a"], [1, 3])
    assert plan["b"].size == 0

    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="c1")(inputs)
    x = layers.Lambda(lambda t: t * 2.0, name="lam")(x)
    x = layers.Conv2D(6, 3, name="c2")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(2, 1, name="c3")(x)
    model = keras.Model(inputs, layers.GlobalAveragePooling2D()(x))
    with pytest.warns(UserWarning, match="'lam'"):
        with pytest.raises(ValueError, match="'c1'.*Lambda layer 'lam'"):
            shrink(model, {"c1": [0]}, on_unsupported="skip")
    with pytest.warns(UserWarning, match="'lam'"):
        thin = shrink(model, {"c2": [0, 1]}, on_unsupported="skip")
    assert thin.get_layer("c2").filters == 4


# ---------------------------------------------------------------------------------------
# the thin model is a plain Keras model
# ---------------------------------------------------------------------------------------


def test_thin_model_saves_reloads_and_trains(tmp_path):
    model = models.cifar_resnet(20)
    thin = prune(model, {"*_conv1": 0.5})
    path = os.path.join(tmp_path, "thin.keras")
    thin.save(path)
    reloaded = keras.models.load_model(path)  # no custom objects needed
    x = _inputs(model, batch=4)
    np.testing.assert_allclose(reloaded.predict_on_batch(x), thin.predict_on_batch(x),
                               rtol=1e-5, atol=1e-5)
    reloaded.compile(optimizer=keras.optimizers.SGD(0.01),
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = reloaded.train_on_batch(x, np.array([0, 1, 2, 3]))
    assert np.isfinite(loss)


@pytest.mark.tf_only(reason="TFLite export")
def test_thin_model_exports_smaller(tmp_path):
    import warnings

    import tensorflow as tf

    model = models.cifar_resnet(20)
    thin = prune(model, {"*_conv1": 0.5})
    sizes = {}
    for name, net in (("original", model), ("thin", thin)):
        export_dir = os.path.join(tmp_path, name)
        net.export(export_dir)
        converter = tf.lite.TFLiteConverter.from_saved_model(export_dir)
        flat = converter.convert()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            interpreter = tf.lite.Interpreter(model_content=flat)
        interpreter.allocate_tensors()
        sizes[name] = (sum(os.path.getsize(os.path.join(root, f))
                           for root, _, files in os.walk(export_dir) for f in files),
                       len(flat))
    assert sizes["thin"][0] < sizes["original"][0]
    assert sizes["thin"][1] < 0.7 * sizes["original"][1]


def test_shrink_prepared_model():
    import keras_tpp as prep

    model = models.cifar_resnet(20)
    _randomize(model)
    pmodel = prep.prepare(model, {"*_conv1": 0.5}, method="l1")
    with pytest.raises(ValueError, match="apply_masks"):
        shrink(pmodel)  # the pruned channels are not zero yet: removing them changes outputs
    prep.apply_masks(pmodel)
    snapshot = _snapshot(pmodel)
    thin = shrink(pmodel)  # plan from the masks; no keras_tpp object left
    _assert_unchanged(pmodel, snapshot)
    x = _inputs(model)
    assert _max_rel_diff(pmodel(x, training=False), thin(x, training=False)) <= 1e-5
    assert thin.get_layer("stage2_block2_conv1").filters == 16
    assert all(type(l).__module__.startswith("keras.") for l in _leaves(thin))
