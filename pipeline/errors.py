"""The pipeline's one exception family.

    PipelineError                    base; ``transient`` says whether trying again may help
    ├── UsageError                   bad flags, environment or input (exit 2, before any request)
    │   ├── InvalidCandidateIdError  an id that cannot be a Kombo id
    │   └── IntegrationChoiceError   no integration, an unknown or malformed one, or several
    │                                registered and none named (names the registered ids)
    ├── KomboError                   Kombo answered with its error envelope (carries code, title,
    │   │                            message, log_url, HTTP status); transient by code
    │   └── IntegrationError         a code that holds for the whole integration: the run stops
    ├── TransportError               no usable answer: connection refused, timeout, 503 from
    │                                the load balancer with an HTML body (transient)
    ├── ResponseInvalidError         a success answer that does not match the seed's schema
    ├── DownloadError                a ``data_url`` could not be fetched whole
    │   ├── LinkExpiredError         403/404/410 on ``data_url``: ask Kombo for a fresh link
    │   └── TooLargeError            the body passed the size cap (state ``too_large``)
    ├── ExtractionError              a parser could not read a file (``unreadable``; a timeout
    │   │                            or memory limit ``failed``)
    │   ├── EncryptedDocumentError   needs a password we do not have (state ``encrypted``)
    │   └── UnavailableError         no converter here reads it (.doc without antiword):
    │                                ``unsupported``, not broken
    ├── QueryError                   a search query the parser cannot read (exit 2)
    │   └── QueryTooCostly           a query past the caps on length, words, expansions
    │                                or time (exit 2; the server's 400)
    ├── IndexBuildError              a rebuilt index does not hold every document (exit 1)
    ├── LockedError                  another run holds the writer lock
    ├── FastPathUnsupportedError     an index or query search's fast paths do not read: the
    │                                ranker's signal to search through Whoosh's own matchers
    ├── IndexWriteError              the index writer process failed a batch or is gone; the
    │                                rows stay pending (transient)
    ├── SearchWorkerError            ``serve``'s search worker process died on a search or
    │   │                            took past its time (the server's 503; transient)
    │   └── SearchBusyError          more searches wait than ``serve``'s queue holds (the
    │                                server's 429 with Retry-After; transient)
    └── StorageError                 the data directory, database or index cannot be used;
        │                            names what and where (``path``)
        ├── DiskFullError            ENOSPC from SQLite, the file store or the index writer
        ├── DataDirectoryError       a folder that is read-only, unwritable, or not a folder
        ├── DatabaseCorruptError     "file is not a database", "disk image is malformed"
        ├── DatabaseUnavailableError the database server cannot be reached (transient)
        ├── SchemaBehindError        a read-only command met a database older than this code
        └── IndexDamagedError        index TOC or segments missing, truncated or unreadable,
                                     or no index where the database says one was built

The storage errors are terminal (exit 2: the operator frees space, fixes a mount, restores a
backup or runs ``pipeline reindex``), except an unreachable database server, which may pass.

Transient or terminal is said one way: the ``transient`` attribute (a class attribute, or
for the errors whose answer decides it, a property or the instance's own), read through
:func:`is_transient` by the retry policy and by the run engine. Every class pickles as
itself with its fields (:meth:`PipelineError.__reduce__`), so an error crosses a process
boundary as the exception, not as a hand-built tuple.

Library exceptions (httpx, pypdf, python-docx, whoosh) are translated in one place per
stage: ``fetch.KomboClient._once``, ``download``, ``extract`` and ``search``; storage faults
in ``database`` (SQLAlchemy's ``handle_error`` and the direct SQLite path), ``filestore``
(:func:`pipeline.filestore.storage_error`) and ``search._index``.
Messages never contain the API key: only ids, codes and Kombo's own texts.
"""

from __future__ import annotations

from typing import Any

# Kombo's guide: only these codes are safe to retry.
RETRYABLE_CODES = frozenset(
    {
        "PLATFORM.RATE_LIMIT_EXCEEDED",
        "PLATFORM.CONCURRENCY_LIMIT_EXCEEDED",
        "REMOTE.RATE_LIMIT_EXCEEDED",
        "REMOTE.SERVICE_UNAVAILABLE",
    }
)

# Codes that say nothing about one candidate but about the integration or our credentials:
# every further call of the run would fail the same way, so the run stops at the first.
INTEGRATION_WIDE_CODES = frozenset(
    {
        "PLATFORM.AUTHENTICATION_INVALID",
        "PLATFORM.INTEGRATION_NOT_FOUND",
        "PLATFORM.IP_NOT_WHITELISTED",
        "INTEGRATION.AUTHENTICATION_INVALID",
        "INTEGRATION.PERMISSION_MISSING",
        "INTEGRATION.INACTIVE",
        "INTEGRATION.SETUP_SYNC_PENDING",
        "INTEGRATION.SETUP_INCOMPLETE",
        "INTEGRATION.QA_FAILED",
        "INTEGRATION.MODEL_NOT_AVAILABLE",
        "INTEGRATION.MODEL_DISABLED",
        "INTEGRATION.ACTION_NOT_AVAILABLE",
        "INTEGRATION.ACTION_DISABLED",
    }
)


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""

    transient: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException's own pickling calls ``cls(*args)``, which the classes with
        # keyword-only fields (KomboError's code, DownloadError's transient) do not accept:
        # rebuild without __init__ and restore every attribute instead (as dlt's
        # DltException does).
        return (_restore, (type(self), self.args), self.__dict__.copy())


def _restore(cls: type[PipelineError], args: tuple[Any, ...]) -> PipelineError:
    return cls.__new__(cls, *args)


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same call again may help: only errors of ours say so."""
    return isinstance(exc, PipelineError) and exc.transient


class UsageError(PipelineError):
    """Bad configuration or input; reported before any network call (exit 2)."""


class IntegrationChoiceError(UsageError):
    """Which integration a command acts on cannot be told (exit 2, naming the registered)."""


class InvalidCandidateIdError(UsageError):
    pass


class KomboError(PipelineError):
    """An error answer from Kombo, with its envelope's fields."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None,
        title: str | None = None,
        log_url: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        subject: str | None = None,
    ) -> None:
        self.code = code
        self.title = title
        self.log_url = log_url
        self.status_code = status_code
        self.retry_after = retry_after
        self.subject = subject
        label = code or f"HTTP {status_code}"
        where = f" ({subject})" if subject else ""
        super().__init__(f"Kombo error {label}{where}: {message}")
        self.kombo_message = message

    @property
    def transient(self) -> bool:  # type: ignore[override]  # read-only: the answer decides
        if self.code is not None:
            return self.code in RETRYABLE_CODES
        # Kombo: branch on the HTTP status only when the code is null.
        return self.status_code is not None and (self.status_code == 429 or self.status_code >= 500)


class IntegrationError(KomboError):
    """A Kombo error that holds for every candidate of the integration: stop the run."""

    transient = False


class TransportError(PipelineError):
    """No usable answer at all (connection, timeout, a proxy's HTML error page)."""

    transient = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ResponseInvalidError(PipelineError):
    """A success answer whose body does not match the documented schema."""


class DownloadError(PipelineError):
    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class LinkExpiredError(DownloadError):
    pass


class TooLargeError(DownloadError):
    pass


class ExtractionError(PipelineError):
    pass


class EncryptedDocumentError(ExtractionError):
    pass


class UnavailableError(ExtractionError):
    """The converter is not installed: the file is unsupported here, not broken."""


class QueryError(PipelineError):
    pass


class QueryTooCostly(QueryError):
    """A query longer, wider (prefixes, wildcards, ranges, fuzzy terms) or slower than search
    answers: the message names the cap. Not transient: the same query costs the same."""


class IndexBuildError(PipelineError):
    """A rebuild's writer process failed or died: the old index stays, and ``reindex`` exits
    1 (trying again may help)."""

    transient = True


class LockedError(PipelineError):
    pass


def kombo_error(
    *,
    code: str | None,
    message: str,
    title: str | None = None,
    log_url: str | None = None,
    status_code: int | None = None,
    retry_after: float | None = None,
    subject: str | None = None,
) -> KomboError:
    """Build the most specific KomboError for ``code``."""
    cls = IntegrationError if code in INTEGRATION_WIDE_CODES else KomboError
    return cls(
        message,
        code=code,
        title=title,
        log_url=log_url,
        status_code=status_code,
        retry_after=retry_after,
        subject=subject,
    )


class FastPathUnsupportedError(PipelineError):
    """An index or query of a shape search's fast paths (the numpy ranker, the array
    postings) do not read: the caller searches through Whoosh's own matchers instead."""


class IndexWriteError(PipelineError):
    """The index writer process could not write (or commit) a batch, or is gone: the batch's
    rows stay pending and the next run indexes them (transient)."""

    transient = True


class SearchWorkerError(PipelineError):
    """``pipeline serve``'s search worker process died on a search, or took past its time
    (it is replaced; the request is answered 503). Transient: the next search is served."""

    transient = True


class SearchBusyError(SearchWorkerError):
    """More searches wait for ``serve``'s search workers than its queue holds: answered 429
    with Retry-After at once rather than queued without bound."""


class StorageError(PipelineError):
    """Something the pipeline keeps on disk (or in a database server) cannot be used."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class DiskFullError(StorageError):
    """No space left where the pipeline writes: free some and run again."""


class DataDirectoryError(StorageError):
    """A folder the pipeline must write to is read-only, not ours to write, or not a folder."""


class DatabaseCorruptError(StorageError):
    """The database file is not a database, or is damaged: restore it from a backup."""


class DatabaseUnavailableError(StorageError):
    """The database server did not answer the connection: it may come back."""

    transient = True


class SchemaBehindError(StorageError):
    """A read-only command met a database older than this code: a writing command (any
    run, or ``pipeline reindex``) brings it forward first."""


class IndexDamagedError(StorageError):
    """The search index is missing, truncated or unreadable: ``pipeline reindex`` rebuilds it
    from the database."""
