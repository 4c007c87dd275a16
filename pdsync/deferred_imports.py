"""Third-party code the CLI's sync would run at start for features it never uses.

sqlite-utils imports dateutil's date parser (10-12 ms: its `convert` recipes, which pdsync
does not use) and compiles, when imported, a case-insensitive pattern spanning \\u0080-\\uffff
(18 ms: `Table.virtual_table_using`, for table rebuilds and search); httpx imports its own
command-line client (pygments, and rich when it is installed). `pdsync sync` calls
:func:`defer` first, for its own process only: a program using pdsync as a library keeps its
imports as they are. tests/test_startup.py checks what stays unrun, and that each still works
when something does use it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
from collections.abc import Iterator
from typing import Any

# Loaded on first use instead: the module object exists, its code runs when first touched.
ON_FIRST_USE = ("dateutil.parser",)
# sqlite_utils.db's _virtual_table_using_re; another version's pattern compiles as usual.
SLOW_PATTERN_START = "\n^ # Start of string\n\\s*CREATE\\s+VIRTUAL\\s+TABLE\\s+"


def defer() -> None:
    """Before httpx and sqlite-utils are imported; does nothing for a module already loaded."""
    for name in ON_FIRST_USE:
        _load_on_first_use(name)
    if "httpx" not in sys.modules:
        # `from ._main import main` then fails, and httpx defines a `main` that says to install
        # httpx[cli]: that is httpx's own fallback, and nothing in a sync runs httpx's CLI.
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    if "sqlite_utils" not in sys.modules:
        with _compiled_on_first_use(SLOW_PATTERN_START):
            import sqlite_utils  # noqa: F401


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


class PatternOnFirstUse:
    """Stands for a compiled pattern: compiles it when a method is first asked for."""

    def __init__(self, pattern: str, flags: int) -> None:
        self._source = (pattern, flags)
        self._compiled: re.Pattern[str] | None = None

    def __getattr__(self, name: str) -> Any:  # match, search, pattern, flags...
        if self._compiled is None:
            self._compiled = re.compile(*self._source)
        return getattr(self._compiled, name)


@contextlib.contextmanager
def _compiled_on_first_use(start: str) -> Iterator[None]:
    """While an import runs (on the main thread, before the sync starts any other)."""
    compile_now = re.compile

    def compile(pattern: Any, flags: int = 0) -> Any:
        if isinstance(pattern, str) and pattern.startswith(start):
            return PatternOnFirstUse(pattern, flags)
        return compile_now(pattern, flags)

    re.compile = compile  # type: ignore[assignment]
    try:
        yield
    finally:
        re.compile = compile_now  # type: ignore[assignment]
