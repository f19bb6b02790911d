"""Keyword rules that suggest severity and flags when the integrator leaves them out.

Matching is case-insensitive substring search on subject + description, so it
works on Chinese text without word spaces, traditional characters compared as simplified
(``complaints_shared.text.folded``: ``醫療事故`` holds ``医疗事故``); a Latin keyword matches
where a word begins (``complaints_shared.text.contains``: ``sue`` is not in "issue"). The rules
are data: the defaults below can be replaced as a whole through the ``SUGGESTION_RULES``
setting (JSON).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from complaints_shared.events import SEVERITY_ORDER, Channel, Flag, Severity
from complaints_shared.models import Keyword
from complaints_shared.text import contains, folded


class SuggestionRule(BaseModel):
    """If any keyword occurs (or the channel is one of ``channels``), suggest these values."""

    model_config = ConfigDict(extra="forbid")

    id: str
    keywords: list[Keyword] = Field(default_factory=list)
    channels: list[Channel] = Field(default_factory=list)
    severity: Severity | None = None
    flags: list[Flag] = Field(default_factory=list)


DEFAULT_SUGGESTION_RULES: list[SuggestionRule] = [
    SuggestionRule(
        id="regulator",
        keywords=["12315", "12300", "消协", "消费者协会", "市场监管", "工信部", "监管部门"],
        channels=[Channel.REGULATOR],
        severity=Severity.HIGH,
        flags=[Flag.REGULATOR_INVOLVED],
    ),
    SuggestionRule(
        id="media",
        # "media " a whole word: "mediation" is a way to settle, not a threat to go public.
        keywords=[
            "媒体",
            "曝光",
            "记者",
            "电视台",
            "微博",
            "抖音",
            "journalist",
            "reporter",
            "media ",
        ],
        severity=Severity.HIGH,
        flags=[Flag.MEDIA_RISK],
    ),
    SuggestionRule(
        id="legal",
        # Whole words: "suede" is a jacket.
        keywords=[
            "律师",
            "起诉",
            "法院",
            "诉讼",
            "仲裁",
            "lawyer",
            "lawsuit",
            "sue ",
            "sued ",
            "suing ",
        ],
        severity=Severity.HIGH,
        flags=[Flag.LEGAL_THREAT],
    ),
    SuggestionRule(
        id="critical-harm",
        keywords=["医疗事故", "死亡", "身亡", "重伤", "爆炸", "火灾", "中毒", "died", "death"],
        severity=Severity.CRITICAL,
        flags=[Flag.SAFETY_RISK],
    ),
    SuggestionRule(
        id="safety",
        keywords=["受伤", "安全隐患", "漏电", "燃气泄漏", "injury", "injured", "unsafe"],
        severity=Severity.HIGH,
        flags=[Flag.SAFETY_RISK],
    ),
    SuggestionRule(
        id="vulnerable",
        # Not "disabled": an account, a card, a line are disabled far more often than people.
        keywords=[
            "老人",
            "残疾",
            "孕妇",
            "独居",
            "elderly",
            "disability",
            "wheelchair",
            "pregnant",
        ],
        flags=[Flag.VULNERABLE_CUSTOMER],
    ),
]


class Suggestion(BaseModel):
    severity: Severity
    flags: list[Flag]
    rule_ids: list[str]


def suggest(
    *, rules: list[SuggestionRule], subject: str, description: str, channel: Channel
) -> Suggestion:
    """Severity = the highest any matching rule suggests (normal if none); flags = the union."""
    text = folded(f"{subject}\n{description}")
    severity = Severity.NORMAL
    flags: list[Flag] = []
    matched: list[str] = []
    for rule in rules:
        by_keyword = any(contains(text, keyword) for keyword in rule.keywords)
        if not (by_keyword or channel in rule.channels):
            continue
        matched.append(rule.id)
        if rule.severity and SEVERITY_ORDER.index(rule.severity) > SEVERITY_ORDER.index(severity):
            severity = rule.severity
        flags.extend(flag for flag in rule.flags if flag not in flags)
    return Suggestion(severity=severity, flags=flags, rule_ids=matched)
