"""Channel dependency graph: groups, coupling, offsets, repeats and unsupported structure."""
import keras
import pytest
from keras import layers

from keras_tpp import models
from keras_tpp.graph import DependencyGraph, UnsupportedModelError


def _names(refs):
    return sorted(r.name for r in refs)


def test_resnet56_groups():
    graph = DependencyGraph(models.cifar_resnet(56))
    conv1 = graph.group_of("stage2_block3_conv1")
    assert conv1.prunable and conv1.size == 32 and conv1.name == "stage2_block3_conv1"
    assert _names(conv1.producers) == ["stage2_block3_conv1"]
    assert _names(conv1.followers) == ["stage2_block3_bn1"]
    assert [(c.ref.name, c.offset, c.repeat) for c in conv1.consumers] == [
        ("stage2_block3_conv2", 0, 1)]
    # The residual stream of a stage is one group: projection + every conv2 (+ stem).
    stage2 = graph.group_of("stage2_block1_proj")
    assert stage2 is graph.group_of("stage2_block9_conv2")
    assert _names(stage2.producers) == sorted(
        ["stage2_block1_proj"] + [f"stage2_block{b}_conv2" for b in range(1, 10)])
    assert graph.group_of("stem_conv") is graph.group_of("stage1_block5_conv2")
    classifier = graph.group_of("classifier")
    assert not classifier.prunable
    assert classifier.reason == "reaches the model output 'classifier'"
    assert graph.group_of("stage1_block1_bn1") is None  # not a producer
    assert len(graph.groups) == 1 + 27 + 2 + 1


def test_keras_resnet50_stages_are_coupled():
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3))
    graph = DependencyGraph(model)
    stage = graph.group_of("conv3_block1_0_conv")
    assert _names(stage.producers) == sorted(
        ["conv3_block1_0_conv"] + [f"conv3_block{b}_3_conv" for b in range(1, 5)])
    assert stage.size == 512 and stage.prunable
    assert "conv3_block2_3_bn" in _names(stage.followers)
    assert "conv4_block1_0_conv" in [c.ref.name for c in stage.consumers]
    inner = graph.group_of("conv4_block2_2_conv")
    assert _names(inner.producers) == ["conv4_block2_2_conv"]
    assert not graph.group_of("predictions").prunable
    assert "predictions" in graph.group_of("predictions").reason


def test_concatenate_offsets_and_shared_batchnorm():
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = layers.Conv2D(6, 1, name="b")(inputs)
    x = layers.Concatenate(name="cat")([a, b])
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Conv2D(5, 3, name="c")(x)
    model = keras.Model(inputs, layers.GlobalAveragePooling2D()(x))
    graph = DependencyGraph(model)
    ga, gb = graph.group_of("a"), graph.group_of("b")
    assert ga is not gb and ga.prunable and gb.prunable
    assert [(c.ref.name, c.offset) for c in ga.consumers] == [("c", 0)]
    assert [(c.ref.name, c.offset) for c in gb.consumers] == [("c", 4)]
    assert [(s.ref.name, s.offset) for s in gb.follower_slots] == [("bn", 4)]
    assert not graph.group_of("c").prunable


def test_flatten_dense_repeat():
    model = models.cifar_vgg(19, head="flatten", width_multiplier=0.125)
    graph = DependencyGraph(model)
    last = graph.group_of("conv16")
    assert [(c.ref.name, c.offset, c.repeat) for c in last.consumers] == [("fc1", 0, 4)]
    assert _names(graph.group_of("fc1").followers) == ["fc1_bn"]
    assert graph.group_of("fc1").prunable


def test_squeeze_excitation_couples_expand_conv():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="body")(inputs)
    x = layers.ReLU()(x)
    s = layers.GlobalAveragePooling2D(name="gap")(x)
    s = layers.Reshape((1, 1, 8), name="se_reshape")(s)
    s = layers.Conv2D(2, 1, activation="relu", name="se_reduce")(s)
    s = layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(s)
    x = layers.Multiply(name="se_mul")([x, s])
    x = layers.Conv2D(4, 1, name="head")(x)
    model = keras.Model(inputs, x)
    graph = DependencyGraph(model)
    body = graph.group_of("body")
    assert body is graph.group_of("se_expand")
    assert _names(body.producers) == ["body", "se_expand"]
    assert _names([c.ref for c in body.consumers]) == ["head", "se_reduce"]
    assert graph.group_of("se_reduce").prunable


def _backbone():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, padding="same", name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    return keras.Model(inputs, x, name="backbone")


def test_nested_backbone_paths():
    inputs = keras.Input((8, 8, 3))
    x = _backbone()(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(3, name="classifier")(x)
    graph = DependencyGraph(keras.Model(inputs, outputs))
    conv1 = graph.group_of("backbone/conv1")
    assert conv1 is graph.group_of("conv1")
    assert conv1.producers[0].path == ("backbone", "conv1")
    assert [c.ref.path for c in conv1.consumers] == [("backbone", "conv2")]
    conv2 = graph.group_of("backbone/conv2")
    assert [c.ref.path for c in conv2.consumers] == [("classifier",)]
    assert conv2.prunable
    with pytest.raises(ValueError, match="no layer named 'backbone/nope'"):
        graph.group_of("backbone/nope")


def test_depthwise_is_a_follower_and_multiplier_blocks():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 1, name="expand")(inputs)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.Conv2D(4, 1, name="project")(x)
    y = layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw2")(x)
    model = keras.Model(inputs, layers.Conv2D(2, 1, name="out")(y))
    graph = DependencyGraph(model)
    assert _names(graph.group_of("expand").followers) == ["dw"]
    assert graph.group_of("expand").prunable
    project = graph.group_of("project")
    assert not project.prunable and "depth_multiplier=2" in project.reason


def test_lambda_raises_or_is_skipped():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.Lambda(lambda t: t * 2.0, name="lam")(x)
    x = layers.Conv2D(4, 3, name="conv2")(x)
    model = keras.Model(inputs, layers.GlobalAveragePooling2D()(x))
    with pytest.raises(UnsupportedModelError, match="'lam'.*Lambda"):
        DependencyGraph(model)
    with pytest.warns(UserWarning, match="'lam'"):
        graph = DependencyGraph(model, on_unsupported="skip")
    group = graph.group_of("conv")
    assert not group.prunable
    assert group.reason == ("passes through Lambda layer 'lam' whose effect on channels is "
                            "unknown")


def test_subclassed_and_channels_first_are_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = layers.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(keras.ops.zeros((1, 8, 8, 3)))
    with pytest.raises(UnsupportedModelError, match="subclassed"):
        DependencyGraph(net)
    inputs = keras.Input((3, 8, 8))
    x = layers.Conv2D(4, 3, data_format="channels_first", name="cf")(inputs)
    with pytest.raises(UnsupportedModelError, match="'cf'.*channels_first"):
        DependencyGraph(keras.Model(inputs, x))


def test_input_coupling_layernorm_and_sequential():
    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(4, 3, padding="same", name="res")(inputs)
    x = layers.Add()([x, inputs])
    y = layers.Conv2D(6, 1, name="pre_ln")(x)
    y = layers.LayerNormalization(name="ln")(y)
    model = keras.Model(inputs, layers.Conv2D(2, 1, name="out")(y))
    graph = DependencyGraph(model)
    assert "model input" in graph.group_of("res").reason
    assert not graph.group_of("pre_ln").prunable
    assert "LayerNormalization 'ln'" in graph.group_of("pre_ln").reason

    seq = keras.Sequential([keras.Input((16,)), layers.Dense(8, name="d1"),
                            layers.ReLU(), layers.Dense(2, name="d2")])
    graph = DependencyGraph(seq)
    assert graph.group_of("d1").prunable
    assert [c.ref.name for c in graph.group_of("d1").consumers] == ["d2"]
    assert not graph.group_of("d2").prunable
