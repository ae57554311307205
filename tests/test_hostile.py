"""Hostile and broken Kombo answers (issue 14), each served by the sandbox over real HTTP to a
real ``python -m pipeline ingest``: the bad candidate fails alone with a one-line reason, the
good ones are indexed, the run ends with its summary line and no traceback, and the API key
is nowhere in what the user sees or the database keeps."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from pipeline.config import KomboSettings
from pipeline.sandbox.generator import SandboxCandidate
from pipeline.sandbox.server import SandboxServer

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Ran:
    code: int
    out: str
    err: str
    seconds: float
    data_dir: Path

    @property
    def summary(self) -> str:
        lines = self.out.strip().splitlines()
        return lines[-1] if lines else ""

    def stored_bytes(self) -> bytes:
        """Everything the database holds on disk (its WAL too)."""
        return b"".join(p.read_bytes() for p in self.data_dir.glob("pipeline.db*") if p.is_file())

    def export(self) -> list[dict[str, object]]:
        result = _pipeline(["export"], self.data_dir, {}, timeout=60)
        assert result.code == 0, result.err
        return [json.loads(line) for line in result.out.splitlines()]


def _pipeline(args: list[str], data_dir: Path, extra_env: dict[str, str], *, timeout: float) -> Ran:
    """The real CLI in a process of its own, stopped (with its children) at ``timeout``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KOMBO_", "PIPELINE_")) and not k.lower().endswith("_proxy")
    }
    env.update(
        {
            "PIPELINE_DATA_DIR": str(data_dir),
            "PIPELINE_RETRY_BASE_DELAY": "0.01",
            "PYTHONPATH": str(ROOT),
            **extra_env,
        }
    )
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(
            f"pipeline {' '.join(args[:1])} did not end within {timeout:.0f} s; stderr:\n"
            + err[-2000:]
        ) from None
    return Ran(process.returncode, out, err, time.monotonic() - started, data_dir)


def _ingest(
    sandbox: SandboxServer,
    tmp_path: Path,
    ids: list[str],
    *flags: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Ran:
    return _pipeline(
        ["ingest", *flags, *ids],
        tmp_path / "data",
        {**sandbox.env(), **(env or {})},
        timeout=timeout,
    )


def _three(sandbox: SandboxServer) -> tuple[SandboxCandidate, list[SandboxCandidate]]:
    """A bad candidate (one with several attachments) and two good ones."""
    ordered = sandbox.world.ordered()
    bad = next(c for c in ordered if len(c.attachments) >= 2)
    good = [c for c in ordered if c is not bad][:2]
    return bad, good


def _assert_failed_alone(
    ran: Ran, bad: SandboxCandidate, good: list[SandboxCandidate], reason: str, key: str
) -> None:
    assert ran.code == 1, (ran.out, ran.err)
    assert "Traceback" not in ran.err, ran.err
    assert ran.summary.startswith("ingest failed: 3 candidates (1 failed)"), ran.summary
    # Every attachment of the good candidates reached an outcome.
    processed = int(ran.summary.split("), ")[1].split(" attachments")[0])
    assert processed == sum(len(c.attachments) for c in good), ran.summary
    lines = [line for line in ran.err.splitlines() if bad.id in line and reason in line]
    assert lines, f"no line names {bad.id} with {reason!r}:\n{ran.err}"
    records = ran.export()
    assert {r["candidate_id"] for r in records} == {c.id for c in good}
    assert key not in ran.out and key not in ran.err
    assert key.encode() not in ran.stored_bytes()


HOSTILE_LISTINGS = [
    pytest.param({"kind": "deep", "depth": 5000}, "nested more than", id="nested-5000-deep"),
    pytest.param({"kind": "foreign"}, "of another candidate", id="foreign-candidate-id"),
    pytest.param(
        {"kind": "data_url", "value": "http://[::1/x"},
        "data_url that cannot be downloaded",
        id="malformed-ipv6-data-url",
    ),
    pytest.param(
        {"kind": "data_url", "value": "file:///etc/passwd"},
        "data_url that cannot be downloaded",
        id="file-data-url",
    ),
    pytest.param({"kind": "endless", "seconds": 15}, "larger than", id="endless-body"),
    pytest.param(
        {"kind": "echo_key", "status": 400, "code": "PLATFORM.INPUT_INVALID"},
        "upstream refused the request",
        id="error-echoes-the-key",
    ),
]


@pytest.mark.parametrize(("fault", "reason"), HOSTILE_LISTINGS)
def test_one_hostile_listing_fails_its_candidate_alone(
    sandbox: SandboxServer, tmp_path: Path, fault: dict[str, object], reason: str
) -> None:
    bad, good = _three(sandbox)
    sandbox.add_fault(match=bad.id, times=None, **fault)
    ran = _ingest(sandbox, tmp_path, [bad.id, *(c.id for c in good)], timeout=90)
    _assert_failed_alone(ran, bad, good, reason, sandbox.api_key)
    if fault["kind"] == "endless":
        assert ran.seconds < 30  # a few MB read, then cut: not the 15 s (times six) the body lasts


def test_a_trickling_answer_is_cut_off_retried_then_failed(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    bad, good = _three(sandbox)
    # One byte every half second: no silence ever reaches --timeout, the answer never ends.
    sandbox.add_fault(kind="trickle", match=bad.id, times=None, seconds=0.5)
    ran = _ingest(sandbox, tmp_path, [bad.id, *(c.id for c in good)], "--timeout", "1", timeout=90)
    _assert_failed_alone(ran, bad, good, "did not arrive whole within 1.0 s", sandbox.api_key)
    # Kombo's guide: a transport failure is tried again (six attempts in all), then given up.
    assert sandbox.stats.requests["action"] == 6 + len(good)
    assert ran.seconds < 60


def test_the_key_echoed_in_an_error_is_redacted_everywhere(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    bad, good = _three(sandbox)
    sandbox.add_fault(kind="echo_key", match=bad.id, times=None, status=400, code=None)
    ran = _ingest(sandbox, tmp_path, [bad.id, *(c.id for c in good)], timeout=90)
    _assert_failed_alone(ran, bad, good, "Authorization: Bearer [redacted]", sandbox.api_key)
    status = _pipeline(["status", "--json"], ran.data_dir, {}, timeout=60)
    assert sandbox.api_key not in status.out + status.err


def test_a_duplicate_attachment_is_kept_once_with_a_warning(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    bad, good = _three(sandbox)
    sandbox.add_fault(kind="duplicate", match=bad.id, times=None)
    ran = _ingest(sandbox, tmp_path, [bad.id, *(c.id for c in good)], timeout=90)
    assert ran.code == 0, (ran.out, ran.err)
    assert "Traceback" not in ran.err
    assert ran.summary.startswith("ingest succeeded: 3 candidates (0 failed)"), ran.summary
    assert "listed twice" in ran.err
    records = ran.export()
    ids = [r["attachment_id"] for r in records if r["candidate_id"] == bad.id]
    assert sorted(ids) == sorted(a.id for a in bad.attachments)


def test_every_iso_8601_timestamp_form_is_read_as_utc(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    forms = {
        "2024-05-01T10:00:00.000z": "2024-05-01T10:00:00",
        "2024-06-30T23:59:60Z": "2024-07-01T00:00:00",  # a leap second: the next instant
        "2024-05-01T10:00:00+01:00": "2024-05-01T09:00:00",
        "2024-05-01T10:00:00Z": "2024-05-01T10:00:00",
        "2024-05-01": "2024-05-01T00:00:00",
        "not a date": None,  # unreadable: unknown, with a warning, not a failed candidate
    }
    chosen = sandbox.world.ordered()[: len(forms)]
    for candidate, form in zip(chosen, forms, strict=True):
        sandbox.add_fault(kind="timestamp", match=candidate.id, times=None, value=form)
    ran = _ingest(sandbox, tmp_path, [c.id for c in chosen], timeout=120)
    assert ran.code == 0, (ran.out, ran.err)
    assert "Traceback" not in ran.err
    assert ran.summary.startswith(f"ingest succeeded: {len(chosen)} candidates (0 failed)")
    assert "is not a date-time" in ran.err
    by_candidate: dict[object, set[object]] = {}
    for record in ran.export():
        by_candidate.setdefault(record["candidate_id"], set()).add(record["remote_updated_at"])
    for candidate, (form, expected) in zip(chosen, forms.items(), strict=True):
        stamps = by_candidate[candidate.id]
        assert len(stamps) == 1, (form, stamps)
        stamp = stamps.pop()
        if expected is None:
            assert stamp is None, form
        else:
            assert isinstance(stamp, str) and stamp.startswith(expected), (form, stamp)
            assert stamp.endswith(("Z", "+00:00")), (form, stamp)


def test_a_trickling_file_does_not_hold_the_run(sandbox: SandboxServer, tmp_path: Path) -> None:
    bad, good = _three(sandbox)
    attachment = bad.attachments[0]
    # One byte every half second: no silence reaches --timeout, the body never ends in time.
    sandbox.add_fault(kind="trickle", match=attachment.id, target="files", times=None, seconds=0.5)
    ran = _ingest(sandbox, tmp_path, [bad.id, *(c.id for c in good)], "--timeout", "1", timeout=25)
    assert ran.code == 1 and "Traceback" not in ran.err, ran.err
    assert ran.summary.startswith("ingest failed: 3 candidates"), ran.summary
    lines = [line for line in ran.err.splitlines() if attachment.id in line and "too slow" in line]
    assert lines, ran.err
    # Kombo's guide: a transport failure is tried again (six attempts in all), then given up.
    assert sandbox.stats.requests["file"] >= 6 + sum(len(c.attachments) for c in good)
    failed = [r for r in ran.export() if r["attachment_id"] == attachment.id]
    assert not failed or failed[0]["status"] == "failed"
    assert {c.id for c in good} <= {r["candidate_id"] for r in ran.export()}


def test_a_file_server_trickling_its_headers_is_cut_off(
    sandbox: SandboxServer, settings: KomboSettings, tmp_path: Path
) -> None:
    """The status line and headers one byte every 0.2 s: the head has a deadline of its own,
    which no byte resets."""
    from pipeline.download import Downloader
    from pipeline.errors import DownloadError
    from pipeline.fetch import KomboClient
    from pipeline.filestore import LocalFileStore

    candidate = sandbox.world.ordered()[0]
    with KomboClient(settings) as client:
        item = client.candidate_attachments(candidate.id).attachments[0]
    sandbox.add_fault(
        kind="trickle", match=item.id, target="files", times=None, seconds=0.2, value="headers"
    )
    quick = replace(settings, read_timeout=1.0, max_attempts=2, retry_base_delay=0.01)
    downloader = Downloader(quick, LocalFileStore(tmp_path / "files"))
    started = time.monotonic()
    try:
        with pytest.raises(DownloadError, match="timed out"):
            downloader.download(item.data_url, subject="cv")
    finally:
        downloader.close()
    assert time.monotonic() - started < 5  # two heads of 1 s each, not 200 bytes * 0.2 s
    assert sandbox.stats.requests["file"] == 2


# -- proxies -----------------------------------------------------------------------------------


@dataclass
class _Proxy:
    """A small forwarding proxy on 127.0.0.1: absolute-form requests and CONNECT tunnels,
    with host names resolved from its own table only (``kombo.test`` is 127.0.0.1)."""

    hosts: dict[str, str]
    seen: list[str] = field(default_factory=list)  # request lines, in order
    headers_seen: list[str] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_quietly, args=(client,), daemon=True).start()

    def _serve_quietly(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):  # either side may hang up at any point
            self._serve(client)

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            request_line, _, rest = head.partition(b"\r\n")
            method, target, _version = request_line.decode("latin-1").split(" ", 2)
            self.seen.append(f"{method} {target}")
            self.headers_seen.append(rest.split(b"\r\n\r\n")[0].decode("latin-1"))
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                upstream = self._connect(host, int(port))
                if upstream is None:
                    client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                leftover = head.split(b"\r\n\r\n", 1)[1]
            else:
                # Absolute form, forwarded as it came (servers must accept it, RFC 9112).
                rest_of_url = target.split("://", 1)[1]
                authority = rest_of_url.split("/", 1)[0]
                host, _, port = authority.rpartition(":")
                upstream = self._connect(host, int(port or 80))
                if upstream is None:
                    client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                leftover = head
            with upstream:
                upstream.sendall(leftover)
                self._pipe(client, upstream)

    def _connect(self, host: str, port: int) -> socket.socket | None:
        address = self.hosts.get(host.strip("[]"))
        if address is None:
            return None
        return socket.create_connection((address, port))

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        sockets = [a, b]
        while not self._stop.is_set():
            readable, _, _ = select.select(sockets, [], [], 0.5)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (b if sock is a else a).sendall(data)


@pytest.fixture
def proxy() -> Iterator[_Proxy]:
    server = _Proxy(hosts={"kombo.test": "127.0.0.1", "127.0.0.1": "127.0.0.1"})
    yield server
    server.close()


def test_ingest_goes_through_the_environments_proxy(
    sandbox: SandboxServer, tmp_path: Path, proxy: _Proxy
) -> None:
    """Only the proxy knows ``kombo.test``: a run that reaches it went through the proxy.

    Every file link (on 127.0.0.1, which NO_PROXY names) is redirected once to
    ``kombo.test``: the downloads reach their redirect targets through the proxy alone."""
    chosen = sandbox.world.ordered()[:3]
    ids = [c.id for c in chosen]
    for attachment in (a for c in chosen for a in c.attachments):
        sandbox.add_fault(
            kind="redirect",
            match=attachment.id,
            times=1,
            location=f"http://kombo.test:{sandbox.port}",
        )
    base_url = f"http://kombo.test:{sandbox.port}/v1"
    ran = _ingest(
        sandbox,
        tmp_path,
        ids,
        env={"KOMBO_BASE_URL": base_url, "HTTP_PROXY": proxy.url, "NO_PROXY": "127.0.0.1"},
        timeout=90,
    )
    assert ran.code == 0, (ran.out, ran.err)
    assert ran.summary.startswith("ingest succeeded: 3 candidates (0 failed)"), ran.summary
    assert not [line for line in proxy.seen if "127.0.0.1" in line]  # NO_PROXY, per origin
    api_lines = [line for line in proxy.seen if "/v1/" in line]
    assert api_lines and all(line.startswith("GET http://kombo.test:") for line in api_lines)
    file_lines = [n for n, line in enumerate(proxy.seen) if "/files/" in line]
    attachments = sum(len(c.attachments) for c in chosen)
    redirected = [n for n in file_lines if proxy.seen[n].startswith("GET http://kombo.test:")]
    assert len(redirected) == attachments, proxy.seen
    # No credential reached the files' origin, and the proxy saw no key on a file request.
    assert sandbox.stats.auth_headers_on_files == 0
    for n in file_lines:
        assert sandbox.api_key not in proxy.headers_seen[n]
        assert "authorization" not in proxy.headers_seen[n].lower()
    assert {r["candidate_id"] for r in ran.export()} == set(ids)


def test_a_proxy_with_credentials_in_its_url_gets_them_and_the_origin_does_not(
    sandbox: SandboxServer, tmp_path: Path, proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.config import Options, resolve_kombo
    from pipeline.download import Downloader
    from pipeline.filestore import LocalFileStore

    monkeypatch.setenv("HTTP_PROXY", f"http://proxyuser:proxypass@127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "")
    settings = resolve_kombo(
        Options(
            api_key=sandbox.api_key,
            integration_id=sandbox.integration_id,
            base_url=sandbox.base_url,
        ),
        env={},
    )
    attachment = sandbox.world.ordered()[0].attachments[0]
    url = sandbox.state.data_url(f"http://kombo.test:{sandbox.port}", attachment.id)
    url = url.replace("http://", "http://linkuser:linkpass@", 1)  # userinfo in the link itself
    downloader = Downloader(settings, LocalFileStore(tmp_path / "files"))
    try:
        got = downloader.download(url, subject="cv")
    finally:
        downloader.close()
    assert got.size_bytes > 0
    assert proxy.seen == [f"GET {url.replace('linkuser:linkpass@', '')}"]
    (headers,) = proxy.headers_seen
    assert "Proxy-Authorization: Basic cHJveHl1c2VyOnByb3h5cGFzcw==" in headers.splitlines()
    assert "linkuser" not in headers and "linkpass" not in headers
    assert sandbox.stats.auth_headers_on_files == 0


def _tls_file_server(directory: Path) -> tuple[socket.socket, Path, bytes]:
    """An https server for ``kombo.test`` with a certificate of its own making: one GET, one
    file. Returns its listening socket, the certificate (for SSL_CERT_FILE) and the body."""
    import ssl

    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=kombo.test"),
            *("-addext", "subjectAltName=DNS:kombo.test"),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    body = b"%PDF-1.4 a file over TLS through a tunnel\n" * 100
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            raw, _ = listener.accept()
            with context.wrap_socket(raw, server_side=True) as tls:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += tls.recv(65536)
                tls.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    threading.Thread(target=serve, daemon=True).start()
    return listener, cert, body


@pytest.mark.skipif(not shutil.which("openssl"), reason="makes its certificate with openssl")
def test_an_https_file_comes_through_a_connect_tunnel_with_the_environments_ca(
    settings: KomboSettings, tmp_path: Path, proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY: a CONNECT to the file's host, TLS to the origin inside the tunnel, its
    certificate checked against SSL_CERT_FILE (no public CA signed it)."""
    from pipeline.download import Downloader
    from pipeline.filestore import LocalFileStore

    listener, cert, body = _tls_file_server(tmp_path)
    port = listener.getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    downloader = Downloader(settings, LocalFileStore(tmp_path / "files"))
    try:
        got = downloader.download(f"https://kombo.test:{port}/files/x?token=t", subject="cv")
    finally:
        downloader.close()
        listener.close()
    assert got.size_bytes == len(body)
    assert proxy.seen == [f"CONNECT kombo.test:{port}"]
    assert "authorization" not in proxy.headers_seen[0].lower()


def test_no_proxy_sends_the_api_around_the_proxy(
    sandbox: SandboxServer, tmp_path: Path, proxy: _Proxy
) -> None:
    ids = [c.id for c in sandbox.world.ordered()[:2]]
    ran = _ingest(
        sandbox,
        tmp_path,
        ids,
        env={"HTTP_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.1"},
        timeout=90,
    )
    assert ran.code == 0, (ran.out, ran.err)
    assert not [line for line in proxy.seen if "/v1/" in line]


def test_an_https_api_is_reached_through_a_connect_tunnel_without_the_key(
    sandbox: SandboxServer, proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy of an https API sees a CONNECT to its host, never the key: the key travels
    inside the tunnel (here the sandbox speaks no TLS, so the handshake itself fails)."""
    from pipeline.config import Options, resolve_kombo
    from pipeline.errors import TransportError
    from pipeline.fetch import KomboClient

    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    settings = resolve_kombo(
        Options(
            api_key=sandbox.api_key,
            integration_id=sandbox.integration_id,
            base_url=f"https://kombo.test:{sandbox.port}/v1",
        ),
        env={},
        max_attempts=1,
    )
    with KomboClient(settings) as client, pytest.raises(TransportError):
        client.candidate_attachments(sandbox.world.ordered()[0].id)
    assert proxy.seen == [f"CONNECT kombo.test:{sandbox.port}"]
    assert all(sandbox.api_key not in headers for headers in proxy.headers_seen)
    assert sandbox.stats.requests.get("action") is None  # nothing reached the API in clear


def test_the_sandbox_tells_a_taken_port_before_building_its_world() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(OSError):
            SandboxServer(port=port, candidates=100_000)
        assert time.monotonic() - started < 2  # building 100,000 candidates takes far longer


def test_every_hostile_fault_can_be_set_over_http(sandbox: SandboxServer) -> None:
    import urllib.request

    faults = [
        {"kind": "deep", "depth": 3000},
        {"kind": "timestamp", "value": "2024-06-30T23:59:60Z"},
        {"kind": "duplicate"},
        {"kind": "many", "depth": 2000},
        {"kind": "foreign"},
        {"kind": "data_url", "value": "http://[::1/x"},
        {"kind": "endless", "seconds": 5},
        {"kind": "trickle", "seconds": 2},
        {"kind": "trickle", "seconds": 2, "target": "files"},
        {"kind": "echo_key", "status": 502, "code": None},
    ]
    request = urllib.request.Request(
        f"{sandbox.origin}/_sandbox/faults",
        data=json.dumps(faults).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.load(answer) == {"faults": len(faults)}
    assert [f.kind for f in sandbox.state.faults] == [f["kind"] for f in faults]
    assert sandbox.state.faults[-2].target == "files"


# -- a whole bad day -----------------------------------------------------------------------------


def test_a_run_against_a_server_that_trickles_floods_and_lies_ends_on_its_own(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Issue 14's bar: one run over a server that trickles, floods and lies at once ends by
    itself, every good candidate indexed and every bad one named with its reason."""
    ordered = sandbox.world.ordered()
    with_files = [c for c in ordered if c.attachments]
    trickling, endless, deep, foreign, slow_file, flaky, limited, doubled = with_files[:8]
    good_rest = with_files[8:14]
    sandbox.add_fault(kind="trickle", match=trickling.id, times=None, seconds=0.5)
    sandbox.add_fault(kind="endless", match=endless.id, times=None, seconds=10)
    sandbox.add_fault(kind="deep", match=deep.id, times=None, depth=5000)
    sandbox.add_fault(kind="foreign", match=foreign.id, times=None)
    sandbox.add_fault(
        kind="trickle", match=slow_file.attachments[0].id, target="files", times=None, seconds=0.5
    )
    sandbox.add_fault(kind="html503", match=flaky.id, times=2)  # passes on the third try
    sandbox.add_fault(
        kind="error", match=limited.id, times=2, status=429, code="PLATFORM.RATE_LIMIT_EXCEEDED"
    )
    sandbox.add_fault(kind="duplicate", match=doubled.id, times=None)
    everyone = [trickling, endless, deep, foreign, slow_file, flaky, limited, doubled, *good_rest]

    ran = _ingest(sandbox, tmp_path, [c.id for c in everyone], "--timeout", "1", timeout=150)

    assert ran.code == 1, (ran.out, ran.err)
    assert "Traceback" not in ran.err, ran.err
    assert ran.summary.startswith(f"ingest failed: {len(everyone)} candidates (4 failed)"), (
        ran.summary
    )
    status = json.loads(_pipeline(["status", "--json"], ran.data_dir, {}, timeout=60).out)
    named = {f["candidate_id"]: f["reason"] for f in status["failed_candidates"]}
    assert set(named) == {trickling.id, endless.id, deep.id, foreign.id}
    assert all(reason for reason in named.values())
    failed_files = {f["attachment_id"] for f in status["failed_attachments"]}
    assert failed_files == {slow_file.attachments[0].id}
    good = [slow_file, flaky, limited, doubled, *good_rest]
    every = _pipeline(["export", "--status", "all", "--no-text"], ran.data_dir, {}, timeout=60)
    exported = {r["attachment_id"]: r for r in map(json.loads, every.out.splitlines())}
    for candidate in good:
        for attachment in candidate.attachments:
            if attachment.id != slow_file.attachments[0].id:
                assert exported[attachment.id]["status"] not in ("failed", "pending"), attachment
    indexed = {r["candidate_id"] for r in ran.export()}
    assert indexed <= {c.id for c in good} and len(indexed) >= len(good) - 1
    assert sandbox.api_key not in ran.out + ran.err
    assert sandbox.api_key.encode() not in ran.stored_bytes()
