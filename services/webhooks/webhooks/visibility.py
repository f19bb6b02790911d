"""What a subscription of some branches may receive of an event: never another branch's data.

Events are published once, for the whole organisation. A subscription of every branch
receives them as published; one of a branch receives the events of its branch, and where
such an event names another branch's data, that part is left out. Of the catalogue only
``complaint.received`` does: repeat detection is organisation-wide, so ``repeat_of`` may
name earlier complaints of other branches. ``repeat_links`` says which branch each is of;
an event published before it existed does not, so its ids are all left out.
``repeat_count`` and the ``repeat`` flag stay: a count is the organisation's information,
as in intake's answers (docs/security.md). Other events name only their complaint's
branch, or what that branch reads of its complaint anyway (the handling department and
people an organisation rule chose, also of another branch). The directory's announcements
(``branch.updated``, ``department.updated``, ``staff.updated``) are of their own branch and
name nothing of another; a person's carries their name and department only.
"""

from __future__ import annotations

from typing import Any

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import ComplaintReceived, EventPayload
from webhooks.signing import structured_body


def _received_for(
    published: dict[str, Any], received: ComplaintReceived, branches: frozenset[str]
) -> dict[str, Any]:
    """``repeat_of`` and ``repeat_links`` naming only complaints of ``branches``; the
    published data itself when they name no other."""
    links = received.repeat_links or []
    kept = [link.branch in branches for link in links]
    visible = {link.complaint_id for link, keep in zip(links, kept, strict=True) if keep}
    repeat_of = [complaint_id for complaint_id in received.repeat_of if complaint_id in visible]
    if repeat_of == received.repeat_of and all(kept):
        return published
    shown = {**published, "repeat_of": repeat_of}
    if received.repeat_links is not None:
        # The entries as published, so fields a newer producer added to them stay.
        entries = published["repeat_links"]
        shown["repeat_links"] = [entry for entry, keep in zip(entries, kept, strict=True) if keep]
    return shown


def shown_to(event: CloudEvent, data: EventPayload, *, branches: frozenset[str]) -> CloudEvent:
    """``event`` as a subscription of ``branches`` may receive it (``data``: its validated
    data); ``event`` itself when nothing in it is another branch's."""
    if not isinstance(data, ComplaintReceived):
        return event
    shown = _received_for(event.data, data, branches)
    return event if shown is event.data else event.model_copy(update={"data": shown})


class DeliveredBodies:
    """The bodies one event is delivered with, each rendered once: as published, and as
    each distinct set of branches among its subscriptions may see it."""

    def __init__(self, event: CloudEvent, data: EventPayload) -> None:
        self._event = event
        self._data = data
        self._published: str | None = None
        self._by_branches: dict[frozenset[str], str] = {}

    def published(self) -> str:
        if self._published is None:
            self._published = structured_body(self._event)
        return self._published

    def for_subscription(self, subscription: dict[str, Any]) -> str:
        branch: str | None = subscription.get("branch")
        if branch is None:
            return self.published()
        return self.for_branches(frozenset({branch}))

    def for_branches(self, branches: frozenset[str]) -> str:
        if branches not in self._by_branches:
            shown = shown_to(self._event, self._data, branches=branches)
            self._by_branches[branches] = (
                self.published() if shown is self._event else structured_body(shown)
            )
        return self._by_branches[branches]
