"""Atomic, durable file writes and validated reads for experiment outputs.

Every output goes through :func:`atomic_write`: the content is written to a temporary file
``.tmp-<pid>-<name>`` in the target's directory, flushed and ``os.fsync``-ed, given the
mode an ordinary ``open()`` would give it (``0o666 & ~umask``, so 0644 under the usual
umask 022), renamed over the target with ``os.replace`` and the directory is fsync-ed. A
process killed at any point therefore leaves either the old file or the new one under the
final name, never a torn one; at worst a ``.tmp-<pid>-*`` file, which
:func:`remove_stale_temporaries` deletes on the next run.

No TensorFlow import here: models are written through a ``writer`` callable.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

TMP_PREFIX = ".tmp-"


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` minus the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_name(path: str) -> str:
    """``<dir>/.tmp-<pid>-<basename>``: keeps the suffix (``.keras``, ``.weights.h5``)."""
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-{base}")


def fsync_file(path: str) -> None:
    """Flushes ``path``'s data to disk (a no-op where the OS does not allow it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str) -> None:
    """Makes a rename in ``directory`` durable (ignored on systems without directory fds)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, writer: Callable[[str], None],
                 before_rename: Callable[[str], None] | None = None) -> None:
    """Writes ``path`` atomically and durably.

    Args:
      path: the final file name; its directory is created if needed.
      writer: called with the temporary file name; must create that file (e.g.
        ``model.save``, ``model.save_weights`` or a plain ``open``).
      before_rename: optional hook called with the temporary name once it is complete and
        synced, just before the rename (used for checksums and fault-injection tests).
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = temporary_name(path)
    try:
        writer(tmp)
        fsync_file(tmp)
        os.chmod(tmp, file_mode())
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` (bytes) to ``path`` atomically; see :func:`atomic_write`."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def json_default(value: Any) -> Any:
    """``json.dump``'s fallback: numpy scalars and arrays as Python values, else ``str``."""
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def atomic_write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON (one trailing newline) to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n"
    atomic_write_bytes(path, text.encode())


def atomic_save_model(model: Any, path: str) -> None:
    """``model.save(path)`` through a temporary ``.keras`` name and an atomic rename."""
    atomic_write(path, model.save)


def read_json(path: str) -> Any:
    """The parsed JSON in ``path``.

    Raises:
      ValueError: the file exists but is not valid JSON (message names the file).
      OSError: the file cannot be read (e.g. it does not exist).
    """
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e


def read_json_or(path: str, default: Any) -> Any:
    """The parsed JSON in ``path``, or ``default`` when it is missing or damaged."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return default


def sha256_file(path: str, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path`` (read in ``chunk_bytes`` pieces)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's live process
        return True
    return True


def remove_stale_temporaries(directory: str, recursive: bool = True) -> list[str]:
    """Deletes ``.tmp-<pid>-*`` files left by killed writers (their process is gone).

    Temporaries of live processes (another worker writing right now) are left alone.

    Args:
      directory: where to look; missing directories are fine.
      recursive: also look in sub-directories.

    Returns:
      The removed paths.
    """
    removed = []
    if not os.path.isdir(directory):
        return removed
    for root, dirs, files in os.walk(directory):
        for name in files:
            if not name.startswith(TMP_PREFIX):
                continue
            pid_text = name[len(TMP_PREFIX):].split("-", 1)[0]
            if pid_text.isdigit() and _pid_alive(int(pid_text)):
                continue
            path = os.path.join(root, name)
            try:
                os.remove(path)
                removed.append(path)
            except OSError:  # pragma: no cover - removed concurrently
                pass
        if not recursive:
            break
    return removed
