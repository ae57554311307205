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
