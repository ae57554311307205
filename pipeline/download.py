"""Download stage: stream a ``data_url`` into the content-addressed store.

The downloader has an HTTP client of its own that carries no credentials at all: Kombo does
not say whether ``data_url`` needs the key, so we treat it as a capability link and the key
never leaves for any origin but the API's, redirects included.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from . import __version__
from .config import KomboSettings
from .errors import DownloadError, LinkExpiredError, TooLargeError
from .retry import retrying
from .storage import LocalFileStore

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_EXPIRED_STATUSES = frozenset({403, 404, 410})


@dataclass(frozen=True)
class Downloaded:
    sha256: str
    size_bytes: int


class Downloader:
    def __init__(
        self,
        settings: KomboSettings,
        store: LocalFileStore,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._http = httpx.Client(
            headers={"User-Agent": f"kombo-cv-pipeline/{__version__}"},
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            follow_redirects=True,
            max_redirects=5,
            limits=httpx.Limits(
                max_connections=settings.download_concurrency + 4,
                max_keepalive_connections=settings.download_concurrency + 4,
            ),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def download(self, data_url: str, *, subject: str) -> Downloaded:
        """Fetch ``data_url`` whole, retrying transient faults; raise a DownloadError."""
        parts = urlsplit(data_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DownloadError(f"{subject}: data_url is not an http(s) URL")
        for attempt in retrying(self.settings):
            with attempt:
                return self._once(data_url, subject)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, data_url: str, subject: str) -> Downloaded:
        cap = self.settings.max_file_bytes
        try:
            with self._http.stream("GET", data_url) as response:
                status = response.status_code
                if status in _EXPIRED_STATUSES:
                    raise LinkExpiredError(f"{subject}: download link refused (HTTP {status})")
                if status == 429 or status >= 500:
                    raise DownloadError(
                        f"{subject}: file server answered HTTP {status}", transient=True
                    )
                if status >= 400:
                    raise DownloadError(f"{subject}: file server answered HTTP {status}")
                declared = _content_length(response)
                if declared is not None and declared > cap:
                    raise TooLargeError(
                        f"{subject}: {declared} bytes declared, over the {cap}-byte cap"
                    )
                with self.store.writer() as writer:
                    for chunk in response.iter_bytes(_CHUNK):
                        writer.write(chunk)
                        if writer.size > cap:
                            raise TooLargeError(f"{subject}: over the {cap}-byte cap")
                    if declared is not None and writer.size != declared:
                        raise DownloadError(
                            f"{subject}: body ended after {writer.size} of {declared} bytes",
                            transient=True,
                        )
                    if writer.size == 0 and declared is None:
                        log.debug("%s: empty body", subject)
                return Downloaded(writer.sha256, writer.size)
        except httpx.TimeoutException as exc:
            raise DownloadError(f"{subject}: download timed out", transient=True) from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            # A connection cut mid-body: the classic truncated download.
            raise DownloadError(
                f"{subject}: download cut off ({type(exc).__name__})", transient=True
            ) from exc
        except httpx.TooManyRedirects as exc:
            raise DownloadError(f"{subject}: too many redirects") from exc
        except httpx.HTTPError as exc:
            raise DownloadError(
                f"{subject}: download failed ({type(exc).__name__})", transient=True
            ) from exc


def _content_length(response: httpx.Response) -> int | None:
    # iter_bytes yields decoded bytes; a compressed body would not match, so only trust the
    # header when no content encoding is applied.
    if response.headers.get("content-encoding", "identity") not in ("identity", ""):
        return None
    raw = response.headers.get("content-length")
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw)
