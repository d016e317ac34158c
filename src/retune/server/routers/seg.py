"""Segmentation runs: masks for uploaded images at their original size (PNG or run-length), and a page that draws
them over the image with a toggle and an opacity per structure.

Segmentation run folders are loaded apart from the classification runs (``load_seg_runs``) and kept on
``ServerState.seg_runs``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from retune.data.masks import encode_siim_rle
from retune.experiments.segmentation import KIND, SegRun, load_seg_run
from retune.segmentation.overlay import mask_png, structure_colour
from retune.server.routers.runs import MULTIPART_BODY, decode_all
from retune.server.runs import unique_name
from retune.server.state import API_VERSION, UnknownName, state
from retune.server.uploads import read_uploads

router = APIRouter()


def is_seg_run(directory: str | Path) -> bool:
    """Whether a run folder's config.json records a segmentation run."""
    config = Path(directory) / "config.json"
    try:
        return json.loads(config.read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def load_seg_runs(directories: list[str | Path], device: str | None = None) -> dict[str, SegRun]:
    """Open every segmentation run folder once, named by its folder name (unique)."""
    runs: dict[str, SegRun] = {}
    for directory in map(Path, directories):
        name = unique_name(directory, {key: run.path for key, run in runs.items()}, "segmentation run")
        runs[name] = load_seg_run(directory, device)
    return runs


def served_seg_run(request: Request, name: str) -> SegRun:
    """The served segmentation run ``name`` (404 listing the served ones otherwise)."""
    runs: dict[str, SegRun] = state(request).seg_runs
    if name not in runs:
        raise UnknownName("segmentation run", name, list(runs))
    return runs[name]


class StructureMask(BaseModel):
    """One structure's mask at the image's size: PNG (0/255) in base64, or SIIM run-length (column-major)."""

    structure: str
    colour: str  # the page's and the report's colour, "#rrggbb"
    pixels: int
    png_base64: str | None = None
    rle: str | None = None


class ImageMasks(BaseModel):
    file: str
    width: int
    height: int
    masks: list[StructureMask]


class SegmentResponse(BaseModel):
    run: str
    head: str
    structures: list[str]
    images: list[ImageMasks]


def _colour(index: int) -> str:
    return "#" + "".join(f"{value:02x}" for value in structure_colour(index))


@router.get(f"/{API_VERSION}/seg/runs", tags=["segmentation"])
async def list_seg_runs(request: Request) -> dict:
    """Every served segmentation run: name, head, structures and its test metrics per structure."""
    runs: dict[str, SegRun] = state(request).seg_runs
    return {"runs": [{"name": name, "head": run.config.head, "structures": run.structures,
                      "backbone": run.backbone.spec, "metrics": run.metrics} for name, run in runs.items()]}


@router.post(
    f"/{API_VERSION}/runs/{{name}}/segment",
    tags=["segmentation"],
    response_model=SegmentResponse,
    openapi_extra=MULTIPART_BODY,
)
async def segment(
    name: str,
    request: Request,
    encoding: Literal["png", "rle"] = Query("png", description="png: 0/255 PNG in base64; rle: SIIM run-length"),
) -> SegmentResponse:
    """Masks of every structure of a segmentation run for one or more uploaded images, at each image's size."""
    served = state(request)
    run = served_seg_run(request, name)
    uploads = await read_uploads(request, served.config.max_upload_bytes)
    images = await served.in_decoders(decode_all, uploads)
    results = []
    for upload, image in zip(uploads, images, strict=True):
        masks = await served.in_decoders(run.segment, image)
        entries = [
            StructureMask(
                structure=structure, colour=_colour(index), pixels=int(mask.sum()),
                png_base64=base64.b64encode(mask_png(mask)).decode("ascii") if encoding == "png" else None,
                rle=encode_siim_rle(mask) if encoding == "rle" else None,
            )
            for index, (structure, mask) in enumerate(zip(run.structures, masks, strict=True))
        ]
        results.append(ImageMasks(file=upload.name, width=image.width, height=image.height, masks=entries))
    return SegmentResponse(run=name, head=run.config.head, structures=run.structures, images=results)


@router.get("/seg/{name}", include_in_schema=False)
async def seg_page(name: str, request: Request) -> HTMLResponse:
    """Upload an image; its masks are drawn over it, one toggle and one opacity per structure."""
    run = served_seg_run(request, name)
    colours = [_colour(index) for index in range(len(run.structures))]
    return state(request).page(request, "seg.html", seg_name=name, seg_run=run, colours=colours)
