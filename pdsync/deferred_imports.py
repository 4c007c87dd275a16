"""Third-party modules the CLI's sync would load at start for features it never runs.

sqlite-utils imports dateutil's date parser (10-12 ms: its `convert` recipes, which pdsync
does not use) and httpx imports its own command-line client (pygments, and rich when it is
installed) when they are imported. `pdsync sync` calls :func:`defer` first, for its own process
only: a program using pdsync as a library keeps its imports as they are. tests/test_startup.py
checks what stays unloaded, and that the date parser still works when something does use it.
"""

from __future__ import annotations

import importlib.util
import sys

# Loaded on first use instead: the module object exists, its code runs when first touched.
ON_FIRST_USE = ("dateutil.parser",)


def defer() -> None:
    """Before httpx and sqlite-utils are imported; does nothing for a module already loaded."""
    for name in ON_FIRST_USE:
        _load_on_first_use(name)
    if "httpx" not in sys.modules:
        # `from ._main import main` then fails, and httpx defines a `main` that says to install
        # httpx[cli]: that is httpx's own fallback, and nothing in a sync runs httpx's CLI.
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def _load_on_first_use(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)  # imports the parent package (dateutil: tiny)
    if spec is None or spec.loader is None:
        return  # not installed: whoever imports it gets the usual error
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)  # as a completed import leaves it
