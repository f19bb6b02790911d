"""Character bigrams for substring search (pure functions)."""

from __future__ import annotations

from intake import grams


def test_grams_are_the_two_character_windows_of_every_searchable_text() -> None:
    document = {
        "subject": "断网",
        "description": "经常断网",
        "reference": "LZ-1",
        "customer_keys": ["phone:139"],
    }
    assert grams.document_grams(document) == sorted({"断网", "经常", "常断", "lz", "13", "39"})


def test_windows_across_punctuation_symbols_or_spaces_are_left_out() -> None:
    document = {"subject": "断网，不到1M", "description": "on-site ¥5 हिंदी", "reference": ""}
    assert grams.document_grams(document) == sorted(
        {"断网", "不到", "到1", "1m", "on", "si", "it", "te", "हि", "िं", "ंद", "दी"}
    )


def test_a_query_is_looked_up_by_one_gram_and_verified_whole() -> None:
    assert grams.lookup_gram("断") is None
    assert grams.lookup_gram("断网") == "断网"
    assert grams.lookup_gram("经常断网") == "断网"
    assert grams.lookup_gram("ＶＩＰ") == "ip"  # full-width folded, case folded
    assert grams.lookup_gram("经常断网。") == "断网"  # the last window that postings hold
    assert grams.lookup_gram("a, b") is None  # no window postings hold: verified in the service
    document = {"subject": "网速很快，不是很慢", "description": ""}
    assert grams.lookup_gram("网速很慢") in grams.document_grams(document)
    assert not grams.matches(document, "网速很慢")
    assert grams.matches(document, "不是很")


def test_invisible_format_characters_pasted_into_a_text_or_a_query_are_left_out() -> None:
    """A zero-width space, a soft hyphen or a byte-order mark pasted between the characters
    one sees (Unicode category Cf) split the text for search: until 5 December a description
    ``宽带断网\\u200b三天`` was not found by ``断网三天``, nor clean text by a pasted query."""
    pasted = {
        "subject": "\ufeff宽带",
        "description": "宽带断网\u200b三天，帐\u00ad单",
        "reference": "",
    }
    assert {"网三", "帐单"} <= set(grams.document_grams(pasted))
    assert grams.matches(pasted, "断网三天") and grams.matches(pasted, "帐单")
    clean = {"subject": "宽带断网三天", "description": "", "reference": ""}
    assert grams.lookup_gram("断网\u200b三天") == "三天"
    assert grams.matches(clean, "断\u2060网\u200d三天")


def test_a_query_written_as_a_phone_finds_the_customers_phone_key() -> None:
    """The customer keys hold a phone's digits alone (``13800138000``): a ``q`` written as a
    person writes a phone found nothing until 5 December."""
    document = {"subject": "x", "description": "", "customer_keys": ["phone:13800138000"]}
    for written in ("138-0013-8000", "+86 138 0013 8000", "（138）0013.8000", "0013 8000"):
        assert grams.phone_form(written) is not None, written
        assert grams.lookup_gram(written) in grams.document_grams(document), written
        assert grams.matches(document, written), written
    assert not grams.matches(document, "139-0013-8000")
    assert grams.phone_form("LZ-20261205-0001") is None and grams.phone_form("138") is None
    # Written the same way in a description, it is found as text, by the same gram.
    noted = {"subject": "", "description": "回电 138-0013-8000", "customer_keys": []}
    assert grams.lookup_gram("138-0013-8000") in grams.document_grams(noted)
    assert grams.matches(noted, "138-0013-8000")


def test_a_query_that_may_be_a_phone_is_looked_up_by_a_gram_of_both_its_forms() -> None:
    """A ``q`` that may be a phone was looked up by the last two digits of its key form
    until 5 December: ``2024-12-1`` by ``21``, which ``2024-12-1起宽带被停机`` does not hold,
    so the newest-first list found nothing. Its gram is now a window of ``q`` as typed and
    of the key form alike; with none in both it has no gram (verified in the service)."""
    for written in ("2024-12-1", "2024-1-5", "0931-8460000-1", "12345-6"):
        typed = {"subject": "", "description": f"{written}起宽带被停机", "customer_keys": []}
        assert grams.lookup_gram(written) in grams.document_grams(typed), written
        assert grams.matches(typed, written), written
        keys = [f"phone:{grams.phone_form(written)}"]
        phone = {"subject": "", "description": "", "customer_keys": keys}
        assert grams.lookup_gram(written) in grams.document_grams(phone), written
        assert grams.matches(phone, written), written
    assert grams.phone_form("1-2-3-4-5") == "12345" and grams.lookup_gram("1-2-3-4-5") is None


def test_variation_selectors_are_left_out_as_format_characters_are() -> None:
    """An emoji's VS16 (``☎️``) or an ideographic variation selector (U+E0101) is invisible
    like a zero-width space: until 5 December ``☎热线`` did not find ``☎️热线``."""
    document = {"subject": "☎️热线打不通", "description": "邊\U000e0101境", "reference": ""}
    assert grams.matches(document, "☎热线") and grams.matches(document, "邊境")
    assert grams.matches({"subject": "☎热线", "description": ""}, "☎\ufe0f热线")
    assert "边境" in grams.document_grams(document)  # 邊 is compared as the simplified 边
    assert not any("\ufe0f" in gram for gram in grams.document_grams(document))
