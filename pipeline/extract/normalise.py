"""Text clean-up shared by every parser, so that search sees one spelling of each word."""

from __future__ import annotations

import re
import unicodedata

from ..surrogates import mend_surrogates

# Spacing diacritics that LaTeX PDFs emit before (or after) the base letter, as in
# "Pers¨ onliche": turned into combining marks so that NFC can compose "ö".
_SPACING_TO_COMBINING = {
    "\u00a8": "\u0308",  # diaeresis
    "\u00b4": "\u0301",  # acute
    "`": "\u0300",  # grave
    "\u02c6": "\u0302",  # circumflex
    "^": "\u0302",
    "\u02dc": "\u0303",  # tilde
    "\u00b8": "\u0327",  # cedilla
    "\u02c7": "\u030c",  # caron
}
_SPLIT_DIACRITIC = re.compile(r"([\u00a8\u00b4\u02c6\u02dc\u00b8\u02c7])\s?([A-Za-z])")
_LIGATURES = {
    "\ufb00": "ff",
    "\ufb01": "fi",
    "\ufb02": "fl",
    "\ufb03": "ffi",
    "\ufb04": "ffl",
    "\ufb05": "st",
    "\ufb06": "st",
}
_LIGATURE_RE = re.compile("[" + "".join(_LIGATURES) + "]")
_PRIVATE_USE = re.compile("[\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd]")
_EOL_HYPHEN = re.compile(r"(\w)[-\u00ad]\n(\w)")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_ZERO_WIDTH = re.compile("[\u00ad\u200b\u200c\u200d\u2060\ufeff]")
_MANY_BREAKS = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def normalise_text(text: str) -> str:
    # A broken or hostile file can leave UTF-16 surrogates in the text, which no database
    # would store.
    text = mend_surrogates(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = _SPLIT_DIACRITIC.sub(lambda m: m.group(2) + _SPACING_TO_COMBINING[m.group(1)], text)
    text = _LIGATURE_RE.sub(lambda m: _LIGATURES[m.group(0)], text)
    text = unicodedata.normalize("NFC", text)
    # Join "develop-\nment" (and a soft hyphen at a line end) before dropping soft hyphens.
    text = _EOL_HYPHEN.sub(
        lambda m: m.group(1) + m.group(2) if m.group(2).islower() else m.group(0), text
    )
    text = _ZERO_WIDTH.sub("", text)
    text = _PRIVATE_USE.sub("", text)  # icon fonts (phone, mail glyphs) carry no words
    # A control character inside a word stands for a glyph the font did not map (a ligature,
    # a minus sign): a space keeps the pieces pypdf found as words, gluing them makes one
    # that is no word at all.
    text = _CONTROL.sub(" ", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _MANY_BREAKS.sub("\n\n", text)
    return text.strip()
