"""TensorFlow-free input pipelines: CIFAR-10/100 and MNIST as ``keras.utils.PyDataset``.

Works on every Keras backend (JAX, PyTorch, TensorFlow): only numpy and Pillow run inside,
and ``model.fit`` feeds the batches to the backend as numpy arrays.

- :class:`CifarPyDataset` reads the same sources as
  :func:`keras_tpp.data.cifar_pipeline` (``source="folder"`` / ``"arrays"``): an image folder
  ``<data_dir>/<split>/<class>/<image>`` or its ``.tar.gz`` (extracted once into
  ``$KERAS_TPP_CACHE``, see :mod:`keras_tpp.data.folder`; same file order, so the same
  examples in the same order), or in-memory uint8 arrays. It applies the same CIFAR recipe:
  for training, 4 zero pixels of padding and a random 32×32 crop, a random horizontal flip
  (probability 1/2), a fresh shuffle every epoch; always the per-channel normalization
  ``(x / 255 - mean) / std`` with the constants of :mod:`keras_tpp.data.constants`. Without
  augmentation its batches equal the tf.data pipeline's on lossless images (tested; for JPEG
  see below).
- :class:`MnistPyDataset` reads Keras' ``mnist.npz`` and, like
  :func:`keras_tpp.data.mnist_arrays`, resizes to 32×32 (bilinear with half-pixel centres,
  what ``tf.image.resize`` does) and normalizes with ``(x / 255 - 0.1307) / 0.3081``.

Images are decoded once, when the dataset is built, into one uint8 array held in memory
(CIFAR-10's 50,000 training images: 154 MB); each batch is then gathered, augmented and
normalized in numpy. Batches are ``(float32 NHWC images, int64 labels)``.

**Why Pillow decodes the images.** The folder copies are JPEG or PNG files; decoding them
without TensorFlow needs an image codec. Pillow is the maintained, ubiquitous Python imaging
library (wheels for every platform, bundled libjpeg-turbo/zlib, a small install), whereas
``tf.io.decode_image`` would pull in TensorFlow (1.9 GB) and OpenCV is a far larger native
dependency for one call. PNG (lossless) decodes to the same pixels in both. For JPEG, Pillow
uses libjpeg-turbo's accurate integer IDCT: its pixels equal
``tf.io.decode_jpeg(..., dct_method="INTEGER_ACCURATE")`` bit for bit, while
``cifar_pipeline(source="folder")`` decodes with ``tf.io.decode_image``, whose default is
the fast IDCT (``"INTEGER_FAST"``): on the CIFAR-10 JPEG copy the two differ by up to 5 of 255
levels in most pixels (measured on 300 files). So on JPEG folders the two pipelines give
slightly different, equally valid inputs; on PNG folders and arrays they give the same.

**Reproducibility.** Every random choice is a pure function of ``(seed, epoch, batch index)``:
the shuffle order of an epoch comes from ``(seed, epoch)``, the crops and flips of a batch from
``(seed, epoch, index)``. So the same seed gives the same batches whatever ``workers`` and
``use_multiprocessing`` are and in whatever order Keras asks for them. The epoch counter
advances in :meth:`on_epoch_end`, which ``fit`` calls after each epoch and once before the
first (on every backend), so a fresh dataset gives fit's epoch e the index e + 1;
``set_epoch(k)`` before ``fit(initial_epoch=k)`` resumes with the indices of the
interrupted run. Keras' own ``fit(shuffle=True)`` (its default) shuffles
the *order of batches* with Python's unseeded ``random`` module; pass ``shuffle=False`` to
``fit`` (this dataset already shuffles examples), or seed with
``keras.utils.set_random_seed``, for bit-for-bit reproducible runs.

**Workers.** ``workers=n`` prepares the next ``max_queue_size`` batches in n threads
(numpy releases the GIL in its copy loops); ``use_multiprocessing=True`` uses n processes
instead (forked on Linux: the decoded arrays are shared copy-on-write). The dataset does
this itself, keyed by (epoch, batch index), and tells Keras ``workers=1``: Keras 3.15's
``OrderedEnqueuer`` serves batches left over from an interrupted epoch at the start of the
next one, which under ``fit`` (it reads one batch to build the model, then starts over)
repeated and dropped about 10 batches in every epoch. Keras then asks for the batches in
order from its own thread. On the JAX backend prefer threads: JAX warns that forking a
process that runs JAX threads can deadlock. See ``benchmarks/pydataset_throughput.py``.

Example::

    import os
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras
    from keras_tpp.data import CifarPyDataset, synthetic_shapes

    train = CifarPyDataset("train", arrays=synthetic_shapes(512, seed=0), batch_size=64,
                           training=True, seed=1)
    x, y = train[0]        # float32 (64, 32, 32, 3), int64 (64,)
    # real data: CifarPyDataset("train", data_dir="cifar10-jpeg.tar.gz", training=True,
    #                           batch_size=128, workers=2)
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import keras
import numpy as np

from keras_tpp.data.constants import CIFAR_STATS, MNIST_MEAN, MNIST_STD
from keras_tpp.data.folder import list_image_folder

#: Start of the error raised for a file Pillow cannot decode; the message names the file.
CORRUPT_IMAGE_MESSAGE = "corrupt or truncated image file"

_MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


# ----------------------------------------------------------------------------- loading


def _decode_image(path: str, image_size: int | None) -> np.ndarray:
    """One image file → uint8 (H, W, 3) RGB, resized to ``image_size`` if it differs."""
    from PIL import Image  # Pillow: see the module docstring for why

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")  # also forces the full decode
            if image_size is not None and image.size != (image_size, image_size):
                # Antialiased bilinear; close to, not bit-equal to, tf.image.resize's.
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:  # PIL.UnidentifiedImageError is OSError
        raise ValueError(f"{CORRUPT_IMAGE_MESSAGE}: {path} ({type(e).__name__}: {e})") from e


def load_image_folder(
    data_dir: str,
    split: str = "train",
    *,
    class_names: Sequence[str] | None = None,
    cache_dir: str | None = None,
    image_size: int | None = 32,
    max_examples: int | None = None,
    decode_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decodes one split of an image folder (or its .tar.gz) into uint8 arrays in memory.

    The examples come in :func:`keras_tpp.data.list_image_folder`'s order (sorted within
    each class, interleaved round-robin across classes), the order of
    ``cifar_pipeline(source="folder")``.

    Args:
      data_dir: a directory laid out as ``<split>/<class>/<image>`` (or whose only
        sub-directory is), or a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive of it.
      split: the split's sub-directory, e.g. ``"train"`` or ``"test"``.
      class_names: label order; default the class directories sorted by name (the CIFAR
        label order for the CIFAR class names).
      cache_dir: where archives are extracted (default ``$KERAS_TPP_CACHE`` or
        ``~/.cache/keras_tpp``).
      image_size: images of another size are resized to ``image_size``² (Pillow, bilinear);
        ``None`` keeps every image as it is (they must then all have one size).
      max_examples: decode only the first ``max_examples`` (a class-balanced subset).
      decode_threads: threads decoding files (Pillow releases the GIL while decoding);
        default ``min(8, os.cpu_count())``.

    Returns:
      ``(x, y, class_names)``: ``x`` uint8 (n, H, W, 3), ``y`` int64 (n,).

    Raises:
      ValueError: ``data_dir`` is missing or not in that layout (the message names it), or
        a file is not a decodable image (the message names the file).

    Example::

        x, y, names = load_image_folder("cifar10-jpeg.tar.gz", "test", max_examples=100)
    """
    paths, labels, names = list_image_folder(data_dir, split, class_names, cache_dir)
    if max_examples is not None:
        if int(max_examples) < 1:
            raise ValueError(f"max_examples must be a positive integer, got {max_examples!r}.")
        paths, labels = paths[: int(max_examples)], labels[: int(max_examples)]
    threads = decode_threads or min(8, os.cpu_count() or 1)
    if threads > 1 and len(paths) > 64:
        with ThreadPoolExecutor(threads) as pool:
            images = list(pool.map(lambda p: _decode_image(p, image_size), paths,
                                   chunksize=256))
    else:
        images = [_decode_image(p, image_size) for p in paths]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"{data_dir}: images of split {split!r} have different sizes "
                         f"{sorted(shapes)[:4]}; pass image_size= to resize them.")
    return np.stack(images), np.asarray(labels, dtype=np.int64), names


def load_mnist_npz(path: str) -> tuple[tuple[np.ndarray, np.ndarray],
                                        tuple[np.ndarray, np.ndarray]]:
    """Reads Keras' ``mnist.npz`` (x_train, y_train, x_test, y_test) without TensorFlow.

    Args:
      path: the ``.npz`` file, or a directory holding ``mnist.npz`` or
        ``datasets/mnist.npz`` (e.g. ``$KERAS_HOME``).

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: uint8 (n, 28, 28) images, int64 labels.

    Raises:
      ValueError: no such file, or not an npz with those arrays (the message names it).

    Example::

        (x_train, y_train), (x_test, y_test) = load_mnist_npz("~/.keras/datasets/mnist.npz")
    """
    if path is None:
        raise ValueError("MnistPyDataset needs data_dir: Keras' mnist.npz or a directory "
                         "holding mnist.npz or datasets/mnist.npz (or set $KERAS_HOME).")
    given = str(path)
    path = os.path.expanduser(given)
    if os.path.isdir(path):
        for candidate in (os.path.join(path, "mnist.npz"),
                          os.path.join(path, "datasets", "mnist.npz")):
            if os.path.isfile(candidate):
                path = candidate
                break
        else:
            raise ValueError(f"{given} holds no MNIST file: expected {given}/mnist.npz or "
                             f"{given}/datasets/mnist.npz (Keras' mnist.npz).")
    elif not os.path.isfile(path):
        raise ValueError(f"{given}: no such file or directory (expected Keras' mnist.npz).")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in _MNIST_KEYS if k not in f.files]
            if missing:
                raise ValueError(f"{given} is not Keras' mnist.npz: it lacks {missing} "
                                 f"(it has {sorted(f.files)}).")
            arrays = {k: f[k] for k in _MNIST_KEYS}
    except ValueError as e:
        if str(e).startswith(given):
            raise
        raise ValueError(f"{given} is not a readable .npz file ({e}).") from e
    except (OSError, EOFError) as e:
        raise ValueError(f"{given} is not a readable .npz file ({e}).") from e
    for key in ("x_train", "x_test"):
        if arrays[key].ndim != 3:
            raise ValueError(f"{given}: {key} must have shape (n, H, W), got "
                             f"{arrays[key].shape}.")
    return ((arrays["x_train"].astype(np.uint8), arrays["y_train"].astype(np.int64)),
            (arrays["x_test"].astype(np.uint8), arrays["y_test"].astype(np.int64)))


# ------------------------------------------------------------------------ augmentation


def augment_batch(images: np.ndarray, rng: np.random.Generator,
                  padding: int = 4) -> np.ndarray:
    """Pads ``padding`` zero pixels, takes a random crop of the original size, flips at random.

    The numpy counterpart of :func:`keras_tpp.data.augment_cifar`: every window of the
    zero-padded image is equally likely (``(2·padding + 1)²`` offsets), and each image is
    mirrored left-right with probability 1/2, independently.

    Args:
      images: (B, H, W, C) array (any dtype; uint8 before normalization).
      rng: the generator that draws the offsets and flips.
      padding: pixels of zero padding on each side.

    Returns:
      An array of the same shape and dtype.

    Example::

        out = augment_batch(np.zeros((8, 32, 32, 3), np.uint8), np.random.default_rng(0))
    """
    b, h, w = images.shape[:3]
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}.")
    if b == 0:
        return images.copy()
    padded = np.zeros((b, h + 2 * padding, w + 2 * padding) + images.shape[3:],
                      images.dtype)
    padded[:, padding:padding + h, padding:padding + w] = images
    dy = rng.integers(0, 2 * padding + 1, size=b)
    dx = rng.integers(0, 2 * padding + 1, size=b)
    flip = rng.random(b) < 0.5
    out = np.empty_like(images)
    for i in range(b):  # B slice copies: 3-4x faster than one fancy-indexed gather
        window = padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = window[:, ::-1] if flip[i] else window
    return out


def _normalization_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(256, C) float32: ``(v / 255 - mean_c) / std_c`` for every uint8 value v.

    Computed in float32 with the same operations, in the same order, as
    :func:`keras_tpp.data.common.normalize`, so a table look-up gives its values.
    """
    values = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)
    return ((values - np.asarray(mean, np.float32)[None, :])
            / np.asarray(std, np.float32)[None, :]).astype(np.float32)


def _epoch_rng(seed: int, epoch: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed) & 0xFFFFFFFF, int(epoch), *[int(k) for k in key]])))


# ------------------------------------------------------------------------ the datasets


_WORKER_DATASET = None  # the dataset, in a prefetch worker process


def _init_worker(dataset: "_InMemoryPyDataset") -> None:
    global _WORKER_DATASET
    _WORKER_DATASET = dataset


def _worker_batch(epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    return _WORKER_DATASET._make_batch(epoch, index)


class _InMemoryPyDataset(keras.utils.PyDataset):
    """Seeded batches of in-memory examples: shuffle per epoch, per-batch transform.

    Batch ``index`` of epoch ``e`` is a pure function ``_make_batch(e, index)``. Prefetching
    (``workers`` threads or processes) is done here, keyed by ``(epoch, index)``, rather than
    by Keras' ``OrderedEnqueuer``: in Keras 3.15 that enqueuer keeps the batches it had
    prefetched when an epoch is cut short (``fit`` reads one batch to build the model, then
    starts over) and serves them at the start of the next epoch, so with ``workers > 1``
    every epoch of ``fit`` repeated about 10 batches and missed 10 others (measured: 334 of
    400 examples distinct). Here a batch prepared for another epoch is never served.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
                 shuffle: bool, seed: int, drop_remainder: bool, workers: int,
                 use_multiprocessing: bool, max_queue_size: int) -> None:
        # Keras calls __getitem__ in order from its own thread (no enqueuer); the workers
        # below prepare the next max_queue_size batches ahead of it.
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=max_queue_size)
        if batch_size is None or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if int(workers) < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}.")
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length: {len(images)} vs "
                             f"{len(labels)}.")
        if len(images) == 0:
            raise ValueError("the dataset has no examples.")
        self.images = images
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_remainder = bool(drop_remainder)
        if self.drop_remainder and len(images) < self.batch_size:
            raise ValueError(f"drop_remainder=True with {len(images)} examples and "
                             f"batch_size {self.batch_size} would give no batch.")
        self.num_workers = int(workers)
        self.use_processes = bool(use_multiprocessing)
        self.prefetch = max(int(max_queue_size), self.num_workers)
        self._epoch = 0
        self._order: tuple[int, np.ndarray | None] = (-1, None)
        self._pool = None
        self._futures: dict = {}

    # -- epochs

    @property
    def epoch(self) -> int:
        """The epoch whose shuffle order and augmentation :meth:`__getitem__` uses.

        ``fit`` calls :meth:`on_epoch_end` once before its first epoch (after reading one
        batch to build the model, on every backend), so its epochs use 1, 2, ...
        """
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch index (e.g. from a callback, or when resuming a run)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch!r}.")
        self._epoch = int(epoch)
        self._drop_stale()

    def on_epoch_end(self) -> None:
        """Called by ``fit`` after each epoch: the next epoch gets a new order and crops."""
        self._epoch += 1
        self._drop_stale()

    # -- workers

    def _drop_stale(self) -> None:
        for key in [k for k in self._futures if k[0] not in (self._epoch, self._epoch + 1)]:
            self._futures.pop(key).cancel()

    def _executor(self):
        if self._pool is None:
            self._pool_pid = os.getpid()
            if self.use_processes:
                from concurrent.futures import ProcessPoolExecutor

                # Forked where the platform forks (Linux): the arrays are shared
                # copy-on-write; elsewhere the dataset is pickled to each worker once.
                self._pool = ProcessPoolExecutor(self.num_workers, initializer=_init_worker,
                                                 initargs=(self,))
            else:
                self._pool = ThreadPoolExecutor(self.num_workers,
                                                thread_name_prefix="keras_tpp_data")
        return self._pool

    def _submit(self, epoch: int, index: int):
        if self.use_processes:
            return self._executor().submit(_worker_batch, epoch, index)
        return self._executor().submit(self._make_batch, epoch, index)

    def set_workers(self, workers: int, use_multiprocessing: bool = False) -> None:
        """Changes how many threads (or processes) prepare batches ahead.

        Args:
          workers: threads or processes; 1 without multiprocessing computes each batch when
            Keras asks for it.
          use_multiprocessing: processes instead of threads.
        """
        if int(workers) < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}.")
        self.close()
        self.num_workers, self.use_processes = int(workers), bool(use_multiprocessing)
        self.prefetch = max(self.prefetch, self.num_workers)

    def close(self) -> None:
        """Stops the prefetch workers (they start again when a batch is asked for)."""
        if self._pool is not None and getattr(self, "_pool_pid", None) != os.getpid():
            return  # a forked worker's copy: the pool belongs to the parent
        for future in self._futures.values():
            future.cancel()
        self._futures = {}
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pool"], state["_futures"] = None, {}
        return state

    # -- indexing

    @property
    def num_examples(self) -> int:
        """Examples in the dataset (one epoch sees each once, less a dropped remainder)."""
        return len(self.labels)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_remainder else math.ceil(n / self.batch_size)

    def _indices(self, epoch: int, index: int) -> np.ndarray:
        if not self.shuffle:
            order = None
        else:
            cached_epoch, order = self._order
            if cached_epoch != epoch:
                order = _epoch_rng(self.seed, epoch).permutation(len(self.labels))
                self._order = (epoch, order)  # one atomic assignment: thread-safe
        start = index * self.batch_size
        stop = min(start + self.batch_size, len(self.labels))
        return np.arange(start, stop) if order is None else order[start:stop]

    def _transform(self, images: np.ndarray, rng_key: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def _make_batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of epoch ``epoch``: a pure function of them and the seed."""
        idx = self._indices(epoch, index)
        return self._transform(self.images[idx], (epoch, index)), self.labels[idx]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of the current epoch: ``(float32 images, int64 labels)``."""
        index = int(index)
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"batch index {index} out of range for {n} batches.")
        epoch = self._epoch
        future = self._futures.pop((epoch, index), None)
        if self.num_workers > 1 or self.use_processes:
            # Keep the next `prefetch` batches (into the next epoch) in preparation.
            for ahead in range(index + 1, index + 1 + self.prefetch):
                key = (epoch, ahead) if ahead < n else (epoch + 1, ahead - n)
                if key not in self._futures:
                    self._futures[key] = self._submit(*key)
        if future is None:
            return self._make_batch(epoch, index)
        return future.result()


class CifarPyDataset(_InMemoryPyDataset):
    """CIFAR-10/100 batches for ``model.fit`` on any Keras backend, without TensorFlow.

    The numpy/Pillow counterpart of ``cifar_pipeline(source="folder"|"arrays")``: same
    examples in the same order, same pad-4 crop + flip for training, same per-channel
    normalization (see the module docstring). Items are ``(float32 (B, H, W, 3), int64
    (B,))``.

    Args:
      split: ``"train"`` or ``"test"``: the folder's sub-directory (or the key of an
        ``arrays`` mapping).
      data_dir: image folder or its ``.tar.gz`` (see :func:`load_image_folder`).
      arrays: instead of ``data_dir``: ``(x uint8 (n, H, W, 3), y)`` or ``{split: (x, y)}``,
        e.g. :func:`keras_tpp.data.synthetic_shapes`.
      batch_size: examples per batch (the global batch: Keras feeds each batch whole).
      training: turns on augmentation, shuffling and ``drop_remainder`` by default.
      dataset: ``"cifar10"`` or ``"cifar100"``: which normalization constants.
      class_names, cache_dir, image_size, max_examples: as in :func:`load_image_folder`
        (``max_examples`` also caps ``arrays``).
      augment, shuffle, drop_remainder: default to ``training``.
      seed: seeds the per-epoch shuffle and the augmentation.
      mean, std: override the per-channel normalization constants (in [0, 1] units).
      padding: zero pixels on each side before the random crop (4 for CIFAR).
      workers, use_multiprocessing, max_queue_size: ``workers`` threads (processes with
        ``use_multiprocessing``) prepare the next ``max_queue_size`` batches ahead of the
        training step (see the module docstring; Keras itself is told ``workers=1``).

    Raises:
      ValueError: a bad argument, a missing or malformed ``data_dir`` (naming the path), a
        file that does not decode (naming the file).

    Example::

        from keras_tpp.data import CifarPyDataset, synthetic_shapes
        train = CifarPyDataset("train", arrays=synthetic_shapes(256), batch_size=32,
                               training=True, seed=0)
        x, y = train[0]
        assert x.shape == (32, 32, 32, 3) and x.dtype == "float32"
    """

    def __init__(
        self,
        split: str = "train",
        *,
        data_dir: str | None = None,
        arrays=None,
        batch_size: int = 128,
        training: bool = False,
        dataset: str = "cifar10",
        class_names: Sequence[str] | None = None,
        cache_dir: str | None = None,
        image_size: int = 32,
        max_examples: int | None = None,
        augment: bool | None = None,
        shuffle: bool | None = None,
        drop_remainder: bool | None = None,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        padding: int = 4,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ) -> None:
        if dataset not in CIFAR_STATS:
            raise ValueError(f"dataset must be one of {tuple(CIFAR_STATS)}, got {dataset!r}.")
        if (data_dir is None) == (arrays is None):
            raise ValueError("CifarPyDataset needs exactly one of data_dir= (an image folder "
                             "or .tar.gz) and arrays=(x, y).")
        if data_dir is not None:
            images, labels, self.class_names = load_image_folder(
                data_dir, split, class_names=class_names, cache_dir=cache_dir,
                image_size=image_size, max_examples=max_examples)
        else:
            images, labels = _split_arrays(arrays, split)
            if max_examples is not None:
                images, labels = images[: int(max_examples)], labels[: int(max_examples)]
            self.class_names = list(class_names) if class_names is not None else None
        self.training = bool(training)
        self.augment = self.training if augment is None else bool(augment)
        self.padding = int(padding)
        default_mean, default_std = CIFAR_STATS[dataset]
        self.mean = tuple(default_mean if mean is None else mean)
        self.std = tuple(default_std if std is None else std)
        if len(self.mean) != images.shape[-1] or len(self.std) != images.shape[-1]:
            raise ValueError(f"mean and std need {images.shape[-1]} values each, got "
                             f"{self.mean} and {self.std}.")
        self._table = _normalization_table(self.mean, self.std)
        super().__init__(
            images, labels, batch_size=batch_size,
            shuffle=self.training if shuffle is None else shuffle, seed=seed,
            drop_remainder=self.training if drop_remainder is None else drop_remainder,
            workers=workers, use_multiprocessing=use_multiprocessing,
            max_queue_size=max_queue_size)

    def _transform(self, images: np.ndarray, rng_key: tuple[int, int]) -> np.ndarray:
        if self.augment:
            images = augment_batch(images, _epoch_rng(self.seed, *rng_key, 1), self.padding)
        # Per-channel look-ups in a (256, C) table of the exact float32 values of
        # (x / 255 - mean) / std: 2x faster than the arithmetic, the same numbers.
        out = np.empty(images.shape, np.float32)
        for c in range(images.shape[-1]):
            out[..., c] = self._table[:, c][images[..., c]]
        return out


def _split_arrays(arrays, split: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(arrays, dict):
        if split not in arrays:
            raise ValueError(f"arrays has no split {split!r}; it has {sorted(arrays)}.")
        arrays = arrays[split]
    try:
        x, y = arrays
    except (TypeError, ValueError) as e:
        raise ValueError("arrays must be (x, y) or a {split: (x, y)} mapping.") from e
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"arrays x must have shape (n, H, W, 3), got {x.shape}.")
    if x.dtype != np.uint8:  # pixel values 0..255 expected, as cifar_pipeline
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if len(x) != len(y):
        raise ValueError(f"arrays x and y differ in length: {len(x)} vs {len(y)}.")
    return x, y


def _bilinear_weights(in_size: int, out_size: int):
    """``tf.image.resize(method="bilinear", antialias=False)``'s sampling (half-pixel
    centres): for each output index the two input indices and the interpolation weight."""
    scale = np.float32(in_size / out_size)
    position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(position)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(position), in_size - 1).astype(np.intp)
    return lower, upper, (position - floor).astype(np.float32)


def _resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """(B, H, W) float32 → (B, size, size) float32, interpolated as TensorFlow does."""
    y0, y1, wy = _bilinear_weights(images.shape[1], size)
    x0, x1, wx = _bilinear_weights(images.shape[2], size)
    top_left = images[:, y0][:, :, x0]
    top_right = images[:, y0][:, :, x1]
    bottom_left = images[:, y1][:, :, x0]
    bottom_right = images[:, y1][:, :, x1]
    top = top_left + (top_right - top_left) * wx
    bottom = bottom_left + (bottom_right - bottom_left) * wx
    return top + (bottom - top) * wy[:, None]


class MnistPyDataset(_InMemoryPyDataset):
    """MNIST batches from Keras' ``mnist.npz`` for ``model.fit`` on any Keras backend.

    The numpy counterpart of :func:`keras_tpp.data.mnist_arrays` (same resize and
    normalization, equal to float rounding), with a seeded shuffle per epoch and no
    augmentation. The uint8 28×28 images stay in memory; each batch is resized and
    normalized when it is asked for.

    Args:
      split: ``"train"`` or ``"test"``.
      data_dir: ``mnist.npz`` or a directory holding ``mnist.npz`` / ``datasets/mnist.npz``;
        default ``$KERAS_HOME`` (if set).
      batch_size: examples per batch.
      training: turns on shuffling and ``drop_remainder`` by default.
      image_size: side of the resized images (bilinear, half-pixel centres); ``None`` keeps
        28×28.
      flatten: give (B, side²) rows (MLP-7-Linear's 1024 inputs) instead of (B, side, side, 1).
      normalize: ``(x / 255 - 0.1307) / 0.3081``; else just ``x / 255``.
      max_examples: keep only the first ``max_examples`` examples of the split.
      shuffle, drop_remainder: default to ``training``.
      seed: seeds the per-epoch shuffle.
      workers, use_multiprocessing, max_queue_size: as in :class:`CifarPyDataset`.

    Raises:
      ValueError: a bad argument, or no readable ``mnist.npz`` at ``data_dir`` (naming it).

    Example::

        from keras_tpp.data import MnistPyDataset
        train = MnistPyDataset("train", data_dir="~/.keras/datasets/mnist.npz",
                               batch_size=100, training=True, flatten=True)
        x, y = train[0]        # float32 (100, 1024), int64 (100,)
    """

    def __init__(
        self,
        split: str = "train",
        *,
        data_dir: str | None = None,
        batch_size: int = 100,
        training: bool = False,
        image_size: int | None = 32,
        flatten: bool = False,
        normalize: bool = True,
        max_examples: int | None = None,
        shuffle: bool | None = None,
        drop_remainder: bool | None = None,
        seed: int = 0,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
        if data_dir is None and os.environ.get("KERAS_HOME"):
            data_dir = os.environ["KERAS_HOME"]
        train, test = load_mnist_npz(data_dir)
        images, labels = train if split == "train" else test
        if max_examples is not None:
            images, labels = images[: int(max_examples)], labels[: int(max_examples)]
        self.image_size = None if image_size is None else int(image_size)
        self.flatten = bool(flatten)
        self.normalize = bool(normalize)
        self.training = bool(training)
        super().__init__(
            images, labels, batch_size=batch_size,
            shuffle=self.training if shuffle is None else shuffle, seed=seed,
            drop_remainder=self.training if drop_remainder is None else drop_remainder,
            workers=workers, use_multiprocessing=use_multiprocessing,
            max_queue_size=max_queue_size)

    def _transform(self, images: np.ndarray, rng_key: tuple[int, int]) -> np.ndarray:
        x = images.astype(np.float32) / np.float32(255.0)
        if self.image_size is not None and x.shape[1:3] != (self.image_size,) * 2:
            x = _resize_bilinear(x, self.image_size)
        if self.normalize:
            x = (x - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)
        x = x.reshape(len(x), -1) if self.flatten else x[..., None]
        return x.astype(np.float32, copy=False)
