"""Whether any installed package declares entry points in a group, without importlib.metadata.

Loading plugins the usual way (pluggy's ``load_setuptools_entrypoints``, which sqlite-utils
also runs for every ``Database`` it opens) imports ``importlib.metadata`` and parses every
installed package's metadata: 40-70 ms on this project's machine, paid by every ``pdsync``
command although almost nobody has a plugin installed. This looks for the group's header in
the ``entry_points.txt`` files on ``sys.path`` instead (a millisecond or two) and says
"maybe" whenever it cannot be sure, so that the real loader then runs as before.
"""

from __future__ import annotations

import functools
import os
import sys


def may_have_plugins(group: str) -> bool:
    """False only when no package on ``sys.path`` can declare ``group`` entry points."""
    groups = _declared_groups()
    return groups is None or group in groups


@functools.cache
def _declared_groups() -> frozenset[str] | None:
    """Every entry-point group declared on ``sys.path`` (None: cannot tell), read once for
    all groups: a sync asks for two, and each look is a walk of site-packages."""
    groups: set[str] = set()
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as found:
                names = [e.name for e in found]
        except NotADirectoryError:
            return None  # a zip (an egg, a zipapp): only importlib.metadata reads it
        except OSError:
            continue  # a path that does not exist is no distribution
        for name in names:
            if name.endswith(".egg"):
                return None
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(entry or ".", name, "entry_points.txt"), "rb") as f:
                    text = f.read()
            except (FileNotFoundError, NotADirectoryError):
                continue  # no entry points (or an egg-info file, which has none)
            except OSError:
                return None
            groups.update(
                line.strip()[1:-1].strip().decode(errors="replace")
                for line in text.splitlines()
                if line.strip().startswith(b"[") and line.strip().endswith(b"]")
            )
    return frozenset(groups)
