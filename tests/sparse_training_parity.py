"""One backend's sparse-training numbers for tests/test_sparse_training_backends.py.

    KERAS_BACKEND=jax python tests/sparse_training_parity.py INITIAL.npz OUT.npz

Builds a small CNN (conv → conv → GAP → dense), loads its initial weights from INITIAL.npz
(``get_weights`` order, written by the test), trains it with ``fit`` and
:class:`keras_tpp.SparseTrainingCallback` under each method, and writes to OUT.npz, per run
``<run>/``: the masks after every train step (``masks/<layer>/<step>``), the final kernels
and all weights (``weights/<i>``), the optimizer slots of each masked kernel
(``slots/<layer>/<j>``), the last growth gradient (``grad/<layer>``), the per-step losses
and the logged sparsity and regrowth rate.

Runs: GMP (SGD with Nesterov momentum), GraNet (SGD momentum, then Adam), RigL from an ERK
mask (SGD momentum), GraNet with ``steps_per_execution=3`` (a missed update caught up).
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_tpp  # noqa: E402
from keras_tpp import keras_internals  # noqa: E402
from keras_tpp.prepared import wrappers_by_path  # noqa: E402

BATCH = 8


def build_model() -> keras.Model:
    """Conv → Conv → GAP → Dense (no batch norm)."""
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="tanh", name="conv1")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="tanh", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    return keras.Model(inputs, outputs, name="sparse_parity")


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    return (rng.normal(size=(48, 6, 6, 3)).astype("float32"),
            rng.integers(0, 4, size=48).astype("int32"))


class Record(keras.callbacks.Callback):
    """Masks and loss after every train batch (placed after the sparse-training callback)."""

    def __init__(self) -> None:
        super().__init__()
        self.masks: dict[int, dict] = {}
        self.rows: list[tuple] = []

    def on_train_batch_end(self, batch, logs=None):
        keras_internals.sync_training_state(self.model)
        wrapper = next(iter(wrappers_by_path(self.model).values()))
        step = int(keras.ops.convert_to_numpy(wrapper.train_steps.value))
        self.masks[step] = keras_tpp.get_masks(self.model)
        self.rows.append((step, logs["loss"], logs["sparsity"], logs["regrow_rate"]))


RUNS = {
    # name: (method, prepare kwargs, optimizer, fit kwargs, callback kwargs)
    "gmp": ("gmp", {}, lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
            dict(epochs=3), dict(total_steps=18, prune_end_step=12, update_frequency=3)),
    "granet_sgd": ("granet", {}, lambda: keras.optimizers.SGD(0.05, momentum=0.9),
                   dict(epochs=3), dict(total_steps=18, prune_end_step=9, update_frequency=3,
                                        regrow_ratio=0.4)),
    "granet_adam": ("granet", {"initial_ratio": 0.4, "seed": 2},
                    lambda: keras.optimizers.Adam(3e-3), dict(epochs=2),
                    dict(total_steps=12, prune_end_step=6, update_frequency=2,
                         regrow_ratio=0.5)),
    "rigl": ("rigl", {"seed": 4}, lambda: keras.optimizers.SGD(0.05, momentum=0.9),
             dict(epochs=3), dict(total_steps=18, update_frequency=3, regrow_ratio=0.5)),
    "granet_spe3": ("granet", {}, lambda: keras.optimizers.SGD(0.05, momentum=0.9),
                    dict(epochs=2, steps_per_execution=3),
                    dict(total_steps=12, prune_end_step=8, update_frequency=4)),
}
RATIOS = {"gmp": 0.8, "granet_sgd": 0.75, "granet_adam": 0.7, "rigl": 0.7, "granet_spe3": 0.6}


def run(name: str, weights: list[np.ndarray], result: dict) -> None:
    method, prepare_kwargs, optimizer, fit_kwargs, callback_kwargs = RUNS[name]
    model = build_model()
    model.set_weights(weights)
    pmodel = keras_tpp.prepare(model, RATIOS[name], method=method, **prepare_kwargs)
    fit_kwargs = dict(fit_kwargs)
    pmodel.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   steps_per_execution=fit_kwargs.pop("steps_per_execution", 1))
    x, y = data()
    record = Record()
    callback = keras_tpp.SparseTrainingCallback(**callback_kwargs)
    pmodel.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0,
               callbacks=[callback, record], **fit_kwargs)
    for step, masks in record.masks.items():
        for path, mask in masks.items():
            result[f"{name}/masks/{path}/{step}"] = mask
    for i, w in enumerate(pmodel.get_weights()):
        result[f"{name}/weights/{i}"] = w
    gradients = callback.optimizer_state.gradients()
    for path, wrapper in wrappers_by_path(pmodel).items():
        result[f"{name}/grad/{path}"] = gradients[path]
        slots = keras_internals.optimizer_slots(pmodel.optimizer, wrapper.layer.kernel)
        for j, slot in enumerate(slots):
            result[f"{name}/slots/{path}/{j}"] = keras.ops.convert_to_numpy(slot.value)
    result[f"{name}/log"] = np.array(record.rows, dtype=np.float64)
    result[f"{name}/last_update"] = np.array(callback.last_update.step)


def main(initial: str, out: str, names: list[str]) -> None:
    keras.utils.set_random_seed(0)
    weights = [a for _, a in sorted(np.load(initial).items(), key=lambda kv: int(kv[0][1:]))]
    result: dict = {}
    for name in names or RUNS:
        run(name, weights, result)
    np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
