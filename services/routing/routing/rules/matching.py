"""Routing rule matching: pure functions over rule data and a received complaint.

Text tests are substring tests on folded text (``complaints_shared.text``: case and
full-width forms folded, traditional characters simplified), so Chinese keywords match inside a
sentence without word spaces (``账单`` in ``话费账单多扣了``), ``ＶＩＰ`` typed full-width
matches ``vip`` and ``医疗事故`` matches ``醫療事故`` typed traditional. Keywords are stored as
given and folded when compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from complaints_shared.events import SEVERITY_ORDER, ComplaintReceived, Severity
from complaints_shared.text import contains, folded
from routing.rules.models import RoutingRule, RuleConditions, RuleFlag


def _text_of(complaint: ComplaintReceived) -> str:
    return folded(f"{complaint.subject}\n{complaint.description}")


def complaint_flags(complaint: ComplaintReceived) -> set[str]:
    """The complaint's flags plus ``vip`` when the customer is a VIP."""
    flags = {str(flag) for flag in complaint.flags}
    if complaint.customer.vip:
        flags.add(RuleFlag.VIP.value)
    return flags


def severity_at_least(severity: Severity, minimum: Severity) -> bool:
    return SEVERITY_ORDER.index(severity) >= SEVERITY_ORDER.index(minimum)


def _product_matches(conditions: RuleConditions, complaint: ComplaintReceived) -> bool:
    if not conditions.products:
        return True
    if complaint.product is None:
        return False
    product = folded(complaint.product)
    return any(contains(product, wanted) for wanted in conditions.products)


def _flags_match(conditions: RuleConditions, complaint: ComplaintReceived) -> bool:
    flags = complaint_flags(complaint)
    if conditions.flags_any and not {str(flag) for flag in conditions.flags_any} & flags:
        return False
    return {str(flag) for flag in conditions.flags_all} <= flags


class _FoldedText:
    """A complaint's subject and description, folded once however many rules read them."""

    def __init__(self, complaint: ComplaintReceived) -> None:
        self._complaint = complaint
        self._text: str | None = None

    def __call__(self) -> str:
        if self._text is None:
            self._text = _text_of(self._complaint)
        return self._text


def _keywords_match(conditions: RuleConditions, text: Callable[[], str]) -> bool:
    if not conditions.keywords_any and not conditions.keywords_all:
        return True
    folded_text = text()
    if conditions.keywords_any and not any(
        contains(folded_text, keyword) for keyword in conditions.keywords_any
    ):
        return False
    return all(contains(folded_text, keyword) for keyword in conditions.keywords_all)


def conditions_hold(
    conditions: RuleConditions,
    complaint: ComplaintReceived,
    *,
    text: Callable[[], str] | None = None,
) -> bool:
    """Every condition group given must hold; an empty group does not constrain. ``text``:
    the complaint's folded text, when several rules are tried on one complaint."""
    if conditions.categories and complaint.category not in conditions.categories:
        return False
    if conditions.min_severity is not None and not severity_at_least(
        complaint.severity, conditions.min_severity
    ):
        return False
    if conditions.channels and complaint.channel not in conditions.channels:
        return False
    if conditions.vip is not None and complaint.customer.vip != conditions.vip:
        return False
    return (
        _flags_match(conditions, complaint)
        and _product_matches(conditions, complaint)
        and _keywords_match(conditions, text or _FoldedText(complaint))
    )


def rule_applies(
    rule: RoutingRule, complaint: ComplaintReceived, *, text: Callable[[], str] | None = None
) -> bool:
    if not rule.active:
        return False
    if rule.branches and complaint.branch not in rule.branches:
        return False
    return rule.is_default or conditions_hold(rule.conditions, complaint, text=text)


def precedence(rule: RoutingRule) -> tuple[bool, int, str]:
    """The order rules are tried in: by position, ties by id, the default rule always last.
    The rule list is shown in this order too."""
    return (rule.is_default, rule.position, rule.id)


def matching_rules(rules: Iterable[RoutingRule], complaint: ComplaintReceived) -> list[RoutingRule]:
    """Rules that apply, in the order they are tried (:func:`precedence`)."""
    text = _FoldedText(complaint)
    return [
        rule for rule in sorted(rules, key=precedence) if rule_applies(rule, complaint, text=text)
    ]
