"""How rendered text and expected text are compared: one canonical spelling for both.

NFKC folds full-width Latin letters and digits (``ＡＢＣ１２３``) and the ideographic space to
their ordinary forms, and compatibility ligatures (``ﬁ``) to their letters; whitespace is then
removed (OCR engines disagree on spaces, a person does not), and case is folded::

    >>> normalise("Ｌａｎｔｅｒｎ  Night\\u3000市集")
    'lanternnight市集'

Two digits that print like letters in most typefaces are compared as those letters: zero
as o (``5.00``, ``5.OO``, ``5.oo``) and one as small l (``1``, ``l``). OCR engines swap them
by context — PP-OCRv4 reads ``5.00`` after lowercase words as ``5.oo`` nearly every time —
and a checker that failed those would re-roll good images. Capital I is not folded into l:
case folding must keep ``NIGHT`` equal to ``Night``. Any other replacement still counts.

Punctuation is kept: a poster that reads "7pm" where "7:pm" was asked is misspelt.
"""

from __future__ import annotations

import unicodedata

#: Digits that look like letters, as those letters (applied after case folding).
_LOOK_ALIKES = str.maketrans({"0": "o", "1": "l"})


def normalise(text: str) -> str:
    """``text`` in the form two spellings are compared in (NFKC, look-alikes folded, no
    whitespace, casefolded)."""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_LOOK_ALIKES)
    # casefold can yield text NFKC changes again: once more makes the result a fixed point.
    folded = unicodedata.normalize("NFKC", folded)
    return "".join(char for char in folded if not char.isspace())
