"""Tests for keras_tpp.data.pydataset: the TensorFlow-free CIFAR / MNIST PyDatasets.

Fake CIFAR folders (PNG, lossless, so decoders agree exactly), their .tar.gz and a fake
mnist.npz are built in tmp_path; no real data is read. The tf.data pipelines
(``cifar_pipeline``, ``mnist_arrays``) are the independent reference for the normalization
and the resize; numpy padding is the reference for the crops.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tarfile
import textwrap

import keras
import numpy as np
import pytest
from PIL import Image

from keras_tpp.data import (
    CifarPyDataset,
    MnistPyDataset,
    augment_batch,
    cifar_pipeline,
    list_image_folder,
    mnist_arrays,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "frog")


def _make_folder(root: pathlib.Path, per_class=(5, 4, 5), size=32, seed=0,
                 ext="png") -> pathlib.Path:
    """``root/{train,test}/<class>/NNNN.png`` of random RGB images; returns ``root``."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for name, count in zip(CLASSES, per_class):
            directory = root / split / name
            directory.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(directory / f"{i:04d}.{ext}")
    return root


def _make_tar(folder: pathlib.Path, archive: pathlib.Path) -> pathlib.Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "train", arcname="cifar/train")
        tar.add(folder / "test", arcname="cifar/test")
    return archive


def _make_mnist(path: pathlib.Path, n_train=37, n_test=21, seed=0) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    np.savez(path,
             x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, n_train).astype(np.uint8),
             x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, n_test).astype(np.uint8))
    return path


def _all_batches(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_TPP_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------ shapes, labels


def test_folder_shapes_dtypes_and_labels(tmp_path):
    root = _make_folder(tmp_path / "data")
    ds = CifarPyDataset("test", data_dir=str(root), batch_size=4)
    assert isinstance(ds, keras.utils.PyDataset)
    assert ds.num_examples == 14 and len(ds) == 4  # 14 examples, remainder kept
    assert ds.class_names == list(CLASSES)
    x, y = ds[0]
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (4,) and y.dtype == np.int64
    assert ds[3][0].shape == (2, 32, 32, 3)
    paths, labels, _ = list_image_folder(str(root), "test")
    _, all_labels = _all_batches(ds)
    np.testing.assert_array_equal(all_labels, labels)  # list_image_folder's order
    with pytest.raises(IndexError):
        ds[4]
    train = CifarPyDataset("train", data_dir=str(root), batch_size=4, training=True)
    assert len(train) == 3 and all(train[i][0].shape == (4, 32, 32, 3) for i in range(3))


def test_tar_gz_gives_the_same_examples_as_the_folder(tmp_path):
    root = _make_folder(tmp_path / "data")
    archive = _make_tar(root, tmp_path / "cifar.tar.gz")
    a = _all_batches(CifarPyDataset("train", data_dir=str(root), batch_size=5))
    b = _all_batches(CifarPyDataset("train", data_dir=str(archive), batch_size=5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert (tmp_path / "cache" / "extracted").is_dir()  # extracted into the cache only


def test_other_image_sizes_are_resized(tmp_path):
    root = _make_folder(tmp_path / "data", per_class=(2, 2, 2), size=40)
    x, _ = CifarPyDataset("test", data_dir=str(root), batch_size=6)[0]
    assert x.shape == (6, 32, 32, 3)


# --------------------------------------------------------- equal to the tf.data pipeline


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_normalization_equals_the_tf_data_pipeline(tmp_path, dataset):
    root = _make_folder(tmp_path / "data")
    ours = _all_batches(CifarPyDataset("train", data_dir=str(root), batch_size=4,
                                       dataset=dataset))
    reference = cifar_pipeline("train", batch_size=4, training=False, source="folder",
                               data_dir=str(root), dataset=dataset)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in reference])
    np.testing.assert_array_equal(ours[1], np.concatenate(ys))
    np.testing.assert_allclose(ours[0], np.concatenate(xs), rtol=0, atol=1e-6)


def test_arrays_source_equals_the_tf_data_pipeline():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    y = np.arange(10)
    ours = CifarPyDataset("test", arrays={"test": (x, y)}, batch_size=10)[0]
    reference = next(iter(cifar_pipeline("test", batch_size=10, training=False,
                                         source="arrays", arrays=(x, y))))
    np.testing.assert_allclose(ours[0], reference[0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ours[1], reference[1].numpy())


# ------------------------------------------------------------------------ augmentation


def test_crops_are_pad4_windows_of_the_image():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, (48, 32, 32, 3), dtype=np.uint8)  # no zeros: unique windows
    ds = CifarPyDataset("train", arrays=(x, np.zeros(48)), batch_size=16, training=True,
                        shuffle=False, mean=(0, 0, 0), std=(1, 1, 1), seed=5)
    out, _ = _all_batches(ds)
    out = np.round(out * 255).astype(np.uint8)  # mean 0, std 1: back to the pixel values
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(len(x)):
        windows = [padded[i, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        windows += [w[:, ::-1] for w in windows]
        matches = [k for k, w in enumerate(windows) if np.array_equal(w, out[i])]
        assert len(matches) == 1, (i, matches)


def test_offsets_cover_every_window_and_flips_happen_half_the_time():
    cols, rows = np.meshgrid(np.arange(32), np.arange(32))
    image = np.stack([cols + 1, rows + 1, np.full((32, 32), 7)], -1).astype(np.uint8)
    n = 4000
    out = augment_batch(np.repeat(image[None], n, 0), np.random.default_rng(1))
    assert out.shape == (n, 32, 32, 3) and out.dtype == np.uint8
    # Row 16 / column 16 of a crop always lie inside the image: they give the offsets.
    flipped = out[:, 16, 10, 0] > out[:, 16, 20, 0]
    dx = out[:, 16, 16, 0].astype(int) - np.where(flipped, 12, 13)
    dy = out[:, 16, 16, 1].astype(int) - 13
    assert 0.46 < flipped.mean() < 0.54  # binomial(4000, 1/2): ±4 standard deviations
    counts = np.bincount(dy * 9 + dx, minlength=81)
    assert counts.size == 81 and counts.min() > 0  # all 81 windows occur
    assert counts.max() < 3 * n / 81
    # Each crop equals the window its offsets name.
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    for i in range(0, n, 97):
        window = padded[dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        np.testing.assert_array_equal(out[i], window[:, ::-1] if flipped[i] else window)


def test_no_augmentation_for_evaluation():
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    a = CifarPyDataset("test", arrays=(x, np.arange(8)), batch_size=8)
    b = CifarPyDataset("test", arrays=(x, np.arange(8)), batch_size=8, seed=9)
    np.testing.assert_array_equal(a[0][0], b[0][0])
    a.on_epoch_end()
    np.testing.assert_array_equal(a[0][0], b[0][0])
    np.testing.assert_array_equal(a[0][1], np.arange(8))


# ------------------------------------------------------------ reproducibility, epochs


def _train(seed, **kwargs):
    x = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    return CifarPyDataset("train", arrays=(x, np.arange(50)), batch_size=8, training=True,
                          seed=seed, **kwargs)


def test_same_seed_same_batches_and_epochs_differ():
    a, b, c = _train(1), _train(1), _train(2)
    epoch0 = _all_batches(a)
    np.testing.assert_array_equal(epoch0[0], _all_batches(b)[0])
    np.testing.assert_array_equal(epoch0[1], _all_batches(b)[1])
    assert not np.array_equal(epoch0[1], _all_batches(c)[1])
    a.on_epoch_end()
    assert a.epoch == 1
    epoch1 = _all_batches(a)
    assert not np.array_equal(epoch0[1], epoch1[1])  # a new order
    b.set_epoch(1)
    np.testing.assert_array_equal(epoch1[0], _all_batches(b)[0])
    # Batch i is the same whatever order Keras asks for the batches in.
    np.testing.assert_array_equal(a[3][0], _all_batches(a)[0][24:32])


def _epochs_through_adapter(ds, epochs, peek=True):
    """The batches Keras' PyDatasetAdapter serves, with fit's model-building peek first."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(ds, shuffle=False)
    if peek:  # fit reads one batch to build the model, then starts the epoch over
        adapter.on_epoch_begin()
        next(iter(adapter.get_numpy_iterator()))
        adapter.on_epoch_end()
    out = []
    for _ in range(epochs):
        adapter.on_epoch_begin()
        batches = list(adapter.get_numpy_iterator())
        adapter.on_epoch_end()
        out.append((np.concatenate([b[0] for b in batches]),
                    np.concatenate([b[1] for b in batches])))
    return out


def test_worker_threads_serve_the_serial_batches_after_fits_peek():
    serial = _train(4)
    serial.on_epoch_end()  # fit's extra on_epoch_end after its peek
    expected = []
    for _ in range(2):
        expected.append(_all_batches(serial))
        serial.on_epoch_end()
    threaded = _train(4, workers=2, max_queue_size=4)
    got = _epochs_through_adapter(threaded, 2)
    for (x, y), (x_ref, y_ref) in zip(got, expected):
        assert len(set(y.tolist())) == len(y) == 48  # no batch repeated or left out
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(x, x_ref)
    threaded.close()


def test_fit_sees_every_example_once_per_epoch_with_workers():
    seen = []

    class Recorder(keras.Model):
        def train_step(self, *args):
            seen.append(np.asarray(args[-1][1]))
            return super().train_step(*args)

    inputs = keras.Input((32, 32, 3))
    model = Recorder(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(
        inputs)))
    model.compile("sgd", "mse", run_eagerly=True)
    ds = _train(5, workers=2)
    model.fit(ds, epochs=2, shuffle=False, verbose=0)
    assert len(seen) == 2 * len(ds)
    for epoch in range(2):
        ids = np.concatenate(seen[epoch * len(ds):(epoch + 1) * len(ds)])
        assert len(set(ids.tolist())) == len(ids) == 48
    assert ds.epoch == 3  # fit's extra on_epoch_end before training, then one per epoch


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_every_example_once_per_epoch(drop_remainder):
    x = np.zeros((103, 32, 32, 3), np.uint8)
    ds = CifarPyDataset("train", arrays=(x, np.arange(103)), batch_size=10, training=True,
                        drop_remainder=drop_remainder, seed=3)
    for _ in range(3):
        _, ids = _all_batches(ds)
        if drop_remainder:
            assert len(ds) == 10 and len(ids) == 100 and len(set(ids)) == 100
        else:
            assert len(ds) == 11
            np.testing.assert_array_equal(np.sort(ids), np.arange(103))
        ds.on_epoch_end()


# ------------------------------------------------------------------------------ MNIST


def test_mnist_equals_mnist_arrays(tmp_path):
    path = _make_mnist(tmp_path / "mnist.npz")
    (_, _), (x_ref, y_ref) = mnist_arrays(flatten=False, data_dir=str(path))
    ds = MnistPyDataset("test", data_dir=str(path), batch_size=8)
    x, y = _all_batches(ds)
    assert x.shape == (21, 32, 32, 1) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(y, y_ref)
    flat = MnistPyDataset("train", data_dir=str(tmp_path), batch_size=5, training=True,
                          flatten=True)
    assert len(flat) == 7 and flat[0][0].shape == (5, 1024)
    raw = MnistPyDataset("test", data_dir=str(path), batch_size=4, image_size=None,
                         normalize=False)
    assert raw[0][0].shape == (4, 28, 28, 1) and raw[0][0].max() <= 1.0


def test_mnist_from_keras_home_and_shuffled_once_per_epoch(tmp_path, monkeypatch):
    (tmp_path / "home" / "datasets").mkdir(parents=True)
    _make_mnist(tmp_path / "home" / "datasets" / "mnist.npz")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    ds = MnistPyDataset("train", batch_size=37, training=True, seed=2)
    _, order0 = _all_batches(ds)
    ds.on_epoch_end()
    x1, order1 = _all_batches(ds)
    assert len(x1) == 37
    assert sorted(order0) == sorted(order1)


# ------------------------------------------------------------------------------ errors


def test_missing_path_and_wrong_layout_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"{re.escape(str(missing))}.*no such file or directory"):
        CifarPyDataset("train", data_dir=str(missing))
    empty = tmp_path / "empty"
    (empty / "other").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"{re.escape(str(empty))}.*no 'train' sub-directory"):
        CifarPyDataset("train", data_dir=str(empty))
    (empty / "train" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files in .*cat"):
        CifarPyDataset("train", data_dir=str(empty))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=f"{re.escape(str(text))}.*not a .tar.gz"):
        CifarPyDataset("train", data_dir=str(text))
    with pytest.raises(ValueError, match="exactly one of data_dir"):
        CifarPyDataset("train")
    with pytest.raises(ValueError, match="dataset must be one of"):
        CifarPyDataset("train", arrays=(np.zeros((2, 32, 32, 3)), [0, 1]), dataset="svhn")
    with pytest.raises(ValueError, match="batch_size"):
        CifarPyDataset("train", arrays=(np.zeros((2, 32, 32, 3)), [0, 1]), batch_size=0)


def test_corrupt_image_names_the_file(tmp_path):
    root = _make_folder(tmp_path / "data", per_class=(2, 2, 2))
    bad = root / "train" / "dog" / "0001.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    with pytest.raises(ValueError, match=f"corrupt or truncated image file: {bad}"):
        CifarPyDataset("train", data_dir=str(root))


def test_mnist_errors_name_the_path(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_HOME", raising=False)
    missing = tmp_path / "mnist.npz"
    with pytest.raises(ValueError, match=f"{re.escape(str(missing))}: no such file or directory"):
        MnistPyDataset("train", data_dir=str(missing))
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path))} holds no MNIST file"):
        MnistPyDataset("train", data_dir=str(tmp_path))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.npz is not Keras' mnist.npz.*x_train"):
        MnistPyDataset("train", data_dir=str(tmp_path / "other.npz"))
    with pytest.raises(ValueError, match="needs data_dir"):
        MnistPyDataset("train")


# ------------------------------------------------------------------ without TensorFlow


def test_trains_on_jax_without_tensorflow_with_worker_processes(tmp_path):
    """The module is numpy/Pillow only: TensorFlow blocked, JAX backend; 2 worker processes
    serve the serial batches, and fit trains with 2 worker threads."""
    root = _make_folder(tmp_path / "data", per_class=(8, 8, 8))
    archive = _make_tar(root, tmp_path / "cifar.tar.gz")
    _make_mnist(tmp_path / "mnist.npz")
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "tensorflow":
                    raise ImportError("tensorflow is blocked in this test")
        sys.meta_path.insert(0, Block())
        import numpy as np, keras
        from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
        from keras_tpp.data import CifarPyDataset, MnistPyDataset
        assert keras.backend.backend() == "jax"
        ds = CifarPyDataset("train", data_dir={str(archive)!r}, batch_size=4, training=True,
                            workers=2, use_multiprocessing=True, seed=3)
        serial = CifarPyDataset("train", data_dir={str(archive)!r}, batch_size=4,
                                training=True, seed=3)
        adapter = PyDatasetAdapter(ds, shuffle=False)
        for epoch in range(2):
            adapter.on_epoch_begin()
            got = np.concatenate([b[0] for b in adapter.get_numpy_iterator()])
            adapter.on_epoch_end()
            want = np.concatenate([serial[i][0] for i in range(len(serial))])
            serial.on_epoch_end()
            assert np.array_equal(got, want), epoch
        model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3),
                                  keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(3)])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        ds.close()
        threads = CifarPyDataset("train", data_dir={str(archive)!r}, batch_size=4,
                                 training=True, workers=2, seed=3)
        model.fit(threads, epochs=2, shuffle=False, verbose=0)
        assert threads.epoch == 3, threads.epoch
        x, y = MnistPyDataset("test", data_dir={str(tmp_path / "mnist.npz")!r},
                              batch_size=7, flatten=True)[0]
        assert x.shape == (7, 1024)
        import keras_tpp.data
        try:
            keras_tpp.data.cifar_pipeline
        except ModuleNotFoundError as e:
            assert "keras-tpp[tensorflow]" in str(e) and "CifarPyDataset" in str(e), e
        else:
            raise AssertionError("cifar_pipeline without TensorFlow")
        assert "tensorflow" not in sys.modules
        print("OK", ds.epoch)
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(ROOT),
               KERAS_TPP_CACHE=str(tmp_path / "cache2"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK 2" in result.stdout  # 2 epochs of the adapter
