"""`pdsync webhooks install|list|remove`: Pipedrive pushes changes to `pdsync serve`.

The served instance receives them at ``/-/pdsync/webhook`` (see README: Pipedrive needs a
public HTTPS URL, so a reverse proxy with TLS in front of it). Credentials are generated
here and kept as digests in the database's 0600 secrets file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from .cli_team import AUTH_OPTION, CONFIG_DIR_OPTION

if TYPE_CHECKING:
    from . import webhook_setup

# Each command imports what it uses when it runs, like pdsync/cli.py: `pdsync --help` loads
# neither httpx nor sqlite-utils (tests/test_startup.py).

BASE_URL_OPTION = click.option(
    "--base-url", help="Pipedrive base URL, e.g. https://COMPANY.pipedrive.com"
)


@click.group()
def webhooks() -> None:
    """Pipedrive webhooks that keep a served database current within seconds."""


@contextlib.contextmanager
def _api(db_path: str, auth_path: str, base_url: str | None) -> Iterator[webhook_setup.Api]:
    from . import access, webhook_setup
    from .auth import ConfigError, resolve_base_url, resolve_token
    from .errors import PipedriveError

    try:
        token = resolve_token(auth_path)
        url = resolve_base_url(base_url, auth_path)
        api = webhook_setup.Api(token, url)
    except (ConfigError, PipedriveError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield api
    except (PipedriveError, access.SecretsError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        api.close()
        webhook_setup.count_spend(db_path, api.spend)


@webhooks.command("install")
@click.argument("db_path", type=click.Path(dir_okay=False))
@click.option(
    "--url",
    "public_url",
    required=True,
    help="Where Pipedrive reaches `pdsync serve`: https://HOST (the path is added)",
)
@click.option("--database", help="The database's name in Datasette, when it serves several")
@BASE_URL_OPTION
@AUTH_OPTION
@CONFIG_DIR_OPTION
def install(
    db_path: str,
    public_url: str,
    database: str | None,
    base_url: str | None,
    auth_path: str,
    config_dir: str | None,
) -> None:
    """Register webhooks v2 for every object DB_PATH syncs; running it again creates no
    duplicates."""
    from . import access, webhook_setup

    if not public_url.startswith(("https://", "http://")):
        raise click.BadParameter("give a full URL, https://HOST", param_hint="--url")
    if public_url.startswith("http://") and "127.0.0.1" not in public_url:
        click.echo("Warning: Pipedrive sends credentials with each delivery: use https.", err=True)
    secrets = access.secrets_path(db_path, config_dir)
    url = webhook_setup.subscription_url(public_url, database)
    with _api(db_path, auth_path, base_url) as api:
        done = webhook_setup.install(api, secrets, url)
    for hook in done["created"]:
        click.echo(f"created  {hook.get('id')}  {hook.get('event_object')}  {url}")
    for hook in done["removed"]:
        click.echo(
            f"removed  {hook.get('id')}  {hook.get('event_object')}  {hook.get('subscription_url')}"
        )
    _say_others(done["others"])
    click.echo(
        f"{len(done['created'])} created, {len(done['kept'])} already there,"
        f" {len(done['removed'])} removed. Credentials: {secrets} (0600).",
        err=True,
    )


@webhooks.command("list")
@click.argument("db_path", type=click.Path(dir_okay=False))
@click.option("--url", "public_url", help="The URL they should point at (default: any of ours)")
@BASE_URL_OPTION
@AUTH_OPTION
@CONFIG_DIR_OPTION
def list_(
    db_path: str,
    public_url: str | None,
    base_url: str | None,
    auth_path: str,
    config_dir: str | None,
) -> None:
    """What Pipedrive has, and whether it matches what pdsync needs."""
    from . import access, webhook_setup

    secrets = access.secrets_path(db_path, config_dir)
    with _api(db_path, auth_path, base_url) as api:
        users = webhook_setup.known_users(secrets)
        hooks = api.webhooks()
    if public_url:
        url = webhook_setup.subscription_url(public_url)
    else:
        mine = [h for h in hooks if h.get("http_auth_user") in users]
        url = mine[0].get("subscription_url") if mine else ""
    state = webhook_setup.plan(hooks, url, users)
    for obj, hook in state["wanted"].items():
        if hook:
            last = hook.get("last_http_status")
            click.echo(f"ok       {hook['id']}  {obj}  last delivery: {last or 'none yet'}")
        else:
            click.echo(f"MISSING  -  {obj}")
    for hook in state["extra"]:
        click.echo(
            f"EXTRA    {hook.get('id')}  {hook.get('event_object')}  {hook.get('subscription_url')}"
            f"  version {hook.get('version')}"
        )
    _say_others(state["others"])
    missing = sum(1 for hook in state["wanted"].values() if hook is None)
    if missing or state["extra"]:
        click.echo(
            f"Does not match: run `pdsync webhooks install {db_path} --url PUBLIC_URL`.", err=True
        )
        raise SystemExit(1)
    click.echo(f"All {len(state['wanted'])} webhooks in place for {url}.", err=True)


@webhooks.command("remove")
@click.argument("db_path", type=click.Path(dir_okay=False))
@BASE_URL_OPTION
@AUTH_OPTION
@CONFIG_DIR_OPTION
def remove(db_path: str, base_url: str | None, auth_path: str, config_dir: str | None) -> None:
    """Delete pdsync's webhooks from Pipedrive and forget their credentials."""
    from . import access, webhook_setup

    secrets = access.secrets_path(db_path, config_dir)
    with _api(db_path, auth_path, base_url) as api:
        done = webhook_setup.remove(api, secrets)
    for hook in done["removed"]:
        click.echo(f"removed  {hook.get('id')}  {hook.get('event_object')}")
    _say_others(done["others"])
    click.echo(f"{len(done['removed'])} removed.", err=True)


def _say_others(hooks: list[dict]) -> None:
    """Webhooks named like pdsync's with credentials this database does not know: another
    pdsync instance's on the same company (or credentials forgotten here). Never touched."""
    for hook in hooks:
        click.echo(
            f"other    {hook.get('id')}  {hook.get('event_object')}  {hook.get('subscription_url')}"
            "  (another pdsync's: left alone)"
        )


def register_demo(token: str, fake_url: str, db_path: str, served_url: str) -> int:
    """`pdsync demo`: the fake Pipedrive pushes its changes to the served instance, so the
    page changes by itself. Returns how many webhooks were created."""
    from . import access, webhook_setup

    api = webhook_setup.Api(token, fake_url)
    try:
        done = webhook_setup.install(
            api, access.secrets_path(db_path), webhook_setup.subscription_url(served_url)
        )
    finally:
        api.close()
        webhook_setup.count_spend(db_path, api.spend)
    return len(done["created"])
