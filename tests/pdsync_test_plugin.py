"""A third-party pdsync plugin, as a package would ship it, exercising every hook."""

import click

from pdsync.entities import EntitySpec, Stream
from pdsync.hookspecs import hookimpl

after_sync_calls = []


@hookimpl
def pdsync_entities():
    # A table pdsync does not know about, fed by an endpoint it already reads.
    return [
        EntitySpec(
            name="big_open_deals",
            streams=(Stream("/api/v2/deals", (("status", "open"),)),),
            incremental=True,
            columns={"id": int, "title": str, "value": float, "update_time": str},
        )
    ]


@hookimpl
def pdsync_transform_record(entity, record):
    if entity == "deals":
        return {
            **record,
            "value_band": "large" if (record.get("value") or 0) >= 100_000 else "small",
        }
    return None


@hookimpl
def pdsync_register_commands(cli):
    @cli.command(name="hello-plugin")
    def hello():
        "Say hello from a plugin."
        click.echo("hello from a plugin")


@hookimpl
def pdsync_after_sync(db, result):
    after_sync_calls.append((db["deals"].count, result.status))
