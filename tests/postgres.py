"""A throwaway PostgreSQL cluster for the tests, from the installed binaries.

``initdb`` into a temporary folder, one ``postgres`` server listening on a unix socket in
that folder only (no TCP port to collide with another run), durability off (fsync,
synchronous commit and full-page writes: a crash loses nothing a test needs). Each test gets
a database of its own, copied from a template that already holds the extensions search uses.

PostgreSQL refuses to run as root; as root the cluster belongs to ``nobody`` (the server
process is started with that user; connections come over the socket with ``trust``, so the
tests' own user does not matter). Where no binaries are installed, :func:`binaries` says why
and the fixtures skip.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Debian installs the server outside PATH; initdb/pg_ctl may also be linked into PATH.
_SEARCH = ("/usr/lib/postgresql/*/bin",)
EXTENSIONS = ("unaccent",)
TEMPLATE = "pipeline_template"
_UNPRIVILEGED = "nobody"


def binaries() -> tuple[Path | None, str]:
    """The folder holding ``initdb`` and ``postgres``, or None and why there is none."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    for pattern in _SEARCH:
        root = Path(pattern.split("*")[0])
        if root.is_dir():
            candidates += sorted(root.glob(pattern[len(str(root)) + 1 :]), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder, ""
    return None, (
        "no PostgreSQL server binaries (initdb, postgres) installed: "
        "apt-get install postgresql (Debian) to run the PostgreSQL tests"
    )


def _driver_missing() -> str:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install -e '.[postgres]'"
    return ""


def unavailable() -> str:
    """Why the PostgreSQL tests cannot run here ("" when they can)."""
    folder, why = binaries()
    return why if folder is None else _driver_missing()


@dataclass
class Cluster:
    """A running throwaway cluster; :meth:`database` makes a fresh database in it."""

    folder: Path
    process: subprocess.Popen[bytes]
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def socket_dir(self) -> Path:
        return self.folder

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}"

    def _connect(self, database: str = "postgres"):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir), user="postgres", dbname=database, autocommit=True
        )

    def execute(self, sql: str, database: str = "postgres") -> None:
        with self._connect(database) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # our own literal SQL

    def database(self, prefix: str = "test") -> str:
        """A new, empty database (the extensions already in it): its SQLAlchemy URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._numbers)}"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
        return self.url(name)

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1].split("?", 1)[0]
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: no checkpoint wait
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _reachable() -> str:
    """A temporary folder every user can pass through (a private /tmp, 0700, is not)."""
    for folder in (tempfile.gettempdir(), "/var/tmp", "/dev/shm"):
        path = Path(folder)
        if path.is_dir() and all(p.stat().st_mode & 0o001 for p in (path, *path.parents)):
            return str(path)
    raise RuntimeError("no temporary folder the PostgreSQL test server's user can reach")


def start() -> Cluster:
    """initdb and start a cluster; the caller stops it (:meth:`Cluster.stop`)."""
    folder, why = binaries()
    if folder is None:
        raise RuntimeError(why)
    user = _UNPRIVILEGED if os.geteuid() == 0 else None
    # Short (a socket path has 107 bytes), and one the cluster's user can reach.
    root = Path(tempfile.mkdtemp(prefix="pgtest-", dir=_reachable() if user else None))
    if user:
        shutil.chown(root, user=user)
    data = root / "data"
    made = subprocess.run(
        [
            str(folder / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ],
        capture_output=True,
        user=user,
        cwd=root,
    )
    if made.returncode:
        shutil.rmtree(root, ignore_errors=True)
        said = (made.stderr or made.stdout).decode(errors="replace").strip()
        raise RuntimeError(f"initdb failed: {said}")
    settings = {
        "listen_addresses": "''",
        "unix_socket_directories": f"'{root}'",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "100",
        "shared_buffers": "32MB",
        "log_min_messages": "warning",
    }
    options = [f"-c{name}={value}".replace("'", "") for name, value in settings.items()]
    log_file = open(root / "server.log", "wb")  # noqa: SIM115  # the server's lifetime
    process = subprocess.Popen(
        [str(folder / "postgres"), "-D", str(data), *options],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        user=user,
        cwd=root,
        start_new_session=True,  # a Ctrl-C in pytest stops the tests, not the server first
    )
    log_file.close()
    cluster = Cluster(root, process)
    deadline = time.monotonic() + 60
    while True:
        try:
            cluster.execute(f"CREATE DATABASE {TEMPLATE}")
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                log = (root / "server.log").read_text(errors="replace")[-2000:]
                cluster.stop()
                raise RuntimeError(f"the PostgreSQL test server did not start:\n{log}") from None
            time.sleep(0.1)
    for name in EXTENSIONS:
        cluster.execute(f"CREATE EXTENSION IF NOT EXISTS {name}", TEMPLATE)
    return cluster
