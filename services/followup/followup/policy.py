"""Which satisfaction checks a resolution gets: the organisation's policy and its overrides."""

from __future__ import annotations

from complaints_shared.events import Category, Severity
from followup.models import CheckRule, FollowupPolicy, PolicyOverride
from followup.settings import FollowupSettings


def default_policy(settings: FollowupSettings) -> FollowupPolicy:
    """The built-in policy: one check after a day, a second after a week for serious cases."""
    offsets = {settings.first_check_after_hours, settings.second_check_after_hours}
    both = [CheckRule(after_hours=hours) for hours in sorted(offsets)]
    return FollowupPolicy(
        checks=[CheckRule(after_hours=settings.first_check_after_hours)],
        overrides=[
            PolicyOverride(severity=severity, checks=both)
            for severity in settings.second_check_severities
        ],
        max_attempts=settings.max_attempts,
        attempt_spacing_hours=settings.attempt_spacing_hours,
        satisfied_score_threshold=settings.satisfied_score_threshold,
    )


def _specificity(override: PolicyOverride) -> int:
    # Category and severity together beat category alone, which beats severity alone.
    return (2 if override.category is not None else 0) + (1 if override.severity else 0)


def _matches(override: PolicyOverride, *, category: Category, severity: Severity) -> bool:
    return override.category in {None, category} and override.severity in {None, severity}


def checks_for(
    policy: FollowupPolicy, *, category: Category, severity: Severity
) -> list[CheckRule]:
    """The checks of the most specific matching override, else the policy's own."""
    matching = [
        override
        for override in policy.overrides
        if _matches(override, category=category, severity=severity)
    ]
    if not matching:
        return policy.checks
    return max(matching, key=_specificity).checks
