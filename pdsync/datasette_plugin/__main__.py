"""``python -m pdsync.datasette_plugin serve ...``: ``datasette`` with pdsync's plugin, for
scripts that run Datasette in a process of its own (see pdsync.serve.datasette_args)."""

import sys

from . import run_datasette

run_datasette(sys.argv[1:])
