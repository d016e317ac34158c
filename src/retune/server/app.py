"""The FastAPI app: JSON API under /v1, the prediction page at /, the runs page, and local API docs.

Every model and scenario result is loaded before the app is built (``load_served_runs``, ``load_served_scenarios``);
requests only read them. Endpoints live in ``retune.server.routers`` (one module per area); this module builds the
shared state, the token guard, security headers and the one-line JSON errors.
Uploads stay in memory; responses and logs carry no image data and no DICOM header fields.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from retune.errors import RetuneError
from retune.scenarios.runner import is_scenario_folder
from retune.server.batching import DynamicBatcher, QueueFull
from retune.server.config import ServeConfig, is_loopback
from retune.server.routers import pages as page_routes
from retune.server.routers import runs as run_routes
from retune.server.routers import scenarios as scenario_routes
from retune.server.routers.runs import batch_scorer
from retune.server.runs import ServedRun
from retune.server.scenarios import ServedScenario
from retune.server.state import (
    API_VERSION,
    TOKEN_COOKIE,
    ServerState,
    UnknownName,
    error_response,
    heatmap_url,
)
from retune.server.uploads import NotMultipart, UploadTooLarge

PUBLIC_PREFIXES = ("/static/", "/login")
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets inline styles on the docs page only (it holds no patient data); scripts stay 'self'.
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
# Set on every response; a response that sets its own Cache-Control (the in-memory plots) keeps it.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
ROUTERS = (run_routes.router, scenario_routes.router, page_routes.router)


def add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"detail": one line}`` with its status; a bug names only its type (details in the log)."""
    statuses = {RetuneError: 400, UploadTooLarge: 413, NotMultipart: 415, QueueFull: 503}
    for error_type, status in statuses.items():
        app.add_exception_handler(error_type, lambda _, error, status=status: error_response(status, str(error)))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        return error_response(422, f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}")

    @app.exception_handler(Exception)
    async def internal(_request: Request, error: Exception) -> JSONResponse:
        """A bug, not bad input: still JSON, naming only the error type (the traceback goes to the server log)."""
        return error_response(500, f"internal error ({type(error).__name__}); the server log has the details")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(UnknownName)
    async def unknown_name(_request: Request, error: UnknownName) -> JSONResponse:
        detail = f"unknown {error.kind} '{error.name}'; served {error.kind}s: {', '.join(error.served) or 'none'}"
        return error_response(404, detail, **{f"{error.kind}s": error.served})


def create_app(
    runs: dict[str, ServedRun], config: ServeConfig, scenarios: dict[str, ServedScenario] | None = None
) -> FastAPI:
    """The app over runs (and scenario results) already loaded; one dynamic batcher per run, started with the app."""
    package = files("retune.server")
    templates = Jinja2Templates(directory=str(package / "templates"))
    templates.env.globals["heatmap_url"] = heatmap_url
    served = ServerState(
        runs=runs,
        scenarios=scenarios or {},
        batchers={
            name: DynamicBatcher(batch_scorer(run), config.batch_window_ms / 1000, config.max_batch, config.max_queue)
            for name, run in runs.items()
        },
        config=config,
        templates=templates,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # decoding uploads: one thread per core, not one per request
        served.decoders = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="retune-decode")
        for batcher in served.batchers.values():
            batcher.start()
        yield
        for batcher in served.batchers.values():
            await batcher.stop()
        served.decoders.shutdown(wait=True)

    app = FastAPI(
        title="retune",
        version=API_VERSION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Predictions, explanation maps and metrics of saved retune runs, and scenario results. "
        "Images stay in memory only.",
    )
    app.state.retune = served
    app.mount("/static/docs", StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")
    app.mount("/static", StaticFiles(directory=str(package / "static")), name="static")

    def authorised(request: Request) -> bool:
        if not config.token:
            return True
        header = request.headers.get("authorization", "")
        offered = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(TOKEN_COOKIE, "")
        return secrets.compare_digest(offered.encode(), config.token.encode())

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Token check (API: bearer header; page: the cookie set by /login) and security headers on every response."""
        path = request.url.path
        if authorised(request) or path.startswith(PUBLIC_PREFIXES):
            response = await call_next(request)
        elif path.startswith(f"/{API_VERSION}/") or path == app.openapi_url:
            response = error_response(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'")
            response.headers["WWW-Authenticate"] = "Bearer"
        else:
            response = RedirectResponse("/login", status_code=303)
        response.headers["Content-Security-Policy"] = DOCS_CSP if path == "/docs" else CSP
        for header, value in SECURITY_HEADERS.items():
            response.headers.setdefault(header, value)
        return response

    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def serve(
    directories: list[str | Path],
    config: ServeConfig,
    store_dir: str | Path | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Load every run and scenario folder once (scenario folders are those with a scenario.json), then serve the
    app with uvicorn until interrupted."""
    import uvicorn

    from retune.devices import keep_freed_memory_for_reuse
    from retune.server.runs import load_served_runs
    from retune.server.scenarios import load_served_scenarios

    keep_freed_memory_for_reuse()  # a batch's activations come from the heap, not page-faulted in at every call
    runs = load_served_runs([d for d in directories if not is_scenario_folder(d)], store_dir, config.device)
    scenarios = load_served_scenarios([d for d in directories if is_scenario_folder(d)])
    app = create_app(runs, config, scenarios)
    host = f"[{config.host}]" if ":" in config.host else config.host
    served = [f"{len(runs)} run(s) ({', '.join(runs)})"] if runs else []
    served += [f"{len(scenarios)} scenario(s) ({', '.join(scenarios)})"] if scenarios else []
    announce(f"serving {' and '.join(served)} at http://{host}:{config.port}/ (API docs at /docs)")
    if not is_loopback(config.host):
        announce(f"bound to {config.host}: reachable from the network; every page and API call requires the token")
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", server_header=False)
