"""One error model: every error of ours is in the tree errors.py draws, says transient or
terminal one way, and crosses a process boundary as itself (pickled whole)."""

from __future__ import annotations

import pickle

import pytest

import pipeline.extract  # noqa: F401  (imports every parser, and with them their errors)
from pipeline import errors
from pipeline.errors import (
    DownloadError,
    IntegrationError,
    KomboError,
    PipelineError,
    TransportError,
    kombo_error,
)


def _family() -> list[type[PipelineError]]:
    found: list[type[PipelineError]] = []
    todo: list[type[PipelineError]] = [PipelineError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


# Classes whose constructor takes more than a message, as the code raises them.
EXAMPLES: dict[type[PipelineError], PipelineError] = {
    KomboError: kombo_error(
        code="PLATFORM.RATE_LIMIT_EXCEEDED",
        message="slow down",
        title="Rate limit",
        log_url="https://app.kombo.dev/logs/1",
        status_code=429,
        retry_after=2.5,
        subject="candidate c1",
    ),
    IntegrationError: kombo_error(
        code="INTEGRATION.INACTIVE", message="inactive", status_code=403, subject="candidate c2"
    ),
    TransportError: TransportError("connection refused", retry_after=1.0),
    DownloadError: DownloadError("HTTP 503 on data_url", transient=True),
}


def _example(cls: type[PipelineError]) -> PipelineError:
    return EXAMPLES.get(cls) or cls(f"{cls.__name__} happened")


@pytest.mark.parametrize("cls", _family(), ids=lambda c: c.__name__)
def test_every_error_pickles_as_itself(cls: type[PipelineError]) -> None:
    error = _example(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error) and copy.message == error.message
    assert copy.args == error.args
    assert vars(copy) == vars(error)
    assert copy.transient == error.transient
    assert errors.is_transient(copy) == errors.is_transient(error)


@pytest.mark.parametrize("cls", _family(), ids=lambda c: c.__name__)
def test_every_error_is_in_the_tree_the_docstring_draws(cls: type[PipelineError]) -> None:
    assert cls.__module__ == "pipeline.errors", f"{cls.__name__} lives outside errors.py"
    assert errors.__doc__ is not None and f" {cls.__name__} " in errors.__doc__


def test_transient_is_said_one_way() -> None:
    assert errors.is_transient(EXAMPLES[KomboError])
    assert not errors.is_transient(EXAMPLES[IntegrationError])
    assert errors.is_transient(TransportError("timeout"))
    assert errors.is_transient(DownloadError("503", transient=True))
    assert not errors.is_transient(DownloadError("404"))
    assert not errors.is_transient(ValueError("not ours"))
