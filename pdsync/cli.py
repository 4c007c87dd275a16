"""The ``pdsync`` command line. It does the talking; the library only returns results."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import click
import sqlite_utils

from . import access, api, plugins, timestamps
from .auth import ConfigError, save_auth
from .budget import token_usage
from .client import AuthError, ConnectionFailed, PipedriveError
from .engine import ProgressEvent, SyncResult, selected_entities
from .lock import LockHeld
from .schema import (
    ForeignDatabase,
    check_database,
    connect_read_only,
    is_pdsync,
    pending_upgrades,
)
from .serve import DEFAULT_PORT, needs_immutable, prepare_access, serving_mode
from .serve import serve as serve_database

AUTH_OPTION = click.option(
    "-a",
    "--auth",
    "auth_path",
    type=click.Path(dir_okay=False),
    default="auth.json",
    show_default=True,
    help="JSON file holding the API token (see `pdsync auth`)",
)


@click.group()
@click.version_option(api.__version__, prog_name="pdsync")
def cli() -> None:
    """Keep a Pipedrive CRM account in a local SQLite database, and explore it with Datasette."""


@cli.command()
@AUTH_OPTION
def auth(auth_path: str) -> None:
    """Save a Pipedrive API token (and company domain) to auth.json, mode 0600.

    Find the token in Pipedrive under Settings > Personal preferences > API.
    """
    token = click.prompt("Pipedrive API token", hide_input=True).strip()
    domain = click.prompt(
        "Company domain (the COMPANY in COMPANY.pipedrive.com, optional)",
        default="",
        show_default=False,
    ).strip()
    if not token:
        raise click.ClickException("no token given; nothing saved")
    try:
        save_auth(auth_path, token, domain or None)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Saved to {auth_path} (readable only by you)")


@cli.command()
@click.argument("db_path", type=click.Path(dir_okay=False))
@click.option("--full", is_flag=True, help="Refetch everything and flag rows gone upstream")
@click.option(
    "--only",
    multiple=True,
    metavar="ENTITY",
    help="Sync only this entity (repeatable, or comma-separated): "
    + ", ".join(spec.name for spec in plugins.entities()),
)
@click.option("--base-url", help="Pipedrive base URL, e.g. https://COMPANY.pipedrive.com")
@AUTH_OPTION
@click.option("--every", metavar="INTERVAL", help="Keep syncing at this interval: 90s, 30m, 1h")
@click.option("--wait", is_flag=True, help="Wait for a running sync of this file to finish")
@click.option(
    "--retries",
    default=5,
    show_default=True,
    type=click.IntRange(0, 20),
    help="Retries of a failed request (429, 5xx, timeouts) before the entity fails",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output (the default when not a TTY)")
@click.option("-v", "--verbose", is_flag=True, help="Log every request (method, path, status, ms)")
def sync(
    db_path: str,
    full: bool,
    only: tuple[str, ...],
    base_url: str | None,
    auth_path: str,
    every: str | None,
    wait: bool,
    retries: int,
    quiet: bool,
    verbose: bool,
) -> None:
    """Sync Pipedrive into DB_PATH (created if missing), incrementally.

    The token comes from PIPEDRIVE_API_TOKEN or the auth file; the base URL from --base-url,
    PIPEDRIVE_BASE_URL, the company domain in the auth file, or https://api.pipedrive.com.
    Exits non-zero when any entity failed.
    """
    names = [name.strip() for value in only for name in value.split(",") if name.strip()]
    try:
        selected_entities(names)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--only") from None
    interval = _parse_interval(every) if every else None
    _configure_logging(verbose)
    show_progress = not quiet and sys.stderr.isatty()
    signal.signal(signal.SIGTERM, _raise_interrupt)

    def once(full_pass: bool) -> SyncResult:
        reporter = _ProgressLine() if show_progress else None
        try:
            result = api.sync(
                db_path,
                base_url=base_url,
                full=full_pass,
                only=names or None,
                progress=reporter,
                auth_path=auth_path,
                wait=wait or interval is not None,
                every=interval,
                client_options={"max_retries": retries, "connect_retries": min(retries, 2)},
            )
        finally:
            if reporter:
                reporter.close()
        return result

    try:
        if interval is None:
            result = once(full)
            _report(result, quiet=quiet and not verbose, tty=show_progress)
            if not result.ok:
                sys.exit(1)
            return
        _every(once, full, interval)
    except KeyboardInterrupt:
        click.echo("pdsync: interrupted; committed pages are kept, the next run resumes", err=True)
        sys.exit(130)
    except (ConfigError, LockHeld, AuthError, ConnectionFailed, PipedriveError) as exc:
        raise click.ClickException(_with_hint(exc)) from None
    except ForeignDatabase as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.DatabaseError as exc:
        raise click.ClickException(_database_problem(db_path, exc)) from None
    except OSError as exc:
        raise click.ClickException(_os_problem(db_path, exc)) from None


@cli.command()
@click.argument("db_path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table")
@click.option(
    "--budget",
    type=click.IntRange(1),
    help="The account's daily token budget (default: the least it can be, 30,000 x active users)",
)
def status(db_path: str, as_json: bool, budget: int | None) -> None:
    """Show when each entity was last synced, how it went and how long it took, and the
    day's Pipedrive tokens: spent today, projected for a day of this schedule, and budget."""
    if not Path(db_path).exists():
        raise click.ClickException(f"{db_path} does not exist; run `pdsync sync {db_path}` first")
    try:
        db = sqlite_utils.Database(connect_read_only(db_path))
        if not is_pdsync(set(db.table_names())):
            raise click.ClickException(
                f"{db_path} has not been synced by pdsync (no sync_metadata)"
            )
        rows = list(db.query("select * from sync_metadata order by entity_type"))
        usage = token_usage(db, budget)
    except sqlite3.DatabaseError as exc:
        raise click.ClickException(_database_problem(db_path, exc)) from None
    if as_json:
        click.echo(json.dumps(rows, indent=2))  # a list of entities, as scripts expect
        return
    header = ("entity", "last sync", "status", "synced", "total", "duration", "error or warning")
    table = [header]
    for row in rows:
        status = row.get("status") or ""
        if row.get("records_rejected"):
            status += f" ({row['records_rejected']:,} refused)"  # see warning_message
        table.append(
            (
                row["entity_type"],
                _when(row.get("last_sync_time")),
                status,
                f"{row.get('records_synced') or 0:,}",
                f"{row.get('records_total') or 0:,}",
                f"{(row.get('last_sync_duration_ms') or 0) / 1000:.1f}s",
                (row.get("error_message") or row.get("warning_message") or "")[:100],
            )
        )
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for r in table:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    click.echo()
    for line in _token_lines(usage):
        click.echo(line)


def _token_lines(usage: dict) -> list[str]:
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


HOST_OPTION = click.option("-h", "--host", default="127.0.0.1", show_default=True)
PORT_OPTION = click.option("-p", "--port", default=DEFAULT_PORT, show_default=True, type=int)
CONFIG_DIR_OPTION = click.option(
    "--config-dir",
    type=click.Path(file_okay=False),
    help="Where the secrets file lives (default: beside the database)",
)
ROOT_OPTION = click.option(
    "--root", is_flag=True, help="Print a link that signs you in as root (who may press Sync now)"
)


@cli.command()
@click.argument("db_path", type=click.Path(dir_okay=False, exists=True))
@HOST_OPTION
@PORT_OPTION
@ROOT_OPTION
@click.option("--public", is_flag=True, help="Beyond loopback, let anyone read without signing in")
@click.option(
    "--private", is_flag=True, help="Require sign-in on loopback too (behind a reverse proxy)"
)
@CONFIG_DIR_OPTION
def serve(
    db_path: str,
    host: str,
    port: int,
    root: bool,
    public: bool,
    private: bool,
    config_dir: str | None,
) -> None:
    """Explore DB_PATH in Datasette, with pdsync's canned queries, labels and plugins.

    Bound to anything but loopback it shows nothing until you sign in (see `pdsync user`
    and `pdsync token`), unless --public."""
    try:
        mode = serving_mode(host, public, private)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        check_database(db_path)
        upgrades = pending_upgrades(db_path)
    except sqlite3.DatabaseError as exc:
        raise click.ClickException(_database_problem(db_path, exc)) from None
    if upgrades:
        # Serving never writes; some canned queries read tables only a newer sync makes.
        click.echo(
            f"Warning: {db_path} was made by an older pdsync; run `pdsync sync {db_path}` once"
            " to upgrade it, or some canned queries will fail.",
            err=True,
        )
    if needs_immutable(db_path):
        click.echo(
            f"{db_path} is in a directory SQLite cannot write: serving it as a snapshot"
            " (changes made meanwhile show after a restart).",
            err=True,
        )
    try:
        secrets_file, secrets = prepare_access(db_path, mode, config_dir)
    except access.SecretsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Serving {db_path} on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    click.echo(_mode_line(mode, db_path, secrets), err=True)
    serve_database(db_path, host, port, root, mode, secrets_file)


def _mode_line(mode: str, db_path: str, secrets: dict) -> str:
    if mode == "local":
        return "Only this machine can connect: no sign-in needed."
    if mode == "public":
        return (
            "PUBLIC: anyone who can reach this address reads every table (arbitrary SQL"
            " still needs a user or token allowed it)."
        )
    people, scripts = len(secrets.get("users", {})), len(secrets.get("tokens", {}))
    line = f"Sign-in required: {people} user(s), {scripts} token(s)."
    if not people and not scripts:
        line += f" Nobody can get in yet: `pdsync user add {db_path} NAME`."
    return line + " (--public lets anyone read.)"


@cli.command()
@click.argument("db_path", default="pipedrive.db", type=click.Path(dir_okay=False))
@click.option("--deals", default=2000, show_default=True, help="Size of the demo company")
@click.option("--seed", default=1, show_default=True, help="Seed for the demo company")
@click.option("--no-serve", is_flag=True, help="Stop after the sync")
@HOST_OPTION
@PORT_OPTION
def demo(db_path: str, deals: int, seed: int, no_serve: bool, host: str, port: int) -> None:
    """Sync a built-in fake Pipedrive with a realistic demo company into DB_PATH, then serve
    it with Datasette.

    No Pipedrive account needed: the fake runs in-process on 127.0.0.1. While Datasette
    serves, the fake keeps changing a few records a minute, and the printed root link signs
    you in to press "Sync now" on the status page (/-/pdsync).
    """
    from .fake import FakePipedrive, FakeServer

    click.echo(f"Building the demo company ({deals:,} deals)...", err=True)
    fake = FakePipedrive(deals=deals, seed=seed)
    try:
        with FakeServer(fake) as server:
            reporter = _ProgressLine() if sys.stderr.isatty() else None
            try:
                result = api.sync(
                    db_path,
                    token=fake.token,
                    base_url=server.url,
                    progress=reporter,
                    auth_path=None,
                )
            except (LockHeld, sqlite3.DatabaseError, FileNotFoundError) as exc:
                raise click.ClickException(str(exc)) from None
            finally:
                if reporter:
                    reporter.close()
            _report(result, quiet=False, tty=reporter is not None)
            if not result.ok:
                sys.exit(1)
            if no_serve:
                click.echo(f"Explore it with: pdsync serve {db_path}", err=True)
                return
            # Datasette's "Sync now" (and pdsync sync) reach the fake through these.
            os.environ["PIPEDRIVE_API_TOKEN"] = fake.token
            os.environ["PIPEDRIVE_BASE_URL"] = server.url
            threading.Thread(target=_keep_changing, args=(fake,), daemon=True).start()
            click.echo(f"Serving {db_path} on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
            serve_database(db_path, host, port, root=True)
    finally:
        fake.close()


CAN_OPTION = click.option(
    "--can",
    type=click.Choice(access.ABILITIES),
    multiple=True,
    help="Also allow: sync (press Sync now), sql (run arbitrary SQL)",
)


@cli.group()
def user() -> None:
    """People who sign in to `pdsync serve` with a password."""


@user.command("add")
@click.argument("db_path", type=click.Path(dir_okay=False))
@click.argument("name")
@CAN_OPTION
@CONFIG_DIR_OPTION
def user_add(db_path: str, name: str, can: tuple[str, ...], config_dir: str | None) -> None:
    """Add NAME; the password comes from the prompt, or the first line of stdin."""
    path = access.secrets_path(db_path, config_dir)
    with _secrets_errors():
        access.check_name(name)
        if name in {u["name"] for u in access.users(path)}:
            raise access.SecretsError(f"user {name} exists: `pdsync user remove` it first")
        if sys.stdin.isatty():
            password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        access.add_user(path, name, password, can)
    click.echo(f"Added {name} to {path}", err=True)


@user.command("list")
@click.argument("db_path", type=click.Path(dir_okay=False))
@CONFIG_DIR_OPTION
def user_list(db_path: str, config_dir: str | None) -> None:
    """The people who can sign in, and what else they may do."""
    with _secrets_errors():
        for entry in access.users(access.secrets_path(db_path, config_dir)):
            click.echo(f"{entry['name']}\t{','.join(entry['can']) or 'read'}")


@user.command("remove")
@click.argument("db_path", type=click.Path(dir_okay=False))
@click.argument("name")
@CONFIG_DIR_OPTION
def user_remove(db_path: str, name: str, config_dir: str | None) -> None:
    """Remove NAME: their sign-in stops working at once, even in a running server."""
    with _secrets_errors():
        access.remove_user(access.secrets_path(db_path, config_dir), name)
    click.echo(f"Removed {name}", err=True)


@cli.group()
def token() -> None:
    """API tokens for scripts and dashboards: `Authorization: Bearer TOKEN`."""


@token.command("create")
@click.argument("db_path", type=click.Path(dir_okay=False))
@click.argument("name")
@click.option("--expires-after", metavar="INTERVAL", help="e.g. 30d, 12h (default: never)")
@CAN_OPTION
@CONFIG_DIR_OPTION
def token_create(
    db_path: str, name: str, expires_after: str | None, can: tuple[str, ...], config_dir: str | None
) -> None:
    """Print a new token named NAME. It is shown once: only its hash is kept."""
    try:
        seconds = timestamps.parse_interval(expires_after, None) if expires_after else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires-after") from None
    with _secrets_errors():
        made = access.create_token(access.secrets_path(db_path, config_dir), name, seconds, can)
    click.echo(made)


@token.command("list")
@click.argument("db_path", type=click.Path(dir_okay=False))
@CONFIG_DIR_OPTION
def token_list(db_path: str, config_dir: str | None) -> None:
    """Token names, what they may do and when they expire (never the tokens)."""
    with _secrets_errors():
        for entry in access.tokens(access.secrets_path(db_path, config_dir)):
            expires = entry["expires"]
            when = "never" if expires is None else _utc(expires)
            if expires is not None and expires <= time.time():
                when += " (expired)"
            click.echo(f"{entry['name']}\t{','.join(entry['can']) or 'read'}\texpires {when}")


@token.command("revoke")
@click.argument("db_path", type=click.Path(dir_okay=False))
@click.argument("name")
@CONFIG_DIR_OPTION
def token_revoke(db_path: str, name: str, config_dir: str | None) -> None:
    """Revoke the token NAME: it stops working at once, even in a running server."""
    with _secrets_errors():
        access.revoke_token(access.secrets_path(db_path, config_dir), name)
    click.echo(f"Revoked {name}", err=True)


@contextlib.contextmanager
def _secrets_errors():
    """A SecretsError becomes one line and exit status 1."""
    try:
        yield
    except access.SecretsError as exc:
        raise click.ClickException(str(exc)) from None


def _utc(epoch: float) -> str:
    return timestamps.format(datetime.fromtimestamp(epoch, timezone.utc))


def _keep_changing(fake) -> None:
    """Make the demo company live: a few upstream changes a minute for Sync now to find."""
    rng = random.Random()
    while True:
        time.sleep(20)
        try:
            fake.random_mutations(3, rng)
        except Exception:  # the fake closed: the demo is over
            return


# -- helpers ----------------------------------------------------------------------------


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("pdsync")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False


class _ProgressLine:
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


def _report(result: SyncResult, quiet: bool, tty: bool) -> None:
    failed = {name: e for name, e in result.entities.items() if e.status != "success"}
    if not quiet:
        summary = (
            f"Synced {result.records:,} records in {result.duration_ms / 1000:.1f}s "
            f"({result.requests} requests, {result.tokens} tokens)"
        )
        click.echo(summary, err=tty)
    for name, entity in failed.items():
        click.echo(
            f"pdsync: {name} failed: {_with_hint(entity.error or 'unknown error')}", err=True
        )


def _with_hint(error: object) -> str:
    text = str(error)
    if "401" in text and "token" in text:
        text += "; check PIPEDRIVE_API_TOKEN or run `pdsync auth`"
    return text


def _every(once, full: bool, interval: float) -> None:
    failures = 0
    while True:
        started = time.monotonic()
        try:
            result = once(full)
            full = False
            failures = 0 if result.ok else failures + 1
            line = (
                f"{timestamps.now()} sync #{result.run_id} {result.status}: "
                f"{result.records} records, {result.requests} requests, {result.tokens} tokens, "
                f"{result.duration_ms / 1000:.1f}s"
            )
            if result.errors:
                line += "; " + "; ".join(f"{k}: {v}" for k, v in result.errors.items())
        except (AuthError, ConfigError) as exc:
            raise click.ClickException(_with_hint(exc)) from None
        except (ConnectionFailed, PipedriveError, sqlite3.OperationalError) as exc:
            failures += 1
            line = f"{timestamps.now()} sync failed: {exc}"
        click.echo(line, err=True)
        # Back off after failures (up to 4x the interval); jitter spreads many installs apart.
        pause = interval * min(2**failures, 4) if failures else interval
        pause = max(pause * random.uniform(0.95, 1.05) - (time.monotonic() - started), 1.0)
        time.sleep(pause)


def _parse_interval(text: str) -> float:
    try:
        return timestamps.parse_interval(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--every") from None


def _when(value: str | None) -> str:
    """``2025-01-15T10:30:00Z (3h ago)``; the text as it is when it is not a timestamp."""
    if not value:
        return "never"
    ago = timestamps.ago(value)
    return f"{value} ({ago})" if ago else value


def _database_problem(path: str, exc: sqlite3.DatabaseError) -> str:
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


def _os_problem(path: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return str(exc)
    if isinstance(exc, PermissionError):
        return (
            f"permission denied: {exc.filename or path} (pdsync must write the database and"
            " its lock file beside it)"
        )
    if exc.errno == 28:  # ENOSPC
        return f"{path}: the disk is full; what was committed is kept: free some space"
    return f"{path}: {exc.strerror or exc}"


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt()


plugins.pm.hook.pdsync_register_commands(cli=cli)
