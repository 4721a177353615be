"""Dead-letter stream tools: list, replay and purge entries, with filters.

Every dead letter keeps the reason, the message, the original stream id, the
delivery count, the worker and the time, and — when it was not too large — the
original fields as ``orig_<field>``. Replay puts those fields back on the input
stream exactly as the producer sent them (e.g. after the missing model was
deployed) and removes the dead letter in the same MULTI/EXEC; an entry whose
payload was not kept cannot be replayed and stays where it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from .connection import atomic
from .producer import Producer
from .protocol import MAX_REPLAYS, REF_FIELDS, StreamConfig, as_text

#: the fields a replayed entry needs (meta is optional): its payload inline, or its claim check
REQUIRED = ("id", "product")
PAYLOADS = (("image",), REF_FIELDS)


@dataclass
class DeadLetter:
    dlq_id: str
    reason: str
    message: str
    id: str | None
    product: str | None
    failed_at: float | None
    fields: dict[str, bytes]
    #: the shard whose dead-letter stream holds it (``StreamConfig.shards > 1``), None for one stream
    shard: int | None = None

    @property
    def replayable(self) -> bool:
        def has(keys: tuple[str, ...]) -> bool:
            return all(f"orig_{k}" in self.fields for k in keys)

        return has(REQUIRED) and any(has(payload) for payload in PAYLOADS)

    def age_s(self, now: float | None = None) -> float | None:
        return None if self.failed_at is None else (now or time.time()) - self.failed_at

    def summary(self) -> dict[str, Any]:
        return {
            "dlq_id": self.dlq_id,
            "reason": self.reason,
            "product": self.product,
            "id": self.id,
            "age_s": None if self.age_s() is None else round(self.age_s(), 1),
            "message": self.message,
            "replayable": self.replayable,
            "replays": replays_of(self),
        }


def _parse(dlq_id: str, raw: dict) -> DeadLetter:
    fields = {as_text(k): v for k, v in raw.items()}

    def text(key: str) -> str | None:
        try:
            return as_text(fields.get(key))
        except UnicodeDecodeError:
            return None

    failed = text("failed_at")
    return DeadLetter(
        dlq_id=dlq_id,
        reason=text("reason") or "",
        message=text("message") or "",
        id=text("orig_id"),
        product=text("orig_product"),
        failed_at=float(failed) if failed else None,
        fields=fields,
    )


def iter_dead_letters(
    client: redis.Redis,
    cfg: StreamConfig,
    reason: str | None = None,
    product: str | None = None,
    ids: set[str] | None = None,
    page: int = 500,
) -> Iterator[DeadLetter]:
    """Dead letters oldest first, filtered by reason, product and ids (producer ids or DLQ stream ids); with
    shards, shard after shard (each letter says its ``shard``)."""
    if cfg.shards > 1:
        for lane in cfg.lanes():
            for letter in iter_dead_letters(client, lane, reason, product, ids, page):
                letter.shard = lane.shard
                yield letter
        return
    start = "-"
    while True:
        rows = client.xrange(cfg.dlq, min=start, max="+", count=page)
        for sid, raw in rows:
            letter = _parse(as_text(sid), raw)
            if reason and letter.reason != reason:
                continue
            if product and letter.product != product:
                continue
            if ids and letter.id not in ids and letter.dlq_id not in ids:
                continue
            yield letter
        if len(rows) < page:
            return
        start = "(" + as_text(rows[-1][0])


def replays_of(letter: DeadLetter) -> int:
    """How often this entry was replayed from the dead-letter stream already (its ``replays`` field)."""
    try:
        return int(as_text(letter.fields.get("orig_replays", b"0")))
    except (ValueError, UnicodeDecodeError):
        return 0


def replay(
    client: redis.Redis,
    cfg: StreamConfig,
    letters: list[DeadLetter],
    max_backlog: int = 10_000,
    max_replays: int = MAX_REPLAYS,
) -> tuple[int, list[DeadLetter]]:
    """Move replayable letters back to the input stream (with backpressure); returns (replayed, refused).

    Each replay counts in the entry's ``replays`` field; a letter replayed ``max_replays`` times already is
    refused (a poison entry must not cycle forever), as is one whose payload was not kept.
    """
    producers: dict[int | None, Producer] = {}
    replayed, refused = 0, []
    for letter in letters:
        if not letter.replayable or replays_of(letter) >= max_replays:
            refused.append(letter)
            continue
        lane = _lane(cfg, letter)  # back to the shard it came from: its letter and its stream share one slot
        producer = producers.setdefault(letter.shard, Producer(client, lane, max_backlog=max_backlog))
        producer.wait_for_room()
        fields = {k[len("orig_") :]: v for k, v in letter.fields.items() if k.startswith("orig_")}
        fields["replays"] = str(replays_of(letter) + 1).encode()
        # all or nothing, also when MULTI itself is refused: never an entry both replayed and still dead
        atomic(
            client,
            [("XADD", lane.stream, "*", *(x for kv in fields.items() for x in kv)), ("XDEL", lane.dlq, letter.dlq_id)],
        )
        replayed += 1
    return replayed, refused


def purge(client: redis.Redis, cfg: StreamConfig, letters: list[DeadLetter]) -> int:
    """Delete the given dead letters; returns how many were removed."""
    removed = 0
    by_shard: dict[int | None, list[DeadLetter]] = {}
    for letter in letters:
        by_shard.setdefault(letter.shard, []).append(letter)
    for batch in by_shard.values():
        dlq = _lane(cfg, batch[0]).dlq
        for i in range(0, len(batch), 500):
            removed += int(client.xdel(dlq, *[x.dlq_id for x in batch[i : i + 500]]))
    return removed


def _lane(cfg: StreamConfig, letter: DeadLetter) -> StreamConfig:
    """The config of the shard a letter came from (``cfg`` itself for one stream)."""
    return cfg if letter.shard is None or cfg.shards == 1 else cfg.lane(letter.shard)
