"""`pdsync user` and `pdsync token`: who may read a served database beyond loopback.

People sign in with a password; scripts send a token. Both live in the secrets file (0600)
beside the database (or in --config-dir), never in the database or metadata.
"""

from __future__ import annotations

import contextlib
import sys
import time
from datetime import datetime, timezone

import click

from . import timestamps

AUTH_OPTION = click.option(
    "-a",
    "--auth",
    "auth_path",
    type=click.Path(dir_okay=False),
    default="auth.json",
    show_default=True,
    help="JSON file holding the API token (see `pdsync auth`)",
)
CONFIG_DIR_OPTION = click.option(
    "--config-dir",
    type=click.Path(file_okay=False),
    help="Where the secrets file lives (default: beside the database)",
)


# access.ABILITIES (tests/test_startup.py checks): pdsync.access is imported by the commands
# that use it, so that `pdsync --help` need not load what hashing secrets takes.
ABILITIES = ("sync", "sql")
CAN_OPTION = click.option(
    "--can",
    type=click.Choice(ABILITIES),
    multiple=True,
    help="Also allow: sync (press Sync now), sql (run arbitrary SQL)",
)


@click.group()
def user() -> None:
    """People who sign in to `pdsync serve` with a password."""


@user.command("add")
@click.argument("db_path", type=click.Path(dir_okay=False))
@click.argument("name")
@CAN_OPTION
@CONFIG_DIR_OPTION
def user_add(db_path: str, name: str, can: tuple[str, ...], config_dir: str | None) -> None:
    """Add NAME; the password comes from the prompt, or the first line of stdin."""
    from . import access

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
    from . import access

    with _secrets_errors():
        for entry in access.users(access.secrets_path(db_path, config_dir)):
            click.echo(f"{entry['name']}\t{','.join(entry['can']) or 'read'}")


@user.command("remove")
@click.argument("db_path", type=click.Path(dir_okay=False))
@click.argument("name")
@CONFIG_DIR_OPTION
def user_remove(db_path: str, name: str, config_dir: str | None) -> None:
    """Remove NAME: their sign-in stops working at once, even in a running server."""
    from . import access

    with _secrets_errors():
        access.remove_user(access.secrets_path(db_path, config_dir), name)
    click.echo(f"Removed {name}", err=True)


@click.group()
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
    from . import access

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
    from . import access

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
    from . import access

    with _secrets_errors():
        access.revoke_token(access.secrets_path(db_path, config_dir), name)
    click.echo(f"Revoked {name}", err=True)


@contextlib.contextmanager
def _secrets_errors():
    """A SecretsError becomes one line and exit status 1."""
    from . import access

    try:
        yield
    except access.SecretsError as exc:
        raise click.ClickException(str(exc)) from None


def _utc(epoch: float) -> str:
    return timestamps.format(datetime.fromtimestamp(epoch, timezone.utc))
