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
    want = normalise(expected)
    if not want:
        return 0.0
    edits, _, _ = _best_span(want, normalise(found))
    return edits / len(want)


def read_lines(expected: Sequence[str], found: str) -> list[str]:
    """The lines of ``found`` that hold the best match of some expected string, in order:
    what was read where the text was asked for (a poster's other words left out).

    >>> read_lines(["Night Market"], "SALE\\nLantern Night\\nMarket")
    ['Lantern Night', 'Market']
    """
    lines = found.splitlines()
    text, owner = "", []
    for number, line in enumerate(lines):
        part = normalise(line)
        text += part
        owner += [number] * len(part)
    keep: set[int] = set()
    for expected_text in expected:
        want = normalise(expected_text)
        if want and text:
            _, start, end = _best_span(want, text)
            keep.update(owner[start:end])
    return [lines[number] for number in sorted(keep)]


def _best_span(want: str, text: str) -> tuple[int, int, int]:
    """(edits, start, end) of the span ``text[start:end]`` closest to ``want``."""
    # previous[j]: edits to turn want[:i] into a span of text ending at j (any start);
    # begun[j]: where that span starts.
    previous, begun = [0] * (len(text) + 1), list(range(len(text) + 1))
    for i, char in enumerate(want, start=1):
        current, starts = [i] + [0] * len(text), [0] * (len(text) + 1)
        for j, got in enumerate(text, start=1):
            choices = (
                (previous[j - 1] + (char != got), begun[j - 1]),  # replace (or keep)
                (previous[j] + 1, begun[j]),  # a character of want missing from text
                (current[j - 1] + 1, starts[j - 1]),  # an extra character in text
            )
            current[j], starts[j] = min(choices)
        previous, begun = current, starts
    end = min(range(len(previous)), key=previous.__getitem__)
    return previous[end], begun[end], end


def judge(expected: Sequence[str], found: str, *, max_cer: float = 0.0) -> TextVerdict:
    """The verdict on one image: passes when every expected string is within ``max_cer``."""
    wanted = tuple(expected)
    worst = max((cer_in(text, found) for text in wanted), default=0.0)
    return TextVerdict(expected=wanted, found=found, cer=worst, ok=worst <= max_cer)
