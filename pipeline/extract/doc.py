"""Legacy Word 97-2003 (and Word 6) through antiword, from Debian's packages, when installed.

Without it, .doc files end ``unsupported`` with the reason. An encrypted .doc (the
``fEncrypted`` bit of its File Information Block) ends ``encrypted`` either way.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import olefile

from ..errors import EncryptedDocumentError, ExtractionError, UnavailableError
from .detect import DOC
from .registry import Parsed, register

ANTIWORD_TIMEOUT = 60


def doc_is_encrypted(path: Path) -> bool:
    try:
        with olefile.OleFileIO(str(path)) as ole:
            if not ole.exists("WordDocument"):
                return False
            fib = ole.openstream("WordDocument").read(12)
    except (OSError, ValueError, IndexError):
        return False
    if len(fib) < 12:
        return False
    (flags,) = struct.unpack_from("<H", fib, 10)
    return bool(flags & 0x0100)  # fEncrypted


class DocParser:
    name = "antiword"
    mime_types = frozenset({DOC})

    @property
    def version(self) -> str:
        return "antiword" if shutil.which("antiword") else "antiword (not installed)"

    def parse(self, path: Path) -> Parsed:
        if doc_is_encrypted(path):
            raise EncryptedDocumentError("encrypted: the Word document needs a password")
        antiword = shutil.which("antiword")
        if antiword is None:
            raise UnavailableError(
                "legacy Word (.doc) needs antiword, which is not installed "
                "(apt-get install antiword)"
            )
        try:
            done = subprocess.run(
                [antiword, "-m", "UTF-8.txt", "-w", "0", str(path)],
                capture_output=True,
                timeout=ANTIWORD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ExtractionError("timeout") from exc
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip().splitlines()
            reason = message[-1] if message else f"exit {done.returncode}"
            if "encrypt" in reason.lower():
                raise EncryptedDocumentError("encrypted: the Word document needs a password")
            # antiword reads Word 2 to 2003 but not every variant (Word 6 text streams, say):
            # no converter here can read it, which is a final state, not a failure to retry.
            raise UnavailableError(f"antiword cannot read this Word file: {reason[:200]}")
        return Parsed(text=done.stdout.decode("utf-8", "replace"))


register(DocParser())
