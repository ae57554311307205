from __future__ import annotations

import pytest

from pipeline.config import (
    Options,
    Secret,
    read_ids,
    resolve_data,
    resolve_kombo,
    validate_candidate_id,
)
from pipeline.errors import InvalidCandidateIdError, UsageError

ENV = {"KOMBO_API_KEY": "env-key", "KOMBO_INTEGRATION_ID": "env-integration"}


def test_flags_override_environment_which_overrides_defaults() -> None:
    from_env = resolve_kombo(Options(), env=ENV)
    assert from_env.api_key.reveal() == "env-key"
    assert from_env.integration_id == "env-integration"
    assert from_env.base_url == "https://api.kombo.dev/v1"

    flagged = resolve_kombo(Options(api_key="flag-key", region="us"), env=ENV)
    assert flagged.api_key.reveal() == "flag-key"
    assert flagged.base_url == "https://api.us.kombo.dev/v1"

    env_region = resolve_kombo(Options(), env={**ENV, "KOMBO_REGION": "ca"})
    assert env_region.base_url == "https://api.ca.kombo.dev/v1"


def test_base_url_wins_over_region() -> None:
    settings = resolve_kombo(Options(base_url="http://127.0.0.1:8765/v1/", region="us"), env=ENV)
    assert settings.base_url == "http://127.0.0.1:8765/v1"


@pytest.mark.parametrize(
    ("options", "env", "names"),
    [
        (Options(), {"KOMBO_INTEGRATION_ID": "x"}, "KOMBO_API_KEY"),
        (Options(), {"KOMBO_API_KEY": "k"}, "KOMBO_INTEGRATION_ID"),
        (Options(region="mars"), ENV, "KOMBO_REGION"),
        (Options(base_url="api.kombo.dev"), ENV, "KOMBO_BASE_URL"),
        (Options(base_url="ftp://api.kombo.dev/v1"), ENV, "KOMBO_BASE_URL"),
    ],
)
def test_configuration_errors_name_what_to_set(
    options: Options, env: dict[str, str], names: str
) -> None:
    with pytest.raises(UsageError) as info:
        resolve_kombo(options, env=env)
    message = str(info.value)
    assert names in message
    assert "\n" not in message


def test_data_settings_defaults_and_database_url() -> None:
    data = resolve_data(Options(), env={})
    assert str(data.data_dir) == "data"
    assert data.database_url == "sqlite:///data/pipeline.db"
    custom = resolve_data(Options(), env={"PIPELINE_DATA_DIR": "/srv/cv"})
    assert custom.database_url == "sqlite:////srv/cv/pipeline.db"
    with pytest.raises(UsageError, match="PIPELINE_DATABASE_URL"):
        resolve_data(Options(database_url="not a url"), env={})


def test_the_key_never_shows_in_a_repr() -> None:
    settings = resolve_kombo(Options(), env={**ENV, "KOMBO_API_KEY": "sk_live_SECRET"})
    assert "sk_live_SECRET" not in repr(settings)
    assert "sk_live_SECRET" not in str(Secret("sk_live_SECRET"))


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "a/b", "a?b", "a#b", "a%2Fb", "..", "a..b", "a\x00b", "a\nb", "x" * 65, "a b"],
)
def test_impossible_candidate_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidCandidateIdError) as info:
        validate_candidate_id(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("good", ["BTbkvY2w5ou3z3hdwuKcKzDh", "12345", "workday:abc-DEF_1"])
def test_plausible_ids_pass(good: str) -> None:
    assert validate_candidate_id(good) == good


def test_ids_file_skips_blank_lines_and_comments() -> None:
    lines = ["# nightly list", "", "  A1  ", "B2 # trailing comment", "   ", "C3"]
    assert read_ids(lines) == ["A1", "B2", "C3"]
