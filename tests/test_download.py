"""Downloads from the sandbox's data_url links into the content-addressed store."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.config import KomboSettings
from pipeline.download import Downloader, DownloadProcess
from pipeline.errors import DownloadError, LinkExpiredError, TooLargeError
from pipeline.fetch import KomboClient, RemoteAttachment
from pipeline.filestore import LocalFileStore
from pipeline.sandbox.server import SandboxServer


def _cv(sandbox: SandboxServer, settings: KomboSettings, kind: str = "pdf") -> RemoteAttachment:
    candidate = next(
        c
        for c in sandbox.world.ordered()
        if any(a.type == "CV" and a.kind == kind for a in c.attachments)
    )
    with KomboClient(settings) as client:
        listing = client.candidate_attachments(candidate.id)
    return next(a for a in listing.attachments if a.type == "CV")


def _files_left(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_download_is_stored_under_its_hash(
    sandbox: SandboxServer, settings: KomboSettings, tmp_path: Path
) -> None:
    item = _cv(sandbox, settings)
    store = LocalFileStore(tmp_path / "files")
    downloader = Downloader(settings, store)
    got = downloader.download(item.data_url, subject="cv")
    expected = sandbox.world.body(item.id)
    assert got.sha256 == hashlib.sha256(expected).hexdigest()
    assert got.size_bytes == len(expected)
    path = store.path(got.sha256)
    assert path.read_bytes() == expected
    assert path.stat().st_mode & 0o777 == 0o600
    # Named by hash, never by the remote file name.
    assert item.file_name not in str(path)


def test_the_key_is_never_sent_with_a_download(
    sandbox: SandboxServer, settings: KomboSettings, tmp_path: Path
) -> None:
    item = _cv(sandbox, settings)
    Downloader(settings, LocalFileStore(tmp_path)).download(item.data_url, subject="cv")
    assert sandbox.stats.file_requests == 1
    assert sandbox.stats.auth_headers_on_files == 0


@pytest.mark.parametrize(
    ("fault", "read_timeout"),
    [
        ({"kind": "truncate"}, None),  # a body cut off halfway
        ({"kind": "slow", "target": "files", "seconds": 1.5}, 0.3),  # slower than the timeout
    ],
    ids=["truncated", "slow"],
)
def test_a_download_that_fails_once_is_retried(
    sandbox: SandboxServer,
    settings: KomboSettings,
    tmp_path: Path,
    fault: dict[str, object],
    read_timeout: float | None,
) -> None:
    item = _cv(sandbox, settings)
    sandbox.add_fault(match=item.id, times=1, **fault)
    if read_timeout is not None:
        settings = replace(settings, read_timeout=read_timeout)
    store = LocalFileStore(tmp_path / "files")
    got = Downloader(settings, store).download(item.data_url, subject="cv")
    assert store.path(got.sha256).read_bytes() == sandbox.world.body(item.id)
    assert sandbox.stats.file_requests == 2


def test_a_body_truncated_every_time_fails_and_leaves_nothing(
    sandbox: SandboxServer, settings: KomboSettings, tmp_path: Path
) -> None:
    item = _cv(sandbox, settings)
    sandbox.add_fault(kind="truncate", match=item.id, times=None)
    store = LocalFileStore(tmp_path / "files")
    with pytest.raises(DownloadError) as info:
        Downloader(settings, store).download(item.data_url, subject="cv")
    assert info.value.transient
    assert _files_left(tmp_path / "files") == []


def test_a_file_over_the_cap_is_refused_and_leaves_nothing(
    sandbox: SandboxServer, settings: KomboSettings, tmp_path: Path
) -> None:
    item = _cv(sandbox, settings)
    store = LocalFileStore(tmp_path / "files")
    with pytest.raises(TooLargeError):
        Downloader(replace(settings, max_file_bytes=100), store).download(
            item.data_url, subject="cv"
        )
    assert _files_left(tmp_path / "files") == []


def test_a_download_slow_every_time_times_out_and_leaves_nothing(
    sandbox: SandboxServer, settings: KomboSettings, tmp_path: Path
) -> None:
    item = _cv(sandbox, settings)
    sandbox.add_fault(kind="slow", target="files", match=item.id, seconds=1.0, times=None)
    quick = replace(settings, read_timeout=0.2, max_attempts=2)
    with pytest.raises(DownloadError, match="timed out") as info:
        Downloader(quick, LocalFileStore(tmp_path / "files")).download(item.data_url, subject="cv")
    assert info.value.transient
    assert sandbox.stats.file_requests == 2
    assert _files_left(tmp_path / "files") == []


def test_downloads_reuse_their_connections(
    sandbox: SandboxServer, settings: KomboSettings, tmp_path: Path
) -> None:
    """Keep-alive: one after another, every file comes over the first connection."""
    with KomboClient(settings) as client:
        urls = [
            a.data_url
            for c in sandbox.world.ordered()[:4]
            for a in client.candidate_attachments(c.id).attachments
        ]
    downloader = Downloader(settings, LocalFileStore(tmp_path / "files"))
    try:
        for url in urls:
            downloader.download(url, subject="cv")
    finally:
        downloader.close()
    assert sandbox.stats.file_requests == len(urls) > 4
    assert sandbox.stats.file_connections == 1


def test_an_expired_link_says_so(
    sandbox: SandboxServer, settings: KomboSettings, tmp_path: Path
) -> None:
    item = _cv(sandbox, settings)
    sandbox.add_fault(kind="expired", match=item.id, times=1)
    with pytest.raises(LinkExpiredError):
        Downloader(settings, LocalFileStore(tmp_path)).download(item.data_url, subject="cv")


def test_a_non_http_link_is_refused(settings: KomboSettings, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="http"):
        Downloader(settings, LocalFileStore(tmp_path)).download("file:///etc/passwd", subject="x")


def test_the_download_process_downloads_and_never_holds_the_key(
    sandbox: SandboxServer, settings: KomboSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = settings.api_key.reveal()
    monkeypatch.setenv("KOMBO_API_KEY", key)
    item = _cv(sandbox, settings)
    store = LocalFileStore(tmp_path / "files")
    process = DownloadProcess(settings, store)
    try:
        environment = Path(f"/proc/{process.pid}/environ").read_bytes()
        assert key.encode() not in environment
        got = process.download(item.data_url, subject="cv")
        assert store.path(got.sha256).read_bytes()[:5] == b"%PDF-"
        with pytest.raises(DownloadError, match="not an http"):
            process.download("file:///etc/passwd", subject="x")
    finally:
        process.close()
    assert process.returncode == 0
    assert sandbox.stats.auth_headers_on_files == 0
