"""Fault injection for tests: kill the process at a named point.

Set ``KERAS_TPP_TEST_KILL_AT=<point>`` (or ``<point>@<n>`` for its n-th occurrence,
counting from 1) and the process SIGKILLs itself when it reaches :func:`kill_point` with
that name — the same as a ``kill -9`` or a preempted machine at exactly that moment. The
example scripts name their points ``<stage>.backup_write`` (a backup's temporary file is
complete but not yet renamed into place) and ``<stage>.after_train`` (training finished,
outputs not yet written). Unset (the normal case) it costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

KILL_ENV = "KERAS_TPP_TEST_KILL_AT"
_COUNTS: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILLs this process if ``$KERAS_TPP_TEST_KILL_AT`` selects this occurrence of ``name``.

    Args:
      name: the point's name, e.g. ``"prune.after_train"``.
    """
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _COUNTS[name] = _COUNTS.get(name, 0) + 1
    if _COUNTS[name] == (int(nth) if nth else 1):
        print(f"[{KILL_ENV}] killing process {os.getpid()} at {name}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
