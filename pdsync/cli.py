"""The ``pdsync`` command line. It does the talking; the library only returns results."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import click

from . import __version__
from .cli_team import AUTH_OPTION, CONFIG_DIR_OPTION, token, user
from .cli_webhooks import webhooks

# Every command imports what it uses when it runs: `pdsync --help` and a sync that finds
# nothing new start in a fraction of the time importing Datasette, httpx and sqlite-utils for
# every command took (tests/test_startup.py keeps it so; benchmarks/startup_bench.py times it).
DEFAULT_PORT = 8001  # serve.DEFAULT_PORT (tests/test_startup.py checks), serve not imported


class _Commands(click.Group):
    """pdsync's commands, and those plugins add (``pdsync_register_commands``), registered
    the first time a command is looked up rather than when this module is imported."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        if self._plugins_added:
            return
        self._plugins_added = True
        from .entrypoints import may_have_plugins

        if may_have_plugins("pdsync") or "pdsync.plugins" in sys.modules:
            from . import plugins

            plugins.pm.hook.pdsync_register_commands(cli=self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._add_plugin_commands()  # a plugin may replace a command, as it always could
        return super().get_command(ctx, cmd_name)


class _EntitiesOption(click.Option):
    """--only, whose help names every entity: read from the specs (plugins' included) only
    when the help is shown."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from . import plugins

        names = ", ".join(spec.name for spec in plugins.entities())
        self.help = f"Sync only this entity (repeatable, or comma-separated): {names}"
        return super().get_help_record(ctx)


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="pdsync")
def cli() -> None:
    """Keep a Pipedrive CRM account in a local SQLite database, and explore it with Datasette."""


@cli.command()
@AUTH_OPTION
def auth(auth_path: str) -> None:
    """Save a Pipedrive API token (and company domain) to auth.json, mode 0600.

    Find the token in Pipedrive under Settings > Personal preferences > API.
    """
    from .auth import ConfigError, save_auth

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
@click.option("--only", multiple=True, metavar="ENTITY", cls=_EntitiesOption)
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
@click.option(
    "--history-budget",
    type=click.IntRange(0),
    metavar="TOKENS",
    help="Tokens a UTC day for reading deal history (changelogs), after the core entities;"
    " default a fifth of 30,000 x active users; 0: none this run",
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
    history_budget: int | None,
    quiet: bool,
    verbose: bool,
) -> None:
    """Sync Pipedrive into DB_PATH (created if missing), incrementally.

    The token comes from PIPEDRIVE_API_TOKEN or the auth file; the base URL from --base-url,
    PIPEDRIVE_BASE_URL, the company domain in the auth file, or https://api.pipedrive.com.
    Exits non-zero when any entity failed.
    """
    import signal

    from . import deferred_imports

    deferred_imports.defer()  # before api imports httpx and sqlite-utils
    from . import api
    from . import cli_text as say
    from .plugins import selected_entities

    names = [name.strip() for value in only for name in value.split(",") if name.strip()]
    try:
        selected_entities(names)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--only") from None
    interval = _parse_interval(every) if every else None
    _configure_logging(verbose)
    show_progress = not quiet and sys.stderr.isatty()
    signal.signal(signal.SIGTERM, _raise_interrupt)

    def once(full_pass: bool):
        reporter = say.ProgressLine() if show_progress else None
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
                history_budget=history_budget,
                client_options={"max_retries": retries, "connect_retries": min(retries, 2)},
            )
        finally:
            if reporter:
                reporter.close()
        return result

    with _one_line_errors(db_path):
        if interval is None:
            result = once(full)
            say.report(result, quiet=quiet and not verbose, tty=show_progress)
            if not result.ok:
                sys.exit(1)
            return
        _every(once, full, interval)


@contextlib.contextmanager
def _one_line_errors(db_path: str) -> Iterator[None]:
    """What can stop a sync, as one line and an exit status: never a traceback."""
    import sqlite3

    from . import cli_text as say
    from .auth import ConfigError
    from .errors import AuthError, ConnectionFailed, PipedriveError
    from .lock import LockHeld
    from .schema import ForeignDatabase

    try:
        yield
    except KeyboardInterrupt:
        click.echo("pdsync: interrupted; committed pages are kept, the next run resumes", err=True)
        sys.exit(130)
    except (ConfigError, LockHeld, AuthError, ConnectionFailed, PipedriveError) as exc:
        raise click.ClickException(say.with_hint(exc)) from None
    except ForeignDatabase as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.DatabaseError as exc:
        raise click.ClickException(say.database_problem(db_path, exc)) from None
    except OSError as exc:
        raise click.ClickException(say.os_problem(db_path, exc)) from None


@cli.command()
@click.argument("db_path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table")
@click.option(
    "--budget",
    type=click.IntRange(1),
    help="The account's daily token budget (default: the least it can be, 30,000 x active users)",
)
@CONFIG_DIR_OPTION
def status(db_path: str, as_json: bool, budget: int | None, config_dir: str | None) -> None:
    """Show when each entity was last synced, how it went and how long it took, the day's
    Pipedrive tokens (spent today, projected for a day of this schedule, and budget), and
    the webhook deliveries received."""
    import json
    import os
    import sqlite3

    import sqlite_utils

    from . import cli_text as say
    from .backfill import progress as history_progress
    from .budget import token_usage
    from .schema import connect_read_only, is_pdsync
    from .webhook_inbox import inbox_path
    from .webhook_inbox import status as webhook_status

    if not os.path.exists(db_path):
        raise click.ClickException(f"{db_path} does not exist; run `pdsync sync {db_path}` first")
    try:
        db = sqlite_utils.Database(connect_read_only(db_path))
        if not is_pdsync(set(db.table_names())):
            raise click.ClickException(
                f"{db_path} has not been synced by pdsync (no sync_metadata)"
            )
        rows = list(db.query("select * from sync_metadata order by entity_type"))
        usage = token_usage(db, budget)
        history = history_progress(db)
    except sqlite3.DatabaseError as exc:
        raise click.ClickException(say.database_problem(db_path, exc)) from None
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
                say.when(row.get("last_sync_time")),
                status,
                f"{row.get('records_synced') or 0:,}",
                f"{row.get('records_total') or 0:,}",
                f"{(row.get('last_sync_duration_ms') or 0) / 1000:.1f}s",
                (row.get("error_message") or row.get("warning_message") or "")[:100],
            )
        )
    for line in say.table_lines(table):
        click.echo(line)
    click.echo()
    for line in say.token_lines(usage):
        click.echo(line)
    line = say.history_line(history)
    if line:
        click.echo(line)
    for line in say.webhook_lines(webhook_status(inbox_path(db_path, config_dir)), db_path):
        click.echo(line)


HOST_OPTION = click.option("-h", "--host", default="127.0.0.1", show_default=True)
PORT_OPTION = click.option("-p", "--port", default=DEFAULT_PORT, show_default=True, type=int)
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
@click.option(
    "--session-length",
    metavar="INTERVAL",
    default="30d",
    show_default=True,
    help="How long a sign-in lasts (e.g. 12h, 7d); removing a user ends theirs at once",
)
@CONFIG_DIR_OPTION
def serve(
    db_path: str,
    host: str,
    port: int,
    root: bool,
    public: bool,
    private: bool,
    session_length: str,
    config_dir: str | None,
) -> None:
    """Explore DB_PATH in Datasette, with pdsync's canned queries, labels and plugins.

    Bound to anything but loopback it shows nothing until you sign in (see `pdsync user`
    and `pdsync token`), unless --public."""
    import sqlite3

    from . import access, timestamps
    from . import cli_text as say
    from .schema import check_database, pending_upgrades
    from .serve import needs_immutable, prepare_access, serving_mode
    from .serve import serve as serve_database

    try:
        mode = serving_mode(host, public, private)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        timestamps.parse_interval(session_length, None)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--session-length") from None
    try:
        check_database(db_path)
        upgrades = pending_upgrades(db_path)
    except sqlite3.DatabaseError as exc:
        raise click.ClickException(say.database_problem(db_path, exc)) from None
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
    serve_database(db_path, host, port, root, mode, secrets_file, session_length)


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
    serves, the fake keeps changing a few records a minute and pushes each change to it as
    a webhook, so the pages change by themselves; the printed root link signs you in to
    press "Sync now" on the status page (/-/pdsync).
    """
    import os
    import sqlite3
    import threading

    from . import api
    from . import cli_text as say
    from .cli_webhooks import register_demo
    from .lock import LockHeld
    from .serve import is_loopback
    from .serve import serve as serve_database

    if not no_serve and not is_loopback(host):
        # The demo signs you in as root and lets anyone run SQL: a loopback address only.
        raise click.BadParameter(
            f"{host} is not a loopback address: the demo serves on 127.0.0.1 only"
            " (use `pdsync serve` to share a database)",
            param_hint="--host",
        )
    from .fake import FakePipedrive, FakeServer

    click.echo(f"Building the demo company ({deals:,} deals)...", err=True)
    fake = FakePipedrive(deals=deals, seed=seed)
    try:
        with FakeServer(fake) as server:
            reporter = say.ProgressLine() if sys.stderr.isatty() else None
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
            say.report(result, quiet=False, tty=reporter is not None)
            if not result.ok:
                sys.exit(1)
            if no_serve:
                click.echo(f"Explore it with: pdsync serve {db_path}", err=True)
                return
            # Datasette's "Sync now" (and pdsync sync) reach the fake through these.
            os.environ["PIPEDRIVE_API_TOKEN"] = fake.token
            os.environ["PIPEDRIVE_BASE_URL"] = server.url
            register_demo(fake.token, server.url, db_path, f"http://{host}:{port}")
            threading.Thread(target=_keep_changing, args=(fake,), daemon=True).start()
            click.echo(f"Serving {db_path} on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
            serve_database(db_path, host, port, root=True)
    finally:
        fake.close()


# Seconds between the demo's upstream changes (tests shorten it).
DEMO_CHANGES_ENV = "PDSYNC_DEMO_CHANGE_EVERY"


def _keep_changing(fake) -> None:
    """Make the demo company live: a few upstream changes a minute for Sync now to find."""
    import os
    import random
    import time

    try:
        every = min(max(float(os.environ.get(DEMO_CHANGES_ENV) or 20), 0.1), 3600.0)
    except ValueError:
        every = 20.0
    rng = random.Random()
    while True:
        time.sleep(every)
        try:
            fake.random_mutations(3, rng)
        except Exception:  # the fake closed: the demo is over
            return


# -- helpers ----------------------------------------------------------------------------


def _configure_logging(verbose: bool) -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("pdsync")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False


def _every(once, full: bool, interval: float) -> None:
    import random
    import sqlite3
    import time

    from . import cli_text as say
    from . import timestamps
    from .auth import ConfigError
    from .errors import AuthError, ConnectionFailed, PipedriveError

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
            raise click.ClickException(say.with_hint(exc)) from None
        except (ConnectionFailed, PipedriveError, sqlite3.OperationalError) as exc:
            failures += 1
            line = f"{timestamps.now()} sync failed: {exc}"
        click.echo(line, err=True)
        # Back off after failures (up to 4x the interval); jitter spreads many installs apart.
        pause = interval * min(2**failures, 4) if failures else interval
        pause = max(pause * random.uniform(0.95, 1.05) - (time.monotonic() - started), 1.0)
        time.sleep(pause)


def _parse_interval(text: str) -> float:
    from . import timestamps

    try:
        return timestamps.parse_interval(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--every") from None


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt()


cli.add_command(user)
cli.add_command(token)
cli.add_command(webhooks)
