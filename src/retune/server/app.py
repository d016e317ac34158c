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
from retune.server.limits import (
    PixelBudget,
    PixelBudgetExceeded,
    ServerBusy,
    connection_cap,
    deadline_protocol,
    log,
    raise_open_files_limit,
)
from retune.server.routers import pages as page_routes
from retune.server.routers import runs as run_routes
from retune.server.routers import scenarios as scenario_routes
from retune.server.routers import seg as seg_routes
from retune.server.routers import vqa as vqa_routes
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
from retune.server.uploads import ClientGone, NotMultipart, UploadTooLarge

PUBLIC_PREFIXES = ("/static/", "/login")
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets inline styles on the docs page only (it holds no patient data); scripts stay 'self'.
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
# Set on every response; a response that sets its own Cache-Control (the in-memory plots) keeps it.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
ROUTERS = (run_routes.router, scenario_routes.router, page_routes.router, seg_routes.router, vqa_routes.router)


def add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"detail": one line}`` with its status; a bug names only its type (details in the log)."""
    statuses = {
        RetuneError: 400, UploadTooLarge: 413, PixelBudgetExceeded: 413, NotMultipart: 415, QueueFull: 503,
        ServerBusy: 503,
    }
    for error_type, status in statuses.items():
        app.add_exception_handler(error_type, lambda _, error, status=status: error_response(status, str(error)))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone) -> JSONResponse:
        """Nobody is left to answer: one line in the log, never a traceback."""
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.info("%s: %s", client, error)
        return error_response(400, str(error))

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


SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def host_name(host_header: str) -> str:
    """The host of a ``Host`` header without its port (``[::1]:8000`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def browser_refusal(request: Request, has_token: bool) -> tuple[int, str] | None:
    """(status, reason) for a request a web page may have sent on a user's behalf, else None: without a token only a
    loopback ``Host`` is served (a DNS-rebinding page names its own host), and a state-changing request from another
    origin (``Origin``, ``Sec-Fetch-Site``) is refused whatever the token: cross-site form POSTs need no preflight."""
    host = request.headers.get("host", "")
    if not has_token and not is_loopback(host_name(host)):
        return 421, f"Host '{host}' is not a loopback name; without a token this server answers loopback names only"
    if request.method in SAFE_METHODS:
        return None
    site = request.headers.get("sec-fetch-site", "")
    origin = request.headers.get("origin")
    if site in ("cross-site", "same-site") or (origin is not None and origin.split("://", 1)[-1] != host):
        sent = f"Origin {origin or 'not sent'}, Sec-Fetch-Site {site or 'not sent'}"
        return 403, f"cross-origin {request.method} refused ({sent})"
    return None


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
        pixels=PixelBudget(config.max_request_pixels, config.max_pixels_in_flight),
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

    answering = [0]  # requests being answered: the guard runs on the event loop only, no lock needed

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Browser-reachable requests refused (a foreign Host without a token, a cross-origin state change), at most
        ``max_requests`` answered at once (503 above), the token check (API: bearer header; page: the cookie set by
        /login) and security headers on every response."""
        path = request.url.path
        refused = browser_refusal(request, bool(config.token))
        allowed = refused is None and (authorised(request) or path.startswith(PUBLIC_PREFIXES))
        if refused is not None:
            response = error_response(*refused)
        elif allowed and answering[0] >= config.max_requests:  # the load is told to allowed callers only
            response = error_response(503, f"server busy: {answering[0]} requests being answered; retry shortly")
            response.headers["Retry-After"] = "1"
        elif allowed:
            answering[0] += 1
            try:
                response = await call_next(request)
            finally:
                answering[0] -= 1
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
    segmentation = [d for d in directories if seg_routes.is_seg_run(d)]
    classifiers = [d for d in directories if not is_scenario_folder(d) and d not in segmentation]
    runs = load_served_runs(classifiers, store_dir, config.device)
    scenarios = load_served_scenarios([d for d in directories if is_scenario_folder(d)])
    app = create_app(runs, config, scenarios)
    seg_runs = app.state.retune.seg_runs = seg_routes.load_seg_runs(segmentation, config.device)
    host = f"[{config.host}]" if ":" in config.host else config.host
    served = [f"{len(runs)} run(s) ({', '.join(runs)})"] if runs else []
    served += [f"{len(seg_runs)} segmentation run(s) (pages at /seg/<name>)"] if segmentation else []
    served += [f"{len(scenarios)} scenario(s) ({', '.join(scenarios)})"] if scenarios else []
    announce(f"serving {' and '.join(served)} at http://{host}:{config.port}/ (API docs at /docs)")
    if not is_loopback(config.host):
        announce(f"bound to {config.host}: reachable from the network; every page and API call requires the token")
    raise_open_files_limit()
    uvicorn.Server(uvicorn_config(app, config)).run()


def uvicorn_config(app: FastAPI, config: ServeConfig, port: int | None = None):
    """uvicorn's settings for serving ``app``: read deadlines on headers and bodies, the keep-alive timeout and a
    connection cap from the open-files limit, so slow or unfinished requests cannot lock other clients out (the app
    caps the requests being answered); ``port`` overrides the config's."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port if port is None else port,
        log_level="info",
        server_header=False,
        http=deadline_protocol(config.header_timeout_s, config.body_timeout_s),
        timeout_keep_alive=config.keep_alive_s,
        limit_concurrency=connection_cap(),
    )
