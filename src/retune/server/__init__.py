"""``retune serve``: a FastAPI app (REST API under /v1 + a web page) over saved runs, loaded once at startup.

``create_app`` builds the app from runs already opened; ``load_served_runs`` opens run directories.
"""

from retune.server.app import create_app
from retune.server.config import ServeConfig
from retune.server.runs import load_served_runs

__all__ = ["ServeConfig", "create_app", "load_served_runs"]
