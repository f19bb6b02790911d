"""Unit: rule matching and conditions (flags, VIP, products, Chinese keywords without word
spaces, branch scopes, order) and routing plans."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from complaints_shared.events import ComplaintReceived, CustomerContact
from complaints_shared.stored import from_stored
from routing import demo
from routing.assignments import planning
from routing.directory.models import BranchRead, DepartmentRead, StaffRead
from routing.rules.matching import conditions_hold, matching_rules
from routing.rules.models import (
    MAX_POSITION,
    RoutingRule,
    RuleConditions,
    RuleCreate,
    RuleUpdate,
    SimulateRequest,
)
from routing.sla import clocks as sla
from routing.sla.models import SlaPolicy
from tests.support.events import received

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai
TUESDAY_22 = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)


# A complaint only the branch's default rule matches, until a test adds what another looks for.
NEUTRAL = {
    "category": "other",
    "subject": "投诉",
    "description": "",
    "customer": CustomerContact(name="客户"),
    "received_at": NOW,
}


def complaint(**overrides) -> ComplaintReceived:
    return received(**(NEUTRAL | overrides))


def demo_rules() -> list[RoutingRule]:
    return [
        RoutingRule(org="demo", position=index * 10, **rule)
        for index, rule in enumerate(demo.RULES, start=1)
    ]


def first(event: ComplaintReceived) -> str:
    return matching_rules(demo_rules(), event)[0].id


def test_vip_is_a_flag_rules_can_test() -> None:
    vip = complaint(customer=CustomerContact(name="贵宾", vip=True))
    assert first(vip) == "vip-customers"
    assert first(complaint()) == "branch-customer-service"
    flagged = RuleConditions(flags_any=["vip"])
    assert conditions_hold(flagged, vip)
    assert not conditions_hold(flagged, complaint())


def test_flags_any_and_all() -> None:
    both = RuleConditions(flags_all=["repeat", "media_risk"])
    assert conditions_hold(both, complaint(flags=["media_risk", "repeat", "legal_threat"]))
    assert not conditions_hold(both, complaint(flags=["repeat"]))
    regulator = complaint(flags=["regulator_involved"], description="话费账单多收")
    assert first(regulator) == "regulator-involved"  # before the billing keywords


def test_keywords_all_need_every_chinese_word_in_any_order() -> None:
    rule = RuleConditions(keywords_all=["停机", "年费"])
    assert conditions_hold(rule, complaint(description="预交了年费，宽带却被停机了"))
    assert not conditions_hold(rule, complaint(description="宽带被停机"))
    assert conditions_hold(RuleConditions(keywords_any=["套餐"]), complaint(subject="五个套餐"))


def test_products_match_as_case_insensitive_substrings() -> None:
    rule = RuleConditions(products=["宽带", "IPTV"])
    assert conditions_hold(rule, complaint(product="家庭宽带 200M 包年"))
    assert conditions_hold(rule, complaint(product="iptv 高清"))
    assert not conditions_hold(rule, complaint(product="固定电话"))
    assert not conditions_hold(rule, complaint(product=None))


def test_full_width_forms_typed_by_a_chinese_input_method_match_either_way() -> None:
    """Keywords and products compare folded: ``ＩＰＴＶ`` and ``１０元`` (full-width, as a
    Chinese input method types them) match ``iptv`` and ``10元``, and the other way round."""
    rule = RuleConditions(products=["ＩＰＴＶ"], keywords_all=["多扣", "10元"])
    assert conditions_hold(rule, complaint(product="iptv 高清", description="每月多扣１０元"))
    wide = RuleConditions(keywords_any=["１０元"])
    assert conditions_hold(wide, complaint(description="每月多扣10元"))
    assert not conditions_hold(wide, complaint(description="每月多扣１００元"))


def test_vip_condition_false_excludes_vip_customers() -> None:
    rule = RuleConditions(vip=False)
    assert conditions_hold(rule, complaint())
    assert not conditions_hold(rule, complaint(customer=CustomerContact(name="贵宾", vip=True)))


def test_inactive_rules_never_match_and_default_is_last() -> None:
    rules = demo_rules()
    rules[3] = rules[3].model_copy(update={"active": False})  # billing-keywords
    billing = complaint(category="billing", description="话费账单多扣")
    ordered = matching_rules(rules, billing)
    assert ordered[0].id == "billing-category"
    assert ordered[-1].is_default


def test_unknown_flags_and_conditions_are_rejected() -> None:
    with pytest.raises(ValidationError):
        RuleConditions(flags_any=["angry"])
    with pytest.raises(ValidationError):
        RuleConditions.model_validate({"keywords": ["错字"]})


@pytest.mark.parametrize("position", [2**63, -(2**63) - 1, MAX_POSITION + 1, -MAX_POSITION - 1])
def test_a_rule_position_beyond_a_billion_either_way_is_refused(position: int) -> None:
    # 2**63 does not fit a BSON integer: the driver raised OverflowError when storing it.
    rule = {"id": "far", "name": "远", "action": {"department_kind": "billing"}}
    for model, body in ((RuleCreate, rule), (RuleUpdate, {})):
        with pytest.raises(ValidationError) as raised:
            model.model_validate({**body, "position": position})
        assert [error["loc"] for error in raised.value.errors()] == [("position",)]
    assert RuleUpdate(position=MAX_POSITION).position == MAX_POSITION


def test_text_with_an_unpaired_surrogate_is_refused_in_every_field_naming_it() -> None:
    """Plain ``str`` fields took ``"\\ud800"`` from JSON; storing it failed in the driver."""
    rule = {"id": "r", "name": "规则", "action": {"department_kind": "billing"}}
    cases = [
        (RuleCreate, {**rule, "action": {**rule["action"], "required_skill": "\ud800"}}),
        (RuleCreate, {**rule, "conditions": {"keywords_any": ["ok", "a\udfffb"]}}),
        (SimulateRequest, {"branch": "LZ", "product": "\udc00"}),
        (SimulateRequest, {"branch": "LZ", "customer": {"language": "\ud83d"}}),
    ]
    located = []
    for model, body in cases:
        with pytest.raises(ValidationError) as raised:
            model.model_validate(body)
        (error,) = raised.value.errors()
        located.append(error["loc"])
    assert located == [
        ("action", "required_skill"),
        ("conditions", "keywords_any", 1),
        ("product",),
        ("customer", "language"),
    ]
    # A pair of surrogates in JSON is one character, as the request body decoder reads it.
    paired = json.loads('{"branch": "LZ", "product": "表情 \\ud83d\\ude00"}')
    assert SimulateRequest.model_validate(paired).product == "表情 😀"


def test_chinese_keyword_inside_a_sentence_matches() -> None:
    billing = complaint(description="我上个月的话费账单多扣了两百元")
    assert first(billing) == "billing-keywords"


def test_branch_scoped_rule_applies_only_in_its_branch() -> None:
    text = {"description": "手术后出现重伤，怀疑医疗事故"}
    assert first(complaint(branch="HOSP", **text)) == "major-medical-incident"
    assert first(complaint(branch="LZ", **text)) != "major-medical-incident"


def test_keyword_match_is_case_insensitive_for_latin_text() -> None:
    assert first(complaint(subject="BILLING error on invoice")) == "billing-keywords"


def test_default_rule_matches_last_whatever_its_position() -> None:
    rules = demo_rules()
    rules[-1] = rules[-1].model_copy(update={"position": -5})
    ordered = matching_rules(rules, complaint(description="毫无关键词"))
    assert ordered[-1].is_default
    assert ordered[0].id == "branch-customer-service"


def test_min_severity_channels_flags_and_all_keywords() -> None:
    rule = demo_rules()[0].conditions.model_copy(
        update={
            "keywords_any": [],
            "min_severity": "high",
            "channels": ["regulator"],
            "flags_any": ["media_risk"],
            "keywords_all": ["宽带", "停机"],
        }
    )
    matching = complaint(
        severity="critical", channel="regulator", flags=["media_risk"], description="宽带无故停机"
    )
    assert conditions_hold(rule, matching)
    assert not conditions_hold(rule, matching.model_copy(update={"severity": "normal"}))
    assert not conditions_hold(rule, matching.model_copy(update={"channel": "web"}))
    assert not conditions_hold(rule, matching.model_copy(update={"flags": []}))
    assert not conditions_hold(rule, matching.model_copy(update={"description": "宽带很慢"}))


# -------------------------------------------------------------- routing plans --


def _demo_directory() -> tuple[list[DepartmentRead], list[StaffRead], dict[str, BranchRead]]:
    departments = [DepartmentRead.model_validate(d) for d in demo.department_documents("demo", NOW)]
    staff = [StaffRead.model_validate(s) for s in demo.staff_documents("demo", NOW)]
    branches = {b["code"]: BranchRead.model_validate(b) for b in demo.branch_documents("demo", NOW)}
    return departments, staff, branches


def plan(event: ComplaintReceived, *, routed_at: datetime | None = None) -> planning.RoutePlan:
    departments, staff, branches = _demo_directory()
    branch = branches[event.branch]
    by_id = {person.id: person for person in staff}
    policies = [
        SlaPolicy.model_validate(doc | {"id": doc["id"]})
        for doc in demo.policy_documents("demo", NOW)
    ]
    return planning.plan_route(
        event,
        rules=demo_rules(),
        departments=departments,
        calendar=sla.branch_calendar(branch),
        policies=policies,
        staff=staff,
        duty_officer=by_id.get(branch.duty_officer_id or ""),
        routed_at=routed_at or event.received_at,
    )


def test_a_kind_missing_in_the_branch_falls_through_to_the_next_rule() -> None:
    # CEM has no billing department: the billing rules match but lead nowhere there.
    routed = plan(complaint(branch="CEM", category="billing", description="账单多收"))
    assert routed.skipped_rules == ["billing-keywords", "billing-category"]
    assert routed.department.id == "CEM:SALES"


def test_out_of_hours_normal_complaint_starts_its_clocks_at_the_next_opening() -> None:
    routed = plan(complaint(received_at=TUESDAY_22, description="话费账单多扣"))
    assert not routed.in_business_hours
    assert routed.duty_officer is None
    assert routed.clock_starts_at == datetime(2026, 11, 25, 0, 30, tzinfo=UTC)  # Wed 08:30
    assert routed.clocks["acknowledge"].due_at == datetime(2026, 11, 25, 10, tzinfo=UTC)


def test_out_of_hours_critical_hospital_complaint_goes_to_the_duty_officer() -> None:
    routed = plan(
        complaint(
            branch="HOSP",
            category="medical",
            severity="critical",
            description="手术失误导致重伤，怀疑医疗事故",
            received_at=TUESDAY_22,
        )
    )
    assert routed.rule.id == "major-medical-incident"
    assert routed.department.id == "HOSP:MED"
    assert routed.duty_officer is not None and routed.duty_officer.id == "hosp-duty"
    assert routed.clock_starts_at == TUESDAY_22
    assert routed.major_incident
    assert routed.escalated_to is not None and routed.escalated_to.staff_id == "hosp-head"
    report = routed.clocks["regulatory_report"]
    assert report.due_at == TUESDAY_22 + timedelta(hours=6)
    assert routed.clocks["acknowledge"].due_at == TUESDAY_22 + timedelta(minutes=30)
    assert [target.staff_id for target in routed.notify] == ["hosp-head"]


def test_in_hours_high_complaint_is_not_for_the_duty_officer() -> None:
    routed = plan(complaint(branch="HOSP", category="service_attitude", severity="high"))
    assert routed.in_business_hours and routed.duty_officer is None
    assert not routed.major_incident and routed.escalation_level == 0


def test_severity_override_and_notify_roles_come_from_the_rule() -> None:
    routed = plan(complaint(flags=["media_risk"], description="记者要曝光"))
    assert routed.rule.id == "regulator-involved"
    assert routed.severity == "high"
    assert routed.policy.id == "regulator"
    assert {(t.role, t.staff_id) for t in routed.notify} == {
        ("department_head", "lz-song"),
        ("branch_head", "lz-gm"),
    }


def test_a_severity_override_raises_and_never_lowers_the_registered_severity() -> None:
    """Until 6 December the regulator rule's ``high`` made a critical complaint with media
    risk high: its acknowledge and resolve deadlines longer than without the flag."""
    flagged = plan(complaint(flags=["media_risk"], severity="critical", description="记者要曝光"))
    assert flagged.rule.id == "regulator-involved"
    assert flagged.severity == "critical"
    unflagged = plan(complaint(severity="critical", description="记者要曝光"))
    assert flagged.clocks["resolve"].due_at <= unflagged.clocks["resolve"].due_at
    assert plan(complaint(flags=["media_risk"], severity="low")).severity == "high"


def test_owner_ranking_least_load_then_longest_wait() -> None:
    _, staff, _ = _demo_directory()
    billing = [person for person in staff if person.department_id == "LZ:BILLING"]
    chen, liu = (next(p for p in billing if p.id == who) for who in ("lz-chen", "lz-liu"))
    billing = [
        chen.model_copy(update={"last_assigned_at": NOW}),
        liu.model_copy(update={"last_assigned_at": NOW - timedelta(hours=1)}),
        *(p for p in billing if p.id not in {"lz-chen", "lz-liu"}),
    ]
    ranked = planning.rank_candidates(
        billing, loads={"lz-chen": 3, "lz-liu": 3}, required_skill=None
    )
    assert ranked[0].staff.id == "lz-liu"  # equal load: waited longer
    ranked = planning.rank_candidates(
        billing, loads={"lz-chen": 2, "lz-liu": 3}, required_skill=None
    )
    assert ranked[0].staff.id == "lz-chen"
    assert {c.staff.id: c.why_not for c in ranked}["lz-gao"] == "at capacity (0)"
    skilled = planning.rank_candidates(billing, loads={}, required_skill="vip")
    assert not any(candidate.eligible for candidate in skilled)


def test_a_required_skill_is_compared_as_text_is() -> None:
    """A rule requiring "VIP" (or "ｖｉｐ" typed full-width, or "vip " with a space) found
    nobody among staff listing "vip": until 5 December its complaints waited in the queue,
    passed over by every drain, until their clocks breached."""
    _, staff, _ = _demo_directory()
    chen = next(person for person in staff if person.id == "lz-chen")
    chen = chen.model_copy(update={"skills": ["vip"], "languages": ["ＥＮ"]})
    for wanted in ("VIP", "ｖｉｐ", " vip ", "en", "En"):
        ranked = planning.rank_candidates([chen], loads={}, required_skill=wanted)
        assert ranked[0].eligible, wanted
    assert not planning.rank_candidates([chen], loads={}, required_skill="vip2")[0].eligible
    action = RuleCreate.model_validate(
        {
            "id": "r",
            "name": "r",
            "action": {"department_kind": "billing", "required_skill": " VIP "},
        }
    ).action
    assert action.required_skill == "VIP"


def test_a_regulator_hotline_number_typed_full_width_is_suggested_as_regulator_involved() -> None:
    from complaints_shared.events import Channel
    from intake.suggestions import DEFAULT_SUGGESTION_RULES, suggest

    suggested = suggest(
        rules=DEFAULT_SUGGESTION_RULES,
        subject="已向１２３１５投诉",
        description="话费多扣",
        channel=Channel.PHONE,
    )
    assert "regulator" in suggested.rule_ids and suggested.severity == "high"


def test_a_latin_keyword_matches_where_a_word_begins_not_inside_another_word() -> None:
    """Substring matching suits Chinese, but put English keywords inside other words: "There
    is an issue with my invoice" was a legal threat (``sue`` in "issue"), "studied" a death,
    "multimedia" a media risk. A keyword beginning with a Latin letter or digit now matches
    where a word begins; Chinese keywords still match anywhere."""
    from complaints_shared.events import Channel
    from intake.suggestions import DEFAULT_SUGGESTION_RULES, suggest

    def suggested(text: str) -> tuple[str, list[str]]:
        found = suggest(
            rules=DEFAULT_SUGGESTION_RULES, subject="Billing", description=text, channel=Channel.WEB
        )
        return found.severity, found.rule_ids

    for harmless in (
        "There is an issue with my invoice",
        "My son studied the bill and found a double charge",
        "The multimedia package was billed twice",
        # Whole-word keywords (a trailing space) since 5 December: these were high severity
        # (media risk, legal threat) and a vulnerable customer.
        "Request mediation: I asked for mediation about my bill",
        "Suede jacket damaged in the wash",
        "My online banking account was disabled",
    ):
        assert suggested(harmless) == ("normal", []), harmless
    assert suggested("I will sue.") == ("high", ["legal"])
    assert suggested("They were sued before") == ("high", ["legal"])
    assert suggested("Social media will hear of this") == ("high", ["media"])
    assert suggested("我的父亲died了") == ("critical", ["critical-harm"])
    assert suggested("已拨打12315") == ("high", ["regulator"])
    # Routing rules' keywords and products alike: a stem still finds the longer word.
    rule = RuleConditions(keywords_any=["bill"])
    assert conditions_hold(rule, complaint(description="billing error"))
    assert not conditions_hold(rule, complaint(description="a rebill was sent"))
    # ... and a trailing space makes one a whole word there too (until 5 December rules
    # dropped it, so "media " found "mediation").
    whole = RuleConditions(keywords_any=["media  "], products=[" TV "])
    assert whole.keywords_any == ["media "] and whole.products == ["TV "]
    assert conditions_hold(whole, complaint(description="on social media.", product="TV box"))
    assert not conditions_hold(whole, complaint(description="we want mediation", product="TV"))
    assert not conditions_hold(whole, complaint(description="media", product="TVs"))
    with pytest.raises(ValidationError, match="other than white space"):
        RuleConditions(keywords_all=["  "])
    # A zero-width space pasted into the complaint hides no keyword (nor one in a keyword).
    assert conditions_hold(
        RuleConditions(keywords_all=["断网", "bill​ing"]),
        complaint(description="宽带断​网，billing wrong"),
    )


@pytest.mark.parametrize("invisible", ["\u200b", "\ufeff", "\u00ad", "\u200b\u200d", " \ufe0f "])
def test_a_keyword_of_invisible_characters_alone_is_refused_and_one_stored_matches_nothing(
    invisible: str,
) -> None:
    """A byte-order mark or a zero-width space pasted from a spreadsheet was a keyword that
    folds to nothing, which every complaint "contains": a rule of it caught every complaint
    of its branches (a 201 until 5 December). Refused in requests now; one stored before is
    read as stored and matches nothing."""
    with pytest.raises(ValidationError, match="visible character"):
        RuleConditions(keywords_any=[invisible])
    with pytest.raises(ValidationError, match="visible character"):
        RuleConditions(products=["TV", invisible])
    stored = from_stored(RuleConditions, {"keywords_any": [invisible]})
    assert not conditions_hold(stored, complaint(description="话费账单多扣费"))
    stored_all = from_stored(RuleConditions, {"keywords_all": ["话费", invisible]})
    assert not conditions_hold(stored_all, complaint(description="话费账单多扣费"))
