"""One backend's numbers for tests/test_backends.py (run as a script, one process per backend).

    KERAS_BACKEND=jax python tests/backend_parity.py INITIAL.npz OUT.npz

Builds a small CNN with BatchNormalization and a residual Add, loads the initial weights
from INITIAL.npz (``get_weights`` order, written by the test), and writes to OUT.npz:
penalty values and gradients at a fixed λ, TPP / L1 / SNIP masks, GraSP scores, the λ and
phase of every train step of a short TPP ``fit`` with its losses and final weights, the
thin model's outputs (shrink after apply_masks) and the Jacobian singular values; the
random masks, the folded (BatchNormalization) and OrthP models' outputs, the thin model's
profile, learning-rate schedule values, and the steps and final weights of a short GReg-1
``fit``.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_tpp  # noqa: E402
from keras_tpp import autodiff  # noqa: E402
from keras_tpp.callbacks.penalty_log import penalty_terms  # noqa: E402
from keras_tpp.wrappers import find_wrappers  # noqa: E402


def build_model() -> keras.Model:
    """A small CNN: conv-BN-ReLU, a residual block whose Add couples two convs, a head."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    y = keras.layers.Conv2D(6, 3, padding="same", name="c2")(x)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    y = keras.layers.ReLU(name="r2")(y)
    y = keras.layers.Conv2D(8, 3, padding="same", name="c3")(y)
    y = keras.layers.BatchNormalization(name="bn3")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.Conv2D(12, 3, strides=2, padding="same", name="c4")(x)
    x = keras.layers.ReLU(name="r4")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(4, name="fc")(x)
    return keras.Model(inputs, outputs, name="parity")


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return (rng.normal(size=(32, 8, 8, 3)).astype("float32"),
            rng.integers(0, 4, size=32).astype("int32"))


def model_with(weights: list[np.ndarray]) -> keras.Model:
    model = build_model()
    model.set_weights(weights)
    return model


class StepLog(keras.callbacks.Callback):
    """λ, phase and loss at every train batch end."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        self.rows.append((logs["prune_lambda"], logs["prune_phase"], logs["loss"]))


def main(initial: str, out: str) -> None:
    keras.utils.set_random_seed(0)
    weights = [a for _, a in sorted(np.load(initial).items(), key=lambda kv: int(kv[0][1:]))]
    x, y = data()
    result = {}

    # prepare (TPP) and the penalties at a fixed λ, η.
    pmodel = keras_tpp.prepare(model_with(weights), 0.5, method="tpp", layers=["c1", "c2", "c4"])
    for path, mask in keras_tpp.get_masks(pmodel).items():
        result[f"mask_tpp/{path}"] = mask
    for wrapper in find_wrappers(pmodel):
        wrapper.strength.assign(0.3)
        wrapper.step_size.assign(0.01)
    for i, (variable, regularizer) in enumerate(penalty_terms(find_wrappers(pmodel))):
        value, (grad,) = autodiff.value_and_grad(lambda: regularizer(variable), [variable])
        result[f"penalty/{i}"] = value
        result[f"penalty_grad/{i}"] = grad
    for wrapper in find_wrappers(pmodel):
        wrapper.strength.assign(0.0)
        wrapper.step_size.assign(0.0)

    # A short TPP schedule through fit: λ grows, holds, then the masks are applied.
    pmodel.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    log = StepLog()
    pmodel.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[
        keras_tpp.PruningCallback(delta=0.1, interval=2, ceiling=0.3, stabilize_steps=4,
                                  penalty_log_interval=0), log])
    result["schedule"] = np.array(log.rows, dtype=np.float64)
    for i, w in enumerate(pmodel.get_weights()):
        result[f"trained/{i}"] = w
    thin_trained = keras_tpp.shrink(pmodel)
    result["thin_trained_outputs"] = keras.ops.convert_to_numpy(thin_trained(x, training=False))

    # GReg-1: the uniform L2 on the pruned filters grows in the same kind of short fit.
    greg = keras_tpp.prepare(model_with(weights), 0.5, method="greg1", layers=["c1", "c2", "c4"])
    greg.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    log = StepLog()
    greg.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[
        keras_tpp.PruningCallback(delta=0.1, interval=2, ceiling=0.3, stabilize_steps=4,
                                  penalty_log_interval=0), log])
    result["greg_schedule"] = np.array(log.rows, dtype=np.float64)
    for i, w in enumerate(greg.get_weights()):
        result[f"greg_trained/{i}"] = w

    # Shrink of the initial weights: exactly the same numbers on every backend.
    pmodel = keras_tpp.prepare(model_with(weights), 0.5, method="tpp", layers=["c1", "c2", "c4"])
    keras_tpp.apply_masks(pmodel)
    thin = keras_tpp.shrink(pmodel)
    result["thin_params"] = np.array(thin.count_params())
    result["thin_outputs"] = keras.ops.convert_to_numpy(thin(x, training=False))
    result["strip_outputs"] = keras.ops.convert_to_numpy(
        keras_tpp.strip(pmodel)(x, training=False))
    jsv = keras_tpp.metrics.jacobian_singular_values(thin, x[:6], batch_size=4)
    result["jsv"] = jsv["singular_values"]
    result["folded_outputs"] = keras.ops.convert_to_numpy(
        keras_tpp.fold_batchnorm(thin)(x, training=False))
    result["orthp_outputs"] = keras.ops.convert_to_numpy(
        keras_tpp.orthp(thin, layers=["fc", "c4"])(x, training=False))
    stats = keras_tpp.profile(thin)
    result["profile"] = np.array([stats["params"], stats["macs"]])
    steps = np.arange(0, 1300, 7)
    result["lr"] = np.stack([
        keras.ops.convert_to_numpy(schedule(s)) for s in steps for schedule in (
            keras_tpp.lr_schedules.OneCycleLR(1000),
            keras_tpp.lr_schedules.tpp_finetune_schedule(10))]).reshape(len(steps), 2)

    # Other selections: L1 (data-free) and the gradient scores (autodiff).
    l1 = keras_tpp.prepare(model_with(weights), 0.5, method="l1")
    for path, mask in keras_tpp.get_masks(l1).items():
        result[f"mask_l1/{path}"] = mask
    rand = keras_tpp.prepare(model_with(weights), 0.5, method="random", seed=3)
    for path, mask in keras_tpp.get_masks(rand).items():
        result[f"mask_random/{path}"] = mask
    snip = keras_tpp.prepare(model_with(weights), 0.8, method="snip", data=(x, y))
    for path, mask in keras_tpp.get_masks(snip).items():
        result[f"mask_snip/{path}"] = mask
    for path, score in keras_tpp.scores.grasp(model_with(weights), x, y).items():
        result[f"grasp/{path}"] = score
    for path, score in keras_tpp.scores.synflow(model_with(weights)).items():
        result[f"synflow/{path}"] = score
    np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
