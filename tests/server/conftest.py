"""The session's phantom run and scenario (tests/conftest.py) opened once, as ``retune serve`` does at startup."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def served_runs(phantom_run):
    """The phantom run opened once for every server test (as ``retune serve`` does at startup)."""
    from retune.server import load_served_runs

    return load_served_runs([phantom_run.run])


@pytest.fixture(scope="session")
def served_scenarios(phantom_scenario):
    """The phantom scenario read once, heatmaps drawn (as ``retune serve`` does at startup)."""
    from retune.server import load_served_scenarios

    return load_served_scenarios([phantom_scenario])


@pytest.fixture(autouse=True, scope="session")
def loopback_test_clients():
    """Test clients call the server as a local browser or curl does, at http://127.0.0.1 (the server refuses other
    Host names without a token); a test may still pass another base_url."""
    from fastapi.testclient import TestClient

    original = TestClient.__init__

    def init(self, app, base_url: str = "http://127.0.0.1", *args, **kwargs):
        original(self, app, base_url, *args, **kwargs)

    TestClient.__init__ = init
    yield
    TestClient.__init__ = original
