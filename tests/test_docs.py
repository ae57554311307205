"""Every command has help text and is documented in the README (as sqlite-utils checks)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pipeline
from pipeline.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMANDS = sorted(cli.commands)


def test_the_interface_commands_exist() -> None:
    assert {"ingest", "search", "export", "reindex", "demo", "sandbox"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_and_is_in_the_readme(name: str) -> None:
    command = cli.commands[name]
    assert command.help and len(command.help.strip()) > 20, name
    assert f"pipeline {name}" in README, f"README does not show `pipeline {name}`"


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```", 2)[1]
    assert "pip install" in first_block and "python -m pipeline demo" in first_block
    assert "pytest" in first_block


def test_public_names_are_exported() -> None:
    for name in pipeline.__all__:
        assert hasattr(pipeline, name), name


@pytest.mark.parametrize(
    "variable",
    [
        "KOMBO_API_KEY",
        "KOMBO_INTEGRATION_ID",
        "KOMBO_BASE_URL",
        "KOMBO_REGION",
        "PIPELINE_DATA_DIR",
        "PIPELINE_DATABASE_URL",
        "PIPELINE_SEARCH",
        "PIPELINE_HOST",
        "PIPELINE_PORT",
        "KOMBO_WEBHOOK_SECRET",
    ],
)
def test_every_environment_variable_is_documented(variable: str) -> None:
    assert variable in README


def test_the_readme_is_a_map() -> None:
    lines = README.count("\n")
    assert lines < 220, f"README.md has {lines} lines: move detail into docs/"
    # Measured figures live in benchmarks/README.md, with their dates; the README has none.
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", README), "a dated figure in README.md"


def _links(page: Path) -> list[tuple[str, str]]:
    """(target, anchor) of each relative Markdown link on the page."""
    text = page.read_text(encoding="utf-8")
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        found.append((path, anchor))
    return found


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
        anchors.add(slug.replace(" ", "-"))
    return anchors


def test_the_readme_links_to_the_docs() -> None:
    linked = {path for path, _ in _links(ROOT / "README.md")}
    for page in ("docs/architecture.md", "docs/search.md", "docs/operations.md"):
        assert page in linked, f"README.md does not link {page}"
    assert "benchmarks/README.md" in linked


PAGES = [
    "README.md",
    "benchmarks/README.md",
    "data/README.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
]


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page: str) -> None:
    source = ROOT / page
    for path, anchor in _links(source):
        target = (source.parent / path).resolve() if path else source
        assert target.exists(), f"{page} links {path}, which does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"{page} links {path}#{anchor}: no such heading"


def test_the_documented_cron_line_hands_the_env_file_to_the_pipeline(tmp_path: Path) -> None:
    """The cron line of docs/operations.md, run by /bin/sh as cron runs it, with a kombo.env
    in the plain NAME=value form systemd's EnvironmentFile reads: the variables reach the
    pipeline's process (a plain ``. ./kombo.env`` sets them in the shell only)."""
    import subprocess
    import sys

    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    cron = operations.split("```cron\n", 1)[1].split("```", 1)[0].splitlines()[0]
    command = cron.split(None, 5)[5]  # after the five time fields
    (tmp_path / "kombo.env").write_text(
        "KOMBO_API_KEY=key-from-the-env-file\nKOMBO_INTEGRATION_ID=workday:abc\n"
        "PIPELINE_DATA_DIR=/srv/cv-pipeline/data\n",
        encoding="utf-8",
    )
    probe = f"{sys.executable} -c 'import os; print(os.environ.get(\"KOMBO_API_KEY\"))'"
    command = command.replace("cd /srv/cv-pipeline", f"cd {tmp_path}")
    command = re.sub(r"\.venv/bin/python -m pipeline [^>]*>>.*$", probe, command)
    shown = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "key-from-the-env-file"
