"""MongoDB client factory (PyMongo's AsyncMongoClient) and small helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bson.codec_options import CodecOptions
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.settings import ServiceSettings


def create_mongo_client(*, settings: ServiceSettings) -> AsyncMongoClient:
    """A client that returns timezone-aware UTC datetimes and fails fast when Mongo is away."""
    return AsyncMongoClient(
        settings.mongodb_uri,
        tz_aware=True,
        tzinfo=UTC,
        appname=settings.service_name,
        serverSelectionTimeoutMS=5000,
        connectTimeoutMS=5000,
    )


def service_database(*, client: AsyncMongoClient, settings: ServiceSettings) -> AsyncDatabase:
    return client.get_database(
        settings.database_name(), codec_options=CodecOptions(tz_aware=True, tzinfo=UTC)
    )


async def ping(*, client: AsyncMongoClient) -> bool:
    await client.admin.command("ping")
    return True


def merge_updates(*updates: dict[str, Any]) -> dict[str, Any]:
    """Combine update documents operator by operator into one atomic update.

    Two updates may not touch the same field under the same operator.
    """
    merged: dict[str, dict[str, Any]] = {}
    for update in updates:
        for operator, fields in update.items():
            target = merged.setdefault(operator, {})
            clash = target.keys() & fields.keys()
            if clash:
                raise ValueError(f"update operator {operator} sets {sorted(clash)} twice")
            target.update(fields)
    return merged


# BSON dates have millisecond precision, so ">= t" is exactly "> t - 1 ms". We write
# inclusive date bounds as strict ones: SecantusDB (the local MongoDB) drops documents
# equal to an inclusive bound when a compound index has another field after the date.
_ONE_MS = timedelta(milliseconds=1)


def at_or_after(moment: datetime) -> dict[str, datetime]:
    return {"$gt": moment - _ONE_MS}


def at_or_before(moment: datetime) -> dict[str, datetime]:
    return {"$lt": moment + _ONE_MS}
