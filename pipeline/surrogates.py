"""UTF-16 surrogates in text, mended: no UTF-8 database stores them.

Python text can hold them where its source could spell them: a JSON answer's "\\ud800"
escape, a PDF font map decoded with "surrogatepass" (pypdf), an RTF's \\uN escapes (two for
a character beyond U+FFFF). A pair becomes its character, a lone half U+FFFD.
"""

from __future__ import annotations

import re

SURROGATE = re.compile("[\ud800-\udfff]")


def mend_surrogates(text: str) -> str:
    if not SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
