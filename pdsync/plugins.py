"""The plugin manager. Installed plugins load from the ``pdsync`` entry-point group, except
under pdsync's own tests (as in sqlite-utils), which register what they need themselves."""

from __future__ import annotations

import sys

import pluggy

from . import hookspecs
from .entities import EntitySpec
from .entrypoints import may_have_plugins

pm = pluggy.PluginManager("pdsync")
pm.add_hookspecs(hookspecs)

if not getattr(sys, "_pdsync_test", False) and may_have_plugins("pdsync"):
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


def selected_entities(
    only: list[str] | tuple[str, ...] | None, specs: list[EntitySpec] | None = None
) -> list[EntitySpec]:
    """The specs to sync (of ``specs``, else every entity), in dependency order. Unknown names
    raise ``ValueError``."""
    specs = specs if specs is not None else entities()
    if not only:
        return list(specs)
    names = {spec.name for spec in specs}
    unknown = [name for name in only if name not in names]
    if unknown:
        raise ValueError(
            f"unknown entity {', '.join(repr(u) for u in unknown)}; "
            f"choose from {', '.join(sorted(names))}"
        )
    return [spec for spec in specs if spec.name in only]
