"""Pruning at initialization through prepare(): SNIP, GraSP, SynFlow, random, both granularities.

The scores themselves are tested in tests/test_scores.py; here: prepare keeps the right
weights or channels for them (against an independent GradientTape computation), the masks
hold during training, the channel variant gives a thin model that trains, and bad input.
"""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference_grad import model_gradients

import keras_tpp
from keras_tpp.prepared import wrappers_by_path

L = keras.layers


def _net(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = L.Conv2D(12, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(5, name="head")(x))


def _data(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32"), rng.integers(0, 5, n)


def _snip_reference(model, x, y) -> dict[str, np.ndarray]:
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    names = ("conv1", "conv2", "head")
    kernels = [model.get_layer(n).kernel for n in names]
    grads = model_gradients(model, kernels, x, lambda out: loss_fn(y, out))
    return {n: np.abs(g * k.numpy()) for n, g, k in zip(names, grads, kernels)}


def test_snip_weight_masks_keep_the_highest_connection_sensitivity():
    x, y = _data()
    model = _net()
    before = [w.copy() for w in model.get_weights()]
    pmodel = keras_tpp.prepare(model, 0.8, method="snip", data=(x, y))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # scoring left the user's model alone
    masks = keras_tpp.get_masks(pmodel)
    scores = _snip_reference(model, x, y)
    pooled = np.sort(np.concatenate([s.ravel() for s in scores.values()]))[::-1]
    keep = math.floor(0.2 * pooled.size + 1e-6)
    assert sum(int(m.sum()) for m in masks.values()) == keep
    threshold = pooled[keep - 1]
    for name, mask in masks.items():
        # Ties at the threshold aside, kept ⇔ score above it (rtol: float differences).
        clear = np.abs(scores[name] - threshold) > 1e-6 * threshold
        np.testing.assert_array_equal(mask[clear], (scores[name] >= threshold)[clear])
    # The masks hold through training (PruningCallback, like "magnitude").
    pmodel.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pmodel.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[keras_tpp.PruningCallback()])
    for name, wrapper in wrappers_by_path(pmodel).items():
        assert np.all(wrapper.layer.kernel.numpy()[~masks[name]] == 0)


@pytest.mark.parametrize("method", ["grasp", "synflow", "random_init"])
def test_other_scores_reach_the_exact_density(method):
    x, y = _data()
    kwargs = {"data": (x, y)} if method == "grasp" else {}
    if method == "synflow":
        kwargs["method"] = keras_tpp.methods.SynFlow(rounds=10)
    pmodel = keras_tpp.prepare(_net(), 0.7, **{"method": method, **kwargs})
    masks = keras_tpp.get_masks(pmodel)
    total = sum(m.size for m in masks.values())
    if method == "random_init":  # the same density in every layer
        for mask in masks.values():
            assert int(mask.sum()) == math.floor(0.3 * mask.size + 1e-6)
    else:
        assert sum(int(m.sum()) for m in masks.values()) == math.floor(0.3 * total + 1e-6)


def test_channel_granularity_gives_a_thin_model_that_trains():
    x, y = _data()
    model = _net()
    pmodel = keras_tpp.prepare(model, 0.5, method="snip", data=(x, y), granularity="channel")
    masks = keras_tpp.get_masks(pmodel)
    assert set(masks) == {"conv1", "conv2"}  # the head's channels are the outputs
    scores = _snip_reference(model, x, y)
    for name, mask in masks.items():
        per_filter = scores[name].reshape(-1, scores[name].shape[-1]).sum(axis=0)
        pruned = np.sort(np.argsort(per_filter, kind="stable")[:math.ceil(0.5 * mask.size)])
        np.testing.assert_array_equal(np.flatnonzero(~mask), pruned)
    keras_tpp.apply_masks(pmodel)
    thin = keras_tpp.shrink(pmodel)
    assert thin.get_layer("conv1").kernel.shape[-1] == 4
    thin.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    history = thin.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_bad_inputs_are_refused_before_anything_changes():
    x, y = _data()
    model = _net()
    before = [w.copy() for w in model.get_weights()]
    for kwargs, needle in [
        (dict(method="snip"), "data="),
        (dict(method="grasp"), "data="),
        (dict(method="tpp", data=(x, y)), "does not use it"),
        (dict(method="tpp", granularity="weight"), "granularity"),
        (dict(method="snip", data=(x, y), granularity="filter"), "granularity"),
        (dict(method="random_init", initial_ratio=0.3), "initial_ratio"),
    ]:
        with pytest.raises(ValueError, match=needle):
            keras_tpp.prepare(model, 0.5, **kwargs)
    with pytest.raises(ValueError, match="temperature"):
        keras_tpp.methods.GraSP(temperature=0.0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_snip_on_a_dataset_equals_snip_on_the_arrays():
    x, y = _data(24)
    model = _net()
    from_arrays = keras_tpp.get_masks(keras_tpp.prepare(model, 0.7, method="snip", data=(x, y)))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    from_dataset = keras_tpp.get_masks(keras_tpp.prepare(model, 0.7, method="snip",
                                                         data=dataset))
    # The same global count; the scores agree up to the float rounding of the batch
    # average, so at most a few near-threshold positions may swap.
    assert sum(int(m.sum()) for m in from_arrays.values()) == sum(
        int(m.sum()) for m in from_dataset.values())
    differing = sum(int((m != from_dataset[n]).sum()) for n, m in from_arrays.items())
    assert differing <= 4, differing
