"""Unit: routing rule matching, including Chinese keywords without word spaces."""

from __future__ import annotations

from datetime import UTC, datetime

from complaints_shared.events import ComplaintReceived, CustomerContact
from routing.demo import RULES
from routing.models import RoutingRule
from routing.rules import conditions_hold, matching_rules


def _complaint(**overrides) -> ComplaintReceived:
    values = {
        "complaint_id": "c1",
        "org": "demo",
        "branch": "LZ",
        "reference": "LZ-20261123-0001",
        "channel": "phone",
        "category": "other",
        "severity": "normal",
        "subject": "投诉",
        "description": "",
        "customer": CustomerContact(name="客户"),
        "received_at": datetime.now(UTC),
        **overrides,
    }
    return ComplaintReceived(**values)


def _demo_rules() -> list[RoutingRule]:
    return [
        RoutingRule(org="demo", position=index * 10, **rule)
        for index, rule in enumerate(RULES, start=1)
    ]


def _first(complaint: ComplaintReceived) -> str:
    return matching_rules(_demo_rules(), complaint)[0].id


def test_chinese_keyword_inside_a_sentence_matches() -> None:
    complaint = _complaint(description="我上个月的话费账单多扣了两百元")
    assert _first(complaint) == "billing-keywords"


def test_branch_scoped_rule_applies_only_in_its_branch() -> None:
    text = {"description": "手术后出现重伤，怀疑医疗事故"}
    assert _first(_complaint(branch="HOSP", **text)) == "major-medical-incident"
    assert _first(_complaint(branch="LZ", **text)) != "major-medical-incident"


def test_keyword_match_is_case_insensitive_for_latin_text() -> None:
    assert _first(_complaint(subject="BILLING error on invoice")) == "billing-keywords"


def test_default_rule_matches_last_whatever_its_position() -> None:
    rules = _demo_rules()
    rules[-1] = rules[-1].model_copy(update={"position": -5})
    ordered = matching_rules(rules, _complaint(description="毫无关键词"))
    assert ordered[-1].is_default
    assert ordered[0].id == "branch-customer-service"


def test_min_severity_channels_flags_and_all_keywords() -> None:
    rule = _demo_rules()[0].conditions.model_copy(
        update={
            "keywords_any": [],
            "min_severity": "high",
            "channels": ["regulator"],
            "flags_any": ["media_risk"],
            "keywords_all": ["宽带", "停机"],
        }
    )
    matching = _complaint(
        severity="critical", channel="regulator", flags=["media_risk"], description="宽带无故停机"
    )
    assert conditions_hold(rule, matching)
    assert not conditions_hold(rule, matching.model_copy(update={"severity": "normal"}))
    assert not conditions_hold(rule, matching.model_copy(update={"channel": "web"}))
    assert not conditions_hold(rule, matching.model_copy(update={"flags": []}))
    assert not conditions_hold(rule, matching.model_copy(update={"description": "宽带很慢"}))
