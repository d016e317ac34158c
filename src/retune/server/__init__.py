"""``retune serve``: a FastAPI app (REST API under /v1 + a web page) over saved runs and scenario results, loaded
once at startup.

``create_app`` builds the app from runs and scenarios already opened; ``load_served_runs`` opens run directories,
``load_served_scenarios`` reads scenario output folders.
"""

from retune.server.app import create_app
from retune.server.config import ServeConfig
from retune.server.runs import load_served_runs
from retune.server.scenarios import load_served_scenarios

__all__ = ["ServeConfig", "create_app", "load_served_runs", "load_served_scenarios"]
