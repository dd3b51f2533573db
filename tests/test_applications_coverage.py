"""Every keras.applications family either shrinks exactly or reports what it left alone,
and none raises by default (issue 12). Slow: one model per family, built with
weights=None at a small input, prepare → apply_masks → shrink.
"""
import warnings

import keras
import numpy as np
import pytest

import keras_tpp

#: One representative per family at (about) its minimum input size, plus MobileNetV3Small,
#: MobileNetV3Large and ConvNeXtTiny (built with keras.ops operations / LayerScale).
FAMILIES = [
    ("ConvNeXtTiny", 32), ("DenseNet121", 32), ("EfficientNetB0", 32),
    ("EfficientNetV2B0", 32), ("InceptionResNetV2", 75), ("InceptionV3", 75),
    ("MobileNet", 32), ("MobileNetV2", 32), ("MobileNetV3Small", 32), ("MobileNetV3Large", 32),
    ("NASNetMobile", 32), ("ResNet50", 32), ("ResNet50V2", 32), ("VGG16", 32),
    ("Xception", 71),
]


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("name,size", FAMILIES, ids=[n for n, _ in FAMILIES])
def test_application_shrinks_exactly_or_reports(name, size):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", keras_tpp.CoverageWarning)
        pmodel = keras_tpp.prepare(model, 0.3, method="l1")
        keras_tpp.apply_masks(pmodel)
        thin = keras_tpp.shrink(pmodel)
    report = pmodel.coverage_report
    assert report.prunable, f"{name}: nothing prunable\n{report}"
    for group in report.unprunable:
        assert group.reason, group
        assert group.width_after == group.width
    for group in report.prunable:  # ceil(0.3·N) removed, at least one channel kept
        removed = min(int(np.ceil(round(0.3 * group.width, 9))), group.width - 1)
        assert group.width_after == group.width - removed, group
    coverage_warnings = [w for w in caught if isinstance(w.message, keras_tpp.CoverageWarning)]
    assert bool(coverage_warnings) == bool(report.left_alone)
    for group in report.left_alone:
        assert any(group.name in str(w.message) for w in coverage_warnings) or len(
            report.left_alone) > 8
    fraction = report.prunable_macs_fraction
    assert fraction is not None and 0 < fraction <= 1
    assert keras_tpp.profile(thin)["macs"] < keras_tpp.profile(model)["macs"]
    x = np.random.default_rng(1).uniform(0, 255, (2, size, size, 3)).astype("float32")
    want = _np(pmodel(x, training=False))
    got = _np(thin(x, training=False))
    assert np.max(np.abs(got - want)) <= 1e-5 * max(np.max(np.abs(want)), 1e-12), name


@pytest.mark.slow
def test_convnext_renormalization_opt_in_prunes_the_residual_streams():
    keras.utils.set_random_seed(0)
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3))
    default = keras_tpp.coverage(model)
    assert len(default.left_alone) == 4
    assert all("LayerNormalization" in g.reason for g in default.left_alone)
    with pytest.warns(keras_tpp.CoverageWarning, match="outputs change"):
        pmodel = keras_tpp.prepare(model, 0.3, method="l1", allow_renormalization=True)
    report = pmodel.coverage_report
    assert [g.reason.startswith("reaches the model output") for g in report.unprunable] == [True]
    assert sum(bool(g.renormalized) for g in report.prunable) == 4
    keras_tpp.apply_masks(pmodel)
    with pytest.warns(keras_tpp.CoverageWarning, match="renormalized"):
        thin = keras_tpp.shrink(pmodel, allow_renormalization=True)
    assert keras_tpp.profile(thin)["macs"] < 0.6 * keras_tpp.profile(model)["macs"]
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    assert np.all(np.isfinite(_np(thin(x, training=False))))
