"""Tests for keras_tpp.data: synthetic data, CIFAR/ImageNet/MNIST pipelines, sharding."""
from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from keras_tpp.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    augment_cifar,
    cifar_pipeline,
    list_image_folder,
    mnist_arrays,
    synthetic_shapes,
)

pytestmark = pytest.mark.tf_only(reason="tf.data / tfds input pipelines")

# A real MNIST copy, if this machine has one (Keras' own location, or KERAS_HOME).
SHARED_MNIST = os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras"))


def _unnormalize(images, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    return np.round((np.asarray(images) * np.asarray(std) + np.asarray(mean)) * 255.0)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_deterministic_and_balanced():
    x, y = synthetic_shapes(103, seed=7)
    assert x.shape == (103, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (103,) and y.dtype == np.int64
    counts = np.bincount(y, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 103
    x2, y2 = synthetic_shapes(103, seed=7)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = synthetic_shapes(103, seed=8)
    assert not np.array_equal(x, x3)
    assert x.std() > 30  # real content, not a blank image

    xs, ys = synthetic_shapes(12, image_size=24, num_classes=4, seed=0)
    assert xs.shape == (12, 24, 24, 3) and set(ys.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="num_classes"):
        synthetic_shapes(10, num_classes=11)


# --------------------------------------------------------------------------- tfds (mocked)


def test_cifar_tfds_pipeline_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        train = cifar_pipeline("train", batch_size=8, training=True, seed=1)
        batches = list(train)
        assert len(batches) == 2  # drop_remainder for training
        images, labels = batches[0]
        assert images.shape == (8, 32, 32, 3) and images.dtype == tf.float32
        assert labels.dtype == tf.int64 and np.all((labels.numpy() >= 0) & (labels.numpy() < 10))

        test = cifar_pipeline("test", dataset="cifar100", batch_size=8, training=False)
        sizes = [int(b[0].shape[0]) for b in test]
        assert sizes == [8, 8, 4]  # evaluation keeps the remainder
        labels = np.concatenate([b[1].numpy() for b in test])
        assert labels.max() < 100

        # Evaluation is deterministic (no shuffle, no augmentation).
        a = np.concatenate([b[0].numpy() for b in test])
        b = np.concatenate([b[0].numpy() for b in test])
        np.testing.assert_array_equal(a, b)


def test_imagenet_pipeline_with_mock_data():
    import tensorflow_datasets as tfds

    from keras_tpp.data import imagenet_pipeline

    with tfds.testing.mock_data(num_examples=3):
        train = imagenet_pipeline("train", batch_size=2, training=True)
        (images, labels), = list(train)
        assert images.shape == (2, 224, 224, 3) and images.dtype == tf.float32
        assert labels.dtype == tf.int64
        val = imagenet_pipeline("validation", batch_size=2, training=False, image_size=64)
        shapes = [tuple(b[0].shape) for b in val]
        assert shapes == [(2, 64, 64, 3), (1, 64, 64, 3)]


def test_imagenet_crops():
    from keras_tpp.data.imagenet import random_resized_crop, resize_center_crop

    image = tf.reshape(tf.range(60 * 80 * 3) % 256, (60, 80, 3))
    image = tf.cast(image, tf.uint8)
    crop = resize_center_crop(image, 32, 40)
    assert crop.shape == (32, 32, 3)
    rrc = random_resized_crop(image, tf.constant([1, 2], tf.int64), 48)
    assert rrc.shape == (48, 48, 3)


# --------------------------------------------------------------------------- image folders

_COLORS = {"cat": (200, 30, 30), "airplane": (30, 200, 30), "bird": (30, 30, 200)}


def _write_folder(root, n_train=4, n_test=2, fmt="png"):
    for split, n in (("train", n_train), ("test", n_test)):
        for name, color in _COLORS.items():
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.zeros((32, 32, 3), np.uint8) + np.array(color, np.uint8)
                img[0, 0] = i  # make files differ
                enc = tf.io.encode_png(img) if fmt == "png" else tf.io.encode_jpeg(img)
                tf.io.write_file(str(d / f"{i:04d}.{fmt}"), enc)
    return root


def _labels_match_colors(ds, class_order):
    images, labels = [], []
    for x, y in ds:
        images.append(_unnormalize(x.numpy()))
        labels.append(y.numpy())
    images, labels = np.concatenate(images), np.concatenate(labels)
    for img, label in zip(images, labels):
        expected = np.array(_COLORS[class_order[label]])
        np.testing.assert_allclose(img[8:24, 8:24].reshape(-1, 3).mean(0), expected, atol=3)
    return labels


def test_folder_directory_and_class_order(tmp_path):
    root = _write_folder(tmp_path / "tiny")
    paths, labels, names = list_image_folder(str(root), "train")
    assert names == ["airplane", "bird", "cat"]  # sorted by name
    assert labels[:6] == [0, 1, 2, 0, 1, 2]  # class round-robin order
    assert len(paths) == 12

    test = cifar_pipeline("test", source="folder", data_dir=str(root), batch_size=4,
                          training=False)
    labels = _labels_match_colors(test, names)
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]

    order = ["cat", "bird"]  # explicit order, subset of the classes
    test = cifar_pipeline("test", source="folder", data_dir=str(root), batch_size=4,
                          training=False, class_names=order)
    labels = _labels_match_colors(test, order)
    assert sorted(labels.tolist()) == [0, 0, 1, 1]

    # Training: shuffled, augmented (jpeg also decodes), drop_remainder.
    jroot = _write_folder(tmp_path / "tiny_jpeg", fmt="jpg")
    train = cifar_pipeline("train", source="folder", data_dir=str(jroot), batch_size=5,
                           training=True, seed=3)
    batches = list(train)
    assert [tuple(b[0].shape) for b in batches] == [(5, 32, 32, 3)] * 2


def test_cifar10_class_order_is_alphabetical():
    assert list(CIFAR10_CLASSES) == sorted(CIFAR10_CLASSES)
    assert CIFAR10_CLASSES[0] == "airplane" and CIFAR10_CLASSES[-1] == "truck"


def test_folder_tar_gz_extracted_once_into_cache(tmp_path):
    root = _write_folder(tmp_path / "src" / "tiny_cifar")
    archive = tmp_path / "tiny_cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="tiny_cifar")  # nested top-level directory
    cache = tmp_path / "cache"

    ds = cifar_pipeline("test", source="folder", data_dir=str(archive), cache_dir=str(cache),
                        batch_size=6, training=False)
    labels = _labels_match_colors(ds, ["airplane", "bird", "cat"])
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    extracted = list((cache / "extracted").iterdir())
    assert len(extracted) == 1 and (extracted[0] / ".complete").exists()
    marker_mtime = os.path.getmtime(extracted[0] / ".complete")

    paths, _, _ = list_image_folder(str(archive), "train", cache_dir=str(cache))
    assert len(paths) == 12 and all(p.startswith(str(extracted[0])) for p in paths)
    assert os.path.getmtime(extracted[0] / ".complete") == marker_mtime  # not re-extracted

    # Without cache_dir the archive goes to $KERAS_TPP_CACHE, never next to the archive.
    os.environ["KERAS_TPP_CACHE"] = str(tmp_path / "env_cache")
    try:
        list_image_folder(str(archive), "train")
    finally:
        del os.environ["KERAS_TPP_CACHE"]
    assert (tmp_path / "env_cache" / "extracted").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["cache", "env_cache", "src", "tiny_cifar.tar.gz"]


def test_extract_archive_reports_where_and_how_many_files(tmp_path):
    from keras_tpp.data.folder import extract_archive

    root = _write_folder(tmp_path / "src" / "tiny_cifar")
    archive = tmp_path / "tiny_cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="tiny_cifar")
    first = extract_archive(str(archive), cache_dir=str(tmp_path / "cache"))
    assert first.extracted_now and first.files == 18  # (4 train + 2 test) x 3 classes
    assert first.directory.startswith(str(tmp_path / "cache"))
    again = extract_archive(str(archive), cache_dir=str(tmp_path / "cache"))
    assert not again.extracted_now and again.files == 18 and again.directory == first.directory


def test_truncated_archive_error_names_the_file(tmp_path):
    root = _write_folder(tmp_path / "src" / "tiny_cifar")
    archive = tmp_path / "tiny_cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="tiny_cifar")
    data = archive.read_bytes()
    for fraction in (0.3, 0.9):
        cut = tmp_path / f"cut{int(fraction * 100)}.tar.gz"
        cut.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(ValueError, match=rf"{cut.name}: the archive is truncated"):
            cifar_pipeline("train", source="folder", data_dir=str(cut), batch_size=4,
                           training=True, cache_dir=str(tmp_path / "cache"))
    # Nothing half-extracted is left to be mistaken for a complete copy.
    assert not [p for p in (tmp_path / "cache" / "extracted").iterdir()]


@pytest.mark.parametrize("damage", ["truncated_jpeg", "truncated_png", "not_an_image"])
def test_corrupt_image_error_names_the_file(tmp_path, damage):
    root = _write_folder(tmp_path / "tiny", fmt="png" if damage == "truncated_png" else "jpg")
    ext = "png" if damage == "truncated_png" else "jpg"
    bad = root / "train" / "bird" / f"0002.{ext}"
    data = bad.read_bytes()
    bad.write_bytes(b"hello, not an image" if damage == "not_an_image"
                    else data[: len(data) * 2 // 3])
    ds = cifar_pipeline("train", source="folder", data_dir=str(root), batch_size=4,
                        training=True)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"corrupt or truncated image file:\] \[[^\]]*0002\." + ext):
        for _ in ds:
            pass
    # The intact files of the same folder still decode.
    bad.write_bytes(data)
    assert sum(int(x.shape[0]) for x, _ in cifar_pipeline(
        "train", source="folder", data_dir=str(root), batch_size=4, training=True)) == 12


def test_bad_data_dir_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=r"nowhere.*train/<class_name>/<image>"):
        cifar_pipeline("train", source="folder", data_dir=str(missing), batch_size=4,
                       training=True)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"empty.*no 'train' sub-directory"):
        cifar_pipeline("train", source="folder", data_dir=str(empty), batch_size=4,
                       training=True)
    no_images = tmp_path / "no_images"
    (no_images / "train" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files"):
        list_image_folder(str(no_images), "train")
    root = _write_folder(tmp_path / "tiny")
    with pytest.raises(ValueError, match=r"\['truck'\] not found"):
        list_image_folder(str(root), "train", class_names=["cat", "truck"])
    not_archive = tmp_path / "notes.txt"
    not_archive.write_text("hello")
    with pytest.raises(ValueError, match="not a .tar.gz"):
        list_image_folder(str(not_archive), "train")
    with pytest.raises(ValueError, match="source must be one of"):
        cifar_pipeline("train", source="ftp", batch_size=4, training=True)
    with pytest.raises(ValueError, match="dataset must be one of"):
        cifar_pipeline("train", dataset="svhn", batch_size=4, training=True)
    with pytest.raises(ValueError, match="needs arrays"):
        cifar_pipeline("train", source="arrays", batch_size=4, training=True)


# --------------------------------------------------------------------------- augmentation


def test_augmentation_shapes_and_determinism():
    image = tf.fill((32, 32, 3), tf.constant(255, tf.uint8))
    outs = [augment_cifar(image, tf.constant([s, 0], tf.int64)).numpy() for s in range(20)]
    assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in outs)
    # Padding shows up as zero borders in most random crops.
    assert sum(int((o == 0).any()) for o in outs) >= 10
    np.testing.assert_array_equal(
        augment_cifar(image, tf.constant([3, 0], tf.int64)),
        augment_cifar(image, tf.constant([3, 0], tf.int64)))
    # Flips: an asymmetric image comes back mirrored for some seeds.
    ramp = tf.cast(tf.tile(tf.range(32)[None, :, None] * 8, [32, 1, 3]), tf.uint8)
    flipped = 0
    for s in range(20):
        out = augment_cifar(ramp, tf.constant([s, 1], tf.int64)).numpy()
        flipped += int(out[16, 10, 0] > out[16, 20, 0])
    assert 0 < flipped < 20

    x, y = synthetic_shapes(40, seed=0)
    ds = cifar_pipeline("train", source="arrays", arrays=(x, y), batch_size=16,
                        training=True, seed=0)
    epoch1 = list(ds)
    assert [tuple(b[0].shape) for b in epoch1] == [(16, 32, 32, 3)] * 2
    # Seeded: a new pipeline with the same seed repeats the first epoch exactly ...
    again = cifar_pipeline("train", source="arrays", arrays=(x, y), batch_size=16,
                           training=True, seed=0)
    np.testing.assert_array_equal(epoch1[0][0], next(iter(again))[0])
    # ... and one pipeline reshuffles and re-augments in the next epoch.
    epoch2 = list(ds)
    assert not np.array_equal(epoch1[0][1], epoch2[0][1])
    assert not np.array_equal(epoch1[0][0], epoch2[0][0])


def test_normalization_constants():
    x = np.full((4, 32, 32, 3), 128, np.uint8)
    ds = cifar_pipeline("test", source="arrays", arrays=(x, np.zeros(4)), batch_size=4,
                        training=False)
    images = next(iter(ds))[0].numpy()
    expected = (128 / 255.0 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    np.testing.assert_allclose(images[0, 0, 0], expected, rtol=1e-5)
    ds100 = cifar_pipeline("test", source="arrays", dataset="cifar100",
                           arrays={"test": (x, np.zeros(4))}, batch_size=4, training=False)
    assert not np.allclose(next(iter(ds100))[0].numpy(), images)


# --------------------------------------------------------------------------- sharding


def test_input_context_sharding_gives_disjoint_examples():
    n = 48
    x = np.zeros((n, 32, 32, 3), np.uint8)
    ids = np.arange(n)  # labels double as example ids
    seen = []
    for pipeline_id in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
        ds = cifar_pipeline("train", source="arrays", arrays=(x, ids), batch_size=8,
                            training=True, input_context=ctx, seed=5)
        assert (ds.options().experimental_distribute.auto_shard_policy
                == tf.data.experimental.AutoShardPolicy.OFF)
        batches = [b[1].numpy() for b in ds]
        assert all(len(b) == 4 for b in batches)  # per-replica batch = 8 / 2
        seen.append(np.concatenate(batches))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen).tolist()) == ids.tolist()

    plain = cifar_pipeline("train", source="arrays", arrays=(x, ids), batch_size=8,
                           training=True)
    assert (plain.options().experimental_distribute.auto_shard_policy
            == tf.data.experimental.AutoShardPolicy.DATA)
    assert next(iter(plain))[0].shape[0] == 8  # global batch without a context


def test_max_examples_from_folder_is_class_balanced(tmp_path):
    root = _write_folder(tmp_path / "tiny")
    ds = cifar_pipeline("train", source="folder", data_dir=str(root), batch_size=6,
                        training=False, max_examples=6)
    labels = np.concatenate([b[1].numpy() for b in ds])
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]


# --------------------------------------------------------------------------- MNIST


def _fake_mnist(path):
    rng = np.random.default_rng(0)
    np.savez(path,
             x_train=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
             y_train=np.arange(10, dtype=np.uint8),
             x_test=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
             y_test=np.arange(4, dtype=np.uint8))


def test_mnist_arrays_from_npz(tmp_path, monkeypatch):
    (tmp_path / "datasets").mkdir()
    _fake_mnist(tmp_path / "datasets" / "mnist.npz")
    (x_train, y_train), (x_test, y_test) = mnist_arrays(data_dir=str(tmp_path))
    assert x_train.shape == (10, 1024) and x_train.dtype == np.float32
    assert x_test.shape == (4, 1024) and y_test.dtype == np.int64
    (images, _), _ = mnist_arrays(flatten=False, normalize=False,
                                  data_dir=str(tmp_path / "datasets" / "mnist.npz"))
    assert images.shape == (10, 32, 32, 1) and 0.0 <= images.min() and images.max() <= 1.0
    np.testing.assert_allclose(x_train, (images.reshape(10, -1) - 0.1307) / 0.3081,
                               rtol=1e-5, atol=1e-5)
    (raw, _), _ = mnist_arrays(flatten_size=None, data_dir=str(tmp_path))
    assert raw.shape == (10, 784)

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # read at call time
    (x_env, _), _ = mnist_arrays(train_examples=3)
    np.testing.assert_array_equal(x_env, x_train[:3])

    with pytest.raises(ValueError, match="mnist.npz"):
        mnist_arrays(data_dir=str(tmp_path / "elsewhere"))


def test_mnist_arrays_from_tfds_mock():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        (x_train, y_train), (x_test, _) = mnist_arrays(source="tfds")
    assert x_train.shape == (6, 1024) and x_test.shape == (6, 1024)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    with pytest.raises(ValueError, match="source"):
        mnist_arrays(source="torchvision")


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED_MNIST, "datasets", "mnist.npz")),
                    reason="no local MNIST copy (KERAS_HOME/datasets/mnist.npz)")
def test_mnist_arrays_real_file():
    (x_train, y_train), (x_test, y_test) = mnist_arrays(
        data_dir=SHARED_MNIST, train_examples=256, test_examples=64)
    assert x_train.shape == (256, 1024) and x_test.shape == (64, 1024)
    assert set(np.unique(y_train)) <= set(range(10))
    assert abs(float(x_train.mean())) < 0.2 and 0.8 < float(x_train.std()) < 1.2
