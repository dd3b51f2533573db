"""Parameter and MAC counts, latency measurement and the before/after comparison."""
import keras
import pytest
from keras import layers

from keras_tpp import models
from keras_tpp.profiling import compare, format_comparison, measure_latency, profile, roofline
from keras_tpp.surgery import prune


def test_macs_of_each_layer_kind():
    inputs = keras.Input((8, 8, 4))
    a = layers.Conv2D(6, 3, padding="same", name="conv")(inputs)            # 64·9·4·6
    b = layers.Conv2D(6, 3, strides=2, groups=2, name="grouped")(a)         # 9·9·3·6
    c = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(a)  # 64·9·6·2
    d = layers.SeparableConv2D(5, 3, depth_multiplier=2, name="sep")(a)     # 36·9·12 + 36·12·5
    e = layers.Conv2DTranspose(3, 2, strides=2, name="up")(b)               # 9·4·6·3
    f = layers.Dense(7, name="dense")(layers.Flatten()(e))                  # 108·7
    g = layers.Conv1D(2, 3, name="c1d")(layers.Reshape((64, 12))(c))        # 62·3·12·2
    model = keras.Model(inputs, [f, d, g])
    result = profile(model)
    expected = {
        "conv": 64 * 9 * 4 * 6, "grouped": 9 * 9 * 3 * 6, "dw": 64 * 9 * 6 * 2,
        "sep": 36 * 9 * 12 + 36 * 12 * 5, "up": 9 * 4 * 6 * 3, "dense": 108 * 7,
        "c1d": 62 * 3 * 12 * 2,
    }
    assert {e["path"]: e["macs"] for e in result["per_layer"]} == expected
    assert result["macs"] == sum(expected.values())
    assert result["params"] == model.count_params()


def test_resnet56_and_nested_models():
    model = models.cifar_resnet(56)
    result = profile(model)
    assert result["params"] == 860_026 and result["macs"] == 125_747_840  # 0.25 GFLOPs
    inputs = keras.Input((32, 32, 3))
    outer = keras.Model(inputs, layers.Dense(2, name="head")(model(inputs)))
    nested = profile(outer)
    assert nested["macs"] == result["macs"] + 10 * 2
    assert any(e["path"] == "resnet56/stage1_block1_conv1" for e in nested["per_layer"])
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False, alpha=0.35)
    with pytest.raises(ValueError, match="input_shape"):
        profile(backbone)
    assert profile(backbone, input_shape=(96, 96, 3))["macs"] > 0


def test_latency_and_compare(capsys):
    model = models.cifar_resnet(20)
    lat = measure_latency(model, batch_size=2, warmup=1, runs=3)
    assert set(lat) >= {"median_ms", "p10_ms", "p90_ms", "batch_size", "runs"}
    assert 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]
    thin = prune(model, {"*_conv1": 0.5})
    result = compare(model, thin, batch_sizes=(1,), warmup=1, runs=2)
    assert result["macs_ratio"] > 1.3 and result["params_ratio"] > 1.3
    assert result["latency"][1]["speedup"] > 0
    out = capsys.readouterr().out
    assert "MACs" in out and "latency b1" in out
    assert "params" in format_comparison(compare(model, thin, latency=False, print_table=False))
    with pytest.raises(ValueError, match="runs"):
        measure_latency(model, runs=0)


def test_roofline_against_hand_computed_costs():
    inputs = keras.Input((4, 4, 2))
    x = layers.Conv2D(3, 1, name="conv")(inputs)   # 16·2·3 = 96 MACs, 6 + 3 weights
    x = layers.ReLU(name="relu")(x)
    x = layers.Identity(name="folded_bn")(x)        # free
    model = keras.Model(inputs, x)
    # batch 2, 100 MAC/s, 1000 B/s, float32:
    # conv: 192 MACs -> 1.92 s; 4·((32 + 48)·2 + 9) = 676 B -> 0.676 s: compute-bound, 1.92 s
    # relu: 0 MACs; 4·(48 + 48)·2 = 768 B -> 0.768 s: memory-bound
    result = roofline(model, peak_macs_per_s=100.0, bytes_per_s=1000.0, batch_size=2)
    by_path = {e["path"]: e for e in result["per_layer"]}
    assert set(by_path) == {"conv", "relu"}
    assert by_path["conv"]["macs"] == 192 and by_path["conv"]["bytes"] == 676
    assert by_path["conv"]["bound"] == "compute"
    assert by_path["conv"]["seconds"] == pytest.approx(1.92)
    assert by_path["relu"]["bytes"] == 768 and by_path["relu"]["bound"] == "memory"
    assert by_path["relu"]["seconds"] == pytest.approx(0.768)
    assert result["seconds"] == pytest.approx(1.92 + 0.768)
    assert result["compute_s"] == pytest.approx(1.92)
    assert result["memory_s"] == pytest.approx((676 + 768) / 1000)
    with pytest.raises(ValueError, match="peak_macs_per_s"):
        roofline(model, peak_macs_per_s=0.0, bytes_per_s=1.0)
