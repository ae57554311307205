"""Start-up: `pipeline --help` and `pipeline search --help` answer without importing the
database layer, the search engine or the HTTP client (each costs a tenth of a second or more
at every start; figures in benchmarks/README.md), and a search imports no run machinery."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_PROBE = """
import json, sys
from pipeline.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = ("sqlalchemy", "whoosh", "httpx", "numpy", "pipeline.extract", "pipeline.child")
found = {m for m in sys.modules for h in heavy if m == h or m.startswith(h + ".")}
print(json.dumps(sorted(found)))
"""


def _imported(args: list[str], data_dir: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PIPELINE_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_help_imports_neither_the_database_nor_the_search_engine(tmp_path: Path) -> None:
    for args in (["--help"], ["search", "--help"], ["ingest", "--help"], ["serve", "--help"]):
        assert _imported(args, tmp_path / "data") == [], args


def test_a_search_imports_the_database_and_index_but_no_extraction(tmp_path: Path) -> None:
    imported = _imported(["search", "python"], tmp_path / "data")
    assert "sqlalchemy" in imported  # the probe did open the database
    run_only = ("httpx", "pipeline.extract", "pipeline.child")
    assert not [m for m in imported if m.startswith(run_only)]
    # SQLite's users do not pay for the PostgreSQL dialect.
    assert "sqlalchemy.dialects.postgresql" not in imported
