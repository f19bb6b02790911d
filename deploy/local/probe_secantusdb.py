"""Probe which MongoDB features the local SecantusDB server supports.

Run it with the SecantusDB venv's python (it ships pymongo), e.g.:

    "$CACHE/secantusdb-$SECANTUSDB_VERSION/venv/bin/python" deploy/local/probe_secantusdb.py

It works in a throw-away database and drops it afterwards. Each probe prints
OK / FAIL with the reason, so re-running it after a SecantusDB upgrade shows
what changed. Exit code is 0 even if probes fail: this is a report, not a test.
PROBE_SLOW=1 adds a TTL-expiry probe that waits up to 90 s for the sweeper.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

import pymongo
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

URI = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017")
client = pymongo.MongoClient(URI, serverSelectionTimeoutMS=3000)
db = client[f"probe_{os.getpid()}"]
results: list[tuple[str, bool, str]] = []


def probe(name: str) -> Callable[[Callable[[], str | None]], None]:
    def run(fn: Callable[[], str | None]) -> None:
        try:
            detail = fn() or ""
            results.append((name, True, detail))
        except Exception as exc:
            results.append((name, False, f"{type(exc).__name__}: {exc}"[:300]))
            if os.environ.get("PROBE_TRACEBACK"):
                traceback.print_exc()

    return run


@probe("find_one_and_update upsert + return_document=AFTER")
def _() -> str:
    c = db.counters
    doc = c.find_one_and_update(
        {"_id": "seq"}, {"$inc": {"n": 1}}, upsert=True, return_document=ReturnDocument.AFTER
    )
    assert doc == {"_id": "seq", "n": 1}, doc
    doc = c.find_one_and_update(
        {"_id": "seq"}, {"$inc": {"n": 1}}, upsert=True, return_document=ReturnDocument.AFTER
    )
    assert doc["n"] == 2, doc
    return "upsert creates, second call returns n=2"


@probe("unique index + DuplicateKeyError")
def _() -> str:
    c = db.uniq
    c.create_index("key", unique=True)
    c.insert_one({"key": "a"})
    try:
        c.insert_one({"key": "a"})
    except DuplicateKeyError as exc:
        return f"code={exc.code}"
    raise AssertionError("second insert was accepted")


@probe("$push with $each + $slice")
def _() -> str:
    c = db.push
    c.insert_one({"_id": 1, "xs": [1, 2, 3]})
    c.update_one({"_id": 1}, {"$push": {"xs": {"$each": [4, 5, 6], "$slice": -4}}})
    xs = c.find_one({"_id": 1})["xs"]
    assert xs == [3, 4, 5, 6], xs
    return str(xs)


@probe("update_one $pull by condition")
def _() -> str:
    c = db.pull
    c.insert_one({"_id": 1, "items": [{"k": "a", "n": 1}, {"k": "b", "n": 5}, {"k": "c", "n": 9}]})
    c.update_one({"_id": 1}, {"$pull": {"items": {"n": {"$gte": 5}}}})
    items = c.find_one({"_id": 1})["items"]
    assert items == [{"k": "a", "n": 1}], items
    return str(items)


@probe("aggregate $group $median")
def _() -> str:
    c = db.agg
    c.insert_many([{"g": "x", "v": v} for v in (1, 2, 3, 4, 100)])
    out = list(
        c.aggregate(
            [{"$group": {"_id": "$g", "m": {"$median": {"input": "$v", "method": "approximate"}}}}]
        )
    )
    assert out and out[0]["m"] == 3, out
    return str(out)


@probe("aggregate $group $percentile")
def _() -> str:
    c = db.agg
    out = list(
        c.aggregate(
            [
                {
                    "$group": {
                        "_id": "$g",
                        "p": {
                            "$percentile": {"input": "$v", "p": [0.5, 0.9], "method": "approximate"}
                        },
                    }
                }
            ]
        )
    )
    assert out and out[0]["p"][0] == 3, out
    return str(out)


@probe("$regex substring on Chinese text")
def _() -> str:
    c = db.zh
    c.insert_many([{"t": "我的宽带被停了"}, {"t": "手机信号差"}])
    hits = [d["t"] for d in c.find({"t": {"$regex": "宽带"}})]
    assert hits == ["我的宽带被停了"], hits
    hits2 = [d["t"] for d in c.find({"t": {"$regex": "信号", "$options": "i"}})]
    assert hits2 == ["手机信号差"], hits2
    return "both substring queries matched exactly one doc"


@probe("partial index (partialFilterExpression)")
def _() -> str:
    c = db.partial
    c.create_index("ext_id", unique=True, partialFilterExpression={"ext_id": {"$exists": True}})
    c.insert_many([{"a": 1}, {"a": 2}])  # no ext_id: must not collide
    c.insert_one({"ext_id": "x"})
    try:
        c.insert_one({"ext_id": "x"})
    except DuplicateKeyError:
        return "docs outside the filter ignored; duplicates inside rejected"
    raise AssertionError("duplicate inside partial filter accepted")


@probe("TTL index creation (expireAfterSeconds)")
def _() -> str:
    c = db.ttl
    name = c.create_index("created_at", expireAfterSeconds=3600)
    info = c.index_information()[name]
    assert info.get("expireAfterSeconds") == 3600, info
    return (
        f"index {name} reports expireAfterSeconds=3600 (expiry itself runs every 60s, not probed)"
    )


if os.environ.get("PROBE_SLOW"):

    @probe("TTL expiry actually deletes (slow: sweeper runs every 60 s)")
    def _() -> str:
        import datetime as dt

        c = db.ttl_expiry
        c.create_index("created_at", expireAfterSeconds=1)
        old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        c.insert_many([{"created_at": old}, {"created_at": "not a date, never expires"}])
        start = time.monotonic()
        while time.monotonic() - start < 90:
            if c.count_documents({}) == 1:
                return f"expired doc removed after {time.monotonic() - start:.0f}s"
            time.sleep(1)
        raise AssertionError(f"still {c.count_documents({})} docs after 90s")


@probe("$setOnInsert")
def _() -> str:
    c = db.soi
    c.update_one({"_id": 1}, {"$setOnInsert": {"created": "first"}, "$set": {"v": 1}}, upsert=True)
    c.update_one({"_id": 1}, {"$setOnInsert": {"created": "second"}, "$set": {"v": 2}}, upsert=True)
    doc = c.find_one({"_id": 1})
    assert doc == {"_id": 1, "created": "first", "v": 2}, doc
    return str(doc)


@probe('array position query {"outbox.0": {"$exists": true}}')
def _() -> str:
    c = db.outbox
    c.insert_many([{"_id": 1, "outbox": []}, {"_id": 2, "outbox": [{"e": 1}]}, {"_id": 3}])
    ids = sorted(d["_id"] for d in c.find({"outbox.0": {"$exists": True}}))
    assert ids == [2], ids
    return str(ids)


@probe("multi-document transaction")
def _() -> str:
    c = db.txn
    c.insert_one({"_id": 0})
    with client.start_session() as s, s.start_transaction():
        c.insert_one({"_id": 1}, session=s)
        c.update_one({"_id": 0}, {"$set": {"x": 1}}, session=s)
    assert c.count_documents({}) == 2
    return "commit visible"


@probe("change stream (collection.watch)")
def _() -> str:
    c = db.cs
    seen: list[dict] = []
    with c.watch(max_await_time_ms=500) as stream:

        def writer() -> None:
            time.sleep(0.3)
            c.insert_one({"_id": "ev"})

        t = threading.Thread(target=writer)
        t.start()
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            ev = stream.try_next()
            if ev is not None:
                seen.append(ev)
        t.join()
    assert seen and seen[0]["operationType"] == "insert", seen
    return f"got {seen[0]['operationType']} event"


@probe("text index + $text search")
def _() -> str:
    c = db.text
    c.create_index([("t", "text")])
    c.insert_many([{"t": "broadband outage downtown"}, {"t": "billing question"}])
    hits = [d["t"] for d in c.find({"$text": {"$search": "outage"}})]
    assert hits == ["broadband outage downtown"], hits
    return str(hits)


@probe("aggregate $lookup")
def _() -> str:
    db.branches.insert_one({"_id": "b1", "name": "North"})
    db.cases.insert_one({"_id": "c1", "branch": "b1"})
    out = list(
        db.cases.aggregate(
            [
                {
                    "$lookup": {
                        "from": "branches",
                        "localField": "branch",
                        "foreignField": "_id",
                        "as": "b",
                    }
                }
            ]
        )
    )
    assert out[0]["b"] == [{"_id": "b1", "name": "North"}], out
    return "joined"


@probe("aggregate $facet")
def _() -> str:
    c = db.facet
    c.insert_many([{"s": "open"}, {"s": "open"}, {"s": "closed"}])
    out = list(
        c.aggregate(
            [
                {
                    "$facet": {
                        "total": [{"$count": "n"}],
                        "open": [{"$match": {"s": "open"}}, {"$count": "n"}],
                    }
                }
            ]
        )
    )
    assert out == [{"total": [{"n": 3}], "open": [{"n": 2}]}], out
    return str(out)


@probe("aggregate $dateTrunc with timezone Asia/Shanghai")
def _() -> str:
    import datetime as dt

    c = db.dates
    c.insert_many(
        [
            {"at": dt.datetime(2025, 1, 1, 15, 0, tzinfo=dt.UTC)},  # 23:00 Jan 1 local
            {"at": dt.datetime(2025, 1, 1, 17, 0, tzinfo=dt.UTC)},  # 01:00 Jan 2 local
        ]
    )
    out = list(
        c.aggregate(
            [
                {
                    "$group": {
                        "_id": {
                            "$dateTrunc": {
                                "date": "$at",
                                "unit": "day",
                                "timezone": "Asia/Shanghai",
                            }
                        },
                        "n": {"$sum": 1},
                    }
                },
                {"$sort": {"_id": 1}},
            ]
        )
    )
    days = [d["_id"].isoformat() for d in out]
    assert days == ["2024-12-31T16:00:00", "2025-01-01T16:00:00"], days
    return str(days)


@probe('aggregate field path through an array ("$items.k" -> [1, 2])')
def _() -> str:
    c = db.paths
    c.insert_one({"items": [{"k": 1}, {"k": 2}]})
    out = list(c.aggregate([{"$project": {"_id": 0, "ks": "$items.k"}}]))
    assert out == [{"ks": [1, 2]}], f"{out} (workaround: $map over $items)"
    return str(out)


@probe("collation strength=2 (case-insensitive) query")
def _() -> str:
    c = db.coll
    c.insert_many([{"n": "Alice"}, {"n": "alice"}, {"n": "Bob"}])
    n = c.count_documents({"n": "ALICE"}, collation={"locale": "en", "strength": 2})
    assert n == 2, n
    return "2 matches"


@probe("bulk_write ordered=False reports duplicate, inserts the rest")
def _() -> str:
    from pymongo import InsertOne
    from pymongo.errors import BulkWriteError

    c = db.bulk
    c.insert_one({"_id": 1})
    try:
        c.bulk_write([InsertOne({"_id": 1}), InsertOne({"_id": 2})], ordered=False)
    except BulkWriteError as exc:
        errs = exc.details["writeErrors"]
        assert len(errs) == 1 and errs[0]["code"] == 11000, errs
        assert c.count_documents({}) == 2
        return "1 writeError (11000), other doc inserted"
    raise AssertionError("no BulkWriteError")


def main() -> int:
    client.drop_database(db.name)
    print(f"SecantusDB probe against {URI} (pymongo {pymongo.version})")
    width = max(len(n) for n, _, _ in results)
    for name, ok, detail in results:
        print(f"  {'OK  ' if ok else 'FAIL'}  {name:<{width}}  {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
