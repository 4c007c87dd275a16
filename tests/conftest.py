import sys

# Installed pdsync plugins stay out of pdsync's own tests (set before pdsync is imported).
sys._pdsync_test = True

import os  # noqa: E402

import pytest  # noqa: E402
from helpers import FAST_CLIENT  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI runs the same generated examples every time (a red run must mean the change, not the
# draw); a developer's runs keep exploring new ones (and keep what fails in .hypothesis/).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from pdsync.fake import FakePipedrive, FakeServer  # noqa: E402


@pytest.fixture
def fake():
    fake = FakePipedrive(deals=300, seed=7)
    yield fake
    fake.close()


@pytest.fixture
def server(fake):
    with FakeServer(fake) as server:
        yield server


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "pipedrive.db")


@pytest.fixture
def run_sync(fake, server, db_path):
    """Sync the fake into db_path through real HTTP, as the CLI would."""
    import pdsync

    def run(**kwargs):
        kwargs.setdefault("token", fake.token)
        kwargs.setdefault("base_url", server.url)
        kwargs.setdefault("auth_path", None)
        kwargs.setdefault("client_options", FAST_CLIENT)
        return pdsync.sync(kwargs.pop("db", db_path), **kwargs)

    return run
