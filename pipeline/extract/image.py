"""Images of CVs (scans, phone photos) through OCR: PNG, JPEG, TIFF (every page), WebP, BMP,
GIF, and HEIC/HEIF (iPhone photos) where pillow-heif is installed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageSequence

from . import ocr
from .registry import Parsed, register


def _register_heif() -> bool:
    """HEIC/HEIF through pillow-heif, when installed (without it such photos are unsupported)."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


_HEIF = _register_heif()

IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/tiff", "image/webp", "image/bmp", "image/gif"}
    | ({"image/heic", "image/heif"} if _HEIF else set())
)
# A decompression bomb (a tiny file claiming 50 000 x 50 000 pixels) is refused by Pillow
# past this, and the worker's memory limit holds the rest.
Image.MAX_IMAGE_PIXELS = 120_000_000
# Smaller than this on a side, an image holds no line of text (an icon, a tracking pixel, a
# thumbnail of a face): ``no_text`` without starting Tesseract.
MIN_SIDE = 48
TOO_SMALL = "no text: the image is too small to hold any"


def _frames(image: Image.Image) -> Iterator[tuple[int, Image.Image]]:
    for number, frame in enumerate(ImageSequence.Iterator(image), 1):
        yield number, frame.copy()


class ImageParser:
    name = "tesseract"
    mime_types = IMAGE_TYPES

    @property
    def version(self) -> str:
        return ocr.tesseract_version() or "tesseract (not installed)"

    def parse(self, path: Path) -> Parsed:
        with Image.open(path) as image:
            pages = getattr(image, "n_frames", 1)
            if min(image.size) < MIN_SIDE:
                return Parsed(text="", page_count=pages, note=TOO_SMALL)
            reason = ocr.unavailable_reason()
            if reason is not None:
                return Parsed(text="", page_count=pages, note=reason)
            if image.format == "GIF":
                pages = 1  # an animated GIF's frames are one picture, not pages
                found = ocr.read_images([(1, image.copy())])
            else:
                found = ocr.read_images(_frames(image))
        text = "\n\n".join(found.texts[n] for n in found.pages)
        return Parsed(text=text, page_count=pages, note=ocr.note(found), ocr=found)


register(ImageParser())
