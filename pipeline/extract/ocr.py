"""OCR through Tesseract (Debian's ``tesseract-ocr``), for scanned pages and photos of CVs.

Tesseract runs as a child of the extraction worker, one page at a time, with a time limit per
page, one thread (the workers already use every core) and the kernel's promise to kill it when
its worker dies (``PR_SET_PDEATHSIG``): a worker killed for its timeout takes its page's
Tesseract with it. Images are normalised first: turned upright by their EXIF orientation, made
grey, scaled to a size Tesseract reads well, and deskewed when they lean.

The languages: a quick English pass over a small copy of the first page finds the document's
language, which then reads every page (with English beside it, which CVs mix in); all four
(English, German, French, Spanish) when it is none of them.
``PIPELINE_OCR=off`` turns OCR off; without Tesseract on PATH a scan ends ``no_text`` with
the reason :data:`NEEDS_TESSERACT`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from ..child import child_environment
from ..errors import ExtractionError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

NEEDS_TESSERACT = "OCR needs tesseract-ocr"
OCR_OFF = "OCR is off (PIPELINE_OCR=off)"
ALL_LANGUAGES = ("eng", "deu", "fra", "spa")
_TESSERACT_LANGUAGE = {"en": "eng", "de": "deu", "fr": "fra", "es": "spa"}
# Pages rendered for OCR: 300 dpi is what Tesseract is trained for.
RENDER_DPI = 300
# Past this many pages a document's remaining scanned pages are left (and named in the note):
# a CV is a few pages, and a 200-page scanned archive must not hold a worker for an hour.
MAX_PAGES = 10
PAGE_TIMEOUT = 30.0
# Images are scaled so that their long side is about this: a phone photo's 4000 px costs
# four times the OCR time for no better words, a thumbnail is too small to read.
_TARGET_LONG_SIDE = 3300
_MIN_LONG_SIDE = 1600
# Skew searched for, in degrees either way, and the step: scanners and phones lean a little.
_MAX_SKEW = 5.0
_SKEW_STEP = 0.25
# Seconds a document's OCR may take in all: set by the extraction worker from its own time
# limit (less a margin), so that a long scan ends with the pages read and the rest named
# instead of with a killed worker and nothing.
TIME_BUDGET: float | None = None


@dataclass(frozen=True)
class OcrPage:
    text: str
    confidence: float | None  # Tesseract's mean word confidence, 0-100; None without words


@dataclass(frozen=True)
class OcrResult:
    """What OCR made of a document's scanned pages."""

    pages: tuple[int, ...]  # the page numbers OCR read (1-based)
    texts: dict[int, str]
    confidence: float | None  # mean over the words of every page read
    skipped: tuple[int, ...] = ()  # scanned pages past the page cap or the time budget


def enabled() -> bool:
    return os.environ.get("PIPELINE_OCR", "").strip().lower() not in ("off", "0", "false", "no")


def tesseract_path() -> str | None:
    return shutil.which("tesseract")


@cache
def tesseract_version() -> str | None:
    """``tesseract 5.3.0``, or None when it is not installed."""
    path = tesseract_path()
    if path is None:
        return None
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            timeout=10,
            check=False,
            env=child_environment(),  # also asked from the run's own process: keep the key
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(rb"tesseract v?(\d+(?:\.\d+)+)", done.stdout + done.stderr)
    return f"tesseract {found.group(1).decode()}" if found else "tesseract"


@cache
def installed_languages() -> frozenset[str]:
    path = tesseract_path()
    if path is None:
        return frozenset()
    try:
        done = subprocess.run(
            [path, "--list-langs"],
            capture_output=True,
            timeout=10,
            check=False,
            env=child_environment(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    lines = done.stdout.decode("utf-8", "replace").splitlines()[1:]
    return frozenset(line.strip() for line in lines if line.strip())


def unavailable_reason() -> str | None:
    """Why OCR cannot run here, or None when it can."""
    if not enabled():
        return OCR_OFF
    if tesseract_path() is None:
        return NEEDS_TESSERACT
    return None


def _languages(wanted: Iterable[str]) -> str:
    have = installed_languages()
    chosen = [lang for lang in wanted if lang in have]
    chosen = chosen or [lang for lang in ALL_LANGUAGES if lang in have]
    return "+".join(chosen) or "eng"


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel for SIGKILL when the worker that
    # started it dies, so that a worker killed for its time takes its Tesseract along.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run_tesseract(png: bytes, languages: str, timeout: float) -> OcrPage:
    path = tesseract_path()
    if path is None:
        raise ExtractionError(NEEDS_TESSERACT)
    # One thread: the extraction workers already take one core each.
    env = {**child_environment(), "OMP_THREAD_LIMIT": "1"}
    command = [path, "stdin", "stdout", "-l", languages, "--psm", "3", "tsv"]
    try:
        done = subprocess.run(
            command,
            input=png,
            capture_output=True,
            timeout=timeout,
            check=False,
            env=env,
            preexec_fn=_die_with_parent,  # the worker has no other threads
        )
    except subprocess.TimeoutExpired as exc:
        raise ExtractionError("timeout") from exc
    if done.returncode < 0 or b"bad_alloc" in done.stderr:
        raise ExtractionError("memory limit")  # killed (the address-space limit) or out of it
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ExtractionError(f"tesseract failed: {message[-1] if message else done.returncode}")
    return parse_tsv(done.stdout.decode("utf-8", "replace"))


def parse_tsv(tsv: str) -> OcrPage:
    """Tesseract's TSV (one row per word, with its block, paragraph and line) as text with the
    page's line breaks, and the mean confidence of its words."""
    lines: list[str] = []
    current: tuple[str, ...] | None = None
    words: list[str] = []
    confidences: list[float] = []
    last_block: str | None = None
    for row in tsv.splitlines()[1:]:
        cells = row.split("\t")
        if len(cells) < 12 or cells[0] != "5":  # level 5: a word
            continue
        text = cells[11].strip()
        if not text:
            continue
        key = (cells[2], cells[3], cells[4])  # block, paragraph, line
        if key != current:
            if words:
                lines.append(" ".join(words))
            if last_block is not None and cells[2] != last_block:
                lines.append("")  # a blank line between blocks, as between paragraphs
            current, words, last_block = key, [], cells[2]
        words.append(text)
        try:
            confidence = float(cells[10])
        except ValueError:
            continue
        if confidence >= 0:
            confidences.append(confidence)
    if words:
        lines.append(" ".join(words))
    mean = sum(confidences) / len(confidences) if confidences else None
    return OcrPage("\n".join(lines), mean)


def prepare(image: Image.Image) -> Image.Image:
    """Upright (EXIF orientation), grey, at a size Tesseract reads well, despeckled, deskewed."""
    from PIL import Image as PILImage
    from PIL import ImageFilter, ImageOps

    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA", "P"):
        # Transparent pixels are black underneath: put the page on white first.
        rgba = image.convert("RGBA")
        white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PILImage.alpha_composite(white, rgba)
    image = image.convert("L")
    long_side = max(image.size)
    if long_side > _TARGET_LONG_SIDE * 1.2 or long_side < _MIN_LONG_SIDE:
        scale = _TARGET_LONG_SIDE / long_side
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, resample=PILImage.Resampling.BICUBIC)
    # A scanner's speckle costs Tesseract time (each speck is a candidate letter) and words.
    image = image.filter(ImageFilter.MedianFilter(3))
    angle = skew_angle(image)
    if abs(angle) >= _SKEW_STEP:
        image = image.rotate(
            angle, resample=PILImage.Resampling.BILINEAR, expand=True, fillcolor=255
        )
    return image


def skew_angle(image: Image.Image) -> float:
    """The rotation (degrees, counter-clockwise) that makes the text lines level: the angle
    whose row profile of dark pixels is the most sharply peaked."""
    import numpy as np

    small = image.copy()
    small.thumbnail((1000, 1000))
    ink = np.asarray(small, dtype=np.uint8) < 128
    if ink.mean() < 0.002:
        return 0.0  # a blank page has no lines to level
    from PIL import Image as PILImage

    mask = PILImage.fromarray((ink * 255).astype(np.uint8))
    best, best_score = 0.0, -1.0
    steps = round(_MAX_SKEW / _SKEW_STEP)
    for step in range(-steps, steps + 1):
        angle = step * _SKEW_STEP
        rotated = mask.rotate(angle, resample=PILImage.Resampling.NEAREST, expand=False)
        profile = np.asarray(rotated, dtype=np.float64).sum(axis=1)
        score = float(np.square(np.diff(profile)).sum())
        if score > best_score:
            best, best_score = angle, score
    return best


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def read_images(
    images: Iterable[tuple[int, Image.Image]], *, budget: float | None = None
) -> OcrResult:
    """OCR numbered page images, up to :data:`MAX_PAGES` and within ``budget`` seconds (the
    worker's own limit, less a margin): pages past either are named in ``skipped``."""
    started = time.monotonic()
    budget = TIME_BUDGET if budget is None else budget
    languages: str | None = None
    texts: dict[int, str] = {}
    done: list[int] = []
    skipped: list[int] = []
    weighted, words = 0.0, 0
    for number, image in images:
        left = None if budget is None else budget - (time.monotonic() - started)
        if len(done) >= MAX_PAGES or (done and left is not None and left < 2.0):
            skipped.append(number)
            continue
        # The first page is always tried (its own limit at least a second; the worker's clock
        # still holds): a document of which no page was read is a timeout, not "no text".
        timeout = PAGE_TIMEOUT if left is None else min(PAGE_TIMEOUT, max(left, 1.0))
        prepared = prepare(image)
        if languages is None:
            languages = _guess_languages(prepared, timeout)
        page = _run_tesseract(_png(prepared), languages, timeout)
        texts[number] = page.text
        done.append(number)
        count = len(page.text.split())
        if page.confidence is not None and count:
            weighted += page.confidence * count
            words += count
    return OcrResult(tuple(done), texts, weighted / words if words else None, tuple(skipped))


def _guess_languages(page: Image.Image, timeout: float) -> str:
    """The languages to read a document with: its language (found by a quick English pass
    over a small copy of its first page) and English, which CVs mix in; all four when the
    language is none of them. Read with its own language's model first, Tesseract keeps the
    accents that a model of four drops (Amélie, not Amelie)."""
    from .language import detect_language

    small = page.copy()
    small.thumbnail((1200, 1200))
    try:
        text = _run_tesseract(_png(small), _languages(["eng"]), min(timeout, 10.0)).text
    except ExtractionError:
        text = ""
    found = _TESSERACT_LANGUAGE.get(detect_language(text) or "") if text.strip() else None
    if found is None:
        return _languages(ALL_LANGUAGES)
    return _languages(dict.fromkeys([found, "eng"]))


def note(result: OcrResult, total_pages: int | None = None) -> str:
    """The record's one line on what OCR did, e.g. "OCR: 2 pages, mean confidence 91"."""
    count = len(result.pages)
    parts = [f"OCR: {count} page{'s' * (count != 1)}"]
    if total_pages is not None and total_pages > count:
        parts[0] += f" of {total_pages}"
    if result.confidence is not None:
        parts.append(f"mean confidence {result.confidence:.0f}")
    if result.skipped:
        parts.append(f"pages {_ranges(result.skipped)} not read (page cap or time limit)")
    return ", ".join(parts)


def _ranges(numbers: Iterable[int]) -> str:
    out: list[str] = []
    items = sorted(numbers)
    start = prev = items[0]
    for n in [*items[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(out)
