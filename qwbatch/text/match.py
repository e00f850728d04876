"""Judge an image's text: each expected string against the best-matching span of what was read.

The character error rate (CER) of an expected string ``e`` in a read text ``f`` is the
fewest single-character edits (insert, delete, replace) that turn some span of ``f`` into
``e``, divided by ``len(e)``: 0.0 when ``e`` appears exactly, 1.0 when nothing of it does.
Both sides are normalised first (:func:`qwbatch.text.normalise.normalise`), and the lines the
engine read are joined without a separator, so a phrase wrapped over two lines still matches.

The span search is the classic semi-global edit distance (Sellers, 1980): the first row of
the table is all zeros, so a match may start anywhere in ``f``, and the answer is the least
cell of the last row, so it may end anywhere. Strings here are short (a slogan against the
few lines on one image: tens × hundreds of cells), so plain Python is fast enough; a library
would add a dependency for microseconds.

An image passes when every expected string has CER ≤ ``max_cer``; its ``cer`` is the worst.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qwbatch.text.normalise import normalise


@dataclass(frozen=True, slots=True)
class TextVerdict:
    """What was asked for, what was read, and whether the image passes."""

    expected: tuple[str, ...]
    #: Everything the engine read, one line per text box, as it read it (not normalised).
    found: str
    #: The worst expected string's CER (0.0 exact … 1.0 absent); 0.0 when nothing was expected.
    cer: float
    ok: bool


def cer_in(expected: str, found: str) -> float:
    """CER of ``expected`` against its best-matching span in ``found`` (both normalised here).

    >>> cer_in("Night Market", "LANTERN NIGHT MARKET\\nSat 12 Dec")
    0.0
    >>> round(cer_in("秋季新品", "秋李新品全场八折"), 2)
    0.25
    """
    want, text = normalise(expected), normalise(found)
    if not want:
        return 0.0
    # previous[j]: edits to turn want[:i] into a span of text ending at j (any start).
    previous = [0] * (len(text) + 1)
    for i, char in enumerate(want, start=1):
        current = [i] + [0] * len(text)
        for j, got in enumerate(text, start=1):
            current[j] = min(
                previous[j - 1] + (char != got),  # replace (or keep)
                previous[j] + 1,  # a character of want missing from text
                current[j - 1] + 1,  # an extra character in text
            )
        previous = current
    return min(previous) / len(want)


def judge(expected: Sequence[str], found: str, *, max_cer: float = 0.0) -> TextVerdict:
    """The verdict on one image: passes when every expected string is within ``max_cer``."""
    wanted = tuple(expected)
    worst = max((cer_in(text, found) for text in wanted), default=0.0)
    return TextVerdict(expected=wanted, found=found, cer=worst, ok=worst <= max_cer)
