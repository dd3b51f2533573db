"""Image-folder datasets on disk: ``<root>/<split>/<class_name>/<image files>``.

``data_dir`` may be the extracted directory (or a directory whose single sub-directory holds
the splits) or a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive of that layout. Archives are
extracted once into a cache directory — ``cache_dir`` if given, else ``$KERAS_TPP_CACHE``,
else ``~/.cache/keras_tpp`` — never next to the archive (it may live on a read-only share)
and never into the working tree. The extraction is atomic (temporary directory + rename), so
concurrent workers on one machine are safe.

Example files are listed in sorted order within each class and then interleaved round-robin
across classes (file 0 of every class, then file 1, ...), so any prefix — ``max_examples``
or a shard — is class-balanced and the order is identical on every worker.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def default_cache_dir() -> str:
    """Where archives are extracted: ``$KERAS_TPP_CACHE`` or ``~/.cache/keras_tpp``."""
    return os.environ.get("KERAS_TPP_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_tpp")


def _layout_error(path: str, split: str, detail: str) -> ValueError:
    return ValueError(
        f"{path!s} is not an image-folder dataset ({detail}). Expected the layout "
        f"'<data_dir>/{split}/<class_name>/<image>' — e.g. train/airplane/0000.jpg and "
        f"test/airplane/0000.jpg, one sub-directory per class with "
        f"{'/'.join(IMAGE_EXTENSIONS)} files — as a directory or a .tar.gz archive of it.")


def _find_root(directory: str, split: str) -> str:
    """``directory`` itself, or its only sub-directory, if it contains ``split``."""
    if os.path.isdir(os.path.join(directory, split)):
        return directory
    subdirs = [e.path for e in os.scandir(directory)
               if e.is_dir() and not e.name.startswith(".")]
    if len(subdirs) == 1 and os.path.isdir(os.path.join(subdirs[0], split)):
        return subdirs[0]
    return directory  # the caller reports the missing split


@dataclass(frozen=True)
class Extraction:
    """Where an archive was extracted.

    Attributes:
      archive: the archive's absolute path.
      directory: the extracted copy in the cache.
      files: number of regular files extracted.
      extracted_now: True if this call extracted it, False if a previous one had.
    """

    archive: str
    directory: str
    files: int
    extracted_now: bool


def _count_files(directory: str) -> int:
    return sum(len([f for f in files if not f.startswith(".")])
               for _, _, files in os.walk(directory))


def _read_marker(target: str) -> int | None:
    """The file count recorded in ``<target>/.complete`` (None if absent or old-style)."""
    try:
        with open(os.path.join(target, ".complete")) as f:
            text = f.read()
    except OSError:
        return None
    try:
        return int(json.loads(text)["files"])
    except (ValueError, KeyError, TypeError):
        return _count_files(target)  # a marker written by an older version: one line


def extract_archive(archive: str, cache_dir: str | None = None) -> Extraction:
    """Extracts ``archive`` once into the cache (see the module docstring) and says where.

    Args:
      archive: a ``.tar.gz`` / ``.tgz`` / ``.tar`` file.
      cache_dir: the extraction cache (default :func:`default_cache_dir`).

    Raises:
      ValueError: the archive is truncated or damaged (the message names it).
    """
    archive = os.path.abspath(os.path.expanduser(str(archive)))
    return _extract_archive(archive, cache_dir)


def _extract_archive(archive: str, cache_dir: str | None) -> Extraction:
    base = os.path.abspath(cache_dir or default_cache_dir())
    stat = os.stat(archive)
    key = hashlib.sha1(
        f"{os.path.abspath(archive)}|{stat.st_size}|{int(stat.st_mtime)}".encode()
    ).hexdigest()[:12]
    name = os.path.basename(archive)
    for suffix in _ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    target = os.path.join(base, "extracted", f"{name}-{key}")
    files = _read_marker(target)
    if files is not None:
        return Extraction(os.path.abspath(archive), target, files, False)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.dirname(target))
    try:
        try:
            with tarfile.open(archive) as tar:
                try:
                    tar.extractall(tmp, filter="data")
                except TypeError:  # Python without extraction filters
                    tar.extractall(tmp)  # noqa: S202 - archives are user-provided data
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise ValueError(
                f"{archive}: the archive is truncated or damaged ({type(e).__name__}: "
                f"{' '.join(str(e).split())}); copy or download it again") from e
        files = _count_files(tmp)
        with open(os.path.join(tmp, ".complete"), "w") as f:
            json.dump({"archive": os.path.abspath(archive), "files": files}, f)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not os.path.exists(os.path.join(target, ".complete")):
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return Extraction(os.path.abspath(archive), target, files, True)


def resolve_image_folder(data_dir: str, split: str = "train",
                         cache_dir: str | None = None) -> str:
    """The directory that holds ``<split>/<class>/...`` for ``data_dir`` (dir or archive).

    Raises:
      ValueError: ``data_dir`` does not exist or does not hold the expected layout.
    """
    if data_dir is None:
        raise ValueError("source='folder' needs data_dir (a directory or a .tar.gz archive).")
    path = os.path.expanduser(str(data_dir))
    if os.path.isfile(path):
        if not path.endswith(_ARCHIVE_SUFFIXES):
            raise _layout_error(path, split, "a file that is not a .tar.gz/.tgz/.tar archive")
        path = _extract_archive(os.path.abspath(path), cache_dir).directory
    elif not os.path.isdir(path):
        raise _layout_error(path, split, "no such file or directory")
    root = _find_root(path, split)
    if not os.path.isdir(os.path.join(root, split)):
        raise _layout_error(data_dir, split, f"no '{split}' sub-directory")
    return root


def list_image_folder(
    data_dir: str,
    split: str = "train",
    class_names=None,
    cache_dir: str | None = None,
) -> tuple[list[str], list[int], list[str]]:
    """Lists one split of an image folder.

    Args:
      data_dir: directory or archive (see module docstring).
      split: sub-directory name, e.g. ``"train"`` or ``"test"``.
      class_names: label order. ``None`` = the class directories sorted by name (for the
        CIFAR-10 and CIFAR-100 class names this *is* the official label order). When given,
        only these classes are used, with label i = class_names[i].
      cache_dir: extraction cache for archives.

    Returns:
      ``(paths, labels, class_names)``, interleaved round-robin across classes.
    """
    root = resolve_image_folder(data_dir, split, cache_dir)
    split_dir = os.path.join(root, split)
    found = sorted(e.name for e in os.scandir(split_dir)
                   if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise _layout_error(data_dir, split, f"no class sub-directories in {split_dir}")
    if class_names is None:
        class_names = found
    else:
        class_names = [str(c) for c in class_names]
        missing = [c for c in class_names if c not in found]
        if missing:
            raise _layout_error(data_dir, split,
                                f"class directories {missing} not found in {split_dir}")
    per_class = []
    for name in class_names:
        cdir = os.path.join(split_dir, name)
        files = sorted(e.name for e in os.scandir(cdir)
                       if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise _layout_error(data_dir, split, f"no image files in {cdir}")
        per_class.append([os.path.join(cdir, f) for f in files])
    paths, labels = [], []
    for i in range(max(len(f) for f in per_class)):
        for label, files in enumerate(per_class):
            if i < len(files):
                paths.append(files[i])
                labels.append(label)
    return paths, labels, list(class_names)
