"""keras_tpp.models: SPEC's ResNet-50 presets give the published MAC reductions."""
import keras
import pytest

import keras_tpp
from keras_tpp import models


def test_resnet50_2_31x_preset_reaches_the_published_mac_ratio():
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    ratios = models.resnet50_ratios("2.31x")
    plan = keras_tpp.make_plan(model, ratios)
    assert len(plan) == 32  # conv1 and conv2 of the 16 bottlenecks
    assert all(name.endswith(("_1_conv", "_2_conv")) for name in plan)
    thin = keras_tpp.prune(model, ratios)
    ratio = keras_tpp.profile(model)["macs"] / keras_tpp.profile(thin)["macs"]
    assert ratio == pytest.approx(2.31, rel=0.02)  # the TPP paper's 2.31× (ceil rounding)


def test_resnet50_ratios_bad_inputs():
    with pytest.raises(ValueError, match="Unknown ResNet-50 preset"):
        models.resnet50_ratios("2x")
    with pytest.raises(ValueError, match="four per-stage ratios"):
        models.resnet50_ratios((0.5, 0.5))
    assert models.resnet50_ratios((0.1, 0.2, 0.3, 0.4))["conv5_block*_2_conv"] == 0.4


def test_the_imagenet_example_offers_every_preset():
    import ast
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "imagenet.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    names = next(ast.literal_eval(node.value) for node in tree.body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PRESETS")
    assert tuple(names) == tuple(models.RESNET50_PRESETS)
