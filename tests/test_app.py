"""The application layer: read-only commands build nothing a run needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_READ_ONLY = """
import json, sys
from pipeline.cli import main
for command in (["status"], ["check"], ["export"], ["search", "Python"], ["status"]):
    try:
        main(command)
    except SystemExit as exc:
        assert not exc.code, (command, exc.code)
run_only = ["pipeline.engine", "pipeline.download", "pipeline.fetch", "httpx"]
print(json.dumps([name for name in run_only if name in sys.modules]))
"""


def test_read_only_commands_start_no_run_machinery(tmp_path: Path) -> None:
    """No HTTP client, download process or run engine is even imported: a search or an
    export on a busy machine starts as fast as the database opens."""
    done = subprocess.run(
        [sys.executable, "-c", _READ_ONLY],
        capture_output=True,
        text=True,
        check=True,
        env={"PIPELINE_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(done.stdout.splitlines()[-1]) == []


def _pipeline(args: list[str], data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PIPELINE_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin", **env},
    )


def test_status_and_check_say_which_search_paths_are_in_use(tmp_path: Path) -> None:
    """An operator sees whether search runs on its fast paths or on Whoosh's own, and why."""
    data = tmp_path / "data"
    for env, expected in (
        ({}, "fast (whoosh-reloaded "),
        (
            {"PIPELINE_SEARCH_FAST": "off"},
            "fallback: Whoosh's own writer and matchers (PIPELINE_SEARCH_FAST=off)",
        ),
    ):
        report = _pipeline(["status", "--json"], data, **env)
        assert report.returncode == 0, report.stderr
        assert json.loads(report.stdout)["search_engine"].startswith(expected)

        text = _pipeline(["status"], data, **env)
        assert text.returncode == 0, text.stderr
        assert f"search engine: {expected}" in text.stdout

        check = _pipeline(["check"], data, **env)
        assert check.returncode == 0, check.stderr  # a fresh data directory has no drift
        assert f"search engine: {expected}" in check.stdout
        assert "check succeeded: no drift" in check.stdout
