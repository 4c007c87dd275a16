"""What the CLI says: progress lines, run reports and one-line explanations of problems.

Kept apart from cli.py's commands so that each command reads as what it does.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time

import click

from . import timestamps
from .results import ProgressEvent, SyncResult


class ProgressLine:
    """One line on stderr that shows every entity's progress while it runs."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self.started = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        if event.done:
            mark = "ok" if event.status == "success" else "FAILED"
            self._clear()
            error = f": {event.error}" if event.error else ""
            click.echo(
                f"  {event.entity:<20} {event.records:>9,} records "
                f"{event.requests:>5} requests  {mark}{error}",
                err=True,
            )
            self.state.pop(event.entity, None)
        else:
            self.state[event.entity] = f"{event.entity} {event.records:,}"
        if self.state:
            line = " | ".join(self.state.values())
            click.echo(f"\r\x1b[2K{line[:150]}", err=True, nl=False)

    def _clear(self) -> None:
        click.echo("\r\x1b[2K", err=True, nl=False)

    def close(self) -> None:
        self._clear()


def report(result: SyncResult, quiet: bool, tty: bool) -> None:
    failed = {name: e for name, e in result.entities.items() if e.status != "success"}
    if not quiet:
        summary = (
            f"Synced {result.records:,} records in {result.duration_ms / 1000:.1f}s "
            f"({result.requests} requests, {result.tokens} tokens)"
        )
        click.echo(summary, err=tty)
    for name, entity in failed.items():
        click.echo(f"pdsync: {name} failed: {with_hint(entity.error or 'unknown error')}", err=True)
    history = result.history
    if history is not None and not quiet and (history.deals or history.status == "paused"):
        click.echo(
            f"History: {history.deals:,} deals' changelogs read ({history.tokens:,} tokens);"
            f" {_HISTORY_STATUS.get(history.status, history.status)}",
            err=tty,
        )
    if history is not None and history.status == "failed":
        # Not a failed sync: the core entities are committed, and the next run carries on.
        click.echo(f"pdsync: deal history stopped: {history.error}", err=True)
    elif history is not None and history.failed:
        # Those deals are passed over, tried again by later runs, then given up on.
        click.echo(
            f"pdsync: deal history: {history.failed:,} deals' changelogs failed (the last:"
            f" {history.error}); tried again after the others",
            err=True,
        )


_HISTORY_STATUS = {
    "done": "complete",
    "budget": "today's history budget is spent",
    "paused": "paused until tomorrow (UTC): the account's daily budget is spent",
    "stopped": "this run's time for it is up",
    "failed": "stopped by an error",
}


def with_hint(error: object) -> str:
    text = str(error)
    if "401" in text and "token" in text:
        text += "; check PIPEDRIVE_API_TOKEN or run `pdsync auth`"
    return text


def token_lines(usage: dict) -> list[str]:
    """The day's tokens in words: today, a day of this schedule, and the budget."""
    limit = usage["budget"]
    parts = ", ".join(f"{purpose} {n:,}" for purpose, n in usage["spent_by_purpose"].items())
    today = f"Tokens today ({usage['day']} UTC): {usage['spent_today']:,}"
    today += f" ({parts})" if parts else ""
    if limit and usage["budget_is_configured"]:
        today += f", {usage['share_today']:.1%} of the daily budget of {limit:,}"
    elif limit:
        today += (
            f", {usage['share_today']:.1%} of {limit:,}, the least this account's daily budget"
            f" can be (30,000 x {usage['active_users']} active users)"
        )
    lines = [today]
    if usage["projected_per_day"] is not None:
        every = timestamps.format_interval(usage["every_s"])
        day = (
            f"A day of this schedule (a sync every {every}, ~{usage['tokens_per_run']:,.0f}"
            f" tokens each): ~{usage['projected_per_day']:,} tokens"
        )
        if usage["share_projected"] is not None:
            day += f", {usage['share_projected']:.1%} of the budget"
        lines.append(day)
    return lines


def history_line(progress: dict) -> str | None:
    """How far deal history is: "History: 41 % of deals (...), ~3 days left at this budget"."""
    if not progress.get("deals"):
        return None
    text = (
        f"History: {progress['share']:.0%} of deals ({progress['read']:,} of"
        f" {progress['deals']:,} changelogs read)"
    )
    if not progress["pending"]:
        text += ", complete"
    elif progress.get("days_left") is not None:
        days = progress["days_left"]
        text += f", ~{days} day{'s' if days != 1 else ''} left at this budget"
        text += f" ({progress['budget']:,} tokens a day; {progress['spent_today']:,} spent today)"
    else:
        text += ", not being read (--history-budget 0)"
    if progress.get("paused_until"):
        text += f"; paused until {progress['paused_until']}: the account's daily budget is spent"
    return text


def when(value: str | None) -> str:
    """``2025-01-15T10:30:00Z (3h ago)``; the text as it is when it is not a timestamp."""
    if not value:
        return "never"
    ago = timestamps.ago(value)
    return f"{value} ({ago})" if ago else value


def table_lines(table: list[tuple], indent: str = "") -> list[str]:
    """Rows as aligned columns (the first row is the header)."""
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    return [
        indent + "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]


_COUNTS = ("received", "applied", "ignored", "failed", "pending")


def webhook_lines(found: dict | None, db_path: str) -> list[str]:
    """The webhook deliveries (``webhook_inbox.status``), as the status page's Webhooks
    section says them: the last received, counts per object, refused ones, and the warning
    when a periodic sync found changes no webhook announced, with what to do."""
    if found is None:
        return [
            f"Webhooks: not installed for this database (`pdsync webhooks install {db_path}"
            " --url PUBLIC_URL` brings every change within seconds)."
        ]
    if "error" in found:
        return [f"Webhooks: the inbox cannot be read: {found['error']}"]
    if found["last_received"]:
        line = f"Webhooks: last delivery received {when(found['last_received'])}"
        if found["pending"]:
            line += f"; {found['pending']:,} waiting to be applied"
        lines = [line + "."]
    else:
        lines = ["Webhooks: installed; no delivery received yet."]
    if found["entities"]:
        header = ("object", "received", "applied", "ignored", "failed", "waiting")
        rows = [(e["entity"], *(f"{e[k] or 0:,}" for k in _COUNTS)) for e in found["entities"]]
        lines += table_lines([header, *rows], indent="  ")
    if found["refused"]:
        refused = ", ".join(
            f"{r['count']:,} {r['reason']} (last {timestamps.ago(r['last_at']) or r['last_at']})"
            for r in found["refused"]
        )
        lines.append(f"Refused: {refused}.")
    if found["gaps"]:
        missed = ", ".join(
            f"{g['count']:,} {g['entity']}{'s' if g['count'] != 1 else ''} (e.g. id {g['example']})"
            for g in found["gaps"]
        )
        lines.append(
            f"WARNING: the last periodic sync found changes no webhook announced: {missed}."
            " Pipedrive may have banned the webhooks for a while (10 failed deliveries in a"
            " row: 30 minutes of events lost) or deleted them (3 days without a successful"
            f" delivery). Run `pdsync webhooks list {db_path}` to see what Pipedrive has, and"
            f" `pdsync webhooks install {db_path} --url PUBLIC_URL` to put back what is"
            " missing. The sync already brought these changes."
        )
    return lines


def database_problem(path: str, exc: sqlite3.DatabaseError) -> str:
    """One line that says what is wrong with the database file, in the user's words."""
    text = str(exc)
    folder = os.path.dirname(os.path.abspath(path))
    if "readonly" in text or "read-only" in text or not os.access(folder, os.W_OK):
        return (
            f"{path} is read-only: pdsync must write it, and create its -wal and -shm files"
            " beside it (check the file's and the directory's permissions)"
        )
    if "disk is full" in text or "disk I/O" in text:
        return (
            f"{path}: the disk is full (or failed) while writing; what was committed is kept:"
            " free some space and sync again"
        )
    if "unable to open" in text:
        return f"cannot open {path}: check that it and its directory exist and are writable"
    if "not a database" in text or "malformed" in text:
        return f"{path} is not a SQLite database, or is damaged ({text})"
    return f"{path}: SQLite said: {text}"


def os_problem(path: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return str(exc)
    if isinstance(exc, PermissionError):
        return (
            f"permission denied: {exc.filename or path} (pdsync must write the database and"
            " its lock file beside it)"
        )
    if exc.errno == errno.ENOSPC:
        return f"{path}: the disk is full; what was committed is kept: free some space"
    return f"{path}: {exc.strerror or exc}"
