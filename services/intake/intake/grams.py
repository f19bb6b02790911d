"""Substring search without word segmentation: character bigrams in a multikey index.

Chinese has no spaces to split words on, so ``q`` matches substrings. Every complaint's
search posting (``intake.postings``) carries ``search_grams``: the distinct two-character
windows of its subject, description, reference number, customer name and customer keys (after
``normalise``) made of letters, digits and marks only (``indexed``): a window across
punctuation or a space (``，我``, ``t ``, ``-2``) is a quarter of a Chinese text's windows
and would only ever be looked up by a ``q`` that has an indexed window too. A two-character
``q`` is one gram, an equality on the multikey index; a longer ``q`` is looked up by one of
its grams and the whole of it is verified in the service (``matches``), since a document
can hold every gram of ``q`` without holding ``q``. A ``q`` of one character, or without an
indexed window (``，，``, ``¥5``), has no gram: search verifies it on the complaints the other
filters select (``intake.search``).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from complaints_shared.text import folded
from intake.identity import normalise_phone

FIELD = "search_grams"
# Bump when ``document_grams`` gives a posting grams an older one lacks: startup rewrites
# every older posting before the service serves. Not bumped when grams were only left out
# (``indexed``): an older posting holds every gram a search now looks up, and rewriting
# 100,000 postings would hold the start for minutes. Not bumped either when invisible format
# characters and variation selectors were folded out (5 December): only a text holding one
# gains grams, and the few stored before keep postings without the windows across them.
# Bumped to 2 when traditional Chinese characters were folded to simplified (5 December): a
# posting of ``醫療事故`` held ``醫療``, which no search looks up any more (``医疗`` and
# ``醫療`` are both looked up by ``医疗``), and no posting tells whether its texts held one;
# in the same version the customer's name became searchable (its grams were in no posting).
VERSION = 2
VERSION_FIELD = "search_grams_version"


def normalise(text: str) -> str:
    """Compatibility forms folded (full-width Ａ１ is A1), case folded and traditional Chinese
    characters simplified, as search compares (``complaints_shared.text.folded``, as rules
    and suggestions do): ``醫療`` finds ``医疗`` and the other way round."""
    return folded(text)


# Unicode general categories (first letter) of the characters a gram is made of: letters,
# marks (the vowel signs of Indic scripts, ...) and numbers. Not punctuation, symbols,
# separators or controls.
_INDEXED_CATEGORIES = frozenset("LMN")


def indexed(gram: str) -> bool:
    """Whether ``gram`` is a window that postings hold and searches look up."""
    return all(unicodedata.category(character)[0] in _INDEXED_CATEGORIES for character in gram)


def bigrams(text: str) -> set[str]:
    """The indexed two-character windows of ``text`` (after ``normalise``)."""
    normal = normalise(text)
    windows = {normal[i : i + 2] for i in range(len(normal) - 1)}
    return {window for window in windows if indexed(window)}


# The fields ``searchable_texts`` reads: a projection that ``matches`` can verify on.
TEXT_FIELDS = {
    "subject": 1,
    "description": 1,
    "reference": 1,
    "customer_keys": 1,
    "customer.name": 1,
}


def searchable_texts(document: dict[str, Any]) -> list[str]:
    """What ``q`` searches: subject, description, reference, the customer's name and the
    customer keys' values. A front desk looks a caller up by name (``欧阳``), which until
    5 December no filter or ``q`` could."""
    keys = [key.partition(":")[2] for key in document.get("customer_keys", [])]
    customer = document.get("customer")
    name = customer.get("name") if isinstance(customer, dict) else None
    return [
        document.get("subject") or "",
        document.get("description") or "",
        document.get("reference") or "",
        name if isinstance(name, str) else "",
        *keys,
    ]


def document_grams(document: dict[str, Any]) -> list[str]:
    """The ``search_grams`` of a complaint (sorted: stable documents, stable tests)."""
    grams: set[str] = set()
    for text in searchable_texts(document):
        grams |= bigrams(text)
    return sorted(grams)


def search_fields(document: dict[str, Any]) -> dict[str, Any]:
    return {FIELD: document_grams(document), VERSION_FIELD: VERSION}


# A ``q`` of these characters alone, with at least ``PHONE_MIN_DIGITS`` digits, may be a phone
# number as a person writes one (``138-0013-8000``, ``+86 10 6552 1234``).
_PHONE_CHARACTERS = frozenset("0123456789 +-().")
PHONE_MIN_DIGITS = 5


def phone_form(q: str) -> str | None:
    """``q`` as the customer keys hold a phone (``identity.normalise_phone``) when it may be
    one, else None. Keys hold digits only, so ``138-0013-8000`` as typed is in no key."""
    normal = unicodedata.normalize("NFKC", q).strip()
    if not normal or not set(normal) <= _PHONE_CHARACTERS:
        return None
    phone = normalise_phone(normal)
    return phone if len(phone) >= PHONE_MIN_DIGITS else None


def lookup_gram(q: str) -> str | None:
    """The one gram a search for ``q`` is looked up by (None: ``q`` is a single character,
    has no indexed window, or may be a phone and shares no window with its key form).

    The gram with the rarest-looking characters would select fewest candidates, but
    nothing here knows the frequencies; the last indexed window is as good as any and
    keeps the choice deterministic. A complaint that ``matches`` holds ``q`` as typed
    (then every indexed window of it) or, when ``q`` may be a phone, its key form in a
    phone key (then every window of that): the gram is one of both. Until 5 December a
    phone-like ``q`` was looked up by the last two digits of its key form, which a text
    holding it as typed need not hold (``2024-12-1`` is looked up by ``12``, not ``21``).
    """
    normal = normalise(q)
    phone = phone_form(q)
    for start in range(len(normal) - 2, -1, -1):
        window = normal[start : start + 2]
        if indexed(window) and (phone is None or window in phone):
            return window
    return None


def matches(document: dict[str, Any], q: str) -> bool:
    """Whether ``q`` is a substring of one of the searchable texts (as ``normalise`` folds),
    or, when it may be a phone, its key form part of the customer's phone key."""
    wanted = normalise(q)
    if any(wanted in normalise(text) for text in searchable_texts(document)):
        return True
    phone = phone_form(q)
    return phone is not None and any(
        key.startswith("phone:") and phone in key[len("phone:") :]
        for key in document.get("customer_keys", [])
    )
