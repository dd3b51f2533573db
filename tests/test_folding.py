"""fold_batchnorm: same inference outputs without the folded batch norms."""
import keras
import numpy as np
import pytest

import keras_tpp
from keras_tpp import models


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n),
                               rng.normal(0, 0.3, n), rng.uniform(0.3, 2.0, n)])


def _bn_count(model):
    return sum(isinstance(l, keras.layers.BatchNormalization) for l in model._flatten_layers())


@pytest.mark.parametrize("build", [
    lambda: models.cifar_resnet(8),
    lambda: models.cifar_vgg(11, num_classes=10, head="flatten", width_multiplier=0.125),
    lambda: keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35),
])
def test_fold_batchnorm_is_exact_in_inference(build):
    model = build()
    _randomize_bn(model)
    before = [w.copy() for w in model.get_weights()]
    folded = keras_tpp.fold_batchnorm(model)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert _bn_count(folded) < _bn_count(model)
    x = np.random.default_rng(1).normal(size=(3,) + model.input_shape[1:]).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(folded(x, training=False)), expected,
                               atol=1e-4 * np.abs(expected).max())


def test_bn_after_a_shared_output_is_left_alone():
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    a = keras.layers.BatchNormalization(name="bn")(conv)
    b = keras.layers.ReLU()(conv)  # the conv output also feeds something else
    model = keras.Model(inputs, keras.layers.Add()([a, b]))
    folded = keras_tpp.fold_batchnorm(model)
    assert isinstance(folded.get_layer("bn"), keras.layers.BatchNormalization)
