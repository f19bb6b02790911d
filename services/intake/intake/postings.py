"""Search postings: a complaint's search grams (``intake.grams``) in a collection of their own.

One posting per complaint, ``{_id: complaint id, org, branch, created_at, search_grams,
search_grams_version}``, indexed ``(org, search_grams, branch, created_at, _id)``. The
grams never change after registration (subject, description, reference and customer are
fixed at intake; so are ``branch`` and ``created_at``), so a posting is written once, just
before its complaint's insert, and never updated. Kept in the complaint, its ~100 multikey
entries were rewritten by every later update of the complaint on the local server
(docs/mongodb-compatibility.md); here they cost one write per complaint.

Written first, a posting exists for every stored complaint; a crash before the insert
leaves a posting without a complaint, which searches skip. The write replaces by ``_id``
(a retry that finds its complaint stored writes it again from the stored one) and is
repeated if its connection drops. Every start runs ``backfill_batch`` over every complaint
(``intake.repair``), which gives complaints
stored before postings existed theirs (moving the grams out of the document) and rewrites
postings of an older grams version.
"""

from __future__ import annotations

from typing import Any

from pymongo import ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.mongo import ensure_index, insert_batched, retrying
from intake import grams, store

POSTINGS = "search_postings"
POSTING_INDEX = [
    ("org", 1),
    (grams.FIELD, 1),
    ("branch", 1),
    ("created_at", -1),
    ("_id", -1),
]
# Key fields of the index, as the paged reads are shaped around them (``intake.search``).
POSTING_KEYS = [key for key, _ in POSTING_INDEX]
# A search whose branches are not known yet (``rollup.known_branches``, before the first
# pass) has no branch to walk the gram index in date order by: MongoDB walks this one
# instead of sorting every posting of the gram.
ORG_CREATED_INDEX = [("org", 1), ("created_at", -1), ("_id", -1)]
# Complaints carried their grams under this index before postings existed.
LEGACY_COMPLAINT_INDEX = "org_grams_branch_created"
# What a posting is built from: the searchable texts and the fields a search narrows by.
SOURCE_FIELDS = {"org": 1, "branch": 1, "created_at": 1, **grams.TEXT_FIELDS}


def posting(document: dict[str, Any]) -> dict[str, Any]:
    """The posting of a complaint (as stored, or as ``registration.new_document`` builds it)."""
    return {
        "_id": document["_id"],
        "org": document["org"],
        "branch": document["branch"],
        "created_at": document["created_at"],
        **grams.search_fields(document),
    }


async def write(*, db: AsyncDatabase, document: dict[str, Any]) -> None:
    """Store (or replace) the posting of ``document``: a complaint about to be inserted,
    or one stored already, whose posting then ends up matching it."""
    stored = posting(document)
    try:
        # Almost always new: an insert costs the local server less than an upsert
        # (`python -m bench.writes`: 0.1–0.8 ms of 3–4), and less again batched.
        await retrying(insert_batched, db[POSTINGS], stored)
    except DuplicateKeyError:
        await retrying(db[POSTINGS].replace_one, {"_id": stored["_id"]}, stored, upsert=True)


async def discard(*, db: AsyncDatabase, complaint_id: str) -> None:
    """Remove the posting of a complaint that was not stored after all (a resubmission
    folded into an earlier one). One left behind does no harm: searches skip postings
    whose complaint they do not find."""
    await retrying(db[POSTINGS].delete_one, {"_id": complaint_id})


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await ensure_index(db[POSTINGS], POSTING_INDEX, name="org_grams_branch_created")
    await ensure_index(db[POSTINGS], ORG_CREATED_INDEX, name="org_created")
    complaints = db[store.COMPLAINTS]
    if LEGACY_COMPLAINT_INDEX in await complaints.index_information():
        # Dropped before the backfill unsets the grams: each such update then has ~100
        # fewer index entries to rewrite.
        await complaints.drop_index(LEGACY_COMPLAINT_INDEX)


async def backfill_batch(
    *, db: AsyncDatabase, batch: list[dict[str, Any]], rebuild: set[str] = frozenset()
) -> int:
    """Of a batch of complaints (``_id`` and ``grams.VERSION_FIELD``, read by the start-up
    pass ``intake.repair.at_start``), give those without a posting at ``grams.VERSION`` one,
    and those in ``rebuild`` (what it is made of changed) a new one, and take grams stored in
    complaints out of them; how many postings it wrote. Several replicas starting together
    write the same postings."""
    complaints = db[store.COMPLAINTS]
    ids = [complaint["_id"] for complaint in batch]
    current = await (
        db[POSTINGS]
        .find({"_id": {"$in": ids}, grams.VERSION_FIELD: grams.VERSION}, projection={"_id": 1})
        .to_list(None)
    )
    done = {found["_id"] for found in current} - rebuild
    missing = [complaint_id for complaint_id in ids if complaint_id not in done]
    written = 0
    if missing:
        sources = await complaints.find(
            {"_id": {"$in": missing}}, projection=SOURCE_FIELDS
        ).to_list(None)
        if sources:
            await db[POSTINGS].bulk_write(
                [ReplaceOne({"_id": s["_id"]}, posting(s), upsert=True) for s in sources],
                ordered=False,
            )
            written = len(sources)
    # Complaints stored before postings existed carry their grams: moved out once posted.
    legacy = [complaint["_id"] for complaint in batch if grams.VERSION_FIELD in complaint]
    if legacy:
        await complaints.update_many(
            {"_id": {"$in": legacy}}, {"$unset": {grams.FIELD: "", grams.VERSION_FIELD: ""}}
        )
    return written
