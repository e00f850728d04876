"""How rendered text and expected text are compared: one canonical spelling for both.

NFKC folds full-width Latin letters and digits (``ＡＢＣ１２３``) and the ideographic space to
their ordinary forms, and compatibility ligatures (``ﬁ``) to their letters; whitespace is then
removed (OCR engines disagree on spaces, a person does not), and case is folded::

    >>> normalise("Ｌａｎｔｅｒｎ  Night\\u3000市集")
    'lanternnight市集'

Punctuation is kept: a poster that reads "7pm" where "7:pm" was asked is misspelt.
"""

from __future__ import annotations

import unicodedata


def normalise(text: str) -> str:
    """``text`` in the form two spellings are compared in (NFKC, no whitespace, casefolded)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    # casefold can produce text NFKC would change again (e.g. "ß" → "ss" is already stable,
    # but some letters decompose): normalise once more so the result is a fixed point.
    folded = unicodedata.normalize("NFKC", folded)
    return "".join(char for char in folded if not char.isspace())
