"""Scanned CVs and phone photos of CVs, made from the sandbox's own PDFs.

A scan is the born-digital PDF rendered to an image at 200 or 300 dpi, then made to look like
paper through a scanner: grey, a slight skew, sensor noise, and JPEG artefacts, wrapped back
into an image-only PDF. A photo is the page taken with a phone: lit unevenly, leaning a
little, stored as a JPEG (or HEIC) whose pixels lie on their side with an EXIF orientation
tag saying how to turn them upright, as phones do. Bytes are deterministic: the noise comes
from a seeded generator.
"""

from __future__ import annotations

import io
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

# kind -> (content type, extension) of what the sandbox serves
SCAN_KINDS = {
    "scan200": ("application/pdf", ".pdf"),
    "scan300": ("application/pdf", ".pdf"),
    "photo": ("image/jpeg", ".jpg"),
    "photo-heic": ("image/heic", ".heic"),
}
_SKEW_DEGREES = 1.2
_JPEG_QUALITY = 55
_EXIF_ORIENTATION = 0x0112
_ROTATE_90_CW = 6  # "the pixels are turned; rotate 90 degrees clockwise to view"


def _pages(pdf: bytes, dpi: int) -> list[Image.Image]:
    import pypdfium2

    document = pypdfium2.PdfDocument(pdf)
    try:
        return [page.render(scale=dpi / 72, grayscale=True).to_pil() for page in document]
    finally:
        document.close()


def _noisy(image: Image.Image, rng: random.Random, strength: float) -> Image.Image:
    import numpy as np
    from PIL import Image as PILImage

    generator = np.random.default_rng(rng.randrange(2**32))
    pixels = np.asarray(image.convert("L"), dtype=np.float32)
    pixels = pixels * 0.92 + 12  # paper is not white, ink is not black
    pixels += generator.normal(0, strength, pixels.shape)
    return PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return PILImage.open(buffer).convert("L")


def render_scan(pdf: bytes, dpi: int, seed: str) -> bytes:
    """An image-only PDF of ``pdf``'s pages as a scanner at ``dpi`` would make it."""
    from PIL import Image as PILImage

    rng = random.Random(seed)
    pages = []
    for page in _pages(pdf, dpi):
        angle = rng.uniform(0.4, _SKEW_DEGREES) * rng.choice((-1, 1))
        page = page.rotate(angle, resample=PILImage.Resampling.BILINEAR, fillcolor=255)
        page = _noisy(page, rng, 10.0)
        pages.append(_jpeg_round_trip(page, _JPEG_QUALITY))
    buffer = io.BytesIO()
    # Pillow writes each page as a JPEG (DCT) image: a PDF with no text layer at all.
    pages[0].save(
        buffer, format="PDF", save_all=True, append_images=pages[1:], resolution=float(dpi)
    )
    return _fixed_pdf_dates(buffer.getvalue())


def _fixed_pdf_dates(pdf: bytes) -> bytes:
    # Pillow stamps the time of writing; the sandbox's bytes must not change between runs.
    import re

    return re.sub(rb"\(D:\d{14}[^)]*\)", b"(D:20260105090000Z)", pdf)


def render_photo(pdf: bytes, seed: str, *, heic: bool = False) -> bytes:
    """The first page of ``pdf`` photographed with a phone: JPEG (or HEIC) with the pixels on
    their side and an EXIF orientation that turns them upright."""
    import numpy as np
    from PIL import Image as PILImage

    rng = random.Random(seed)
    page = _pages(pdf, 250)[0]
    # The page on a darker desk, leaning a little, lit from one side.
    desk = PILImage.new("L", (page.width + 160, page.height + 160), 90)
    desk.paste(page, (80, 80))
    angle = rng.uniform(0.5, 1.5) * rng.choice((-1, 1))
    photo = desk.rotate(angle, resample=PILImage.Resampling.BILINEAR, fillcolor=90)
    light = np.linspace(1.0, 0.8, photo.width, dtype=np.float32)[None, :]
    pixels = np.asarray(photo, dtype=np.float32) * light
    photo = _noisy(PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), rng, 6.0)
    # Phones store the sensor's pixels as they came and say in EXIF how to turn them.
    stored = photo.convert("RGB").transpose(PILImage.Transpose.ROTATE_90)
    exif = PILImage.Exif()
    exif[_EXIF_ORIENTATION] = _ROTATE_90_CW
    buffer = io.BytesIO()
    if heic:
        import pillow_heif

        pillow_heif.register_heif_opener()
        # x265's fastest preset: the default takes a minute a photo, for the same pixels.
        stored.save(
            buffer,
            format="HEIF",
            quality=70,
            exif=exif.tobytes(),
            enc_params={"preset": "ultrafast"},
        )
    else:
        stored.save(buffer, format="JPEG", quality=80, exif=exif.tobytes())
    return buffer.getvalue()


def render(kind: str, pdf: bytes, seed: str) -> bytes:
    """The bytes of a scanned or photographed CV of ``kind`` (a key of :data:`SCAN_KINDS`)."""
    if kind == "scan200":
        return render_scan(pdf, 200, seed)
    if kind == "scan300":
        return render_scan(pdf, 300, seed)
    if kind == "photo":
        return render_photo(pdf, seed)
    if kind == "photo-heic":
        return render_photo(pdf, seed, heic=True)
    raise ValueError(f"not a scan kind: {kind}")
