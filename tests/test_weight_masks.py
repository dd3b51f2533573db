"""Weight-level (unstructured) masks: the second granularity of the one mask concept.

The same PruningWrapper, ChannelMask constraint, callback, .keras saving and tf.distribute
machinery as channel masks, with a mask of each kernel's shape (method "magnitude").
"""
import os

import keras
import numpy as np
import pytest

import keras_tpp
from keras_tpp import models
from keras_tpp.wrappers import find_wrappers

L = keras.layers


def _model():
    model = models.small_cnn(widths=(8, 8, 8), input_shape=(16, 16, 3))
    return model


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 16, 16, 3), np.float32), rng.integers(0, 10, n)


def _kernels(model):
    return {ref.path_str: keras.ops.convert_to_numpy(ref.layer.kernel)
            for ref in keras_tpp.graph.iter_layers(model)
            if keras_tpp.filters.is_producer(ref.layer)}


def test_global_magnitude_masks_match_numpy_and_cover_every_kernel():
    model = _model()
    pmodel = keras_tpp.prepare(model, 0.8, method="magnitude")
    masks = keras_tpp.get_masks(pmodel)
    kernels = _kernels(model)
    assert set(masks) == set(kernels)  # first conv and classifier included
    pooled = np.sort(np.concatenate([np.abs(k).ravel() for k in kernels.values()]))[::-1]
    kept = int(np.floor(0.2 * pooled.size))
    assert sum(int(m.sum()) for m in masks.values()) == kept
    threshold = pooled[kept - 1]
    for path, mask in masks.items():
        assert mask.shape == kernels[path].shape
        np.testing.assert_array_equal(mask, np.abs(kernels[path]) >= threshold)
    per_layer = keras_tpp.get_masks(keras_tpp.prepare(
        model, 0.5, method=keras_tpp.methods.Magnitude(ranking="layer"), exclude="classifier"))
    assert "classifier" not in per_layer
    for path, mask in per_layer.items():
        assert int(mask.sum()) == int(np.floor(0.5 * mask.size))


def test_masked_weights_stay_zero_through_training_saving_and_strip(tmp_path):
    model = _model()
    pmodel = keras_tpp.prepare(model, 0.7, method="magnitude")
    pmodel.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    x, y = _data()
    pmodel.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[keras_tpp.PruningCallback()])
    masks = keras_tpp.get_masks(pmodel)
    for wrapper in find_wrappers(pmodel):
        kernel = wrapper.layer.kernel.numpy()
        mask = masks[wrapper.group]
        assert np.all(kernel[~mask] == 0) and np.any(kernel[mask] != 0)
    path = tmp_path / "sparse_prepared.keras"
    pmodel.save(path)
    loaded = keras.models.load_model(path)
    for key, mask in keras_tpp.get_masks(loaded).items():
        np.testing.assert_array_equal(mask, masks[key])
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[keras_tpp.PruningCallback()])
    sparse = keras_tpp.strip(loaded)
    for path_, kernel in _kernels(sparse).items():
        assert np.all(kernel[~masks[path_]] == 0)
    np.testing.assert_allclose(sparse.predict(x, verbose=0), loaded.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="weight-level .*strip"):
        keras_tpp.shrink(loaded)


@pytest.mark.tf_only(reason="tf.distribute.MirroredStrategy")
def test_weight_masks_agree_across_replicas():
    import tensorflow as tf

    from keras_tpp.distribute import get_strategy

    strategy = get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    x, y = _data(32)
    with strategy.scope():
        pmodel = keras_tpp.prepare(_model(), 0.6, method="magnitude")
        pmodel.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                       "sparse_categorical_crossentropy")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    pmodel.fit(ds, epochs=2, verbose=0, shuffle=False, callbacks=[keras_tpp.PruningCallback()])
    masks = keras_tpp.get_masks(pmodel)
    for wrapper in find_wrappers(pmodel):
        values = strategy.experimental_local_results(wrapper.layer.kernel.value)
        for value in values:
            np.testing.assert_array_equal(np.asarray(value)[~masks[wrapper.group]], 0.0)
        np.testing.assert_allclose(np.asarray(values[0]), np.asarray(values[-1]))


@pytest.mark.not_torch(reason="TFLite export: the converter cannot read torch-backend models")
def test_sparse_export_is_smaller(tmp_path):
    pmodel = keras_tpp.prepare(_model(), 0.9, method="magnitude")
    keras_tpp.apply_masks(pmodel)
    sparse = keras_tpp.strip(pmodel)
    dense = keras_tpp.export(keras_tpp.strip(keras_tpp.prepare(_model(), 0.5, method="l1")),
                             str(tmp_path / "d.tflite"), latency_runs=0)
    small = keras_tpp.export(sparse, str(tmp_path / "s.tflite"), sparse=True, latency_runs=0)
    assert small.size_bytes < dense.size_bytes and small.max_error <= 1e-4


@pytest.mark.parametrize("kwargs,needle", [
    (dict(pruning_ratio={"nomatch*": 0.5}), "matches no selected"),
    (dict(pruning_ratio=0.0), "Nothing to prune"),
    (dict(layers="nomatch*"), "layers pattern"),
    (dict(exclude="nomatch*"), "exclude pattern"),
])
def test_weight_level_bad_inputs(kwargs, needle):
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=needle):
        keras_tpp.prepare(model, **{"pruning_ratio": 0.5, "method": "magnitude", **kwargs})
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    with pytest.raises(ValueError, match="ranking"):
        keras_tpp.methods.Magnitude(ranking="local")
