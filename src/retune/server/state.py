"""What every router reads: the served runs and scenarios, their batchers, the settings and the page templates.

Built once by ``create_app`` and kept on ``app.state.retune``; requests only read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from retune.server.batching import DynamicBatcher
from retune.server.config import ServeConfig
from retune.server.limits import PixelBudget
from retune.server.runs import ServedRun
from retune.server.scenarios import Png, ServedScenario

API_VERSION = "v1"
TOKEN_COOKIE = "retune_token"  # the page keeps the token typed into /login here (HttpOnly, same-site)
# Plots drawn at startup: browsers may keep them (never shared caches) but revalidate by ETag on every use.
PLOT_CACHE_CONTROL = "private, no-cache"


class UnknownName(Exception):
    """A run, scenario or method name the server does not serve; the 404 lists the ones it does."""

    def __init__(self, kind: str, name: str, served: list[str]) -> None:
        super().__init__(kind, name, served)
        self.kind, self.name, self.served = kind, name, served


@dataclass
class ServerState:
    """The app's loaded models and results; ``decoders`` (one thread per core) exists while the app runs."""

    runs: dict[str, ServedRun]
    scenarios: dict[str, ServedScenario]
    batchers: dict[str, DynamicBatcher]
    config: ServeConfig
    templates: Jinja2Templates
    pixels: PixelBudget
    decoders: ThreadPoolExecutor | None = field(default=None)
    seg_runs: dict = field(default_factory=dict)  # name -> segmentation run (``routers.seg.load_seg_runs``)

    def run(self, name: str) -> ServedRun:
        """The served run called ``name`` (404 listing the served ones otherwise)."""
        if name not in self.runs:
            raise UnknownName("run", name, list(self.runs))
        return self.runs[name]

    def scenario(self, name: str) -> ServedScenario:
        """The served scenario called ``name`` (404 listing the served ones otherwise)."""
        if name not in self.scenarios:
            raise UnknownName("scenario", name, list(self.scenarios))
        return self.scenarios[name]

    async def in_decoders(self, function: Callable, *args):
        """Run ``function(*args)`` (decoding, image copies) on the decoding threads, not the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.decoders, function, *args)

    def page(self, request: Request, template: str, **context) -> HTMLResponse:
        """A page of the site, with the runs and scenarios every template's navigation needs."""
        return self.templates.TemplateResponse(
            request,
            template,
            {
                "runs": list(self.runs.values()),
                "scenarios": list(self.scenarios.values()),
                "token_required": bool(self.config.token),
                **context,
            },
        )


def state(request: Request) -> ServerState:
    """The server state of the app handling ``request``."""
    return request.app.state.retune


def error_response(status: int, detail: str, **extra) -> JSONResponse:
    """The JSON error every endpoint answers with: ``{"detail": one line, ...}``."""
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def heatmap_url(scenario: str, method: str) -> str:
    """Where a scenario method's AUROC-matrix heatmap is served (names percent-encoded: they come from disk)."""
    return f"/{API_VERSION}/scenarios/{quote(scenario, safe='')}/methods/{quote(method, safe='')}/auroc_matrix.png"


def png_response(png: Png, request: Request) -> Response:
    """A PNG held in memory with its ETag; 304 without a body when the browser's copy is current."""
    headers = {"ETag": png.etag, "Cache-Control": PLOT_CACHE_CONTROL}
    if request.headers.get("if-none-match") == png.etag:
        return Response(status_code=304, headers=headers)
    return Response(png.data, media_type="image/png", headers=headers)
