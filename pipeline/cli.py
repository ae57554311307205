"""The command line: parses, calls :mod:`pipeline.app`, prints. The work is done there.

Errors reach the terminal here and only here, as one line ``pipeline: error: ...``.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import __version__
from .app import REPAIRS, App, SearchRequest
from .config import (
    DEFAULT_CONCURRENCY,
    DataSettings,
    KomboSettings,
    Options,
    read_ids,
    resolve_data,
    resolve_kombo,
    validate_candidate_id,
)
from .database import ExportSelection
from .errors import IntegrationError, LockedError, PipelineError, QueryError, UsageError
from .export import FORMATS, WRITERS, write_file
from .extract.pool import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT
from .states import AttachmentState, RunStatus

if TYPE_CHECKING:
    # The engine (and with it the download and fetch stages) is imported by the commands
    # that run, only: a read-only command never needs it.
    from .engine import RunSummary
    from .search import CandidateHit, SearchHit, SearchResults

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


def _setup_logging(verbose: int, quiet: bool, log_format: str = "text") -> None:
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
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


# -- shared options (written once, applied to each command that needs them) --------------------


def kombo_options(func: F) -> F:
    for decorator in reversed(
        [
            click.option("--api-key", help="Kombo API key (env KOMBO_API_KEY)."),
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
        ]
    ):
        func = decorator(func)
    return func


def data_options(func: F) -> F:
    func = click.option(
        "--database-url",
        help="SQLAlchemy URL (env PIPELINE_DATABASE_URL; "
        "default sqlite:///<data dir>/pipeline.db).",
    )(func)
    func = click.option(
        "--data-dir", help="Database, index and files (env PIPELINE_DATA_DIR; default ./data)."
    )(func)
    return func


def _data(data_dir: str | None, database_url: str | None) -> DataSettings:
    return resolve_data(Options(data_dir=data_dir, database_url=database_url))


def _kombo(kwargs: dict[str, Any]) -> KomboSettings:
    options = Options(
        api_key=kwargs.get("api_key"),
        integration_id=kwargs.get("integration_id"),
        base_url=kwargs.get("base_url"),
        region=kwargs.get("region"),
    )
    max_mb = kwargs.get("max_file_mb")
    settings = resolve_kombo(
        options,
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
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr, no progress bar.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object a line, for log collectors.",
)
def cli(verbose: int, quiet: bool, log_format: str) -> None:
    """Turn candidates' CVs and cover letters from Kombo into searchable text.

    Stages: fetch (Kombo's attachments API) -> download -> extract -> index (SQLite + Whoosh).
    """
    _setup_logging(verbose, quiet, log_format)


def _collect_ids(ids: tuple[str, ...], ids_file: Any) -> list[str]:
    collected = list(ids)
    if ids_file is not None:
        collected += read_ids(ids_file.read().splitlines())
    for candidate_id in collected:
        validate_candidate_id(candidate_id)
    return list(dict.fromkeys(collected))


class _Progress:
    """Progress bars on a terminal (tqdm); nothing at all when stderr is not one."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty() and not _FEEDBACK["quiet"]
        self._bars: dict[str, Any] = {}

    def __call__(self, what: str, done: int, total: int | None) -> None:
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
            )
            self._bars[what] = bar
        if done:
            bar.update(done)

    def wrap(self, iterable: Any, what: str) -> Any:
        if not self.enabled:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, desc=what, unit="", leave=False, file=sys.stderr)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def _run_with_progress(work: Callable[[_Progress], RunSummary]) -> RunSummary:
    progress = _Progress()
    try:
        return work(progress)
    finally:
        progress.close()


def _finish(summary: RunSummary) -> int:
    if summary.fatal is not None:
        click.echo(f"pipeline: error: {summary.fatal.message}", err=True)
    click.echo(summary.line())
    if summary.status == RunStatus.INTERRUPTED:
        # Everything finished is committed; calls still in flight on worker threads would
        # hold the interpreter until their timeouts, so leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return summary.exit_code


def extract_options(func: F) -> F:
    func = click.option(
        "--extract-memory-mb",
        type=click.IntRange(min=64),
        default=DEFAULT_MEMORY_MB,
        show_default=True,
        help="Address space one parsing worker may use.",
    )(func)
    return click.option(
        "--extract-timeout",
        type=click.FloatRange(min=0.01),
        default=DEFAULT_TIMEOUT,
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
    type=click.File("r", encoding="utf-8"),
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

    def run(progress: _Progress) -> RunSummary:
        with App(data, settings, extract=limits, progress=progress) as app:
            return app.ingest(ids, application_ids=applications)

    return _finish(_run_with_progress(run))


@cli.command()
@click.option("--full", is_flag=True, help="List every candidate, not only those changed.")
@click.option(
    "--ids-file",
    type=click.File("r", encoding="utf-8"),
    help="Run over these candidate ids ('-' for stdin) instead of asking Kombo.",
)
@click.option("--wait", is_flag=True, help="Wait for a run in progress instead of exiting.")
@kombo_options
@data_options
@extract_options
def nightly(
    full: bool,
    ids_file: Any,
    wait: bool,
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
    given = _collect_ids((), ids_file) if ids_file is not None else None
    settings = _kombo(kombo)
    data = _data(data_dir, database_url)
    from .engine import ExtractLimits

    limits = ExtractLimits(timeout=extract_timeout, memory_mb=extract_memory_mb)

    def run(progress: _Progress) -> RunSummary:
        with App(data, settings, extract=limits, progress=progress) as app:
            return app.nightly(full=full, candidate_ids=given, wait_for_lock=wait)

    return _finish(_run_with_progress(run))


@cli.command()
@click.argument("candidate_ids", nargs=-1)
@click.option(
    "--ids-file",
    type=click.File("r", encoding="utf-8"),
    help="Read candidate ids from a file ('-' for stdin).",
)
@data_options
def forget(
    candidate_ids: tuple[str, ...], ids_file: Any, data_dir: str | None, database_url: str | None
) -> int:
    """Erase candidates completely (GDPR): rows, text, index documents and files.

    A file that another candidate still refers to stays. A record of each erasure is kept
    with the candidate id and the time only.
    """
    ids = _collect_ids(candidate_ids, ids_file)
    if not ids:
        raise UsageError("no candidate ids: give them as arguments or with --ids-file")
    with App(_data(data_dir, database_url)) as app:
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
@data_options
def purge(not_seen_days: int, data_dir: str | None, database_url: str | None) -> int:
    """Erase candidates that Kombo has not returned for N days (as forget does)."""
    with App(_data(data_dir, database_url)) as app:
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
@data_options
def status(limit: int, as_json: bool, data_dir: str | None, database_url: str | None) -> int:
    """The last runs and the number of attachments in each state."""
    with App(_data(data_dir, database_url)) as app:
        report = app.status(limit=limit)
    runs, counts = report.runs, report.attachments
    watermark, erasures = report.nightly_watermark, report.erasures
    if as_json:
        payload = {
            "attachments": counts,
            "nightly_watermark": watermark,
            "erasures": erasures,
            "search_engine": report.search_engine,
            "runs": [
                {
                    "id": r.id,
                    "kind": r.kind,
                    "status": r.status,
                    "started_at": r.started_at.isoformat(),
                    "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                    "counts": r.counts,
                    "errors": len(r.errors),
                    "warnings": r.warnings,
                    "summary": r.summary,
                }
                for r in runs
            ],
        }
        click.echo(json.dumps(payload))
        return 0
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
    return 0


@cli.command()
@data_options
def check(data_dir: str | None, database_url: str | None) -> int:
    """Compare database, index and file store; report drift and how to repair each (exit 1)."""
    with App(_data(data_dir, database_url)) as app:
        drift = app.check()
        engine = app.search_engine()
    click.echo(f"search engine: {engine}")
    found = sum(len(v) for v in drift.values())
    for what, items in drift.items():
        if items:
            click.echo(
                f"{what}: {len(items)} ({', '.join(items[:5])}{' ...' if len(items) > 5 else ''})"
                f"; repair: {REPAIRS.get(what, 'run `pipeline reindex`')}"
            )
    click.echo("check succeeded: no drift" if not found else f"check found drift in {found} places")
    return 1 if found else 0


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
@data_options
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
) -> int:
    """Full-text search over the indexed text, best hits first.

    Words must all match (AND); use OR, NOT, "quoted phrases", prefix* and
    field:value (type:CV, language:de, file_name:lebenslauf). Case and accents do not
    matter, words are matched by their stem in English, German, French and Spanish, and a
    query that finds nothing is spelled again from the index's words ("did you mean").
    """
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
        with App(_data(data_dir, database_url)) as app:
            page = app.search_by_candidate(request)
        if as_json:
            click.echo(
                json.dumps(_people_json(page.results, page.people, page.total), ensure_ascii=False)
            )
        else:
            _print_people(page.results, page.people, page.total)
        return 0
    with App(_data(data_dir, database_url)) as app:
        results = app.search(request)
    if as_json:
        click.echo(json.dumps(_results_json(results), ensure_ascii=False))
    else:
        _print_results(results, offset)
    return 0


@cli.command()
@click.argument("attachment_id")
@click.option("--type", "type_", type=click.Choice(TYPES), help="Only this attachment type.")
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@data_options
def similar(
    attachment_id: str,
    type_: str | None,
    limit: int,
    as_json: bool,
    data_dir: str | None,
    database_url: str | None,
) -> int:
    """Documents of other candidates most like this one (more CVs like this CV)."""
    with App(_data(data_dir, database_url)) as app:
        results = app.similar(attachment_id, type=type_, limit=limit)
    if as_json:
        click.echo(json.dumps(_results_json(results), ensure_ascii=False))
    else:
        _print_results(results)
    return 0


def _hit_json(h: SearchHit) -> dict[str, Any]:
    return {
        "attachment_id": h.attachment_id,
        "candidate_id": h.candidate_id,
        "application_id": h.application_id,
        "type": h.type,
        "file_name": h.file_name,
        "score": h.score,
        "snippet": h.snippet,
        "language": h.language,
    }


def _results_json(results: SearchResults) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "query": results.query,
        "total": results.total,
        "hits": [_hit_json(h) for h in results.hits],
    }
    if results.did_you_mean:
        payload["did_you_mean"] = results.did_you_mean
    return payload


def _people_json(results: SearchResults, people: list[CandidateHit], total: int) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "query": results.query,
        "total": total,
        "candidates": [
            {
                "candidate_id": p.candidate_id,
                "score": p.score,
                "hits": [_hit_json(h) for h in p.hits],
            }
            for p in people
        ],
    }
    if results.did_you_mean:
        payload["did_you_mean"] = results.did_you_mean
    return payload


def _print_people(results: SearchResults, people: list[CandidateHit], total: int) -> None:
    _print_header(results, total, len(people), "candidate")
    for rank, person in enumerate(people, 1):
        files = ", ".join(f"{h.type} {h.file_name or h.attachment_id}" for h in person.hits)
        click.echo(f"{rank:>3}. {person.score:7.2f}  {person.candidate_id}  ({files})")
        click.echo(f"       {_terminal(person.hits[0].snippet)}")


def _print_header(results: SearchResults, total: int, shown: int, noun: str) -> None:
    if results.did_you_mean and total:
        # Not "no match": the typed word may match through a stem it shares.
        click.echo(f'showing results for "{results.did_you_mean}" instead of "{results.query}"')
    elif results.did_you_mean:
        click.echo(f'no match for "{results.query}"; did you mean "{results.did_you_mean}"?')
    plural = noun + ("es" if noun.endswith("ch") else "s")
    click.echo(
        f'{total} {plural if total != 1 else noun} for "{results.query}"'
        + (f", showing {shown}" if shown < total else "")
    )


_BOLD = re.compile(r"<b>(.*?)</b>")


def _terminal(snippet: str) -> str:
    tty = sys.stdout.isatty()
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
    type=click.Choice(FORMATS),
    default="jsonl",
    show_default=True,
    help="parquet needs the [parquet] extra and --output.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write here (atomically) instead of stdout.",
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
@data_options
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
) -> int:
    """Write attachment records as JSON lines, CSV or Parquet (schemas/export_record.schema.json).

    Records stream from the database in batches, so memory stays flat at any size.
    """
    if fmt == "parquet" and output is None:
        raise UsageError("--format parquet writes a file: give --output PATH")
    selection = ExportSelection(
        type=type_,
        status=status,
        candidate_id=candidate,
        since=since.replace(tzinfo=UTC) if since else None,
        with_text=not no_text,
    )
    with App(_data(data_dir, database_url)) as app:
        records = _Progress().wrap(app.export_records(selection), "records")
        if output is None:
            count = WRITERS[fmt](records, sys.stdout, with_text=not no_text)
        else:
            count = write_file(fmt, records, Path(output), with_text=not no_text)
    log.info("exported %d records", count)
    return 0


@cli.command()
@data_options
def reindex(data_dir: str | None, database_url: str | None) -> int:
    """Rebuild the search index from the database.

    From 5,000 documents on, a writer process per core (at most two) shares the work; if one
    fails, the rebuild exits 1 and says to run it again.
    """
    progress = _Progress()
    try:
        with App(_data(data_dir, database_url), progress=progress) as app:
            count = app.reindex()
    finally:
        progress.close()
    click.echo(f"reindex succeeded: {count} documents indexed")
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
) -> int:
    """Serve the built-in Kombo-compatible sandbox on 127.0.0.1 until interrupted."""
    from .sandbox.generator import World
    from .sandbox.server import SandboxServer

    world = World(candidates, seed, Path(cache_dir) if cache_dir else None)
    if cache_dir:
        click.echo(f"rendering {len(world.attachments)} documents into {cache_dir} ...")
        world.warm(processes=os.cpu_count())
    server = SandboxServer(
        world,
        port=port,
        api_key=api_key,
        integration_id=integration_id,
        latency=latency,
        download_latency=download_latency,
        concurrency_limit=concurrency_limit,
    )
    click.echo(f"Kombo sandbox serving {candidates} candidates at {server.base_url}")
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
    help="Where the demo keeps its data (default <PIPELINE_DATA_DIR "
    "or ./data>/demo, emptied first).",
)
def demo(candidates: int, seed: int, queries: tuple[str, ...], data_dir: str | None) -> int:
    """Run the whole pipeline against the built-in sandbox and show searches.

    Needs no account and no network: the sandbox runs in this process on 127.0.0.1.
    """
    from .sandbox.server import SandboxServer

    base = Path(data_dir) if data_dir else resolve_data(Options()).data_dir / "demo"
    _reset_demo_dir(base)
    data = DataSettings(data_dir=base, database_url=f"sqlite:///{base / 'pipeline.db'}")
    with SandboxServer(candidates=candidates, seed=seed) as server:
        env = server.env()
        settings = resolve_kombo(
            Options(
                api_key=env["KOMBO_API_KEY"],
                integration_id=env["KOMBO_INTEGRATION_ID"],
                base_url=env["KOMBO_BASE_URL"],
            ),
            env={},
        )
        click.echo(f"sandbox: {candidates} candidates at {server.base_url}")
        with App(data, settings) as app:
            summary = app.ingest(app.candidate_ids_at_kombo())
            for query in queries or DEMO_QUERIES:
                click.echo("")
                _print_results(app.search(SearchRequest(query, limit=3)))
    click.echo("")
    click.echo(
        f"data in {base}; try: PIPELINE_DATA_DIR={base} python -m pipeline search "
        "'Kubernetes OR Terraform'"
    )
    click.echo(summary.line())
    return summary.exit_code


def _reset_demo_dir(base: Path) -> None:
    # Remove only what the pipeline itself writes there.
    for name in ("pipeline.db", "pipeline.db-wal", "pipeline.db-shm", ".writer.lock"):
        (base / name).unlink(missing_ok=True)
    for name in ("index", "files"):
        shutil.rmtree(base / name, ignore_errors=True)


# -- entry point -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="pipeline", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("pipeline: interrupted", err=True)
        code = 130
    except (UsageError, QueryError, LockedError, IntegrationError) as exc:
        click.echo(f"pipeline: error: {exc.message}", err=True)
        code = 2
    except PipelineError as exc:
        click.echo(f"pipeline: error: {exc.message}", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
