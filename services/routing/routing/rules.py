"""Routing rule matching: pure functions over rule data and a received complaint."""

from __future__ import annotations

from collections.abc import Iterable

from complaints_shared.events import SEVERITY_ORDER, ComplaintReceived

from routing.models import RoutingRule, RuleConditions


def _text_of(complaint: ComplaintReceived) -> str:
    # casefold works for Latin text and leaves Chinese untouched; substring search needs no spaces
    return f"{complaint.subject}\n{complaint.description}".casefold()


def conditions_hold(conditions: RuleConditions, complaint: ComplaintReceived) -> bool:
    if conditions.categories and complaint.category not in conditions.categories:
        return False
    if conditions.min_severity is not None and SEVERITY_ORDER.index(
        complaint.severity
    ) < SEVERITY_ORDER.index(conditions.min_severity):
        return False
    if conditions.channels and complaint.channel not in conditions.channels:
        return False
    if conditions.flags_any and not set(conditions.flags_any) & set(complaint.flags):
        return False
    if conditions.products and complaint.product not in conditions.products:
        return False
    text = _text_of(complaint)
    if conditions.keywords_any and not any(k.casefold() in text for k in conditions.keywords_any):
        return False
    return all(k.casefold() in text for k in conditions.keywords_all)


def rule_applies(rule: RoutingRule, complaint: ComplaintReceived) -> bool:
    if rule.branches and complaint.branch not in rule.branches:
        return False
    return rule.is_default or conditions_hold(rule.conditions, complaint)


def matching_rules(rules: Iterable[RoutingRule], complaint: ComplaintReceived) -> list[RoutingRule]:
    """Rules that apply, in order: by position, the default rule always last."""
    ordered = sorted(rules, key=lambda rule: (rule.is_default, rule.position))
    return [rule for rule in ordered if rule_applies(rule, complaint)]
