"""Checks made before a zip container is opened, so that a zip bomb is refused without being
inflated: the declared number of members, their total size and each one's compression ratio.
(The worker's memory limit is the second line of defence, for archives that lie.)"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import ExtractionError

MAX_MEMBERS = 5_000
MAX_TOTAL_BYTES = 512 * 1024 * 1024
MAX_RATIO = 200  # a text-heavy XML part compresses 10-30 times; 1,000 is a bomb
RATIO_FLOOR_BYTES = 10 * 1024 * 1024  # small members may compress as they like


def check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ExtractionError(f"broken container: {exc}") from exc
    if len(members) > MAX_MEMBERS:
        raise ExtractionError(f"zip bomb refused: {len(members)} members")
    total = 0
    for member in members:
        total += member.file_size
        if total > MAX_TOTAL_BYTES:
            raise ExtractionError(
                f"zip bomb refused: more than {MAX_TOTAL_BYTES // (1024 * 1024)} MB inflated"
            )
        if member.file_size > RATIO_FLOOR_BYTES:
            ratio = member.file_size / max(1, member.compress_size)
            if ratio > MAX_RATIO:
                raise ExtractionError(
                    f"zip bomb refused: {member.filename} inflates {ratio:.0f} times"
                )
