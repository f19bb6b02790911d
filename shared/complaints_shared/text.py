"""Text as every service compares it: keywords, rules, suggestions and search.

Customers and agents type the same word in different forms: full-width letters and digits
from a Chinese input method (``ＶＩＰ``, ``１０元``), circled or compatibility characters,
Latin in either case. Comparisons fold them all to one form first (Unicode NFKC, then case
folding); Chinese characters are left as they are, and substring tests need no word spaces.
"""

from __future__ import annotations

import unicodedata


def folded(text: str) -> str:
    """``text`` in the form comparisons use: compatibility forms folded (full-width ``Ａ１``
    is ``A1``) and case folded."""
    return unicodedata.normalize("NFKC", text).casefold()


def contains(folded_text: str, needle: str) -> bool:
    """Whether ``needle``, folded, occurs in ``folded_text`` (already :func:`folded`)."""
    return folded(needle) in folded_text
