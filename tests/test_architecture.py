"""The extension points README's "Architecture" section documents, exercised as a user would.

- Teaching the graph a new layer: one ``layer_roles.register`` call makes a custom
  per-channel layer a follower that prepare masks and shrink slices exactly.
- The core imports and prunes without TensorFlow (the JAX backend, TF blocked).
- Only ``keras_tpp/keras_internals.py`` reads Keras internals.
"""
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_tpp
from keras_tpp import layer_roles

L = keras.layers
ROOT = pathlib.Path(__file__).resolve().parents[1]


class ChannelScale(L.Layer):
    """A toy per-channel scale y = x · s (what ConvNeXt's LayerScale does)."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],),
                                     initializer="ones")

    def call(self, x):
        return x * self.scale


def _model_with_scale():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = ChannelScale(name="scale1")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(4, 1, name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(2, name="head")(x))
    rng = np.random.default_rng(0)
    model.get_layer("scale1").scale.assign(rng.uniform(0.5, 2.0, 6))
    bn = model.get_layer("bn1")
    bn.set_weights([rng.uniform(0.5, 1.5, 6), rng.normal(0, 0.3, 6), rng.normal(0, 0.3, 6),
                    rng.uniform(0.5, 1.5, 6)])
    return model


@pytest.fixture
def scale_rule():
    layer_roles.register(ChannelScale, layer_roles.Role(
        "follower", channel_weights={"scale": -1}, zero_weights=("scale",),
        constants="elementwise"))
    yield
    layer_roles.unregister(ChannelScale)


def test_unknown_custom_layer_is_named_in_the_error():
    with pytest.raises(keras_tpp.UnsupportedModelError, match="'scale1' \\(ChannelScale\\)"):
        keras_tpp.prepare(_model_with_scale(), 0.5, on_unsupported="raise")
    # By default (issue 12) prepare prunes the other groups and names the layer in a warning.
    with pytest.warns(keras_tpp.CoverageWarning, match="'c1'.*ChannelScale layer 'scale1'"):
        pmodel = keras_tpp.prepare(_model_with_scale(), 0.5)
    assert set(keras_tpp.get_masks(pmodel)) == {"c2"}


def test_a_registered_layer_rule_makes_a_custom_follower_prunable(scale_rule):
    model = _model_with_scale()
    graph = keras_tpp.DependencyGraph(model)
    group = graph.group_of("c1")
    assert group.prunable and [f.name for f in group.followers] == ["bn1", "scale1"]
    # The masked model zeroes the custom layer's weight too; the thin model slices it.
    masked = keras_tpp.zero_channels(model, {"c1": [1, 4]})
    thin = keras_tpp.shrink(masked, {"c1": [1, 4]})
    np.testing.assert_array_equal(
        thin.get_layer("scale1").scale.numpy(),
        np.delete(model.get_layer("scale1").scale.numpy(), [1, 4]))
    x = np.random.default_rng(1).normal(size=(3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(thin.predict(x, verbose=0), masked.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    # Only c1's filters zeroed: the constant the removed channels carry after the batch norm
    # (its beta and moving mean) goes through the custom layer and is folded into c2's bias.
    c1 = model.get_layer("c1")
    kernel, bias = c1.kernel.numpy(), c1.bias.numpy()
    kernel[..., [1, 4]] = 0
    bias[[1, 4]] = 0
    c1.set_weights([kernel, bias])
    thin = keras_tpp.shrink(model, {"c1": [1, 4]})
    assert np.any(thin.get_layer("c2").bias.numpy() != model.get_layer("c2").bias.numpy())
    np.testing.assert_allclose(thin.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert not np.any(masked.get_layer("scale1").scale.numpy()[[1, 4]])


def test_core_imports_and_prunes_without_tensorflow(tmp_path):
    script = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "tensorflow":
                    raise ImportError("tensorflow is blocked in this test")
        sys.meta_path.insert(0, Block())
        import numpy as np, keras, keras_tpp
        from keras_tpp import models
        assert keras.backend.backend() == "jax"
        model = models.small_cnn(widths=(4, 4, 4))
        pmodel = keras_tpp.prepare(model, 0.5, method="l1")
        keras_tpp.apply_masks(pmodel)
        thin = keras_tpp.shrink(pmodel)
        x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
        diff = np.abs(np.asarray(thin(x)) - np.asarray(pmodel(x))).max()
        assert diff < 1e-5, diff
        assert "tensorflow" not in sys.modules
        print("OK", thin.count_params(), model.count_params())
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_only_keras_internals_reads_private_keras_api():
    private = re.compile(r"keras\.src|[.\"']_(nodes_by_depth|functional|inbound_nodes|"
                         r"outbound_nodes|keras_history|output_shape|flatten_layers|"
                         r"symbolic_build|compile_metrics|learning_rate|get_variable_index|trainable_variables|"
                         r"keras_tpp_update_step|keras_tpp_hook)\b|SafeModeScope")
    offenders = []
    for path in sorted((ROOT / "keras_tpp").rglob("*.py")):
        if path.name == "keras_internals.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if private.search(code) and not code.strip().startswith(('"', "'")):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# -- adding a method ----------------------------------------------------------------------------


class _DelayedController(keras_tpp.controllers.Controller):
    """Zero the masked channels at train step 3 instead of at the first step."""

    def sync(self, step):
        from keras_tpp.penalty_schedule import GROW, PRUNED

        if step < 3:
            return 0.0, GROW
        if not self.enforced():
            keras_tpp.controllers.enter_pruned_phase(self.wrappers)
        return 0.0, PRUNED


class _DelayedRandom(keras_tpp.methods.PruningMethod):
    """A toy method: random channels (chosen at prepare), removed at step 3, no penalty."""

    name = "delayed_random"
    description = "random channels removed at step 3 (a test method)"
    selection = "random"

    def controller(self, wrappers, schedule):
        return _DelayedController(wrappers, schedule)


@pytest.fixture
def delayed_method():
    keras_tpp.methods.register(_DelayedRandom)
    yield
    keras_tpp.methods.unregister("delayed_random")


def test_a_registered_method_runs_through_prepare_callback_and_shrink(delayed_method):
    from keras_tpp import models

    assert "delayed_random" in keras_tpp.methods.names()
    model = models.small_cnn(widths=(8, 8, 8), input_shape=(16, 16, 3))
    pmodel = keras_tpp.prepare(model, 0.5, method="delayed_random", seed=4)
    plan = keras_tpp.make_plan(model, 0.5, method="random", seed=4)
    assert {k: np.flatnonzero(~m).tolist() for k, m in keras_tpp.get_masks(pmodel).items()} \
        == {k: v.tolist() for k, v in plan.items()}
    pmodel.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((16, 16, 16, 3), np.float32)
    y = np.arange(16) % 10
    callback = keras_tpp.PruningCallback()
    pmodel.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])  # steps 0, 1
    assert isinstance(callback.method, _DelayedRandom)
    kernel = pmodel.get_layer("conv1").layer.kernel.numpy()
    assert np.all(np.any(kernel != 0, axis=(0, 1, 2)))  # nothing zeroed before step 3
    history = pmodel.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert history.history["prune_phase"] == [2.0]
    thin = keras_tpp.shrink(pmodel)
    assert thin.get_layer("conv1").filters == 4
    np.testing.assert_allclose(thin.predict(x, verbose=0), pmodel.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="delayed_random"):
        keras_tpp.methods.get_method("delayed-random")
