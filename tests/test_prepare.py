"""prepare / get_masks / apply_masks / strip and the penalties a prepared model carries."""
import os

import keras
import numpy as np
import pytest

import keras_tpp
from keras_tpp import models
from keras_tpp.wrappers import PruningWrapper, find_wrappers


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def _assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def _perturb_bn(model, seed=0):
    """Give batch norms non-trivial statistics so that equivalence tests mean something."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n),
                               rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)])


def _np_filter_matrix(kernel):
    return np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)


def test_prepare_returns_new_model_with_l1_smallest_masks():
    model = models.small_cnn(widths=(8, 12, 16))
    _perturb_bn(model)
    before = _weights(model)
    pmodel = keras_tpp.prepare(model, pruning_ratio=0.5, method="tpp")
    _assert_same_weights(before, _weights(model))
    assert not find_wrappers(model)
    wrapped = {w.name for w in find_wrappers(pmodel)}
    # Every conv and its batch norm is wrapped; the classifier head is excluded.
    assert wrapped == {"conv1", "conv2", "conv3", "bn1", "bn2", "bn3"}
    masks = keras_tpp.get_masks(pmodel)
    assert set(masks) == {"conv1", "conv2", "conv3"}
    for name, mask in masks.items():
        kernel = model.get_layer(name).kernel.numpy()
        l1 = np.abs(_np_filter_matrix(kernel)).mean(axis=1)
        n = kernel.shape[-1]
        pruned = np.sort(np.argsort(l1)[: int(np.ceil(0.5 * n))])
        np.testing.assert_array_equal(np.flatnonzero(~mask), pruned)
    bn_masks = keras_tpp.get_masks(pmodel, include_norms=True)
    np.testing.assert_array_equal(bn_masks["bn2"], masks["conv2"])
    # Wrapping does not change the function.
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(pmodel.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_penalties_in_model_losses_match_numpy():
    model = models.small_cnn(widths=(6, 10))
    _perturb_bn(model, 1)
    pmodel = keras_tpp.prepare(model, pruning_ratio=0.4, method="tpp", gram_coefficient=1000.0)
    lam = 0.03
    for w in find_wrappers(pmodel):
        w.strength.assign(lam)
    expected = 0.0
    for name in ("conv1", "conv2"):
        layer = pmodel.get_layer(name).layer
        mask = keras_tpp.get_masks(pmodel)[name].astype(float)
        w = _np_filter_matrix(layer.kernel.numpy().astype("float64"))
        n = w.shape[0]
        gram = w @ w.T
        expected += 1000.0 * lam * ((gram * (1 - np.outer(mask, mask))) ** 2).sum() / n**2
        expected += lam / 2 * ((w[mask == 0] ** 2).sum() + (layer.bias.numpy()[mask == 0] ** 2).sum())
        bn = pmodel.get_layer(name.replace("conv", "bn")).layer
        expected += lam / 2 * ((bn.gamma.numpy()[mask == 0] ** 2).sum()
                               + (bn.beta.numpy()[mask == 0] ** 2).sum())
    total = float(sum(keras.ops.convert_to_numpy(v) for v in pmodel.losses))
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    # λ = 0: no penalty at all.
    for w in find_wrappers(pmodel):
        w.strength.assign(0.0)
    assert float(sum(keras.ops.convert_to_numpy(v) for v in pmodel.losses)) == 0.0


def test_existing_regularizer_and_constraint_are_kept():
    inputs = keras.Input((8,))
    x = keras.layers.Dense(6, kernel_regularizer=keras.regularizers.L2(0.5),
                           kernel_constraint=keras.constraints.NonNeg(), name="d1")(inputs)
    outputs = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs)
    pmodel = keras_tpp.prepare(model, 0.5)
    kernel = pmodel.get_layer("d1").layer.kernel
    l2 = 0.5 * float(np.sum(kernel.numpy() ** 2))
    total = float(sum(keras.ops.convert_to_numpy(v) for v in pmodel.losses))
    np.testing.assert_allclose(total, l2, rtol=1e-6)  # λ = 0: only the user's L2 is left
    assert float(np.min(keras.ops.convert_to_numpy(
        kernel.constraint(-np.ones(kernel.shape, "float32"))))) == 0.0


def test_apply_masks_and_strip():
    model = models.small_cnn(widths=(8, 12))
    _perturb_bn(model, 2)
    pmodel = keras_tpp.prepare(model, {"conv1": 0.25, "conv2": 0.5})
    keras_tpp.apply_masks(pmodel)
    masks = keras_tpp.get_masks(pmodel)
    for name, mask in masks.items():
        layer = pmodel.get_layer(name).layer
        assert np.all(layer.kernel.numpy()[..., ~mask] == 0)
        assert np.all(layer.bias.numpy()[~mask] == 0)
        assert np.all(layer.kernel.numpy()[..., mask] != 0)
        bn = pmodel.get_layer(name.replace("conv", "bn")).layer
        assert np.all(bn.gamma.numpy()[~mask] == 0) and np.all(bn.beta.numpy()[~mask] == 0)
    plain = keras_tpp.strip(pmodel)
    assert not find_wrappers(plain)
    assert "keras_tpp" not in str(plain.get_config())
    x = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(plain.predict(x, verbose=0), pmodel.predict(x, verbose=0))
    # Pruned channels are exactly zero after the batch norm, in inference mode.
    feature = keras.Model(plain.inputs, plain.get_layer("relu2").output)
    assert np.all(feature.predict(x, verbose=0)[..., ~masks["conv2"]] == 0)


def test_layers_patterns_and_ratio_mapping():
    model = models.cifar_resnet(depth=8)
    pmodel = keras_tpp.prepare(model, 0.5, layers="*_conv1")
    names = {w.name for w in find_wrappers(pmodel)}
    assert names == {"stage1_block1_conv1", "stage2_block1_conv1", "stage3_block1_conv1",
                     "stage1_block1_bn1", "stage2_block1_bn1", "stage3_block1_bn1"}
    pmodel = keras_tpp.prepare(model, {"stage1_*_conv1": 0.25, "stage3_*_conv1": 0.5})
    masks = keras_tpp.get_masks(pmodel)
    assert set(masks) == {"stage1_block1_conv1", "stage3_block1_conv1"}
    assert (~masks["stage1_block1_conv1"]).sum() == 4 and (~masks["stage3_block1_conv1"]).sum() == 32


def test_coupled_residual_layers_share_one_mask():
    model = models.cifar_resnet(depth=8)
    pmodel = keras_tpp.prepare(model, 0.5, layers=["stage2_block1_conv2"])
    masks = keras_tpp.get_masks(pmodel)
    # conv2 of the block, the projection and everything added to them share the channels.
    assert {"stage2_block1_conv2", "stage2_block1_proj"} <= set(masks)
    np.testing.assert_array_equal(masks["stage2_block1_conv2"], masks["stage2_block1_proj"])
    assert (~masks["stage2_block1_proj"]).sum() == 16


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "a", float("nan")])
def test_bad_ratio(ratio):
    model = models.small_cnn(widths=(4, 4))
    before = _weights(model)
    with pytest.raises(ValueError, match="ratio"):
        keras_tpp.prepare(model, ratio)
    _assert_same_weights(before, _weights(model))


def test_pattern_matching_nothing_lists_prunable_layers():
    model = models.small_cnn(widths=(4, 4))
    with pytest.raises(ValueError, match=r"matches no producer layer.*conv1, conv2"):
        keras_tpp.prepare(model, 0.5, layers="block*")
    with pytest.raises(ValueError, match=r"'classifier'.*output"):
        keras_tpp.prepare(model, {"classifier": 0.5})


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="'tpp'.*'greg1'"):
        keras_tpp.prepare(models.small_cnn(widths=(4,)), 0.5, method="magic")


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed"):
        keras_tpp.prepare(net, 0.5)


def test_lambda_layer_is_named_and_skip_option():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="times_two")(x)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    before = _weights(model)
    with pytest.raises(ValueError, match="times_two"):
        keras_tpp.prepare(model, 0.5, on_unsupported="raise")
    _assert_same_weights(before, _weights(model))
    with pytest.warns(UserWarning, match="times_two"):
        pmodel = keras_tpp.prepare(model, 0.5, on_unsupported="skip")
    assert set(keras_tpp.get_masks(pmodel)) == {"c2"}
    # By default (issue 12) prepare prunes what it can and reports the rest in one warning.
    with pytest.warns(keras_tpp.CoverageWarning, match="'c1'.*Lambda layer 'times_two'"):
        pmodel = keras_tpp.prepare(model, 0.5)
    assert set(keras_tpp.get_masks(pmodel)) == {"c2"}
    assert [g.name for g in pmodel.coverage_report.left_alone] == ["c1"]


def test_prepared_model_required():
    model = models.small_cnn(widths=(4,))
    for fn in (keras_tpp.get_masks, keras_tpp.apply_masks, keras_tpp.strip):
        with pytest.raises(ValueError, match="prepare"):
            fn(model)
    pmodel = keras_tpp.prepare(model, 0.5)
    with pytest.raises(ValueError, match="already prepared"):
        keras_tpp.prepare(pmodel, 0.5)


def test_keras_round_trip_keeps_state(tmp_path):
    model = models.small_cnn(widths=(6, 8))
    pmodel = keras_tpp.prepare(model, 0.5)
    pmodel.compile(keras.optimizers.SGD(1e-3, momentum=0.9), "mse")
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    pmodel.fit(x, np.zeros((2, 10), "float32"), verbose=0)  # builds the optimizer
    for w in find_wrappers(pmodel):
        w.strength.assign(0.125)
    keras_tpp.apply_masks(pmodel)
    pmodel.optimizer.iterations.assign(77)
    path = os.path.join(tmp_path, "p.keras")
    pmodel.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.iterations.numpy() == 77
    for a, b in zip(find_wrappers(pmodel), find_wrappers(loaded)):
        assert isinstance(b, PruningWrapper) and a.name == b.name
        np.testing.assert_array_equal(a.keep_mask.numpy(), b.keep_mask.numpy())
        assert float(b.strength.numpy()) == 0.125 and float(b.enforce.numpy()) == 1.0
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pmodel.predict(x, verbose=0),
                               rtol=1e-6)
    np.testing.assert_allclose(sum(keras.ops.convert_to_numpy(v) for v in loaded.losses),
                               sum(keras.ops.convert_to_numpy(v) for v in pmodel.losses),
                               rtol=1e-6)


def test_batch_norm_behind_a_concatenate_gets_both_groups_masks():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(6, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(inputs)
    x = keras.layers.Concatenate(name="cat")([a, b])
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 1, name="c")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    _perturb_bn(model, 3)
    pmodel = keras_tpp.prepare(model, {"a": 0.5, "b": 0.5})
    masks = keras_tpp.get_masks(pmodel, include_norms=True)
    np.testing.assert_array_equal(masks["bn"], np.concatenate([masks["a"], masks["b"]]))
    assert (~masks["bn"]).sum() == 5
    keras_tpp.apply_masks(pmodel)
    thin = keras_tpp.shrink(pmodel)
    assert thin.get_layer("bn").gamma.shape[0] == 5
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(thin(x, training=False)),
                               keras.ops.convert_to_numpy(pmodel(x, training=False)),
                               rtol=1e-5, atol=1e-6)
