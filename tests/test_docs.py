"""Every command has help text and is documented in the README (as sqlite-utils checks)."""

from __future__ import annotations

from pathlib import Path

import pytest

import pipeline
from pipeline.cli import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
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
    ],
)
def test_every_environment_variable_is_documented(variable: str) -> None:
    assert variable in README
