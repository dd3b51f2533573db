"""Subprocess of tests/test_jax_distribution.py: a short TPP fit on the JAX backend, on one
device or data-parallel over N virtual CPU devices, from the weights in an .npz.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \
        python tests/jax_data_parallel.py initial.npz out.npz 2

Writes the λ logged at every step, the masks, every weight before and after training and
the number of devices holding a kernel to out.npz.
"""
from __future__ import annotations

import sys

import keras
import numpy as np

import keras_tpp

STEPS = 8
BATCH = 16


def build_model() -> keras.Model:
    """A small CNN with BN and a residual add."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU()(x)
    h = keras.layers.Conv2D(6, 3, padding="same", name="conv_a")(x)
    h = keras.layers.BatchNormalization(name="bn_a")(h)
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv_b")(keras.layers.ReLU()(h))
    x = keras.layers.ReLU()(keras.layers.Add()([x, h]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(STEPS * BATCH, 8, 8, 3)).astype("float32"),
            rng.integers(0, 4, STEPS * BATCH))


def main(initial: str, out: str, devices: int) -> None:
    import jax

    if devices > 1:
        assert len(jax.devices()) >= devices, jax.devices()
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=jax.devices()[:devices]))
    model = build_model()
    with np.load(initial) as saved:
        model.set_weights([saved[f"w{i}"] for i in range(len(saved.files))])
    pmodel = keras_tpp.prepare(model, 0.5, method="tpp")
    pmodel.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [keras.ops.convert_to_numpy(v) for v in pmodel.weights]
    lambdas = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            lambdas.append(float(logs["prune_lambda"]))

    x, y = data()
    pmodel.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[
        keras_tpp.PruningCallback(delta=0.1, interval=2, ceiling=0.3, stabilize_steps=2,
                                  penalty_log_interval=0), Record()])
    masks = keras_tpp.get_masks(pmodel)
    kernel = pmodel.get_layer("stem").layer.kernel.value  # the wrapped Conv2D's kernel
    np.savez(out, lambdas=np.array(lambdas),
             kernel_devices=np.array(len(kernel.sharding.device_set)),
             **{f"before{i}": w for i, w in enumerate(before)},
             **{f"mask/{k}": v for k, v in masks.items()},
             **{f"w{i}": keras.ops.convert_to_numpy(v)
                for i, v in enumerate(pmodel.weights)})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
