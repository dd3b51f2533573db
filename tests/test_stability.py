"""TPP's stability: the exact gram penalty diverges at large steps, the bounded default does
not, the two agree at the paper's step size, and keras.applications models train with the
defaults and shrink exactly."""
import inspect

import keras
import numpy as np
import pytest

import keras_tpp
from keras_tpp import models
from keras_tpp.callbacks import penalty_terms
from keras_tpp.penalties import GramPenalty, gram_curvature_bound
from keras_tpp.wrappers import find_wrappers


def _prepare(model, ratio=0.5, formulation=None, **kwargs):
    if formulation is not None and "gram_formulation" in inspect.signature(
            keras_tpp.prepare).parameters:
        return keras_tpp.prepare(model, ratio, method="tpp", gram_formulation=formulation,
                                 **kwargs)
    pmodel = keras_tpp.prepare(model, ratio, method="tpp", **kwargs)
    if formulation is not None:  # before the first fit traces the penalties
        wrappers = find_wrappers(pmodel)
        for wrapper in wrappers:
            wrapper.gram_formulation = formulation
        for _, regularizer in penalty_terms(wrappers):
            if isinstance(regularizer, GramPenalty):
                regularizer.formulation = formulation
    return pmodel


def _data(n=64, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, size, size, 3)).astype("float32"),
            rng.integers(0, 2, n).astype("int64"))


def _small(formulation, lr, seed=0):
    keras.utils.set_random_seed(seed)
    model = models.small_cnn(num_classes=2, input_shape=(16, 16, 3), widths=(8, 16))
    pmodel = _prepare(model, 0.5, formulation)
    pmodel.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return pmodel


def test_exact_gram_diverges_at_lr_0_1_and_the_callback_stops_it():
    pmodel = _small("exact", 0.1)
    x, y = _data()
    cb = keras_tpp.TPPCallback(ramp_steps=8, interval=1, stabilize_steps=10)
    with pytest.raises(keras_tpp.NonFiniteError, match="prune_lambda=") as info:
        pmodel.fit(x, y, batch_size=16, epochs=10, verbose=0, callbacks=[cb])
    assert info.value.strength > 0
    assert float(find_wrappers(pmodel)[0].enforce.numpy()) == 0.0  # never masked NaNs
    assert cb.last_finite_weights is not None
    cb.restore_last_finite()
    assert all(np.all(np.isfinite(w)) for w in pmodel.get_weights())


def test_bounded_gram_trains_at_lr_0_1_and_shrinks_exactly():
    pmodel = _small(None, 0.1)  # the default formulation
    assert {w.gram_formulation for w in find_wrappers(pmodel)} == {"bounded"}
    x, y = _data()
    cb = keras_tpp.TPPCallback(ramp_steps=8, interval=1, stabilize_steps=10)
    history = pmodel.fit(x, y, batch_size=16, epochs=10, verbose=0, callbacks=[cb])
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["prune_phase"][-1] == 2.0
    thin = keras_tpp.shrink(pmodel)
    np.testing.assert_allclose(thin.predict(x, verbose=0), pmodel.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_bounded_equals_exact_at_the_papers_step_size():
    # SGD at LR 1e-3 (the paper's pruning stage): η · c · λ · H(W) <= 1 in every layer, so the
    # bound never acts and both formulations train identically.
    x, y = _data()
    runs = {}
    for formulation in ("exact", "bounded"):
        pmodel = _small(formulation, 1e-3, seed=3)
        cb = keras_tpp.TPPCallback(ramp_steps=8, interval=1, stabilize_steps=4)
        history = pmodel.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0,
                             callbacks=[cb])
        runs[formulation] = (pmodel, history.history)
    (exact, h1), (bounded, h2) = runs["exact"], runs["bounded"]
    assert h1["loss"] == h2["loss"] and h1["prune_penalty"] == h2["prune_penalty"]
    for a, b in zip(exact.get_weights(), bounded.get_weights()):
        np.testing.assert_array_equal(a, b)
    for wrapper in find_wrappers(bounded):
        if wrapper.is_producer:
            h = float(gram_curvature_bound(keras.ops.convert_to_numpy(
                keras_tpp.filters.layer_filter_matrix(wrapper.layer))))
            assert 1e-3 * 1000.0 * 1.0 * h <= 1.0


# -- keras.applications with the defaults (slow) ------------------------------------------

APPLICATIONS = [
    ("EfficientNetB0", "sgd", "float32"),
    ("EfficientNetB0", "sgd", "mixed_float16"),
    ("MobileNetV2", "adam", "float32"),
    ("ResNet50", "sgd", "float32"),
]


@pytest.mark.slow
@pytest.mark.parametrize("arch,optimizer,policy", APPLICATIONS)
def test_applications_train_with_defaults_and_shrink_exactly(arch, optimizer, policy):
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = getattr(keras.applications, arch)(weights=None, input_shape=(32, 32, 3),
                                                  classes=10)
        pmodel = keras_tpp.prepare(model, 0.5, method="tpp")
        opt = (keras.optimizers.SGD(0.1, momentum=0.9) if optimizer == "sgd"
               else keras.optimizers.Adam(1e-3))
        pmodel.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy())
        rng = np.random.default_rng(0)
        x = rng.normal(size=(48, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 10, 48)
        cb = keras_tpp.TPPCallback(ramp_steps=30, interval=5, stabilize_steps=6,
                                   check_interval=10)
        history = pmodel.fit(x, y, batch_size=16, epochs=14, verbose=0, callbacks=[cb])
        losses = np.asarray(history.history["loss"])
        assert np.all(np.isfinite(losses)), losses
        assert history.history["prune_phase"][-1] == 2.0
        assert all(np.all(np.isfinite(w)) for w in pmodel.get_weights())
        assert [int(w.train_steps.numpy()) for w in find_wrappers(pmodel)][0] == 42
        thin = keras_tpp.shrink(pmodel)
        assert thin.count_params() < pmodel.count_params()
        expected = pmodel.predict(x, verbose=0).astype("float64")
        got = thin.predict(x, verbose=0).astype("float64")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    tolerance = 1e-5 if policy == "float32" else 1e-2  # float16 arithmetic in both models
    np.testing.assert_allclose(got, expected, rtol=tolerance,
                               atol=tolerance * np.abs(expected).max())
