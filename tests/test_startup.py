"""Fast start: the CLI imports what a command uses when it runs (see pdsync/cli.py).

Checked in a fresh interpreter through ``sys.modules``, so an eager import added back to
pdsync/cli.py, pdsync/__init__.py or what they import fails here.
"""

import json
import os
import subprocess
import sys

import pytest
import sqlite_utils

# What neither `pdsync --help` nor a sync uses: the read side, the fake, hashing secrets.
READ_SIDE = (
    "datasette",
    "datasette_auth_passwords",
    "pdsync.fake",
    "pdsync.datasette_plugin",
    "pdsync.access",
    "pdsync.serve",
    "yaml",
    "importlib.metadata",  # the plugin scan, with no plugin installed
)
# `pdsync --help` loads no HTTP client, SQLite layer or plugin machinery either.
NOT_FOR_HELP = (*READ_SIDE, "httpx", "sqlite_utils", "sqlite3", "pluggy")
NOT_FOR_SYNC = (*READ_SIDE, "pdsync.queries")
# What `pdsync sync` leaves unrun of its libraries (pdsync/deferred_imports.py): dateutil's
# parser behind sqlite-utils' recipes, httpx's own command-line client.
NOT_RUN_BY_CLI_SYNC = (
    *NOT_FOR_SYNC,
    *("dateutil.parser._parser", "dateutil.tz", "pygments", "rich"),
    "statistics",  # pdsync.budget's, for `pdsync status`
    "_strptime",  # timestamps.parse reads the stored shape with fromisoformat
)


def loaded_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """Modules loaded by ``code`` in a fresh interpreter (pdsync's installed plugins off)."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def offenders(loaded: set[str], banned: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == b or m.startswith(b + ".") for b in banned))


@pytest.mark.parametrize("code", ["import pdsync.cli", "import pdsync"])
def test_importing_the_cli_loads_nothing_help_does_not_need(code):
    assert offenders(loaded_after(code), NOT_FOR_HELP) == []


def test_help_runs_without_loading_them():
    code = (
        "import sys\nfrom pdsync.cli import cli\n"
        "try:\n    cli(['--help'], prog_name='pdsync')\nexcept SystemExit:\n    pass"
    )
    assert offenders(loaded_after(code), NOT_FOR_HELP) == []


def test_the_sync_path_loads_no_read_side():
    code = "import pdsync\nfrom pdsync import api, engine\nassert pdsync.sync is api.sync"
    assert offenders(loaded_after(code), NOT_FOR_SYNC) == []


def test_a_cli_sync_leaves_what_it_does_not_use_unrun(fake, server, tmp_path):
    # The real command, over HTTP to the fake: the records arrive, the modules stay unrun.
    db = tmp_path / "pipedrive.db"
    code = (
        "from pdsync.cli import cli\n"
        f"try:\n    cli(['sync', {str(db)!r}, '-q'], prog_name='pdsync')\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code"
    )
    env = {"PIPEDRIVE_API_TOKEN": fake.token, "PIPEDRIVE_BASE_URL": server.url}
    loaded = loaded_after(code, env)
    assert sqlite_utils.Database(db)["deals"].count == fake.count("deals")
    assert offenders(loaded, NOT_RUN_BY_CLI_SYNC) == []
    assert "dateutil.parser" in loaded  # there, as sqlite-utils imported it, to run on first use


def test_deferred_modules_work_when_used():
    code = (
        "from pdsync import deferred_imports\ndeferred_imports.defer()\n"
        "import httpx, sqlite_utils\nfrom sqlite_utils import recipes\n"
        "assert recipes.parsedate('5 March 2024') == '2024-03-05'\n"
        "from dateutil.parser import isoparse\n"
        "assert isoparse('2024-03-05T01:02:03Z').hour == 1\n"
        "assert callable(httpx.main) and httpx.Client"
    )
    assert "dateutil.parser._parser" in loaded_after(code)


def test_deferring_leaves_loaded_modules_alone():
    code = (
        "import dateutil.parser as before, httpx\n"
        "from pdsync import deferred_imports\ndeferred_imports.defer()\n"
        "import sys\nassert sys.modules['dateutil.parser'] is before\n"
        "assert sys.modules.get('httpx._main', 'not loaded') is not None"
    )
    loaded_after(code)


def test_the_public_api_is_all_there():
    import pdsync
    import pdsync.queries

    for name in pdsync.__all__:
        assert getattr(pdsync, name) is not None, name
    # Importing the submodule pdsync.queries does not hide the function of that name.
    assert callable(pdsync.queries) and pdsync.queries.__module__ == "pdsync.queries"
    from pdsync import SyncResult, sync
    from pdsync.results import SyncResult as Result

    assert SyncResult is Result and callable(sync)
    with pytest.raises(AttributeError):
        pdsync.no_such_name  # noqa: B018


def test_submodules_still_load_as_attributes():
    # `import pdsync` once loaded pdsync.client and others; code reaching them so still works.
    code = "import pdsync\nassert pdsync.client.PipedriveClient and pdsync.schema.prepare"
    assert "pdsync.client" in loaded_after(code)


def test_constants_the_cli_repeats_match_their_owners():
    from pdsync import access, cli, cli_team, serve

    assert cli.DEFAULT_PORT == serve.DEFAULT_PORT
    assert cli_team.ABILITIES == access.ABILITIES


def test_sync_help_still_names_every_entity():
    from click.testing import CliRunner

    from pdsync import plugins
    from pdsync.cli import cli

    out = CliRunner().invoke(cli, ["sync", "--help"], terminal_width=1000).output
    for spec in plugins.entities():
        assert spec.name in out


def test_no_entry_points_found_where_none_are(tmp_path, monkeypatch):
    from pdsync import entrypoints

    dist = tmp_path / "thing-1.0.dist-info"
    dist.mkdir()
    (dist / "entry_points.txt").write_text("[console_scripts]\nthing = thing:main\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(tmp_path / "missing")])
    entrypoints._declared_groups.cache_clear()
    try:
        assert not entrypoints.may_have_plugins("pdsync")
        (dist / "entry_points.txt").write_text("[pdsync]\nthing = thing.plugin\n")
        entrypoints._declared_groups.cache_clear()
        assert entrypoints.may_have_plugins("pdsync")
        assert not entrypoints.may_have_plugins("sqlite_utils")  # one walk answers each group
        (tmp_path / "other-2.0.dist-info").mkdir()
        (tmp_path / "other-2.0.dist-info" / "entry_points.txt").write_text(
            "[console_scripts]\nother = other:main\n\n  [sqlite_utils]  \nx = other.plugin\n"
        )
        entrypoints._declared_groups.cache_clear()
        assert entrypoints.may_have_plugins("sqlite_utils")
        # A zip on the path could hold anything: "maybe", and the real loader looks.
        (tmp_path / "lib.zip").write_bytes(b"PK")
        monkeypatch.setattr(sys, "path", [str(tmp_path / "lib.zip")])
        entrypoints._declared_groups.cache_clear()
        assert entrypoints.may_have_plugins("sqlite_utils")
    finally:
        entrypoints._declared_groups.cache_clear()
