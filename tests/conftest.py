"""Shared fixtures: a real sandbox server on 127.0.0.1, real data directories, and a way to
run the real CLI in-process with its exit code, stdout and stderr."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import DataSettings, KomboSettings, Options, resolve_kombo
from pipeline.sandbox.generator import World
from pipeline.sandbox.server import SandboxServer
from tests import postgres
from tests.helpers import CliResult

# Small enough to be quick, large enough to hold every language and file kind.
WORLD_SIZE = 16


@pytest.fixture(scope="session")
def world_template() -> World:
    """Rendered once per session; tests that mutate a world build their own."""
    world = World(candidates=WORLD_SIZE, seed=7)
    for attachment_id in world.attachments:
        world.body(attachment_id)
    return world


@pytest.fixture
def sandbox(world_template: World) -> Iterator[SandboxServer]:
    world = World(candidates=WORLD_SIZE, seed=7)
    world._bodies = dict(world_template._bodies)  # same seed, same bytes: reuse renders
    with SandboxServer(world) as server:
        yield server


@pytest.fixture
def settings(sandbox: SandboxServer) -> KomboSettings:
    return resolve_kombo(
        Options(
            api_key=sandbox.api_key,
            integration_id=sandbox.integration_id,
            base_url=sandbox.base_url,
        ),
        env={},
        retry_base_delay=0.01,
        retry_max_delay=0.05,
    )


@pytest.fixture
def data(tmp_path: Path) -> DataSettings:
    return DataSettings(
        data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'data' / 'pipeline.db'}"
    )


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[postgres.Cluster]:
    """One throwaway PostgreSQL cluster for the session (``tests/postgres.py``); the tests
    that use it skip, saying why, where no PostgreSQL is installed."""
    why = postgres.unavailable()
    if why:
        pytest.skip(why)
    cluster = postgres.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: postgres.Cluster) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test: its SQLAlchemy URL."""
    url = postgres_cluster.database()
    yield url
    postgres_cluster.drop(url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test's database on each engine: SQLite in the data directory, and a fresh
    PostgreSQL database (``-m postgres`` selects those; ``-m "not postgres"`` leaves them)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'pipeline.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def on_each_database(cli, database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:  # type: ignore[no-untyped-def]
    """The ``cli`` fixture's commands on each deployment: SQLite with Whoosh in the data
    directory, and PostgreSQL for the records and the search (marked ``postgres``)."""
    if database_url.startswith("postgresql"):
        monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
        monkeypatch.setenv("PIPELINE_SEARCH", "postgres")
    return database_url


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run ``python -m pipeline ARGS`` in-process with a clean environment."""
    for name in (
        "KOMBO_API_KEY",
        "KOMBO_INTEGRATION_ID",
        "KOMBO_BASE_URL",
        "KOMBO_REGION",
        "PIPELINE_DATA_DIR",
        "PIPELINE_DATABASE_URL",
        "PIPELINE_SEARCH",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIPELINE_RETRY_BASE_DELAY", "0.01")
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data"))

    def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> CliResult:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        out, err = io.StringIO(), io.StringIO()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = 0
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exc:
                code = int(exc.code or 0)
        return CliResult(code, out.getvalue(), err.getvalue())

    return run
