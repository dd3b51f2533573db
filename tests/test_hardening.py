"""Regression tests for silent wrong answers at the API boundary (issue: hardening).

Each test fails on the code before the fix: duplicate layer names in nested models, boolean
keep-masks given as plans, patterns that match nothing, nothing to prune, badly typed or
non-finite numbers, seeds that pick differently in prepare and make_plan, compiled models
handed back, and surgery on diverged (NaN) weights.
"""
import zipfile

import keras
import numpy as np
import pytest

import keras_tpp
from keras_tpp import models

L = keras.layers


def _block(x, name, width):
    x = L.Conv2D(width, 3, padding="same", name=name)(x)
    x = L.BatchNormalization(name=name + "_bn")(x)
    return L.ReLU()(x)


def _nested_duplicates() -> keras.Model:
    """Three layers named 'conv' at depths 0, 1 and 2 (top, backbone, backbone/inner)."""
    inner_in = keras.Input((8, 8, 6))
    inner = keras.Model(inner_in, _block(inner_in, "conv", 5), name="inner")
    back_in = keras.Input((8, 8, 3))
    y = _block(back_in, "conv", 6)
    y = inner(y)
    y = L.Conv2D(7, 1, name="proj")(y)
    backbone = keras.Model(back_in, y, name="backbone")
    inp = keras.Input((8, 8, 3))
    x = backbone(inp)
    x = _block(x, "conv", 8)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(3, name="head")(x), name="dupes")
    rng = np.random.default_rng(0)
    for layer in [*model.layers, *backbone.layers, *inner.layers]:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n),
                               rng.normal(0, 0.2, n), rng.uniform(0.5, 1.5, n)])
    return model


def _input(shape=(8, 8, 3), n=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def _layer(model, path):
    layer = model
    for name in path.split("/"):
        layer = layer.get_layer(name)
    return layer


def _snapshot(model):
    return [w.copy() for w in model.get_weights()]


def _unchanged(model, before):
    after = model.get_weights()
    return len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(after, before))


# -- duplicate names in nested models ----------------------------------------------------------


@pytest.mark.parametrize("method", ["l1", "greg2"])
def test_nested_duplicate_names_get_their_own_masks_and_widths(method):
    model = _nested_duplicates()
    pmodel = keras_tpp.prepare(model, 0.4, method=method)
    masks = keras_tpp.get_masks(pmodel)
    assert {"conv", "backbone/conv", "backbone/inner/conv", "backbone/proj"} <= set(masks)
    # Each wrapper carries its own group (GReg-2 picks per group).
    groups = {w.group for w in keras_tpp.wrappers.find_wrappers(pmodel) if w.is_producer}
    assert len(groups) == len([k for k in masks])
    if method == "greg2":  # pick now: every group loses its own channels
        for wrapper in keras_tpp.wrappers.find_wrappers(pmodel):
            n = wrapper.num_channels
            mask = np.ones(n, dtype="float32")
            mask[: wrapper.num_pruned] = 0
            wrapper.keep_mask.assign(mask)
        masks = keras_tpp.get_masks(pmodel)
    else:  # L1 on each layer's own weights
        for path, mask in masks.items():
            kernel = keras.ops.convert_to_numpy(_layer(model, path).kernel)
            l1 = np.abs(kernel.reshape(-1, kernel.shape[-1])).mean(axis=0)
            expected = np.sort(np.argsort(l1, kind="stable")[: int(np.ceil(0.4 * len(l1)))])
            np.testing.assert_array_equal(np.flatnonzero(~mask), expected, err_msg=path)
    keras_tpp.apply_masks(pmodel)
    thin = keras_tpp.shrink(pmodel)
    for path, mask in masks.items():
        assert _layer(thin, path).filters == int(mask.sum()), path
    x = _input()
    np.testing.assert_allclose(thin.predict(x, verbose=0), pmodel.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_plan_on_a_nested_path_touches_only_that_layer():
    model = _nested_duplicates()
    thin = keras_tpp.shrink(model, {"backbone/inner/conv": [0, 2]})
    assert _layer(thin, "backbone/inner/conv").filters == 3
    assert _layer(thin, "backbone/conv").filters == 6
    assert _layer(thin, "conv").filters == 8
    masked = keras_tpp.zero_channels(model, {"backbone/inner/conv": [0, 2]})
    x = _input()
    np.testing.assert_allclose(thin.predict(x, verbose=0), masked.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
    # "conv" is the top-level layer's path: the nested 'conv' layers are left alone.
    top = keras_tpp.shrink(model, {"conv": [0]})
    assert [_layer(top, p).filters for p in ("conv", "backbone/conv", "backbone/inner/conv")] \
        == [7, 6, 5]


def test_make_plan_keys_are_paths_and_orthp_takes_paths():
    model = _nested_duplicates()
    plan = keras_tpp.make_plan(model, 0.5)
    assert {"conv", "backbone/conv", "backbone/inner/conv"} <= set(plan)
    inp = keras.Input((4,))
    twin = keras.Model(inp, keras.Sequential([L.Dense(4, name="d")], name="a")(inp))
    twin = keras.Model(inp, keras.Sequential([L.Dense(4, name="d")], name="b")(twin.output))
    with pytest.raises(ValueError, match="ambiguous"):
        keras_tpp.orthp(twin, layers=["d"])
    ortho = keras_tpp.orthp(model, layers=["backbone/inner/conv"])
    kernel = keras.ops.convert_to_numpy(_layer(ortho, "backbone/inner/conv").kernel)
    matrix = kernel.reshape(-1, kernel.shape[-1])
    np.testing.assert_allclose(matrix.T @ matrix, np.eye(matrix.shape[1]), atol=1e-5)
    np.testing.assert_array_equal(_layer(ortho, "conv").kernel, _layer(model, "conv").kernel)


# -- boolean keep-masks as plans ------------------------------------------------------------------


def test_boolean_keep_mask_plan_removes_the_false_channels():
    model = models.small_cnn(widths=(8, 8, 8))
    keep = np.array([True, False] * 4)
    by_mask = keras_tpp.shrink(model, {"conv1": keep})
    by_index = keras_tpp.shrink(model, {"conv1": np.flatnonzero(~keep)})
    assert by_mask.get_layer("conv1").filters == 4
    np.testing.assert_array_equal(by_mask.get_layer("conv1").kernel,
                                  model.get_layer("conv1").kernel.numpy()[..., keep])
    x = _input((32, 32, 3))
    np.testing.assert_allclose(by_mask.predict(x, verbose=0), by_index.predict(x, verbose=0))
    with pytest.raises(ValueError, match="keep-mask of shape"):
        keras_tpp.shrink(model, {"conv1": np.array([True, False])})


def test_get_masks_round_trips_through_shrink():
    model = models.small_cnn(widths=(8, 8, 8))
    pmodel = keras_tpp.prepare(model, 0.5, method="l1")
    keras_tpp.apply_masks(pmodel)
    plain = keras_tpp.strip(pmodel)
    thin = keras_tpp.shrink(plain, keras_tpp.get_masks(pmodel))
    x = _input((32, 32, 3))
    np.testing.assert_allclose(thin.predict(x, verbose=0), plain.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


# -- one selection path ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7, 2**20])
def test_random_method_picks_the_same_channels_in_prepare_and_make_plan(seed):
    model = models.small_cnn(widths=(8, 12, 16))
    plan = keras_tpp.make_plan(model, 0.5, method="random", seed=seed)
    masks = keras_tpp.get_masks(keras_tpp.prepare(model, 0.5, method="random", seed=seed))
    assert set(plan) == set(masks)
    for path, mask in masks.items():
        np.testing.assert_array_equal(plan[path], np.flatnonzero(~mask))


# -- nothing to prune ------------------------------------------------------------------------------


def test_prepare_raises_when_nothing_is_prunable():
    model = models.small_cnn(widths=(8, 8, 8))
    with pytest.raises(ValueError, match="Nothing to prune.*ratio is 0"):
        keras_tpp.prepare(model, 0.0)
    inp = keras.Input((4,))
    head_only = keras.Model(inp, L.Dense(3, name="head")(inp))
    with pytest.raises(ValueError, match="Nothing to prune.*reaches the model output"):
        keras_tpp.prepare(head_only, 0.5)
    with pytest.raises(ValueError, match="Nothing to prune"):
        keras_tpp.prune(model, 0.0)


# -- bad inputs: a clear error naming the argument, the model untouched ------------------------------

NAN, INF = float("nan"), float("inf")
BAD_PREPARE = [
    (dict(gram_coefficient=NAN), "gram_coefficient"),
    (dict(gram_coefficient=INF), "gram_coefficient"),
    (dict(gram_coefficient=-1.0), "gram_coefficient"),
    (dict(gram_coefficient=True), "gram_coefficient"),
    (dict(gram_coefficient="1000"), "gram_coefficient"),
    (dict(seed="abc"), "seed"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(seed=True), "seed"),
    (dict(layers=5), "layers"),
    (dict(layers=[]), "layers"),
    (dict(layers=["conv1", 3]), "layers"),
    (dict(layers="nomatch*"), "layers pattern"),
    (dict(exclude="nomatch*"), "exclude pattern"),
    (dict(exclude=7), "exclude"),
    (dict(pruning_ratio=NAN), "pruning ratio"),
    (dict(pruning_ratio=INF), "pruning ratio"),
    (dict(pruning_ratio=1.0), "pruning ratio"),
    (dict(pruning_ratio=-0.1), "pruning ratio"),
    (dict(pruning_ratio=True), "pruning ratio"),
    (dict(pruning_ratio="0.5"), "pruning ratio"),
    (dict(pruning_ratio=None), "pruning ratio"),
    (dict(pruning_ratio={}), "pruning_ratio"),
    (dict(pruning_ratio={"conv1": NAN}), "pruning ratio"),
    (dict(pruning_ratio={"nomatch": 0.5}), "pruning_ratio pattern"),
    (dict(method="tpp2"), "method"),
    (dict(method=None), "method"),
    (dict(on_unsupported="ignore"), "on_unsupported"),
]


@pytest.mark.parametrize("kwargs,needle", BAD_PREPARE, ids=[repr(k) for k, _ in BAD_PREPARE])
def test_prepare_rejects_bad_arguments_and_leaves_the_model_alone(kwargs, needle):
    model = models.small_cnn(widths=(4, 4, 4))
    before = _snapshot(model)
    args = {"pruning_ratio": 0.5, **kwargs}
    with pytest.raises(ValueError) as info:
        keras_tpp.prepare(model, **args)
    assert needle in str(info.value), str(info.value)
    assert _unchanged(model, before)
    assert not keras_tpp.wrappers.find_wrappers(model)


BAD_PLANS = [
    ({"conv1": ["a"]}, "integer channel indices"),
    ({"conv1": None}, "list of channel indices"),
    ({"conv1": "01"}, "list of channel indices"),
    ({"conv1": [0.5]}, "integer channel indices"),
    ({"conv1": [NAN]}, "integer channel indices"),
    ({"conv1": {"a": 1}}, "list of channel indices"),
    ({"conv1": 3}, "list of channel indices"),
    ({"conv1": [99]}, "removes channel 99"),
    ({"conv1": [-1]}, "removes channel -1"),
    ({"conv1": [0, 1, 2, 3]}, "at least one must be kept"),
    ({"conv1": np.ones(3, bool)}, "keep-mask of shape"),
    ({"nope": [0]}, "no layer named 'nope'"),
    ({"bn1": [0]}, "does not produce channels"),
    ({"classifier": [0]}, "Cannot prune 'classifier'"),
    ({3: [0]}, "Plan keys"),
    ([("conv1", [0])], "A plan must map"),
]


@pytest.mark.parametrize("plan,needle", BAD_PLANS, ids=[repr(p)[:40] for p, _ in BAD_PLANS])
def test_shrink_rejects_bad_plans_and_leaves_the_model_alone(plan, needle):
    model = models.small_cnn(widths=(4, 4, 4))
    before = _snapshot(model)
    for function in (keras_tpp.shrink, keras_tpp.zero_channels):
        with pytest.raises(ValueError) as info:
            function(model, plan)
        assert needle in str(info.value), str(info.value)
    assert _unchanged(model, before)


BAD_MAKE_PLAN = [
    (dict(seed="x"), "seed"),
    (dict(round_to=0), "round_to"),
    (dict(round_to=True), "round_to"),
    (dict(method="snip"), "Unknown method"),
    (dict(exclude="nomatch"), "exclude pattern"),
]


@pytest.mark.parametrize("kwargs,needle", BAD_MAKE_PLAN, ids=[repr(k) for k, _ in BAD_MAKE_PLAN])
def test_make_plan_and_prune_reject_bad_arguments(kwargs, needle):
    model = models.small_cnn(widths=(4, 4, 4))
    before = _snapshot(model)
    for function in (keras_tpp.make_plan, keras_tpp.prune):
        with pytest.raises(ValueError, match=needle):
            function(model, 0.5, **kwargs)
    assert _unchanged(model, before)


# -- non-finite weights --------------------------------------------------------------------------------


def test_surgery_refuses_non_finite_weights_naming_the_layer():
    model = models.small_cnn(widths=(4, 4, 4))
    kernel = model.get_layer("conv2").kernel
    value = kernel.numpy()
    value[0, 0, 0, 0] = np.nan
    kernel.assign(value)
    for call in (lambda: keras_tpp.shrink(model, {"conv1": [0]}),
                 lambda: keras_tpp.prune(model, 0.5)):
        with pytest.raises(ValueError, match="Layer 'conv2' has 1 non-finite value"):
            call()
    pmodel = keras_tpp.prepare(model, 0.5, method="l1")
    keras_tpp.apply_masks(pmodel)
    with pytest.raises(ValueError, match="non-finite"):
        keras_tpp.shrink(pmodel)


# -- models handed back are uncompiled ---------------------------------------------------------------


def test_strip_shrink_and_friends_return_uncompiled_models(tmp_path):
    model = models.small_cnn(widths=(8, 8, 8))
    pmodel = keras_tpp.prepare(model, 0.5, method="l1")
    pmodel.compile(keras.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")
    x, y = _input((32, 32, 3), n=8), np.zeros(8, "int64")
    pmodel.fit(x, y, epochs=1, verbose=0, callbacks=[keras_tpp.PruningCallback()])
    results = {
        "strip": keras_tpp.strip(pmodel),
        "shrink": keras_tpp.shrink(pmodel),
        "fold_batchnorm": keras_tpp.fold_batchnorm(keras_tpp.shrink(pmodel)),
        "zero_channels": keras_tpp.zero_channels(keras_tpp.strip(pmodel), {"conv1": [0]}),
        "orthp": keras_tpp.orthp(pmodel.layers[0] if False else keras_tpp.strip(pmodel)),
    }
    compiled = keras_tpp.strip(pmodel)
    compiled.compile("sgd", "mse")
    # A channel L1 pruned (which one depends on the backend's initializer RNG).
    pruned = int(np.flatnonzero(~keras_tpp.get_masks(pmodel)["conv1"])[0])
    results["shrink(compiled, plan)"] = keras_tpp.shrink(compiled, {"conv1": [pruned]})
    results["prune(compiled)"] = keras_tpp.prune(compiled, 0.5)
    for name, result in results.items():
        assert not result.compiled, name
    thin = results["shrink"]
    path = tmp_path / "thin.keras"
    thin.save(path)
    with zipfile.ZipFile(path) as archive:
        with archive.open("model.weights.h5") as handle:
            import h5py

            with h5py.File(handle) as weights:
                assert "optimizer" not in weights
    loaded = keras.models.load_model(path)
    x = _input((32, 32, 3))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), thin.predict(x, verbose=0))
