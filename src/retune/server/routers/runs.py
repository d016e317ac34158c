"""Runs: health, the served runs and their metrics, per-finding predictions and explanation maps for uploads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from PIL import Image
from pydantic import BaseModel

from retune.data.images import declared_pixels, decode_image_bytes
from retune.errors import RetuneError
from retune.experiments.kinds import PixelScores
from retune.experiments.run_folder import ROC_PLOT
from retune.server import explain
from retune.server.runs import ServedRun
from retune.server.state import API_VERSION, error_response, state
from retune.server.uploads import UPLOAD_FIELD, Upload, read_uploads

router = APIRouter()

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



def decode_all(uploads: list[Upload]) -> list[Image.Image]:
    """Decode every upload (in memory); the first bad one raises a DataError naming it."""
    return [decode_image_bytes(upload.data, upload.name) for upload in uploads]


def pixels_of(uploads: list[Upload]) -> int:
    """Decoded pixels the uploads will cost, from their headers (no pixel decoded yet)."""
    return sum(declared_pixels(upload.data, upload.name) for upload in uploads)


def batch_scorer(run: ServedRun) -> Callable[[list[Image.Image]], PixelScores]:
    """Preprocess decoded images and score them as one batch (runs in the run's encoder thread)."""
    backbone = run.model.backbone
    return lambda images: run.model.score_pixels(torch.stack([backbone.preprocess(image) for image in images]))


def findings(classes: list[str], scores: PixelScores, thresholds: dict[str, float]) -> list[Finding]:
    """One image's findings, highest probability first, with the decision where the run stores a threshold."""
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


@router.get(f"/{API_VERSION}/health", tags=["server"])
async def health(request: Request) -> dict:
    """Liveness, the served runs and batching counters (batches run, images scored, mean batch size)."""
    served = state(request)
    return {
        "status": "ok",
        "runs": list(served.runs),
        "scenarios": list(served.scenarios),
        "batching": {
            name: {
                "batches": b.stats.batches,
                "images": b.stats.images,
                "mean_batch": round(b.stats.mean_batch, 2),
                "window_ms": served.config.batch_window_ms,
                "max_batch": served.config.max_batch,
            }
            for name, b in served.batchers.items()
        },
    }


@router.get(f"/{API_VERSION}/runs", tags=["runs"])
async def list_runs(request: Request) -> dict:
    """Every served run: name, kind, method, backbone, classes and headline metrics."""
    return {"runs": [run.summary() for run in state(request).runs.values()]}


@router.get(f"/{API_VERSION}/runs/{{name}}", tags=["runs"])
async def run_details(name: str, request: Request) -> dict:
    """One run's full metrics (per class, with CIs, and its baselines) and its configuration."""
    return state(request).run(name).details()


@router.get(f"/{API_VERSION}/runs/{{name}}/roc.png", tags=["runs"], response_class=FileResponse)
async def roc_plot(name: str, request: Request):
    """The run's per-class ROC curves on its test split (PNG), when the run has them."""
    run = state(request).run(name)
    if not (run.directory / ROC_PLOT).is_file():
        return error_response(404, f"run '{name}' has no {ROC_PLOT}")
    return FileResponse(run.directory / ROC_PLOT, media_type="image/png")


@router.post(
    f"/{API_VERSION}/runs/{{name}}/predict",
    tags=["predict"],
    response_model=PredictResponse,
    openapi_extra=MULTIPART_BODY,
)
async def predict(name: str, request: Request) -> PredictResponse:
    """Per-finding probabilities (and prompt similarities) for one or more uploaded images, highest first."""
    served = state(request)
    run = served.run(name)
    uploads = await read_uploads(request, served.config.max_upload_bytes)
    with served.pixels.reserve(await served.in_decoders(pixels_of, uploads)):  # 413 / 503 before decoding
        images = await served.in_decoders(decode_all, uploads)
        scores = await served.batchers[name].submit(images)
        del images
    note = (
        f"decision: probability >= the run's threshold ({run.threshold_rule or 'stored with the run'})"
        if run.thresholds
        else "this run stores no decision thresholds: decision is null"
    )
    return PredictResponse(
        run=name,
        method=run.model.main,
        threshold_note=note,
        predictions=[
            ImagePrediction(file=u.name, findings=findings(run.model.classes, s, run.thresholds))
            for u, s in zip(uploads, scores, strict=True)
        ],
    )


@router.post(
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
    served = state(request)
    run = served.run(name)
    if method not in run.explanations:
        raise RetuneError(
            f"run '{name}' offers explanation(s) {', '.join(run.explanations)}, not '{method}' "
            "(its backbone's patch tokens do not allow it)"
        )
    uploads = await read_uploads(request, served.config.max_upload_bytes)
    if len(uploads) != 1:
        raise RetuneError(f"explain takes exactly one image, got {len(uploads)}")
    upload = uploads[0]
    with served.pixels.reserve(await served.in_decoders(pixels_of, uploads)):  # held until the maps are made
        image = await served.in_decoders(decode_image_bytes, upload.data, upload.name)
        classes = run.model.classes
        batcher = served.batchers[name]
        if method == "patch":
            maps = await batcher.run_in_encoder_thread(lambda: run.patches(run.model.backbone.preprocess(image)[None]))
            return ExplainResponse(
                run=name,
                file=upload.name,
                explanation=method,
                description=explain.DESCRIPTIONS[method],
                grid=maps.shape[-1],
                region="centre-square",
                maps={c: np.round(maps[i], 5).tolist() for i, c in enumerate(classes)},
            )
        grid = grid or served.config.occlusion_grid
        copies = await served.in_decoders(explain.occlusion_images, image, grid)
        probabilities = np.stack([s.probabilities for s in await batcher.submit(copies)])
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
