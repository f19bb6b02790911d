"""Problem details routing raises: invalid references as 422 naming the field, conflicts as 409."""

from __future__ import annotations

from complaints_shared.problems import ProblemError


def invalid(field: str, message: str) -> ProblemError:
    """A body that is well-formed but refers to something wrong (unknown, cyclic, empty)."""
    return ProblemError(
        status=422,
        title="Invalid request",
        kind="validation-error",
        detail=f"invalid field(s): {field}: {message}",
        errors=[{"field": field, "message": message}],
    )


def conflict(detail: str, *, kind: str = "conflict") -> ProblemError:
    return ProblemError(status=409, title="Conflict", kind=kind, detail=detail)
