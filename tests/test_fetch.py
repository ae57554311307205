"""The Kombo client against the sandbox over real HTTP, with faults injected by the sandbox."""

from __future__ import annotations

import pytest

from pipeline.config import KomboSettings
from pipeline.errors import (
    RETRYABLE_CODES,
    IntegrationError,
    KomboError,
    ResponseInvalidError,
    TransportError,
)
from pipeline.fetch import KomboClient
from pipeline.sandbox.server import SandboxServer


def _first(sandbox: SandboxServer) -> str:
    return sandbox.world.ordered()[0].id


def test_attachments_come_back_whole(sandbox: SandboxServer, settings: KomboSettings) -> None:
    candidate = sandbox.world.ordered()[0]
    with KomboClient(settings) as client:
        listing = client.candidate_attachments(candidate.id)
    assert {a.id for a in listing.attachments} == {a.id for a in candidate.attachments}
    cv = next(a for a in listing.attachments if a.type == "CV")
    assert cv.candidate_id == candidate.id
    assert cv.file_name.endswith((".pdf", ".docx", ".txt"))
    assert cv.data_url.startswith(sandbox.origin + "/files/")
    assert cv.remote_updated_at is not None and cv.remote_updated_at.tzinfo is not None


def test_warnings_are_returned_and_logged(
    sandbox: SandboxServer, settings: KomboSettings, caplog: pytest.LogCaptureFixture
) -> None:
    with_photo = next(
        c for c in sandbox.world.ordered() if any(a.kind == "png" for a in c.attachments)
    )
    with KomboClient(settings) as client:
        listing = client.candidate_attachments(with_photo.id)
    assert listing.warnings == ["Attachment photo.png has no text layer in the source ATS."]
    assert "photo.png has no text layer" in caplog.text


def test_wrong_key_is_an_integration_error_with_the_code(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    from dataclasses import replace

    from pipeline.config import Secret

    wrong = replace(settings, api_key=Secret("not-the-key"))
    with KomboClient(wrong) as client, pytest.raises(IntegrationError) as info:
        client.candidate_attachments(_first(sandbox))
    assert info.value.code == "PLATFORM.AUTHENTICATION_INVALID"
    assert info.value.status_code == 401
    assert "not-the-key" not in str(info.value)
    assert sandbox.stats.requests.get("action") == 1  # not retried


def test_unknown_integration_is_an_integration_error(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    from dataclasses import replace

    with (
        KomboClient(replace(settings, integration_id="greenhouse:nope")) as client,
        pytest.raises(IntegrationError) as info,
    ):
        client.candidate_attachments(_first(sandbox))
    assert info.value.code == "PLATFORM.INTEGRATION_NOT_FOUND"


def test_unknown_candidate_fails_alone(sandbox: SandboxServer, settings: KomboSettings) -> None:
    with KomboClient(settings) as client:
        with pytest.raises(KomboError) as info:
            client.candidate_attachments("UnknownCandidate12345678")
        assert not isinstance(info.value, IntegrationError)
        assert not info.value.transient
        assert info.value.status_code == 404
        # The client still works for the next candidate.
        assert client.candidate_attachments(_first(sandbox)).attachments


@pytest.mark.parametrize("code", sorted(RETRYABLE_CODES))
def test_retryable_codes_recover(
    sandbox: SandboxServer, settings: KomboSettings, code: str
) -> None:
    status = 503 if code == "REMOTE.SERVICE_UNAVAILABLE" else 429
    sandbox.add_fault(kind="error", status=status, code=code, times=2)
    with KomboClient(settings) as client:
        listing = client.candidate_attachments(_first(sandbox))
    assert listing.attachments
    assert client.calls == 3


def test_load_balancer_503_with_html_body_recovers(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    sandbox.add_fault(kind="html503", times=1)
    with KomboClient(settings) as client:
        assert client.candidate_attachments(_first(sandbox)).attachments
    assert client.calls == 2


def test_retries_give_up_after_the_attempts(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    sandbox.add_fault(kind="html503", times=None)
    with KomboClient(settings) as client, pytest.raises(TransportError):
        client.candidate_attachments(_first(sandbox))
    assert client.calls == settings.max_attempts


def test_input_errors_are_not_retried(sandbox: SandboxServer, settings: KomboSettings) -> None:
    sandbox.add_fault(kind="error", status=400, code="PLATFORM.INPUT_INVALID", times=None)
    with KomboClient(settings) as client, pytest.raises(KomboError) as info:
        client.candidate_attachments(_first(sandbox))
    assert info.value.code == "PLATFORM.INPUT_INVALID"
    assert client.calls == 1


def test_a_body_that_breaks_the_schema_is_refused(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    sandbox.add_fault(kind="bad_schema", times=None)
    with KomboClient(settings) as client, pytest.raises(ResponseInvalidError) as info:
        client.candidate_attachments(_first(sandbox))
    assert "data_url" in str(info.value)


def test_a_lone_surrogate_in_an_answer_is_mended(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    # JSON can spell "\ud800", which no UTF-8 database would store.
    sandbox.add_fault(kind="bad_unicode", times=None)
    with KomboClient(settings) as client:
        listing = client.candidate_attachments(_first(sandbox))
    names = [item.file_name for item in listing.attachments]
    assert names[0].endswith("\ufffd")
    assert all(name.encode("utf-8") for name in names)


def test_a_cut_json_body_is_retried(sandbox: SandboxServer, settings: KomboSettings) -> None:
    sandbox.add_fault(kind="broken_json", times=1)
    with KomboClient(settings) as client:
        assert client.candidate_attachments(_first(sandbox)).attachments
    assert client.calls == 2


def test_retry_after_is_honoured(sandbox: SandboxServer, settings: KomboSettings) -> None:
    import time

    sandbox.add_fault(
        kind="error", status=429, code="PLATFORM.RATE_LIMIT_EXCEEDED", retry_after=0.3, times=1
    )
    from dataclasses import replace

    with KomboClient(replace(settings, retry_max_delay=5.0)) as client:
        started = time.monotonic()
        client.candidate_attachments(_first(sandbox))
        assert time.monotonic() - started >= 0.3


def test_candidate_listing_follows_the_cursor(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    with KomboClient(settings) as client:
        pages = list(client.candidate_pages(page_size=5))
    ids = [c.id for page in pages for c in page.candidates]
    assert len(pages) == -(-len(sandbox.world.candidates) // 5)
    assert ids == [c.id for c in sandbox.world.ordered()]


def test_ids_are_percent_encoded_into_the_path(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    with KomboClient(settings) as client, pytest.raises(KomboError) as info:
        client.candidate_attachments("workday:abc")
    assert info.value.status_code == 404


# -- bounds, normalisation and secrets (issue 14) -----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-05-01T10:00:00.000Z", "2024-05-01T10:00:00+00:00"),
        ("2024-05-01T10:00:00.000z", "2024-05-01T10:00:00+00:00"),
        ("2024-05-01t10:00:00z", "2024-05-01T10:00:00+00:00"),
        ("2024-06-30T23:59:60Z", "2024-07-01T00:00:00+00:00"),
        ("2024-06-30T23:59:60.5Z", "2024-07-01T00:00:00.500000+00:00"),
        ("2024-05-01T10:00:00+01:00", "2024-05-01T09:00:00+00:00"),
        ("2024-05-01T10:00:00+0100", "2024-05-01T09:00:00+00:00"),
        ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00+00:00"),
        ("2024-05-01T10:00:00", "2024-05-01T10:00:00+00:00"),
        ("2024-05-01T10:00:00.123456789Z", "2024-05-01T10:00:00.123456+00:00"),
        ("2024-05-01", "2024-05-01T00:00:00+00:00"),
        ("20240501T100000Z", "2024-05-01T10:00:00+00:00"),
        ("2024-W18-3", "2024-05-01T00:00:00+00:00"),
        ("2024-122", "2024-05-01T00:00:00+00:00"),
        ("2024-05-01T24:00:00Z", "2024-05-02T00:00:00+00:00"),
    ],
)
def test_every_iso_8601_form_becomes_aware_utc(raw: str, expected: str) -> None:
    from pipeline.fetch import parse_time

    parsed = parse_time(raw)
    assert parsed is not None and parsed.isoformat() == expected


@pytest.mark.parametrize("raw", ["", "yesterday", "2024-13-01", "2024-05-01T25:00:00Z", 17])
def test_an_unreadable_timestamp_is_a_value_error(raw: object) -> None:
    from pipeline.fetch import parse_time

    with pytest.raises(ValueError):
        parse_time(raw)


def test_redact_removes_the_key_in_any_spelling() -> None:
    from pipeline.fetch import redact

    key = "k3y/with+odd=chars"
    text = f"Bearer {key} and %s" % "k3y%2Fwith%2Bodd%3Dchars"
    assert key not in redact(text, key) and "k3y%2F" not in redact(text, key)
    assert redact("nothing here", key) == "nothing here"


@pytest.mark.parametrize(
    ("url", "usable"),
    [
        ("https://files.example.com/a?b=c", True),
        ("http://127.0.0.1:8080/files/x", True),
        ("http://[::1]:8080/x", True),
        ("http://[::1/x", False),
        ("file:///etc/passwd", False),
        ("https://", False),
        ("http://host:99999/x", False),
        ("http://host/a b", False),
        ("", False),
    ],
)
def test_data_url_problems(url: str, usable: bool) -> None:
    from pipeline.fetch import data_url_problem

    assert (data_url_problem(url) is None) is usable


def test_the_retry_budget_holds_inside_an_attempt(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    import time
    from dataclasses import replace

    sandbox.add_fault(kind="trickle", seconds=0.2, times=None)
    # --timeout is generous; the budget of the whole call is not.
    tight = replace(settings, read_timeout=60.0, retry_budget=1.5)
    started = time.monotonic()
    with KomboClient(tight) as client, pytest.raises(TransportError) as info:
        client.candidate_attachments(_first(sandbox))
    assert time.monotonic() - started < 5
    assert "did not arrive whole" in str(info.value)


def test_a_duplicate_is_kept_once_and_a_foreign_item_refused(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    first = sandbox.world.ordered()[0]
    sandbox.add_fault(kind="duplicate", match=first.id, times=1)
    with KomboClient(settings) as client:
        listing = client.candidate_attachments(first.id)
        assert [a.id for a in listing.attachments] == [a.id for a in first.attachments]
        assert any("listed twice" in w for w in listing.warnings)
        sandbox.add_fault(kind="foreign", match=first.id, times=1)
        with pytest.raises(ResponseInvalidError, match="another candidate"):
            client.candidate_attachments(first.id)


def test_a_flood_is_not_read_past_the_cap(sandbox: SandboxServer, settings: KomboSettings) -> None:
    sandbox.add_fault(kind="endless", seconds=30, times=None)
    with KomboClient(settings) as client, pytest.raises(ResponseInvalidError) as info:
        client.candidate_attachments(_first(sandbox))
    assert "larger than" in str(info.value)
    assert client.calls == 1  # the same flood again would help nobody


def test_deep_json_is_refused_before_parsing(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    sandbox.add_fault(kind="deep", depth=100_000, times=None)
    with KomboClient(settings) as client, pytest.raises(ResponseInvalidError, match="nested"):
        client.candidate_attachments(_first(sandbox))


def test_an_echoed_key_is_redacted_from_every_field(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    sandbox.add_fault(kind="echo_key", status=400, code="PLATFORM.INPUT_INVALID", times=None)
    with KomboClient(settings) as client, pytest.raises(KomboError) as info:
        client.candidate_attachments(_first(sandbox))
    error = info.value
    for text in (str(error), error.message, error.kombo_message, error.title or "", *error.args):
        assert sandbox.api_key not in str(text)
    assert "[redacted]" in error.message


def test_proxies_are_read_from_the_environment_as_httpx_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.fetch import environment_proxy

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert environment_proxy("https://api.kombo.dev/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")
    monkeypatch.setenv("ALL_PROXY", "socks5://socks.corp:1080")
    assert environment_proxy("https://api.kombo.dev/v1") == "http://proxy.corp:3128"
    assert environment_proxy("http://api.kombo.dev/v1") == "socks5://socks.corp:1080"
    monkeypatch.setenv("NO_PROXY", "kombo.dev")
    assert environment_proxy("https://api.kombo.dev/v1") is None
    monkeypatch.setenv("NO_PROXY", "*")
    assert environment_proxy("https://api.kombo.dev/v1") is None


def test_an_unreadable_ca_file_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, settings: KomboSettings, tmp_path
) -> None:
    from pipeline.errors import UsageError

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(UsageError, match="SSL_CERT_FILE"):
        KomboClient(settings)


def test_a_listing_longer_than_the_bound_is_refused(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    from pipeline.fetch import MAX_LISTED_ATTACHMENTS

    first = sandbox.world.ordered()[0]
    sandbox.add_fault(kind="many", match=first.id, depth=MAX_LISTED_ATTACHMENTS, times=1)
    sandbox.add_fault(kind="many", match=first.id, depth=MAX_LISTED_ATTACHMENTS + 1, times=1)
    with KomboClient(settings) as client:
        assert len(client.candidate_attachments(first.id).attachments) == MAX_LISTED_ATTACHMENTS
        with pytest.raises(ResponseInvalidError, match="more than the"):
            client.candidate_attachments(first.id)


def test_trickled_headers_are_bounded_by_the_timeout(
    sandbox: SandboxServer, settings: KomboSettings
) -> None:
    import time
    from dataclasses import replace

    # A byte every 0.2 s never trips a one-second silence, and never ends the headers either.
    sandbox.add_fault(kind="trickle", value="headers", seconds=0.2, times=None)
    started = time.monotonic()
    with (
        KomboClient(replace(settings, read_timeout=1.0, max_attempts=2)) as client,
        pytest.raises(TransportError, match=r"did not arrive whole within 1\.0 s"),
    ):
        client.candidate_attachments(_first(sandbox))
    assert time.monotonic() - started < 5
    assert client.calls == 2
