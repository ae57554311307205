"""The command line: parses, calls :mod:`pipeline.app`, prints. The work is done there.

Errors reach the terminal here and only here, as one line ``pipeline: error: ...``.
"""

from __future__ import annotations

import errno
import gc
import html
import json
import logging
import os
import re
import shutil
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import __version__
from .config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_EXTRACT_MEMORY_MB,
    DEFAULT_EXTRACT_TIMEOUT,
    EXPORT_FORMATS,
    DataSettings,
    KomboSettings,
    Options,
    read_ids,
    resolve_data,
    resolve_kombo,
    validate_candidate_id,
)
from .errors import PipelineError, UsageError
from .faults import EXIT_INTERRUPTED, EXIT_TERMINATED, RunStopped, as_pipeline_error, exit_code
from .filestore import private_file, private_folder
from .json_answers import people_json, results_json, status_json
from .states import AttachmentState, RunStatus

if TYPE_CHECKING:
    # Each command imports what it works with: `--help` and a search start without the
    # database layer (SQLAlchemy), the extractor pool or the run engine (tests/test_startup.py).
    from .app import StatusReport
    from .database import Failures
    from .engine import RunSummary
    from .search import CandidateHit, SearchResults

log = logging.getLogger("pipeline")
F = TypeVar("F", bound=Callable[..., Any])
TYPES = ("CV", "COVER_LETTER", "OTHER")


# -- logging -----------------------------------------------------------------------------------


class _Redact(logging.Filter):
    """Last line of defence: no log line ever shows the API key, whatever a library logs."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


_REDACT = _Redact()


class _JsonFormatter(logging.Formatter):
    """One JSON object a line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(payload, ensure_ascii=False)


_FEEDBACK = {"quiet": False}
# -v/-q/--log-format as given so far: before the subcommand and after it add up.
_LOG: dict[str, Any] = {"verbose": 0, "quiet": False, "format": "text"}
# Progress bars on screen: log lines are written above them (tqdm.write), not through them.
_BARS: dict[str, bool] = {"active": False}


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, one line a record; above the progress bars while they are shown."""

    def emit(self, record: logging.LogRecord) -> None:
        if not _BARS["active"]:
            super().emit(record)
            return
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _setup_logging(verbose: int, quiet: bool, log_format: str = "text") -> None:
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    handler = _Handler(sys.stderr)
    if log_format == "json":
        formatter: logging.Formatter = _JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    _FEEDBACK["quiet"] = quiet or log_format == "json"
    handler.addFilter(_REDACT)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; data_url links are capabilities, keep them out.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
    logging.getLogger("httpcore").setLevel(max(level, logging.WARNING))


def _logging_option(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """-v, -q and --log-format, wherever they stand: each one seen sets logging up again."""
    if param.name == "verbose":
        _LOG["verbose"] += value or 0
    elif param.name == "quiet":
        _LOG["quiet"] = _LOG["quiet"] or bool(value)
    elif value is not None:
        _LOG["format"] = value
    _setup_logging(_LOG["verbose"], _LOG["quiet"], _LOG["format"])


def _logging_params() -> list[click.Parameter]:
    common: dict[str, Any] = {"expose_value": False, "callback": _logging_option}
    return [
        click.Option(
            ["-v", "--verbose"],
            count=True,
            help="More log lines on stderr (-vv for debug); progress lines when stderr "
            "is not a terminal.",
            **common,
        ),
        click.Option(
            ["-q", "--quiet"],
            is_flag=True,
            help="Only errors on stderr, no progress bar.",
            **common,
        ),
        click.Option(
            ["--log-format"],
            type=click.Choice(["text", "json"]),
            default=None,
            help="json: one object a line, for log collectors (the fatal line too). Default text.",
            **common,
        ),
    ]


def _redacted(message: str) -> str:
    for secret in _REDACT.secrets:
        message = message.replace(secret, "***")
    return message


def _fatal(message: str) -> None:
    """The one line an error reaches the terminal as (JSON under --log-format json)."""
    _terminal_line("error", message)


def _terminal_line(level: str, message: str) -> None:
    message = _redacted(message)
    if _LOG["format"] == "json":
        payload = {
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "level": level,
            "logger": "pipeline",
            "message": message,
        }
        click.echo(json.dumps(payload, ensure_ascii=False), err=True)
    elif level == "error":
        click.echo(f"pipeline: error: {message}", err=True)
    else:
        click.echo(f"pipeline: {message}", err=True)


def _no_color() -> bool:
    # https://no-color.org: set and not empty
    return bool(os.environ.get("NO_COLOR"))


# -- shared options (written once, applied to each command that needs them) --------------------


def kombo_options(func: F) -> F:
    for decorator in reversed(
        [
            click.option(
                "--api-key",
                help="Kombo API key (env KOMBO_API_KEY). On the command line it is visible to "
                "other local users (ps, /proc): prefer the environment or --api-key-file.",
            ),
            click.option(
                "--api-key-file",
                type=click.File("r", encoding="utf-8-sig"),
                help="Read the Kombo API key from this file ('-' for stdin): the safe way "
                "to give it.",
            ),
            click.option(
                "--integration-id",
                help="Kombo integration id, sent as X-Integration-Id (env KOMBO_INTEGRATION_ID).",
            ),
            click.option(
                "--base-url",
                help="Full API base URL, e.g. http://127.0.0.1:8765/v1 "
                "(env KOMBO_BASE_URL; default https://api.kombo.dev/v1).",
            ),
            click.option(
                "--region",
                help="eu, us or ca; ignored with a base URL (env KOMBO_REGION; default eu).",
            ),
            click.option(
                "--concurrency",
                type=click.IntRange(1, 250),
                default=None,
                help=f"Most Kombo actions in flight at once (default "
                f"{DEFAULT_CONCURRENCY}, Kombo's limit).",
            ),
            click.option(
                "--download-concurrency",
                type=click.IntRange(1, 256),
                default=None,
                help="Most file downloads at once (default 16); not counted against "
                "Kombo's action limit.",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0.1),
                default=None,
                help="Seconds to wait for an answer before retrying (default 60: the "
                "attachments endpoints call the ATS live).",
            ),
            click.option(
                "--max-file-mb",
                type=click.FloatRange(min=0.001),
                default=None,
                help="Size cap for one downloaded file in MB (default 50).",
            ),
            click.option(
                "--max-run-minutes",
                type=click.FloatRange(min=0, min_open=True),
                envvar="PIPELINE_MAX_RUN_MINUTES",
                default=None,
                help="Stop the run cleanly after this many minutes, as Ctrl-C would: what "
                "finished is kept, the run is recorded interrupted, exit 1, and the next run "
                "goes on (env PIPELINE_MAX_RUN_MINUTES; default no limit).",
            ),
        ]
    ):
        func = decorator(func)
    return func


def data_options(func: F) -> F:
    func = click.option(
        "--search",
        type=click.Choice(["whoosh", "postgres"], case_sensitive=False),
        expose_value=False,
        callback=lambda _ctx, _param, value: _SEARCH_FLAG.__setitem__("search", value),
        help="Search engine: whoosh (an index in the data directory) or postgres (inside "
        "the PostgreSQL database, shared by every machine; env PIPELINE_SEARCH; default "
        "whoosh).",
    )(func)
    func = click.option(
        "--database-url",
        help="SQLAlchemy URL (env PIPELINE_DATABASE_URL; "
        "default sqlite:///<data dir>/pipeline.db).",
    )(func)
    func = click.option(
        "--data-dir", help="Database, index and files (env PIPELINE_DATA_DIR; default ./data)."
    )(func)
    return func


def scoped_options(func: F) -> F:
    """The data options and the integration a read or erase command acts on."""
    func = click.option(
        "--integration-id",
        envvar="KOMBO_INTEGRATION_ID",
        help="The integration to act on (env KOMBO_INTEGRATION_ID; default: the only "
        "one registered).",
    )(func)
    return data_options(func)


# What the command works on, for the error line of a fault that does not say it.
_CONTEXT: dict[str, str] = {}
# --search, set by its option's callback (one option on every command, no new parameter).
_SEARCH_FLAG: dict[str, str | None] = {}


def _data(data_dir: str | None, database_url: str | None) -> DataSettings:
    search = _SEARCH_FLAG.get("search")
    data = resolve_data(Options(data_dir=data_dir, database_url=database_url, search=search))
    _CONTEXT["database"] = data.database_url
    return data


def _kombo(kwargs: dict[str, Any], *, any_integration: bool = False) -> KomboSettings:
    api_key = kwargs.get("api_key")
    key_file = kwargs.get("api_key_file")
    if key_file is not None:
        if api_key:
            raise UsageError("give the API key once: --api-key or --api-key-file, not both")
        try:
            api_key = key_file.read().strip()
        except UnicodeDecodeError:
            raise UsageError("--api-key-file: not UTF-8 text") from None
        if not api_key:
            raise UsageError(f"--api-key-file: {key_file.name} holds no key")
    options = Options(
        api_key=api_key,
        integration_id=kwargs.get("integration_id"),
        base_url=kwargs.get("base_url"),
        region=kwargs.get("region"),
    )
    max_mb = kwargs.get("max_file_mb")
    settings = resolve_kombo(
        options,
        any_integration=any_integration,
        concurrency=kwargs.get("concurrency"),
        read_timeout=kwargs.get("timeout"),
        download_concurrency=kwargs.get("download_concurrency"),
        max_file_bytes=int(max_mb * 1024 * 1024) if max_mb else None,
    )
    _REDACT.secrets.append(settings.api_key.reveal())
    return settings


# -- the group ---------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="pipeline")
def cli() -> None:
    """Turn candidates' CVs and cover letters from Kombo into searchable text.

    Stages: fetch (Kombo's attachments API) -> download -> extract -> index (SQLite + Whoosh).
    -v, -q and --log-format may stand before the command or after it.
    """


cli.params.extend(_logging_params())


def _collect_ids(ids: tuple[str, ...], ids_file: Any) -> list[str]:
    collected = list(ids)
    if ids_file is not None:
        try:
            text = ids_file.read()  # opened as utf-8-sig: a byte-order mark is dropped
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"--ids-file {ids_file.name}: not UTF-8 text (byte {exc.start + 1} cannot be "
                "read); save it as UTF-8"
            ) from None
        collected += read_ids(text.removeprefix("\ufeff").splitlines())
    for candidate_id in collected:
        validate_candidate_id(candidate_id)
    return list(dict.fromkeys(collected))


# Seconds between progress lines when stderr is not a terminal (with -v); the environment
# variable PIPELINE_PROGRESS_SECONDS changes it.
PROGRESS_INTERVAL = 10.0


class _Progress:
    """Progress bars on a terminal (tqdm); with -v and no terminal (cron, systemd), a log
    line every PROGRESS_INTERVAL seconds; otherwise nothing."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty() and not _FEEDBACK["quiet"]
        self.lines = (
            not self.enabled
            and not _LOG["quiet"]
            and logging.getLogger().isEnabledFor(logging.INFO)
        )
        self._bars: dict[str, Any] = {}
        self._done: dict[str, int] = {}
        self._totals: dict[str, int | None] = {}
        self._last_line = time.monotonic()
        self.interval = float(os.environ.get("PIPELINE_PROGRESS_SECONDS") or PROGRESS_INTERVAL)

    def __call__(self, what: str, done: int, total: int | None) -> None:
        if self.lines:
            self._count(what, done, total)
            return
        if not self.enabled:
            return
        bar = self._bars.get(what)
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(
                total=total,
                desc=what,
                unit="",
                leave=False,
                file=sys.stderr,
                position=len(self._bars),
                dynamic_ncols=True,
                colour=None,
            )
            self._bars[what] = bar
            _BARS["active"] = True
        if done:
            bar.update(done)

    def _count(self, what: str, done: int, total: int | None) -> None:
        self._done[what] = self._done.get(what, 0) + done
        if total is not None:
            self._totals[what] = total
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            log.info("progress: %s", self.describe())

    def describe(self) -> str:
        parts = []
        for what, count in self._done.items():
            total = self._totals.get(what)
            parts.append(f"{count}/{total} {what}" if total else f"{count} {what}")
        return ", ".join(parts) or "starting"

    def wrap(self, iterable: Any, what: str) -> Any:
        if not self.enabled:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, desc=what, unit="", leave=False, file=sys.stderr)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        _BARS["active"] = False


def _run_with_progress(work: Callable[[_Progress], RunSummary]) -> RunSummary:
    progress = _Progress()
    try:
        return work(progress)
    finally:
        progress.close()


def _finish(summary: RunSummary) -> int:
    if summary.fatal is not None:
        _fatal(summary.fatal.message)
    elif summary.stopped is not None:
        log.warning("%s", summary.stopped.reason)
    click.echo(summary.line())
    code = summary.exit_code
    if summary.status == RunStatus.INTERRUPTED:
        # Everything finished is committed; calls still in flight on worker threads would
        # hold the interpreter until their timeouts, so leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def extract_options(func: F) -> F:
    func = click.option(
        "--extract-memory-mb",
        type=click.IntRange(min=64),
        default=DEFAULT_EXTRACT_MEMORY_MB,
        show_default=True,
        help="Address space one parsing worker may use.",
    )(func)
    return click.option(
        "--extract-timeout",
        type=click.FloatRange(min=0.01),
        default=DEFAULT_EXTRACT_TIMEOUT,
        show_default=True,
        help="Seconds one document may take to parse before its worker is killed.",
    )(func)


@cli.command()
@click.argument("candidate_ids", nargs=-1)
@click.option(
    "--application",
    "application_ids",
    multiple=True,
    help="An application id whose attachments to ingest (repeatable); uses "
    "GET /ats/applications/{id}/attachments. Its candidate must be known from an earlier run.",
)
@click.option(
    "--ids-file",
    type=click.File("r", encoding="utf-8-sig"),
    help="Read candidate ids from a file ('-' for stdin), one per line; "
    "blank lines and '#' comments are skipped.",
)
@kombo_options
@data_options
@extract_options
def ingest(
    candidate_ids: tuple[str, ...],
    application_ids: tuple[str, ...],
    ids_file: Any,
    data_dir: str | None,
    database_url: str | None,
    extract_timeout: float,
    extract_memory_mb: int,
    **kombo: Any,
) -> int:
    """Fetch each candidate's attachments, download, extract and index them.

    Exit 0 when every attachment ended in a final state, 1 when some failed (they are
    retried by the next run), 2 for a usage error or an error of the whole integration.
    """
    from .app import App

    ids = _collect_ids(candidate_ids, ids_file)
    applications = [validate_candidate_id(a) for a in dict.fromkeys(application_ids)]
    if not ids and not applications:
        raise UsageError(
            "no candidate ids: give them as arguments, with --ids-file or --application"
        )
    settings = _kombo(kombo)
    data = _data(data_dir, database_url)
    from .engine import ExtractLimits

    limits = ExtractLimits(timeout=extract_timeout, memory_mb=extract_memory_mb)
    budget = kombo.get("max_run_minutes")

    def run(progress: _Progress) -> RunSummary:
        with App(data, settings, extract=limits, progress=progress, max_run_minutes=budget) as app:
            return app.ingest(ids, application_ids=applications)

    return _finish(_run_with_progress(run))


@cli.command()
@click.option("--full", is_flag=True, help="List every candidate, not only those changed.")
@click.option(
    "--ids-file",
    type=click.File("r", encoding="utf-8-sig"),
    help="Run over these candidate ids ('-' for stdin) instead of asking Kombo.",
)
@click.option("--wait", is_flag=True, help="Wait for a run in progress instead of exiting.")
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Every active integration, several at once (one summary line each, then the whole).",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, 64),
    help="With --all: integrations run at once (default: one per core).",
)
@click.option(
    "--downloads-in-flight",
    type=click.IntRange(1, 1024),
    help="With --all: downloads in flight over all integrations (default: 16 per integration "
    "running).",
)
@kombo_options
@data_options
@extract_options
def nightly(
    full: bool,
    ids_file: Any,
    wait: bool,
    every: bool,
    parallel: int | None,
    downloads_in_flight: int | None,
    data_dir: str | None,
    database_url: str | None,
    extract_timeout: float,
    extract_memory_mb: int,
    **kombo: Any,
) -> int:
    """The scheduled batch run: ingest what changed at Kombo, erase what Kombo deleted.

    Asks GET /ats/candidates for candidates updated since the last successful nightly run
    (every candidate with --full, or the given ones with --ids-file), following the cursor.
    One run writes at a time: a second exits with a message, or waits with --wait.
    """
    from .app import App

    if every and (ids_file is not None or kombo.get("integration_id")):
        raise UsageError(
            "--all runs every active integration: leave --integration-id and --ids-file out"
        )
    given = _collect_ids((), ids_file) if ids_file is not None else None
    settings = _kombo(kombo, any_integration=every)
    data = _data(data_dir, database_url)
    from .engine import ExtractLimits

    limits = ExtractLimits(timeout=extract_timeout, memory_mb=extract_memory_mb)
    budget = kombo.get("max_run_minutes")
    if every:
        with App(data, settings, extract=limits, max_run_minutes=budget) as app:
            done = app.nightly_all(
                full=full,
                parallel=parallel,
                downloads_in_flight=downloads_in_flight,
                wait_for_lock=wait,
                on_done=lambda outcome: click.echo(outcome.line()),
            )
        click.echo(done.line())
        return done.exit_code

    def run(progress: _Progress) -> RunSummary:
        with App(data, settings, extract=limits, progress=progress, max_run_minutes=budget) as app:
            return app.nightly(full=full, candidate_ids=given, wait_for_lock=wait)

    return _finish(_run_with_progress(run))


@cli.command()
@click.argument("candidate_ids", nargs=-1)
@click.option(
    "--ids-file",
    type=click.File("r", encoding="utf-8-sig"),
    help="Read candidate ids from a file ('-' for stdin).",
)
@scoped_options
def forget(
    candidate_ids: tuple[str, ...],
    ids_file: Any,
    data_dir: str | None,
    database_url: str | None,
    integration_id: str | None,
) -> int:
    """Erase candidates completely (GDPR): rows, text, index documents and files.

    A file that another candidate still refers to stays. A record of each erasure is kept
    with the candidate id and the time only.
    """
    from .app import App

    ids = _collect_ids(candidate_ids, ids_file)
    if not ids:
        raise UsageError("no candidate ids: give them as arguments or with --ids-file")
    with App(_data(data_dir, database_url), integration_id=integration_id) as app:
        erased = app.forget(ids)
    click.echo(
        f"forget succeeded: {erased} of {len(ids)} candidates erased "
        f"({len(ids) - erased} were not on record)"
    )
    return 0


@cli.command()
@click.option(
    "--not-seen-days",
    type=click.IntRange(min=1),
    required=True,
    help="Erase candidates Kombo has not returned for this many days.",
)
@scoped_options
def purge(
    not_seen_days: int, data_dir: str | None, database_url: str | None, integration_id: str | None
) -> int:
    """Erase candidates that Kombo has not returned for N days (as forget does)."""
    from .app import App

    with App(_data(data_dir, database_url), integration_id=integration_id) as app:
        erased = app.purge(not_seen_days=not_seen_days)
    click.echo(f"purge succeeded: {erased} candidates not seen for {not_seen_days} days erased")
    return 0


@cli.command()
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=10,
    show_default=True,
    help="How many recent runs to show.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option(
    "--all", "every", is_flag=True, help="Every registered integration, one after another."
)
@scoped_options
def status(
    limit: int,
    as_json: bool,
    data_dir: str | None,
    database_url: str | None,
    integration_id: str | None,
    every: bool,
) -> int:
    """The last runs and the number of attachments in each state (of one integration, or
    of each with --all)."""
    from .app import App

    data = _data(data_dir, database_url)
    if every:
        # KOMBO_INTEGRATION_ID, set for the runs of one, does not narrow --all.
        reports = []
        with App(data) as registry:
            ids = [i.integration_id for i in registry.integrations_list()]
        for iid in ids:
            with App(data, integration_id=iid) as app:
                reports.append(app.status(limit=limit))
        if as_json:
            click.echo(json.dumps({"integrations": [status_json(r) for r in reports]}))
            return 0
        for report in reports:
            click.echo(f"integration {report.integration_id}:")
            _print_status(report)
        return 0
    with App(data, integration_id=integration_id) as app:
        report = app.status(limit=limit)
    if as_json:
        click.echo(json.dumps(status_json(report)))
        return 0
    _print_status(report)
    return 0


def _print_status(report: StatusReport) -> None:
    runs, counts = report.runs, report.attachments
    watermark, erasures = report.nightly_watermark, report.erasures
    total = sum(counts.values())
    click.echo(f"attachments: {total}" + "".join(f", {n} {s}" for s, n in sorted(counts.items())))
    click.echo(f"nightly watermark: {watermark or 'none (the next nightly run lists everyone)'}")
    click.echo(f"erasures on record: {erasures}")
    click.echo(f"search engine: {report.search_engine}")
    for r in runs:
        took = (r.finished_at - r.started_at).total_seconds() if r.finished_at else None
        click.echo(
            f"run {r.id:>4} {r.kind:<8} {r.status:<11} {r.started_at:%Y-%m-%d %H:%M:%S}Z "
            f"{'' if took is None else f'{took:7.1f}s'}  {len(r.errors)} errors, "
            f"{len(r.warnings)} warnings"
        )
    _print_failures(report.failures)


def _print_failures(failures: Failures) -> None:
    """What failed, why, and whether the next run tries it again."""
    if failures.candidate_total:
        click.echo(f"failed candidates: {failures.candidate_total}")
        for c in failures.candidates:
            retry = "retried by the next run" if c.retried else "not retried unless named again"
            click.echo(f"  {c.candidate_id}: {c.reason} ({retry})")
    if failures.attachment_total:
        click.echo(f"failed or unfinished attachments: {failures.attachment_total}")
        for a in failures.attachments:
            retry = "retried by the next run" if a.retried else "not retried"
            click.echo(
                f"  {a.attachment_id} ({a.status}, candidate {a.candidate_id}): "
                f"{a.reason or 'unfinished'} ({retry})"
            )
    if failures.candidate_total > len(failures.candidates) or failures.attachment_total > len(
        failures.attachments
    ):
        click.echo("  ... (the newest shown; `status --json` gives the same list)")


@cli.command()
@click.option("--all", "every", is_flag=True, help="Every registered integration.")
@scoped_options
def check(
    data_dir: str | None, database_url: str | None, integration_id: str | None, every: bool
) -> int:
    """Compare database, index and file store; report drift and how to repair each (exit 1).
    With --all, of every integration."""
    from .app import App

    data = _data(data_dir, database_url)
    if every:
        # KOMBO_INTEGRATION_ID, set for the runs of one, does not narrow --all.
        with App(data) as registry:
            ids = [i.integration_id for i in registry.integrations_list()]
    else:
        ids = [integration_id or ""]
    found = 0
    for iid in ids:
        with App(data, integration_id=iid or None) as app:
            drift = app.check()
            engine = app.search_engine()
        if every:
            click.echo(f"integration {iid}:")
        if iid == ids[0]:
            click.echo(f"search engine: {engine}")
        found += _print_drift(drift)
    click.echo("check succeeded: no drift" if not found else f"check found drift in {found} places")
    return 1 if found else 0


def _print_drift(drift: dict[str, list[str]]) -> int:
    from .app import REPAIRS

    found = sum(len(v) for v in drift.values())
    for what, items in drift.items():
        if items:
            click.echo(
                f"{what}: {len(items)} ({', '.join(items[:5])}{' ...' if len(items) > 5 else ''})"
                f"; repair: {REPAIRS.get(what, 'run `pipeline reindex`')}"
            )
    return found


@cli.command()
@click.argument("query")
@click.option("--type", "type_", type=click.Choice(TYPES), help="Only this attachment type.")
@click.option("--candidate", help="Only this candidate's attachments.")
@click.option("--language", help="Only documents in this language (ISO 639-1: en, de, fr, es ...).")
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    help="Only documents updated at Kombo since this date (UTC).",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option(
    "--offset",
    type=click.IntRange(0, 100_000),
    default=0,
    show_default=True,
    help="Skip this many hits (paging).",
)
@click.option(
    "--by-candidate",
    is_flag=True,
    help="One entry per candidate, at the rank of their best document.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@scoped_options
def search(
    query: str,
    type_: str | None,
    candidate: str | None,
    language: str | None,
    since: datetime | None,
    limit: int,
    offset: int,
    by_candidate: bool,
    as_json: bool,
    data_dir: str | None,
    database_url: str | None,
    integration_id: str | None,
) -> int:
    """Full-text search over the indexed text, best hits first.

    Words must all match (AND); use OR, NOT, "quoted phrases", prefix* and
    field:value (type:CV, language:de, file_name:lebenslauf). Case and accents do not
    matter, words are matched by their stem in English, German, French and Spanish, and a
    query that finds nothing is spelled again from the index's words ("did you mean").
    """
    from .app import App, SearchRequest

    request = SearchRequest(
        query,
        type=type_,
        candidate_id=candidate,
        language=language,
        since=since.replace(tzinfo=UTC) if since else None,
        limit=limit,
        offset=offset,
    )
    if by_candidate:
        with App(_data(data_dir, database_url), integration_id=integration_id) as app:
            page = app.search_by_candidate(request)
            scope = app.integration
        if as_json:
            click.echo(json.dumps(people_json(page, scope), ensure_ascii=False))
        else:
            _print_people(page.results, page.people, page.total)
        _nothing_left_to_collect()
        return 0
    with App(_data(data_dir, database_url), integration_id=integration_id) as app:
        results = app.search(request)
        scope = app.integration
    if as_json:
        click.echo(json.dumps(results_json(results, scope), ensure_ascii=False))
    else:
        _print_results(results, offset)
    _nothing_left_to_collect()
    return 0


@cli.command()
@click.argument("attachment_id")
@click.option("--type", "type_", type=click.Choice(TYPES), help="Only this attachment type.")
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@scoped_options
def similar(
    attachment_id: str,
    type_: str | None,
    limit: int,
    as_json: bool,
    data_dir: str | None,
    database_url: str | None,
    integration_id: str | None,
) -> int:
    """Documents of other candidates most like this one (more CVs like this CV)."""
    from .app import App

    with App(_data(data_dir, database_url), integration_id=integration_id) as app:
        results = app.similar(attachment_id, type=type_, limit=limit)
        scope = app.integration
    if as_json:
        click.echo(json.dumps(results_json(results, scope), ensure_ascii=False))
    else:
        _print_results(results)
    _nothing_left_to_collect()
    return 0


def _print_people(results: SearchResults, people: list[CandidateHit], total: int) -> None:
    _print_header(results, total, len(people), "candidate")
    for rank, person in enumerate(people, 1):
        files = ", ".join(f"{h.type} {h.file_name or h.attachment_id}" for h in person.hits)
        click.echo(f"{rank:>3}. {person.score:7.2f}  {person.candidate_id}  ({files})")
        click.echo(f"       {_terminal(person.hits[0].snippet)}")


def _print_header(results: SearchResults, total: int, shown: int, noun: str) -> None:
    if results.did_you_mean and results.corrected:
        click.echo(f'showing results for "{results.did_you_mean}" instead of "{results.query}"')
    elif results.did_you_mean and total:
        # The typed query's own hits, the correction beside them.
        click.echo(f'did you mean "{results.did_you_mean}"?')
    elif results.did_you_mean:
        click.echo(f'no match for "{results.query}"; did you mean "{results.did_you_mean}"?')
    plural = noun + ("es" if noun.endswith("ch") else "s")
    click.echo(
        f'{total} {plural if total != 1 else noun} for "{results.query}"'
        + (f", showing {shown}" if shown < total else "")
    )


_BOLD = re.compile(r"<b>(.*?)</b>")


def _terminal(snippet: str) -> str:
    tty = sys.stdout.isatty() and not _no_color()
    marked = _BOLD.sub(
        lambda m: click.style(m.group(1), bold=True) if tty else f"[{m.group(1)}]", snippet
    )
    return html.unescape(marked)


def _print_results(results: SearchResults, offset: int = 0) -> None:
    _print_header(results, results.total, len(results.hits), "match")
    for rank, hit in enumerate(results.hits, offset + 1):
        click.echo(
            f"{rank:>3}. {hit.score:7.2f}  {hit.type:<12} {hit.candidate_id}  {hit.file_name or ''}"
        )
        click.echo(f"       {_terminal(hit.snippet)}")


@cli.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPORT_FORMATS),
    default="jsonl",
    show_default=True,
    help="parquet needs the [parquet] extra and --output.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write here instead of stdout: a regular file atomically (a temporary file "
    "renamed over it); a device, a pipe or a symlink's target as it is.",
)
@click.option("--type", "type_", type=click.Choice(TYPES), help="Only this attachment type.")
@click.option(
    "--status",
    default="indexed",
    show_default=True,
    type=click.Choice([s.value for s in AttachmentState] + ["all"]),
    help="Only records in this state, or all.",
)
@click.option("--candidate", help="Only this candidate's records.")
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    help="Only attachments updated at Kombo since this date (UTC).",
)
@click.option("--no-text", is_flag=True, help="Leave the extracted text out.")
@scoped_options
def export(
    fmt: str,
    output: str | None,
    type_: str | None,
    status: str,
    candidate: str | None,
    since: datetime | None,
    no_text: bool,
    data_dir: str | None,
    database_url: str | None,
    integration_id: str | None,
) -> int:
    """Write attachment records as JSON lines, CSV or Parquet (schemas/export_record.schema.json).

    Records stream from the database in batches, so memory stays flat at any size.
    """
    from .app import App
    from .database import ExportSelection
    from .export import WRITERS, write_file

    if fmt == "parquet" and output is None:
        raise UsageError("--format parquet writes a file: give --output PATH")
    selection = ExportSelection(
        type=type_,
        status=status,
        candidate_id=candidate,
        since=since.replace(tzinfo=UTC) if since else None,
        with_text=not no_text,
    )
    with App(_data(data_dir, database_url), integration_id=integration_id) as app:
        records = _Progress().wrap(app.export_records(selection), "records")
        if output is None:
            count = WRITERS[fmt](records, sys.stdout, with_text=not no_text)
        elif _write_in_place(Path(output)):
            count = _write_stream(fmt, records, Path(output), with_text=not no_text)
        else:
            count = write_file(fmt, records, Path(output), with_text=not no_text)
    log.info("exported %d records", count)
    return 0


def _write_in_place(path: Path) -> bool:
    """Whether ``--output`` is written as it is: a device (/dev/stdout), a pipe, or a
    symlink (its target is written, the link stays). Only a regular file, or a path not
    there yet, is written beside and renamed over."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(mode)


def _write_stream(fmt: str, records: Any, path: Path, *, with_text: bool) -> int:
    from .export import WRITERS

    if fmt == "parquet":
        with path.open("wb") as binary:
            return WRITERS[fmt](records, binary, with_text=with_text)
    with path.open("w", encoding="utf-8", newline="") as text:
        return WRITERS[fmt](records, text, with_text=with_text)


@cli.command()
@scoped_options
def reindex(data_dir: str | None, database_url: str | None, integration_id: str | None) -> int:
    """Rebuild the search index from the database.

    From 5,000 documents on, a writer process per core (at most two) shares the work; if one
    fails, the rebuild exits 1 and says to run it again.
    """
    from .app import App

    progress = _Progress()
    try:
        with App(
            _data(data_dir, database_url), integration_id=integration_id, progress=progress
        ) as app:
            count = app.reindex()
    finally:
        progress.close()
    click.echo(f"reindex succeeded: {count} documents indexed")
    return 0


# -- integrations -----------------------------------------------------------------------------


@cli.group()
def integrations() -> None:
    """The integrations this deployment serves: add, list, remove, pause, resume."""


@integrations.command("add")
@click.argument("integration_id")
@click.option("--name", help="A name to show for it (the customer's, say).")
@data_options
def integrations_add(
    integration_id: str, name: str | None, data_dir: str | None, database_url: str | None
) -> int:
    """Register an integration (a run with an unregistered id registers it too)."""
    from .app import App

    with App(_data(data_dir, database_url)) as app:
        new = app.add_integration(integration_id, name)
    click.echo(f"integration {integration_id} {'registered' if new else 'was registered already'}")
    return 0


@integrations.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@data_options
def integrations_list(as_json: bool, data_dir: str | None, database_url: str | None) -> int:
    """Each integration: id, name, state, candidates, attachments, last nightly run."""
    from .app import App

    with App(_data(data_dir, database_url)) as app:
        reports = app.integrations_list()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "integrations": [
                        {
                            "integration_id": r.integration_id,
                            "name": r.name,
                            "state": r.state,
                            "paused_reason": r.paused_reason,
                            "candidates": r.candidates,
                            "attachments": r.attachments,
                            "deleted_at": r.deleted_at.isoformat() if r.deleted_at else None,
                            "last_nightly": None
                            if r.last_nightly is None
                            else {
                                "started_at": r.last_nightly.started_at.isoformat(),
                                "status": r.last_nightly.status,
                                "summary": r.last_nightly.summary,
                            },
                        }
                        for r in reports
                    ]
                },
                ensure_ascii=False,
            )
        )
        return 0
    if not reports:
        click.echo("no integration is registered")
    for r in reports:
        state = r.state if r.paused_reason is None else f"{r.state} ({r.paused_reason})"
        total = sum(r.attachments.values())
        last = (
            "never"
            if r.last_nightly is None
            else f"{r.last_nightly.started_at:%Y-%m-%d %H:%M}Z {r.last_nightly.status}"
        )
        click.echo(
            f"{r.integration_id}  {r.name or '-'}  {state}  {r.candidates} candidates, "
            f"{total} attachments"
            + "".join(f", {n} {s}" for s, n in sorted(r.attachments.items()))
            + f"; last nightly: {last}"
        )
    return 0


@integrations.command("remove")
@click.argument("integration_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--wait", is_flag=True, help="Wait for a run of it to finish instead of refusing.")
@data_options
def integrations_remove(
    integration_id: str, yes: bool, wait: bool, data_dir: str | None, database_url: str | None
) -> int:
    """Erase every record, text, index document and file of an integration and unregister
    it (a record of each candidate's erasure is kept, without personal data)."""
    from .app import App

    if not yes and sys.stdin.isatty():
        click.confirm(f"erase everything of integration {integration_id}?", abort=True)
    with App(_data(data_dir, database_url)) as app:
        erased = app.remove_integration(integration_id, wait=wait)
    click.echo(
        f"integrations remove succeeded: {integration_id} removed, {erased} candidates erased"
    )
    return 0


@integrations.command("pause")
@click.argument("integration_id")
@data_options
def integrations_pause(integration_id: str, data_dir: str | None, database_url: str | None) -> int:
    """Skip an integration in `nightly --all` until it is resumed."""
    from .app import App

    with App(_data(data_dir, database_url)) as app:
        app.pause_integration(integration_id)
    click.echo(f"integration {integration_id} paused")
    return 0


@integrations.command("resume")
@click.argument("integration_id")
@data_options
def integrations_resume(integration_id: str, data_dir: str | None, database_url: str | None) -> int:
    """Take an integration back into `nightly --all` (paused by hand or by Kombo)."""
    from .app import App

    with App(_data(data_dir, database_url)) as app:
        app.resume_integration(integration_id)
    click.echo(f"integration {integration_id} resumed")
    return 0


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--candidates", type=click.IntRange(0, 100000), default=20, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--api-key", default="sandbox-key", show_default=True)
@click.option("--integration-id", default="sandbox:8Xi6iZrwusZqJmDGXs49GBmJ", show_default=True)
@click.option(
    "--latency", type=click.FloatRange(0, 60), default=0.0, help="Seconds added to every API call."
)
@click.option(
    "--download-latency",
    type=click.FloatRange(0, 60),
    default=0.0,
    help="Seconds added to every file download.",
)
@click.option(
    "--concurrency-limit",
    type=click.IntRange(1, 10000),
    default=30,
    show_default=True,
    help="Actions in flight before the sandbox refuses with 429, as Kombo does.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Keep rendered documents here between runs, and render them all before serving.",
)
@click.option(
    "--integrations",
    "integration_count",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Integrations served under the one API key, each with --candidates of its own "
    "(seed +1 each) and its own concurrency limit.",
)
@click.option(
    "--integration-error",
    help="Make the last integration answer this integration-wide code on every call "
    "(INTEGRATION.INACTIVE, INTEGRATION.PERMISSION_MISSING, ...).",
)
def sandbox(
    port: int,
    candidates: int,
    seed: int,
    api_key: str,
    integration_id: str,
    latency: float,
    download_latency: float,
    concurrency_limit: int,
    cache_dir: str | None,
    integration_count: int,
    integration_error: str | None,
) -> int:
    """Serve the built-in Kombo-compatible sandbox on 127.0.0.1 until interrupted."""
    from .sandbox.server import SandboxServer

    try:
        # The port first (SandboxServer binds it before it builds its world): a port taken
        # is told at once, not after rendering thousands of documents.
        server = SandboxServer(
            port=port,
            candidates=candidates,
            seed=seed,
            cache_dir=Path(cache_dir) if cache_dir else None,
            api_key=api_key,
            integration_id=integration_id,
            latency=latency,
            download_latency=download_latency,
            concurrency_limit=concurrency_limit,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on 127.0.0.1 is taken: pass another --port (0 picks a free one)"
            ) from None
        raise
    from .sandbox.generator import World

    last = server.state
    for number in range(1, integration_count):
        world = World(
            candidates=candidates,
            seed=seed + number,
            cache_dir=Path(cache_dir) if cache_dir else None,
        )
        last = server.add_integration(SANDBOX_TENANT.format(number), world)
    if integration_error:
        last.set_error(integration_error)
    for iid in server.integration_ids:
        world = server.integration(iid).world
        if cache_dir:
            click.echo(f"rendering {len(world.attachments)} documents into {cache_dir} ...")
            world.warm(processes=os.cpu_count())
    click.echo(f"Kombo sandbox serving {candidates} candidates at {server.base_url}")
    if integration_count > 1:
        click.echo(f"  # integrations: {' '.join(server.integration_ids)}")
    click.echo("Point the pipeline at it with:")
    for name, value in server.env().items():
        click.echo(f"  export {name}={value}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("sandbox stopped")
    return 0


DEMO_QUERIES = ("Python Kubernetes", '"machine learning"', "München", "developpement")


@cli.command()
@click.option("--candidates", type=click.IntRange(1, 10000), default=24, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--query",
    "queries",
    multiple=True,
    help="Search to show afterwards (repeatable); a few examples by default.",
)
@click.option(
    "--data-dir",
    help="The demo keeps its data in DIR/demo, a folder it makes and marks (default "
    "<PIPELINE_DATA_DIR or ./data>/demo); it empties that folder first, and refuses one it "
    "did not make.",
)
def demo(candidates: int, seed: int, queries: tuple[str, ...], data_dir: str | None) -> int:
    """Run the whole pipeline against the built-in sandbox and show searches.

    Two customers (two integrations of one Kombo account) are ingested into one data
    directory, each shown its own searches, and one customer's candidate is looked for
    under the other, which finds nothing. Needs no account and no network: the sandbox runs
    in this process on 127.0.0.1.
    """
    from .app import App, SearchRequest
    from .sandbox.server import SandboxServer

    base = (Path(data_dir) if data_dir else resolve_data(Options()).data_dir) / "demo"
    _reset_demo_dir(base)
    data = DataSettings(data_dir=base, database_url=f"sqlite:///{base / 'pipeline.db'}")
    second_size = max(1, candidates // 2)
    with SandboxServer(candidates=candidates, seed=seed) as server:
        server.add_integration(DEMO_SECOND, candidates=second_size, seed=seed + 1)
        env = server.env()
        customers = (("Acme", env["KOMBO_INTEGRATION_ID"]), ("Bolt", DEMO_SECOND))
        summaries = []
        click.echo(f"sandbox at {server.base_url}: two customers of one Kombo account")
        for name, integration_id in customers:
            settings = resolve_kombo(
                Options(
                    api_key=env["KOMBO_API_KEY"],
                    integration_id=integration_id,
                    base_url=env["KOMBO_BASE_URL"],
                ),
                env={},
            )
            with App(data, settings) as app:
                app.add_integration(integration_id, name)
                summary = app.ingest(app.candidate_ids_at_kombo())
                summaries.append(summary)
                click.echo("")
                click.echo(f"customer {name} ({integration_id}): {summary.candidates} candidates")
                for query in queries or DEMO_QUERIES:
                    click.echo("")
                    _print_results(app.search(SearchRequest(query, limit=3)))
        someone = sorted(server.world.candidates)[0]
        seen = []
        for _, integration_id in customers:
            with App(data, integration_id=integration_id) as app:
                hits = app.search(SearchRequest("*", candidate_id=someone, limit=1000)).total
                seen.append(hits)
    click.echo("")
    click.echo(
        f"each sees only its own: Acme's candidate {someone} has {seen[0]} "
        f"document{'' if seen[0] == 1 else 's'} found under Acme, {seen[1]} under Bolt"
    )
    click.echo(
        f"data in {base}; try: PIPELINE_DATA_DIR={base} python -m pipeline integrations list"
    )
    click.echo(f"Bolt: {summaries[1].line()}")
    click.echo(summaries[0].line())
    return max(s.exit_code for s in summaries)


# The ids of the sandbox command's further integrations.
SANDBOX_TENANT = "sandbox:Tenant{:04d}xxxxxxxxxxxxx"
# The demo's second customer.
DEMO_SECOND = "sandbox:BoLtDemoSecondCustomer2"


# The file that marks a folder as the demo's own: only such a folder is ever cleared.
DEMO_MARKER = ".pipeline-demo"


def _reset_demo_dir(base: Path) -> None:
    """Make ``base`` the demo's folder, empty: create and mark it, or clear one it marked
    before; a folder with something else in it and no mark is refused, never cleared."""
    marker = base / DEMO_MARKER
    if base.is_dir() and not marker.is_file() and any(base.iterdir()):
        raise UsageError(
            f"{base} exists and was not made by demo (no {DEMO_MARKER} in it): "
            "give another --data-dir, or move it away"
        )
    if base.exists() and not base.is_dir():
        raise UsageError(f"{base} is not a folder: give another --data-dir")
    if marker.is_file():
        for entry in base.iterdir():
            if entry.name == DEMO_MARKER:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    private_folder(base)
    private_file(marker)  # 0600 like everything the pipeline writes, whatever the umask
    marker.write_text("made by `pipeline demo`: demo empties this folder at each run\n")


# -- serving: `serve` and `tokens` (pipeline.server; docs/serving.md) --------------------------


@cli.command()
@click.option(
    "--host",
    envvar="PIPELINE_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (env PIPELINE_HOST); put a reverse proxy in front for TLS.",
)
@click.option(
    "--port",
    envvar="PIPELINE_PORT",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port (env PIPELINE_PORT; 0 picks a free one, named in the 'serving on' line).",
)
@click.option(
    "--api-key-file",
    type=click.File("r", encoding="utf-8-sig"),
    help="Read the Kombo API key for webhook-started runs from this file ('-' for stdin); "
    "default env KOMBO_API_KEY. Without a key, webhooks start no runs.",
)
@click.option("--base-url", help="Kombo's API base URL for runs (env KOMBO_BASE_URL).")
@click.option("--region", help="eu, us or ca (env KOMBO_REGION; default eu).")
@click.option(
    "--forwarded-allow-ips",
    envvar="PIPELINE_FORWARDED_ALLOW_IPS",
    default="127.0.0.1",
    show_default=True,
    help="Proxies whose X-Forwarded-For/-Proto headers are believed (comma-separated, '*').",
)
@click.option(
    "--search-workers",
    envvar="PIPELINE_SEARCH_WORKERS",
    type=click.IntRange(0, 256),
    default=None,
    help="Search worker processes (env PIPELINE_SEARCH_WORKERS; default one per core; 0: "
    "search on the server's own threads).",
)
@click.option(
    "--search-queue",
    envvar="PIPELINE_SEARCH_QUEUE",
    type=click.IntRange(0, 100_000),
    default=None,
    help="Searches that may wait for a worker before more are answered 429 (env "
    "PIPELINE_SEARCH_QUEUE; default 16 per worker).",
)
@data_options
def serve(
    host: str,
    port: int,
    api_key_file: Any,
    base_url: str | None,
    region: str | None,
    forwarded_allow_ips: str,
    search_workers: int | None,
    search_queue: int | None,
    data_dir: str | None,
    database_url: str | None,
) -> int:
    """Serve the JSON API, the recruiters' search page and Kombo's webhooks.

    Until SIGTERM or Ctrl-C: runs started by webhooks are then stopped and recorded
    interrupted, as a stopped `nightly` is. KOMBO_WEBHOOK_SECRET checks the webhooks.
    """
    from .config import Secret, resolve_base_url
    from .server import ServeSettings
    from .server import serve as run_server

    key = api_key_file.read().strip() if api_key_file is not None else None
    key = key or os.environ.get("KOMBO_API_KEY", "").strip() or None
    webhook_secret = os.environ.get("KOMBO_WEBHOOK_SECRET", "").strip() or None
    for secret in (key, webhook_secret):
        if secret:
            _REDACT.secrets.append(secret)
    if webhook_secret is None:
        log.warning("KOMBO_WEBHOOK_SECRET is not set: every webhook is refused (401)")
    if not _LOG["quiet"]:  # one line per request (and the server's own) unless -q
        logging.getLogger("pipeline.server").setLevel(logging.INFO)
    settings = ServeSettings(
        data=_data(data_dir, database_url),
        host=host,
        port=port,
        api_key=Secret(key) if key else None,
        base_url=resolve_base_url(Options(base_url=base_url, region=region), os.environ),
        webhook_secret=Secret(webhook_secret) if webhook_secret else None,
        forwarded_allow_ips=forwarded_allow_ips,
        search_workers=search_workers,
        search_queue=search_queue,
    )
    run_server(settings, lambda url: click.echo(f"serving on {url}", err=True))
    return 0


@cli.group()
def tokens() -> None:
    """API tokens for `pipeline serve`: each belongs to one integration; only a hash is kept."""


def _tokens_store(data_dir: str | None, database_url: str | None) -> Any:
    from .database import Store

    data = _data(data_dir, database_url)
    private_folder(data.data_dir)
    store = Store(data.database_url)
    store.ensure_schema()
    return store


@tokens.command("create")
@click.option("--integration-id", required=True, help="The integration the token reads.")
@click.option("--name", help="A name to list and revoke it by (default token-<id>).")
@click.option("--admin", is_flag=True, help="Also export and erase (default: read only).")
@data_options
def tokens_create(
    integration_id: str,
    name: str | None,
    admin: bool,
    data_dir: str | None,
    database_url: str | None,
) -> int:
    """Make a token; it is printed once, alone on the last line (only its hash is kept)."""
    from .server import new_token

    integration_id = integration_id.strip()
    if not integration_id or len(integration_id) > 200 or not integration_id.isprintable():
        raise UsageError("--integration-id: an integration id, up to 200 printable characters")
    if name is not None and (not name.strip() or len(name) > 100 or not name.isprintable()):
        raise UsageError("--name: up to 100 printable characters")
    store = _tokens_store(data_dir, database_url)
    try:
        if store.integration(integration_id) is None:
            _terminal_line(
                "warning",
                f"integration {integration_id} is not registered: the token sees nothing "
                "until it is (`pipeline integrations add`, or a run of it)",
            )
        made = new_token(store, integration_id=integration_id, name=name, admin=admin)
    finally:
        store.close()
    if made is None:
        raise UsageError(f"a token named {name!r} exists: revoke it or choose another --name")
    row, token = made
    click.echo(
        f"token {row.name} for integration {row.integration_id} ({row.scope}); "
        "it is shown once: keep it now"
    )
    click.echo(token)
    return 0


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@data_options
def tokens_list(as_json: bool, data_dir: str | None, database_url: str | None) -> int:
    """Tokens: name, integration, scope, created, last used (never the token)."""
    store = _tokens_store(data_dir, database_url)
    try:
        rows = store.api_tokens()
    finally:
        store.close()
    listed = [
        {
            "name": r.name,
            "integration_id": r.integration_id,
            "scope": r.scope,
            "created_at": r.created_at.isoformat(),
            "last_used_at": r.last_used_at.isoformat() if r.last_used_at else None,
        }
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps({"tokens": listed}, ensure_ascii=False))
        return 0
    if not listed:
        click.echo("no tokens (make one with `pipeline tokens create --integration-id ID`)")
    for t in listed:
        click.echo(
            f"{t['name']}  {t['integration_id']}  {t['scope']}  created {t['created_at']}  "
            f"last used {t['last_used_at'] or 'never'}"
        )
    return 0


@tokens.command("revoke")
@click.argument("name")
@data_options
def tokens_revoke(name: str, data_dir: str | None, database_url: str | None) -> int:
    """Revoke a token by name: every request with it is refused from now on."""
    store = _tokens_store(data_dir, database_url)
    try:
        revoked = store.revoke_api_token(name)
    finally:
        store.close()
    if not revoked:
        raise UsageError(f"no token named {name!r} (`pipeline tokens list` shows them)")
    click.echo(f"token {name} revoked")
    return 0


for _command in tokens.commands.values():
    _command.params.extend(_logging_params())


# -v, -q and --log-format after the command too (`pipeline ingest -v ...`), as before it.
for _command in cli.commands.values():
    _command.params.extend(_logging_params())


# -- entry point -------------------------------------------------------------------------------


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM (systemctl stop, timeout) stops a run as Ctrl-C does, with its own status.
    raise RunStopped("terminated (SIGTERM): what finished is kept", EXIT_TERMINATED)


def main(argv: list[str] | None = None, *, process_exit: bool = False) -> None:
    """The command line. ``process_exit``: the process ends with the command (the installed
    ``pipeline``, ``python -m pipeline``), so a read-only command may skip the last
    garbage collections (:func:`_nothing_left_to_collect`)."""
    _LOG.update(verbose=0, quiet=False, format="text")
    _EXIT.clear()
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if on_main_thread else None
    try:
        code = _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if process_exit and _EXIT.get("nothing_left"):
        # Python's shutdown walks every object left (some 30,000 after a search) in full
        # garbage collections, to free cycles the ending process would free anyway: 50-90 ms
        # of a search's start-up figures. Frozen objects are not walked. Only after
        # commands that wrote nothing and closed what they opened (their cycles' finalizers
        # have nothing left to do).
        gc.freeze()
    sys.exit(code)


# Set by a command after which nothing is left to finalize (see main).
_EXIT: dict[str, bool] = {}


def _nothing_left_to_collect() -> None:
    _EXIT["nothing_left"] = True


def _main(argv: list[str] | None) -> int:
    """Run the command; every error reaches the terminal here as one line, its exit code
    from :func:`pipeline.faults.exit_code` (the error's own transient marker)."""
    try:
        code = cli.main(args=argv, prog_name="pipeline", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except RunStopped as exc:
        _terminal_line("warning", exc.reason)
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        _terminal_line("warning", "interrupted")
        code = EXIT_INTERRUPTED
    except Exception as exc:
        fault = as_pipeline_error(exc, database=_CONTEXT.get("database"))
        if not isinstance(exc, PipelineError):
            log.debug("what stopped the command", exc_info=True)
        _fatal(fault.message)
        code = exit_code(fault)
    return code if isinstance(code, int) else 0
