"""Settings: flags override environment variables, which override defaults (INTERFACE.md)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import IntegrationChoiceError, InvalidCandidateIdError, UsageError

REGION_BASE_URLS = {
    "eu": "https://api.kombo.dev/v1",
    "us": "https://api.us.kombo.dev/v1",
    "ca": "https://api.ca.kombo.dev/v1",
}
DEFAULT_REGION = "eu"
DEFAULT_DATA_DIR = "./data"
DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024
DEFAULT_CONCURRENCY = 30  # Kombo's default limit of actions in flight per integration
# The extractor pool's defaults (pipeline.extract.pool) and export's formats (pipeline.export)
# live here, where the command line's option defaults read them without importing either.
DEFAULT_EXTRACT_TIMEOUT = 60.0  # seconds one document may take to parse
DEFAULT_EXTRACT_MEMORY_MB = 1536  # address space of one parsing worker
EXPORT_FORMATS = ("jsonl", "csv", "parquet")


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        # Imported here: the child-process module (subprocess, sockets, pickle) is a run's,
        # and a read-only command, which holds no secret, must not pay for it at start-up.
        from .child import keep_secret

        self._value = value
        keep_secret(value)  # nor in any child process's environment, whatever holds it

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class KomboSettings:
    """What it takes to talk to Kombo."""

    api_key: Secret
    integration_id: str
    base_url: str
    connect_timeout: float = 10.0
    # The attachments endpoints call the ATS live: answers of several seconds are normal.
    read_timeout: float = 60.0
    concurrency: int = DEFAULT_CONCURRENCY
    download_concurrency: int = 16
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    retry_base_delay: float = 1.0
    retry_max_delay: float = 30.0
    retry_budget: float = 300.0  # seconds of retrying one call may spend in all
    max_attempts: int = 6


SEARCH_ENGINES = ("whoosh", "postgres")


@dataclass(frozen=True)
class IntegrationPaths:
    """Where one integration's own things live in the data directory."""

    integration_id: str
    root: Path  # data/integrations/<folder>

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def files_dir(self) -> Path:
        return self.root / "files"

    @property
    def lock_dir(self) -> Path:
        """The folder of its writer lock (``.writer.lock``)."""
        return self.root


@dataclass(frozen=True)
class DataSettings:
    data_dir: Path
    database_url: str
    # The search engine: "whoosh" (an index in the data directory) or "postgres" (a table in
    # the PostgreSQL database, shared by every machine that uses it).
    search: str = "whoosh"

    @property
    def index_dir(self) -> Path:
        """Where the one index of a data directory from before integrations lay."""
        return self.data_dir / "index"

    @property
    def files_dir(self) -> Path:
        """Where the one file store of a data directory from before integrations lay."""
        return self.data_dir / "files"

    def integration(self, integration_id: str) -> IntegrationPaths:
        root = self.data_dir / "integrations" / integration_folder(integration_id)
        return IntegrationPaths(integration_id, root)


# Kombo's integration ids are "<tool>:<id>" (workday:HWUTwvyx2wLoSUHphiWVrp28); other shapes
# pass as long as they are safe in a header and a log line.
_INTEGRATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,199}")


def validate_integration_id(integration_id: str, registered: list[str] | None = None) -> str:
    """Return the id unchanged, or raise IntegrationChoiceError naming the registered."""
    if _INTEGRATION_ID.fullmatch(integration_id):
        return integration_id
    shown = integration_id.encode("unicode_escape").decode("ascii")[:80]
    raise IntegrationChoiceError(
        f"malformed integration id {shown!r}: letters, digits and . _ : @ + - only, "
        f"at most 200{registered_ids(registered)}"
    )


def registered_ids(registered: list[str] | None) -> str:
    """The tail of a message that names the registered integrations."""
    if registered is None:
        return ""
    if not registered:
        return " (no integration is registered: `pipeline integrations add ID`)"
    return " (registered: " + ", ".join(registered) + ")"


def integration_folder(integration_id: str) -> str:
    """A folder name for an integration: safe on every filesystem (no ':'), readable, and
    collision-free (a hash of the exact id: ids that differ only in case or in a character
    replaced here get different folders)."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "-", integration_id)[:60].strip("-") or "integration"
    digest = hashlib.sha256(integration_id.encode()).hexdigest()[:12]
    return f"{readable}-{digest}"


@dataclass(frozen=True)
class Options:
    """Raw values from the command line; None means "not given"."""

    api_key: str | None = None
    integration_id: str | None = None
    base_url: str | None = None
    region: str | None = None
    data_dir: str | None = None
    database_url: str | None = None
    search: str | None = None


def _pick(flag: str | None, env: Mapping[str, str], name: str) -> str | None:
    if flag is not None and flag != "":
        return flag
    value = env.get(name)
    return value if value else None


def resolve_data(options: Options, env: Mapping[str, str] | None = None) -> DataSettings:
    env = os.environ if env is None else env
    data_dir = Path(_pick(options.data_dir, env, "PIPELINE_DATA_DIR") or DEFAULT_DATA_DIR)
    database_url = _pick(options.database_url, env, "PIPELINE_DATABASE_URL")
    if database_url is None:
        database_url = f"sqlite:///{data_dir / 'pipeline.db'}"
    elif "://" not in database_url:
        raise UsageError(
            f"malformed database URL {database_url!r}: set PIPELINE_DATABASE_URL or "
            "--database-url to an SQLAlchemy URL such as sqlite:///data/pipeline.db"
        )
    # On PostgreSQL the search lives in the database too unless told otherwise: every
    # machine sharing the database then searches the same documents, and an erasure
    # reaches them in one place (docs/postgresql.md, "Which search").
    default_search = "postgres" if database_url.startswith("postgresql") else "whoosh"
    search = (_pick(options.search, env, "PIPELINE_SEARCH") or default_search).lower()
    if search not in SEARCH_ENGINES:
        raise UsageError(
            f"unknown search engine {search!r}: set PIPELINE_SEARCH or --search to "
            "whoosh or postgres"
        )
    if search == "postgres" and not database_url.startswith("postgresql"):
        raise UsageError(
            "PIPELINE_SEARCH=postgres searches inside a PostgreSQL database: set "
            "PIPELINE_DATABASE_URL to postgresql+psycopg://... (or search with whoosh)"
        )
    return DataSettings(data_dir=data_dir, database_url=database_url, search=search)


def resolve_base_url(options: Options, env: Mapping[str, str]) -> str:
    base_url = _pick(options.base_url, env, "KOMBO_BASE_URL")
    if base_url is not None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"malformed base URL {base_url!r}: set KOMBO_BASE_URL or --base-url to a "
                "full URL such as https://api.kombo.dev/v1"
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            raise UsageError(
                "malformed base URL: KOMBO_BASE_URL / --base-url must not carry credentials, "
                "a query or a fragment"
            )
        return base_url.rstrip("/")
    region = (_pick(options.region, env, "KOMBO_REGION") or DEFAULT_REGION).lower()
    if region not in REGION_BASE_URLS:
        raise UsageError(
            f"unknown region {region!r}: set KOMBO_REGION or --region to one of eu, us, ca"
        )
    return REGION_BASE_URLS[region]


def resolve_kombo(
    options: Options,
    env: Mapping[str, str] | None = None,
    *,
    any_integration: bool = False,
    **overrides: object,
) -> KomboSettings:
    """Settings for commands that call Kombo; raises UsageError naming what to set.
    ``any_integration``: for ``nightly --all``, which gives each run its integration (the
    integration id is then not needed, and left empty)."""
    env = os.environ if env is None else env
    base_url = resolve_base_url(options, env)
    api_key = _pick(options.api_key, env, "KOMBO_API_KEY")
    if api_key is None or not api_key.strip():
        raise UsageError("no API key: set KOMBO_API_KEY or pass --api-key")
    if any(ch in api_key for ch in "\r\n") or api_key != api_key.strip():
        raise UsageError("malformed API key (whitespace or line breaks): check KOMBO_API_KEY")
    integration_id = _pick(options.integration_id, env, "KOMBO_INTEGRATION_ID")
    if any_integration:
        integration_id = ""
    elif integration_id is None or not integration_id.strip():
        raise UsageError("no integration id: set KOMBO_INTEGRATION_ID or pass --integration-id")
    else:
        validate_integration_id(integration_id.strip())
    tuning: dict[str, object] = {}
    delay = env.get("PIPELINE_RETRY_BASE_DELAY")
    if delay:
        try:
            tuning["retry_base_delay"] = float(delay)
        except ValueError as exc:
            raise UsageError(f"PIPELINE_RETRY_BASE_DELAY is not a number: {delay!r}") from exc
    tuning.update({k: v for k, v in overrides.items() if v is not None})
    return KomboSettings(
        api_key=Secret(api_key),
        integration_id=integration_id.strip(),
        base_url=base_url,
        **tuning,  # type: ignore[arg-type]  # its keys are KomboSettings' fields
    )


# Kombo ids are 24 base58 characters, but remote ids of other shapes are allowed through as
# long as they are safe in a URL path: reject only what can never be an id.
_FORBIDDEN_ID = re.compile(r"[\s/?#%\\]|[\x00-\x1f\x7f]")
MAX_ID_LENGTH = 64


def validate_candidate_id(candidate_id: str) -> str:
    """Return the id unchanged, or raise InvalidCandidateIdError with a one-line reason."""
    shown = candidate_id.encode("unicode_escape").decode("ascii")[:80]
    if not candidate_id or not candidate_id.strip():
        raise InvalidCandidateIdError("invalid candidate id: empty")
    if len(candidate_id) > MAX_ID_LENGTH:
        raise InvalidCandidateIdError(
            f"invalid candidate id {shown!r}: longer than {MAX_ID_LENGTH} characters"
        )
    if _FORBIDDEN_ID.search(candidate_id) or ".." in candidate_id:
        raise InvalidCandidateIdError(
            f"invalid candidate id {shown!r}: contains whitespace, '/', '?', '#', '%', '..' "
            "or a control character"
        )
    return candidate_id


def read_ids(lines: list[str]) -> list[str]:
    """Ids from an ids file: one per line; blank lines and '#' comments skipped."""
    ids = []
    for line in lines:
        stripped = line.split("#", 1)[0].strip()
        if stripped:
            ids.append(stripped)
    return ids
