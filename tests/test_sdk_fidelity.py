"""The official `kombo` SDK, written by others from Kombo's own spec, judges the sandbox."""

from __future__ import annotations

import pytest

from pipeline.sandbox.server import SandboxServer

kombo = pytest.importorskip("kombo", reason="the official SDK is a test extra: pip install .[test]")


def _client(sandbox: SandboxServer, key: str | None = None):  # type: ignore[no-untyped-def]
    return kombo.Kombo(
        api_key=key or sandbox.api_key,
        integration_id=sandbox.integration_id,
        server_url=sandbox.base_url,
    )


def test_candidate_attachments_parse_with_the_sdk(sandbox: SandboxServer) -> None:
    with _client(sandbox) as sdk:
        for candidate in sandbox.world.ordered():
            res = sdk.ats.get_candidate_attachments(candidate_id=candidate.id)
            got = {a.id: a for a in res.data.results}
            assert set(got) == {a.id for a in candidate.attachments}
            for attachment in candidate.attachments:
                item = got[attachment.id]
                assert item.candidate_id == candidate.id
                assert item.type == attachment.type
                assert item.file_name == attachment.file_name
                assert item.remote_updated_at is not None


def test_application_attachments_parse_with_the_sdk(sandbox: SandboxServer) -> None:
    candidate = sandbox.world.ordered()[0]
    application = candidate.applications[0]
    with _client(sandbox) as sdk:
        res = sdk.ats.get_application_attachments(application_id=application.id)
    assert res.data.results


def test_candidate_pages_parse_with_the_sdk(sandbox: SandboxServer) -> None:
    seen = []
    with _client(sandbox) as sdk:
        res = sdk.ats.get_candidates(page_size=5, include_deleted=True)
        while res is not None:
            seen += [c.id for c in res.result.data.results]
            res = res.next()
    assert seen == [c.id for c in sandbox.world.ordered()]


def test_errors_parse_with_the_sdk(sandbox: SandboxServer) -> None:
    from kombo import errors

    with _client(sandbox, key="wrong") as sdk, pytest.raises(errors.KomboAtsError) as info:
        sdk.ats.get_candidate_attachments(candidate_id=sandbox.world.ordered()[0].id)
    assert info.value.data.error.code == "PLATFORM.AUTHENTICATION_INVALID"
    assert info.value.raw_response.status_code == 401
