"""The Redis stream that carries metric records from the API to the watchdog in a cluster.

One stream for all jobs (`pretrain:metrics`), one consumer group (`watchdog`). An entry is one
ingest batch: `records`, the JSON array the trainer posted (older entries hold one `record`).
Adding never trims: the stream only loses what every group has consumed, and only the consumer
trims it (`trim_consumed`, by MINID below the oldest entry a group still needs). Whatever the
stream loses anyway (a Redis restart; Redis here keeps nothing on disk) the consumer reads back
from Postgres: `Batch.lost` and `StreamGone` tell it when.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis

log = logging.getLogger(__name__)

STREAM = "pretrain:metrics"
GROUP = "watchdog"


class StreamGone(Exception):
    """The stream or the group vanished (Redis restarted or was flushed): records may be lost."""


@lru_cache(maxsize=8)
def client(url: str) -> redis.Redis:
    """The process's client for `url` (a connection pool, not a connection per request)."""
    return redis.Redis.from_url(url)


def add(connection: redis.Redis, payload: bytes | str) -> bytes:
    """Append one batch (a JSON array of records); the entry's id."""
    return connection.xadd(STREAM, {"records": payload})


@dataclass
class Batch:
    """What one read gave: the records in stream order, every entry id to acknowledge, the last
    id, and whether an entry came back without its records (trimmed or unreadable)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    ids: list[bytes] = field(default_factory=list)
    lost: bool = False

    @property
    def cursor(self) -> str | None:
        return self.ids[-1].decode() if self.ids else None


def ensure_group(connection: redis.Redis) -> None:
    """Create the group (and the stream) if absent, reading from the stream's start."""
    try:
        connection.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read(connection: redis.Redis, consumer: str, *, pending: bool, count: int, block_ms: int) -> Batch:
    """Entries for `consumer`: those it was given and never acknowledged (`pending`), else new ones."""
    try:
        answer = connection.xreadgroup(
            GROUP, consumer, {STREAM: "0" if pending else ">"}, count=count, block=None if pending else block_ms
        )
    except redis.ResponseError as exc:
        if "NOGROUP" in str(exc):
            raise StreamGone(str(exc)) from exc
        raise
    batch = Batch()
    for entry_id, fields in answer[0][1] if answer else []:
        batch.ids.append(entry_id)
        records = _records(entry_id, fields)
        if records is None:
            batch.lost = True
        else:
            batch.records.extend(records)
    return batch


def _records(entry_id: bytes, fields: dict[bytes, bytes] | None) -> list[dict[str, Any]] | None:
    """The records an entry carries; None when it has none to give (trimmed, or not ours)."""
    if not fields:
        # A pending entry that was trimmed comes back empty: acknowledge it, never retry it.
        log.warning("stream entry %s is gone (trimmed); its records will be read from the database", entry_id.decode())
        return None
    try:
        if b"records" in fields:
            records = json.loads(fields[b"records"])
        else:
            records = [json.loads(fields[b"record"])]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ValueError("not a list of records")
    except (KeyError, ValueError) as exc:
        log.warning("stream entry %s is unreadable (%s); acknowledged and skipped", entry_id.decode(), exc)
        return None
    return records


def acknowledge(connection: redis.Redis, ids: list[bytes]) -> None:
    if ids:
        connection.xack(STREAM, GROUP, *ids)


def trim_consumed(connection: redis.Redis) -> str | None:
    """Drop the entries every group has consumed; never one still pending or not yet delivered.

    The floor is, over all groups, the oldest pending entry, or for a group with nothing pending
    the entry right after its last delivered one. Returns the floor, or None when nothing may go
    (no group: nobody has read anything yet).
    """
    try:
        groups = connection.xinfo_groups(STREAM)
    except redis.ResponseError:  # no stream
        return None
    floors = []
    for group in groups:
        oldest = connection.xpending(STREAM, group["name"])["min"] if group["pending"] else None
        if oldest is not None:
            floors.append(_parse_id(oldest))
        else:  # everything delivered was acknowledged (what is read later only moves forward)
            ms, seq = _parse_id(group["last-delivered-id"])
            floors.append((ms, seq + 1))
    if not floors:
        return None
    ms, seq = min(floors)
    floor = f"{ms}-{seq}"
    connection.xtrim(STREAM, minid=floor, approximate=False)
    return floor


def _parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
