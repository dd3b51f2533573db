"""Test helper: run one process per MultiWorkerMirroredStrategy worker on 127.0.0.1."""
from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(
    argv_for: Callable[[int], list[str]],
    env: Mapping[str, str],
    log_dir: Path,
    cwd: str,
    timeout: float,
    num_workers: int = 2,
) -> None:
    """Start ``argv_for(i)`` for each worker i with its TF_CONFIG, wait at most ``timeout``
    seconds for all, kill what is left, and assert every worker exited 0 (showing the end of
    each worker's log, ``log_dir/worker{i}.log``, otherwise)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(num_workers)]}
    procs, logs = [], []
    try:
        for index in range(num_workers):
            tf_config = json.dumps({"cluster": cluster,
                                    "task": {"type": "worker", "index": index}})
            log = open(log_dir / f"worker{index}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(
                argv_for(index), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                env=dict(env, TF_CONFIG=tf_config)))
        deadline = time.time() + timeout
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    outputs = [(log_dir / f"worker{i}.log").read_text()[-3000:] for i in range(num_workers)]
    assert all(p.returncode == 0 for p in procs), "\n\n".join(outputs)
