"""One backend's side of tests/test_cross_backend_saving.py (run as a script).

    KERAS_BACKEND=jax python tests/cross_backend_saving.py DIR

``write`` prepares a small CNN for TPP (seed 0), trains it 4 steps with the pruning callback
(λ > 0 from the first step), then saves DIR/<backend>/prepared.keras, applies the masks,
shrinks, saves DIR/<backend>/thin.keras, and writes DIR/<backend>/expected.npz: the inputs,
both models' outputs, the masks and the wrappers' λ. :func:`read` loads the files one
backend wrote and returns what it computes from them, under the same keys. Run as a script,
it writes its own backend's files and reads TensorFlow's (DIR/tensorflow, written first by
the test session), saving the numbers to DIR/<backend>_read_tensorflow.npz.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_tpp  # noqa: E402
from keras_tpp import models  # noqa: E402
from keras_tpp.wrappers import find_wrappers  # noqa: E402


def _numbers(pmodel: keras.Model, thin: keras.Model, x: np.ndarray) -> dict:
    out = {"x": x,
           "prepared": keras.ops.convert_to_numpy(pmodel(x, training=False)),
           "thin": keras.ops.convert_to_numpy(thin(x, training=False)),
           "strength": np.array([float(keras.ops.convert_to_numpy(w.strength.value))
                                 for w in find_wrappers(pmodel)])}
    for name, mask in keras_tpp.get_masks(pmodel, include_norms=True).items():
        out[f"mask/{name}"] = mask
    return out


def write(folder: str) -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 12, 12, 3)).astype("float32")
    y = rng.integers(0, 3, size=16).astype("int32")
    model = models.small_cnn(num_classes=3, input_shape=(12, 12, 3), widths=(8, 12))
    pmodel = keras_tpp.prepare(model, 0.5)
    pmodel.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pmodel.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False,
               callbacks=[keras_tpp.PruningCallback(delta=0.1, interval=1)])
    os.makedirs(folder, exist_ok=True)
    pmodel.save(os.path.join(folder, "prepared.keras"))
    snapshot = _numbers(pmodel, pmodel, x)  # outputs before apply_masks: what was saved
    keras_tpp.apply_masks(pmodel)
    thin = keras_tpp.shrink(pmodel)
    thin.save(os.path.join(folder, "thin.keras"))
    numbers = _numbers(pmodel, thin, x)
    numbers["prepared"] = snapshot["prepared"]
    np.savez(os.path.join(folder, "expected.npz"), **numbers)


def read(folder: str) -> dict:
    """What this backend computes from the files another backend wrote in ``folder``."""
    with np.load(os.path.join(folder, "expected.npz")) as saved:
        x = saved["x"]
    pmodel = keras.models.load_model(os.path.join(folder, "prepared.keras"))
    thin = keras.models.load_model(os.path.join(folder, "thin.keras"))
    return _numbers(pmodel, thin, x)


if __name__ == "__main__":
    backend = keras.backend.backend()
    write(os.path.join(sys.argv[1], backend))
    np.savez(os.path.join(sys.argv[1], f"{backend}_read_tensorflow.npz"),
             **read(os.path.join(sys.argv[1], "tensorflow")))
