"""The dlq verbs: list, replay and purge dead letters (``ear-stream dlq --help``)."""

from __future__ import annotations

import json

import click

from .options import REDIS_OPTION, shards_option


def _filters(fn):
    """--reason/--product/--ids and the stream names shared by the dlq verbs."""
    fn = click.option("--ids", default=None, help="Comma-separated producer ids (or DLQ stream ids).")(fn)
    fn = click.option("--product", default=None, help="Only entries of this product.")(fn)
    fn = click.option(
        "--reason", default=None, help="Only this reason (decode_error, unknown_product, non_finite_score, …)."
    )(fn)
    fn = click.option("--dlq", default="ear:dlq", show_default=True, help="Dead-letter stream.")(fn)
    fn = click.option("--stream", default="ear:in", show_default=True, help="Input stream (replay target).")(fn)
    fn = shards_option(fn)
    return REDIS_OPTION(fn)


def _select(redis_url, stream, dlq, reason, product, ids, shards):  # type: ignore[no-untyped-def]
    from ..stream import dlq as dead
    from ..stream import queue as q

    client = q.connect(redis_url, verify=True)
    cfg = q.StreamConfig(stream=stream, dlq=dlq, shards=shards)
    for lane in cfg.lanes():
        q.check_same_slot(client, lane.stream, lane.dlq)
    wanted = {i.strip() for i in ids.split(",") if i.strip()} if ids else None
    with q.setup_errors(redis_url, "read the dead-letter stream"):
        return client, cfg, list(dead.iter_dead_letters(client, cfg, reason, product, wanted))


@click.group()
def dlq() -> None:
    """Inspect and repair the dead-letter stream.

    \b
    ear-stream dlq list   --redis URL [--reason R] [--product P] [--json]
    ear-stream dlq replay --redis URL --reason unknown_product --product bracket
    ear-stream dlq purge  --redis URL --reason decode_error
    """


def printable(text: str) -> str:
    """A producer-chosen string safe to print on one line: control characters (a newline forging a row)
    are shown escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


@dlq.command("list")
@_filters
@click.option("--limit", default=50, show_default=True, help="Rows to print (all with --json).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dead letter.")
def list_cmd(redis_url, shards, stream, dlq, reason, product, ids, limit, as_json) -> None:
    """Dead letters oldest first: reason, product, id, age, and whether the payload was kept for replay."""
    _, _, letters = _select(redis_url, stream, dlq, reason, product, ids, shards)
    if as_json:
        click.echo(json.dumps([x.summary() for x in letters], indent=2))
        return
    counts: dict[str, int] = {}
    for x in letters:
        counts[x.reason] = counts.get(x.reason, 0) + 1
    click.echo(
        f"{len(letters)} dead letters" + (f" ({', '.join(f'{r} {n}' for r, n in counts.items())})" if counts else "")
    )
    for x in letters[:limit]:
        age = x.age_s()
        click.echo(
            f"  {x.dlq_id}  {printable(x.reason):<17} {printable(x.product or '?'):<12} {printable(x.id or '?'):<32} "
            f"{'' if age is None else f'{age:8.0f}s ago'}  {'' if x.replayable else '[no payload]'}"
        )


@dlq.command()
@_filters
@click.option("--max-backlog", default=10_000, show_default=True, help="Wait while the input stream is this full.")
@click.option(
    "--max-replays",
    default=3,
    show_default=True,
    help="Refuse letters already replayed this often (a poison entry must not cycle forever).",
)
def replay(redis_url, shards, stream, dlq, reason, product, ids, max_backlog, max_replays) -> None:
    """Move matching dead letters back to the input stream with their original fields.

    Entries whose payload was not kept (larger than the image limit), or that were
    replayed --max-replays times already, are refused and stay in the dead-letter
    stream; the exit status is then 2.
    """
    from ..stream import dlq as dead
    from ..stream import queue as q

    client, cfg, letters = _select(redis_url, stream, dlq, reason, product, ids, shards)
    with q.setup_errors(redis_url, "replay dead letters"):
        replayed, refused = dead.replay(client, cfg, letters, max_backlog, max_replays)
    click.echo(f"replayed {replayed} entries to {stream}; refused {len(refused)}")
    for x in refused:
        why = "payload not kept" if not x.replayable else f"replayed {dead.replays_of(x)} times already"
        click.echo(f"refused {x.dlq_id} ({x.reason}, id {printable(x.id or '?')}): {why}", err=True)
    if refused:
        raise SystemExit(2)


@dlq.command()
@_filters
@click.option("--all", "purge_all", is_flag=True, help="Allow purging without any filter.")
def purge(redis_url, shards, stream, dlq, reason, product, ids, purge_all) -> None:
    """Delete matching dead letters (needs a filter, or --all)."""
    from ..stream import dlq as dead

    if not (reason or product or ids or purge_all):
        raise click.UsageError("give --reason, --product or --ids, or --all to purge everything")
    from ..stream import queue as q

    client, cfg, letters = _select(redis_url, stream, dlq, reason, product, ids, shards)
    with q.setup_errors(redis_url, "delete dead letters"):
        purged = dead.purge(client, cfg, letters)
    click.echo(f"purged {purged} dead letters from {dlq}")
