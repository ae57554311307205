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
