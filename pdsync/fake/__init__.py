"""A fake Pipedrive served over real HTTP, for the demo, the test suite and benchmarks.

>>> from pdsync.fake import FakePipedrive, FakeServer
>>> fake = FakePipedrive(deals=2000, seed=1, token="demo-token")
>>> with FakeServer(fake) as server:
...     server.url  # "http://127.0.0.1:PORT"; paths /api/v2/... and /v1/... under it
"""

from .core import ENTITIES, FAULT_KINDS, FakePipedrive
from .server import FakeServer

__all__ = ["ENTITIES", "FAULT_KINDS", "FakePipedrive", "FakeServer"]
