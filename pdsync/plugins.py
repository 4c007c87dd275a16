"""The plugin manager. Installed plugins load from the ``pdsync`` entry-point group, except
under pdsync's own tests (as in sqlite-utils), which register what they need themselves."""

from __future__ import annotations

import sys

import pluggy

from . import hookspecs

pm = pluggy.PluginManager("pdsync")
pm.add_hookspecs(hookspecs)

if not getattr(sys, "_pdsync_test", False):
    pm.load_setuptools_entrypoints("pdsync")


def get_plugins() -> list[dict]:
    """Name and hooks of every registered plugin."""
    return [
        {
            "name": pm.get_name(plugin) or getattr(plugin, "__name__", repr(plugin)),
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
        }
        for plugin in pm.get_plugins()
    ]


def entities() -> list:
    """pdsync's entity specs followed by those plugins add."""
    from .entities import builtin_entities

    specs = builtin_entities()
    for added in pm.hook.pdsync_entities():
        specs.extend(added or [])
    return specs


def entity_order() -> list[str]:
    """Entity names in the order pdsync syncs them (dependencies first), plugins' included."""
    return [spec.name for spec in entities()]


def entity_sort_key(name: str, order: list[str]) -> tuple[int, str]:
    """Sorts entity names in ``order``; names it lacks (a plugin since removed) go last."""
    return (order.index(name) if name in order else len(order), name)


def has_record_transforms() -> bool:
    return bool(pm.hook.pdsync_transform_record.get_hookimpls())


def transform_record(entity: str, record: dict) -> dict | None:
    """Run every plugin's ``pdsync_transform_record`` in turn."""
    for impl in reversed(pm.hook.pdsync_transform_record.get_hookimpls()):
        changed = impl.function(entity=entity, record=record)
        if changed is not None:
            record = changed
    return record
