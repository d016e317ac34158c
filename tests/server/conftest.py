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
