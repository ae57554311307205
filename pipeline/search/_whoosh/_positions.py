"""The text field's postings format, ``WordPositions``.

Whoosh pickles the schema into the index's TOC, and with it this class's import path: an
index written since the search package names ``pipeline.search._whoosh._positions``; one
written before names ``pipeline.index`` (``_pickle`` maps it here). Moving the class again
means adding its old path to ``_pickle.MOVED_CLASSES``.
"""

from __future__ import annotations

import sys
from array import array

from whoosh.formats import Positions


class WordPositions(Positions):
    """Whoosh's positions, stored as an array of little-endian 32-bit numbers instead of a
    pickled list of differences.

    Search reads the positions of thousands of documents at once for a phrase (``_ranker``
    joins the values and reads them as one numpy array), where the pickled lists took a
    call each. The field is fed lists of words (``_analysis.terms``): a word's position is
    its place in the list, as Whoosh's own reading of a list gives.
    """

    positions_dtype = "<u4"

    def word_values(self, value, analyzer, **kwargs):
        if not isinstance(value, list | tuple):
            yield from super().word_values(value, analyzer, **kwargs)
            return
        places: dict[str, list[int]] = {}
        for place, word in enumerate(value):
            places.setdefault(word, []).append(place)
        boost = self.field_boost
        for word, where in places.items():
            yield word, len(where), len(where) * boost, pack_positions(where)

    def encode(self, poslist):
        return pack_positions(poslist)

    def decode_positions(self, valuestring):
        numbers = array("I")
        numbers.frombytes(valuestring)
        if sys.byteorder == "big":
            numbers.byteswap()
        return numbers.tolist()

    def decode_frequency(self, valuestring):
        return len(valuestring) // 4


def pack_positions(positions: list[int]) -> bytes:
    numbers = array("I", positions)
    if sys.byteorder == "big":
        numbers.byteswap()
    return numbers.tobytes()
