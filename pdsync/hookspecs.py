"""pdsync's plugin hooks (pluggy), loaded from the ``pdsync`` entry-point group.

A plugin is a module with ``@hookimpl`` functions, registered by a package's
``[project.entry-points.pdsync]``. See README "Plugins".
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("pdsync")
hookimpl = pluggy.HookimplMarker("pdsync")


@hookspec
def pdsync_entities():
    """Return a list of ``EntitySpec`` to sync besides pdsync's own."""


@hookspec
def pdsync_transform_record(entity, record):
    """Change a Pipedrive record before it is saved: return a new dict, or None to keep it.

    ``entity`` is the table name ("deals"); ``record`` is the record as Pipedrive sent it.
    Keys added here become columns.
    """


@hookspec
def pdsync_register_commands(cli):
    """Add commands to the ``pdsync`` click group."""


@hookspec
def pdsync_after_sync(db, result):
    """Called after every sync with the ``sqlite_utils.Database`` and the ``SyncResult``."""
