"""The FastAPI app: JSON API under /v1, the prediction page at /, the runs page, and local API docs.

Every model and scenario result is loaded before the app is built (``load_served_runs``, ``load_served_scenarios``);
requests only read them.
Uploads stay in memory; responses and logs carry no image data and no DICOM header fields.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, quote

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from retune.data.images import decode_image_bytes
from retune.errors import RetuneError
from retune.experiments.kinds import PixelScores
from retune.scenarios.runner import is_scenario_folder
from retune.server import explain
from retune.server.batching import DynamicBatcher, QueueFull
from retune.server.config import ServeConfig, is_loopback
from retune.server.runs import ROC_PLOT, ServedRun
from retune.server.scenarios import Png, ServedScenario
from retune.server.uploads import UPLOAD_FIELD, NotMultipart, Upload, UploadTooLarge, read_body, read_uploads

API_VERSION = "v1"
TOKEN_COOKIE = "retune_token"
PUBLIC_PREFIXES = ("/static/", "/login")
LOGIN_FORM_LIMIT = 4096  # bytes: the login form holds one token
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets inline styles on the docs page only (it holds no patient data); scripts stay 'self'.
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
# Set on every response; a response that sets its own Cache-Control (the in-memory plots) keeps it.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
# Plots drawn at startup: browsers may keep them (never shared caches) but revalidate by ETag on every use.
PLOT_CACHE_CONTROL = "private, no-cache"
MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [UPLOAD_FIELD],
                    "properties": {
                        UPLOAD_FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "PNG, JPEG or DICOM chest X-rays (field may repeat).",
                        }
                    },
                }
            }
        },
    }
}


class Finding(BaseModel):
    """One finding's score for one image."""

    finding: str
    probability: float
    positive_similarity: float | None = None  # cosine similarity to the finding's positive prompt (RE-tune heads)
    negative_similarity: float | None = None
    decision: bool | None = None  # probability >= the run's stored threshold; null when the run stores none


class ImagePrediction(BaseModel):
    file: str
    findings: list[Finding]  # highest probability first


class PredictResponse(BaseModel):
    run: str
    method: str
    predictions: list[ImagePrediction]
    threshold_note: str


class ExplainResponse(BaseModel):
    run: str
    file: str
    explanation: Literal["occlusion", "patch"]
    description: str
    grid: int
    region: Literal["image", "centre-square"]  # what the grid covers
    maps: dict[str, list[list[float]]]  # finding -> grid x grid values, row-major from the top-left
    probabilities: dict[str, float] | None = None  # occlusion: the scores of the uncovered image


class UnknownName(Exception):
    """A run, scenario or method name the server does not serve; the 404 lists the ones it does."""

    def __init__(self, kind: str, name: str, served: list[str]) -> None:
        super().__init__(kind, name, served)
        self.kind, self.name, self.served = kind, name, served


def _error(status: int, detail: str, **extra) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _decode_all(uploads: list[Upload]) -> list[Image.Image]:
    """Decode every upload (in memory); the first bad one raises a DataError naming it."""
    return [decode_image_bytes(upload.data, upload.name) for upload in uploads]


def _batch_scorer(run: ServedRun) -> Callable[[list[Image.Image]], PixelScores]:
    """Preprocess decoded images and score them as one batch (runs in the run's encoder thread)."""
    backbone = run.model.backbone
    return lambda images: run.model.score_pixels(torch.stack([backbone.preprocess(image) for image in images]))


def _findings(classes: list[str], scores: PixelScores, thresholds: dict[str, float]) -> list[Finding]:
    rows = []
    for index, name in enumerate(classes):
        probability = float(scores.probabilities[index])
        rows.append(
            Finding(
                finding=name,
                probability=probability,
                positive_similarity=None if scores.positive is None else float(scores.positive[index]),
                negative_similarity=None if scores.negative is None else float(scores.negative[index]),
                decision=probability >= thresholds[name] if name in thresholds else None,
            )
        )
    return sorted(rows, key=lambda row: -row.probability)


def heatmap_url(scenario: str, method: str) -> str:
    """Where a scenario method's AUROC-matrix heatmap is served (names percent-encoded: they come from disk)."""
    return f"/{API_VERSION}/scenarios/{quote(scenario, safe='')}/methods/{quote(method, safe='')}/auroc_matrix.png"


def png_response(png: Png, request: Request) -> Response:
    """A PNG held in memory with its ETag; 304 without a body when the browser's copy is current."""
    headers = {"ETag": png.etag, "Cache-Control": PLOT_CACHE_CONTROL}
    if request.headers.get("if-none-match") == png.etag:
        return Response(status_code=304, headers=headers)
    return Response(png.data, media_type="image/png", headers=headers)


def create_app(
    runs: dict[str, ServedRun], config: ServeConfig, scenarios: dict[str, ServedScenario] | None = None
) -> FastAPI:
    """The app over runs (and scenario results) already loaded; one dynamic batcher per run, started with the app."""
    scenarios = scenarios or {}
    batchers = {
        name: DynamicBatcher(_batch_scorer(run), config.batch_window_ms / 1000, config.max_batch, config.max_queue)
        for name, run in runs.items()
    }

    decoders: ThreadPoolExecutor | None = None  # decoding uploads: one thread per core, not one per request

    async def in_decoders(function: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(decoders, function, *args)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        nonlocal decoders
        decoders = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="retune-decode")
        for batcher in batchers.values():
            batcher.start()
        yield
        for batcher in batchers.values():
            await batcher.stop()
        decoders.shutdown(wait=True)

    app = FastAPI(
        title="retune",
        version=API_VERSION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Predictions, explanation maps and metrics of saved retune runs, and scenario results. "
        "Images stay in memory only.",
    )
    package = files("retune.server")
    templates = Jinja2Templates(directory=str(package / "templates"))
    templates.env.globals["heatmap_url"] = heatmap_url
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
            response = _error(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'")
            response.headers["WWW-Authenticate"] = "Bearer"
        else:
            response = RedirectResponse("/login", status_code=303)
        response.headers["Content-Security-Policy"] = DOCS_CSP if path == "/docs" else CSP
        for header, value in SECURITY_HEADERS.items():
            response.headers.setdefault(header, value)
        return response

    @app.exception_handler(RetuneError)
    async def bad_input(_request: Request, error: RetuneError) -> JSONResponse:
        return _error(400, str(error))

    @app.exception_handler(UploadTooLarge)
    async def too_large(_request: Request, error: UploadTooLarge) -> JSONResponse:
        return _error(413, str(error))

    @app.exception_handler(NotMultipart)
    async def not_multipart(_request: Request, error: NotMultipart) -> JSONResponse:
        return _error(415, str(error))

    @app.exception_handler(QueueFull)
    async def busy(_request: Request, error: QueueFull) -> JSONResponse:
        return _error(503, str(error))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        return _error(422, f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}")

    @app.exception_handler(Exception)
    async def internal(_request: Request, error: Exception) -> JSONResponse:
        """A bug, not bad input: still JSON, naming only the error type (the traceback goes to the server log)."""
        return _error(500, f"internal error ({type(error).__name__}); the server log has the details")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    def served(name: str) -> ServedRun:
        if name not in runs:
            raise UnknownName("run", name, list(runs))
        return runs[name]

    def served_scenario(name: str) -> ServedScenario:
        if name not in scenarios:
            raise UnknownName("scenario", name, list(scenarios))
        return scenarios[name]

    @app.exception_handler(UnknownName)
    async def unknown_name(_request: Request, error: UnknownName) -> JSONResponse:
        detail = f"unknown {error.kind} '{error.name}'; served {error.kind}s: {', '.join(error.served) or 'none'}"
        return _error(404, detail, **{f"{error.kind}s": error.served})

    @app.get(f"/{API_VERSION}/health", tags=["server"])
    async def health() -> dict:
        """Liveness, the served runs and batching counters (batches run, images scored, mean batch size)."""
        return {
            "status": "ok",
            "runs": list(runs),
            "scenarios": list(scenarios),
            "batching": {
                name: {
                    "batches": b.stats.batches,
                    "images": b.stats.images,
                    "mean_batch": round(b.stats.mean_batch, 2),
                    "window_ms": config.batch_window_ms,
                    "max_batch": config.max_batch,
                }
                for name, b in batchers.items()
            },
        }

    @app.get(f"/{API_VERSION}/runs", tags=["runs"])
    async def list_runs() -> dict:
        """Every served run: name, kind, method, backbone, classes and headline metrics."""
        return {"runs": [run.summary() for run in runs.values()]}

    @app.get(f"/{API_VERSION}/runs/{{name}}", tags=["runs"])
    async def run_details(name: str) -> dict:
        """One run's full metrics (per class, with CIs, and its baselines) and its configuration."""
        return served(name).details()

    @app.get(f"/{API_VERSION}/runs/{{name}}/roc.png", tags=["runs"], response_class=FileResponse)
    async def roc_plot(name: str):
        """The run's per-class ROC curves on its test split (PNG), when the run has them."""
        run = served(name)
        if not (run.directory / ROC_PLOT).is_file():
            return _error(404, f"run '{name}' has no {ROC_PLOT}")
        return FileResponse(run.directory / ROC_PLOT, media_type="image/png")

    def heatmap_urls(scenario: ServedScenario) -> dict[str, str]:
        return {method: heatmap_url(scenario.name, method) for method in scenario.heatmaps}

    @app.get(f"/{API_VERSION}/scenarios", tags=["scenarios"])
    async def list_scenarios() -> dict:
        """Every served scenario: name, kind, methods, and per method the final mean AUROC and forgetting (mean ± sd
        over its (order, seed) runs), the classes in the means (min-positives rule) and its heatmap's address."""
        return {"scenarios": [{**s.summary(), "heatmaps": heatmap_urls(s)} for s in scenarios.values()]}

    @app.get(f"/{API_VERSION}/scenarios/{{name}}", tags=["scenarios"])
    async def scenario_details(name: str) -> dict:
        """One scenario's summary, its config (scenario.json) and every method's full results.json."""
        scenario = served_scenario(name)
        return {**scenario.details(), "heatmaps": heatmap_urls(scenario)}

    @app.get(
        f"/{API_VERSION}/scenarios/{{name}}/methods/{{method:path}}/auroc_matrix.png",
        tags=["scenarios"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 304: {"description": "the browser's copy is current"}},
    )
    async def auroc_matrix(name: str, method: str, request: Request) -> Response:
        """A method's AUROC-matrix heatmap (AUROC on each class after each task, first run), drawn at startup."""
        scenario = served_scenario(name)
        if method not in scenario.heatmaps:
            raise UnknownName("method", method, list(scenario.heatmaps))
        return png_response(scenario.heatmaps[method], request)

    @app.post(
        f"/{API_VERSION}/runs/{{name}}/predict",
        tags=["predict"],
        response_model=PredictResponse,
        openapi_extra=MULTIPART_BODY,
    )
    async def predict(name: str, request: Request) -> PredictResponse:
        """Per-finding probabilities (and prompt similarities) for one or more uploaded images, highest first."""
        run = served(name)
        uploads = await read_uploads(request, config.max_upload_bytes)
        images = await in_decoders(_decode_all, uploads)
        scores = await batchers[name].submit(images)
        note = (
            "decision: probability >= the run's threshold"
            if run.thresholds
            else "this run stores no decision thresholds: decision is null"
        )
        return PredictResponse(
            run=name,
            method=run.model.main,
            threshold_note=note,
            predictions=[
                ImagePrediction(file=u.name, findings=_findings(run.model.classes, s, run.thresholds))
                for u, s in zip(uploads, scores, strict=True)
            ],
        )

    @app.post(
        f"/{API_VERSION}/runs/{{name}}/explain",
        tags=["predict"],
        response_model=ExplainResponse,
        openapi_extra=MULTIPART_BODY,
    )
    async def explain_image(
        name: str,
        request: Request,
        method: Literal["occlusion", "patch"] = Query(
            "occlusion", description="occlusion (any backbone) or patch (where offered)"
        ),
        grid: int | None = Query(None, ge=2, le=16, description="Occlusion cells per side (default: the server's)"),
    ) -> ExplainResponse:
        """An explanation map per finding for one uploaded image: occlusion sensitivity (grid x grid encoder passes)
        or patch-to-prompt similarity (one pass; runs whose ``explanations`` list it)."""
        run = served(name)
        if method not in run.explanations:
            raise RetuneError(
                f"run '{name}' offers explanation(s) {', '.join(run.explanations)}, not '{method}' "
                "(its backbone's patch tokens do not allow it)"
            )
        uploads = await read_uploads(request, config.max_upload_bytes)
        if len(uploads) != 1:
            raise RetuneError(f"explain takes exactly one image, got {len(uploads)}")
        upload = uploads[0]
        image = await in_decoders(decode_image_bytes, upload.data, upload.name)
        classes = run.model.classes
        if method == "patch":
            maps = await batchers[name].run_in_encoder_thread(
                lambda: run.patches(run.model.backbone.preprocess(image)[None])
            )
            return ExplainResponse(
                run=name,
                file=upload.name,
                explanation=method,
                description=explain.DESCRIPTIONS[method],
                grid=maps.shape[-1],
                region="centre-square",
                maps={c: np.round(maps[i], 5).tolist() for i, c in enumerate(classes)},
            )
        grid = grid or config.occlusion_grid
        copies = await in_decoders(explain.occlusion_images, image, grid)
        probabilities = np.stack([s.probabilities for s in await batchers[name].submit(copies)])
        maps = explain.occlusion_maps(probabilities, grid)
        return ExplainResponse(
            run=name,
            file=upload.name,
            explanation=method,
            description=explain.DESCRIPTIONS[method],
            grid=grid,
            region="image",
            maps={c: np.round(maps[i], 5).tolist() for i, c in enumerate(classes)},
            probabilities={c: float(probabilities[0, i]) for i, c in enumerate(classes)},
        )

    def page(request: Request, template: str, **context) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            template,
            {
                "runs": list(runs.values()),
                "scenarios": list(scenarios.values()),
                "token_required": bool(config.token),
                **context,
            },
        )

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> HTMLResponse:
        return page(request, "index.html", explanations=explain.DESCRIPTIONS, max_upload_mb=config.max_upload_mb)

    @app.get("/runs", include_in_schema=False)
    async def runs_page(request: Request) -> HTMLResponse:
        return page(request, "runs.html")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return page(request, "docs.html")

    @app.get("/login", include_in_schema=False)
    async def login_form(request: Request) -> HTMLResponse:
        return page(request, "login.html", failed=False)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """Check the token typed into the form; on success keep it in an HttpOnly, same-site cookie."""
        offered = parse_qs((await read_body(request, LOGIN_FORM_LIMIT)).decode("utf-8", "replace")).get("token", [""])[
            0
        ]
        if not config.token or not secrets.compare_digest(offered.encode(), config.token.encode()):
            response = page(request, "login.html", failed=True)
            response.status_code = 401
            return response
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(TOKEN_COOKIE, offered, httponly=True, samesite="strict")
        return response

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
