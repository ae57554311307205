"""Child processes that do one stage's work (downloads, index writes, a rebuild's segments).

Each is a fresh interpreter (a fork of the threaded parent would be unsafe) that imports only
its own stage and talks to the parent over a socket pair with ``multiprocessing``'s framed
pickles. None is given the API key: it is taken out of the environment it inherits.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

KEY_VARIABLE = "KOMBO_API_KEY"


def start(module: str, function: str) -> tuple[subprocess.Popen[bytes], Connection]:
    """Run ``module.function(fd)`` in a new interpreter; return it and our end of the pair."""
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-c", f"from {module} import {function}; {function}({theirs.fileno()})"],
        pass_fds=[theirs.fileno()],
        env={k: v for k, v in os.environ.items() if k != KEY_VARIABLE},
        stdin=subprocess.DEVNULL,
    )
    theirs.close()
    return process, Connection(ours.detach())


def stop(
    process: subprocess.Popen[bytes],
    conn: Connection,
    send_lock: threading.Lock,
    reader: threading.Thread,
    *,
    cancel: bool,
    timeout: float,
) -> None:
    """Ask the child to finish (``None``) and wait for it, or, with ``cancel``, kill it."""
    if not cancel:
        with contextlib.suppress(OSError), send_lock:
            conn.send(None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=5)
    with contextlib.suppress(OSError):
        conn.close()
    reader.join(timeout=5)
