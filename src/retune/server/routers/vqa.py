"""VQA runs: answer a typed yes/no question about an uploaded image (``POST /v1/runs/{name}/ask``)."""

from __future__ import annotations

import threading

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from retune.data.images import decode_image_bytes
from retune.data.questions import MAX_QUESTION_CHARS
from retune.errors import RetuneError
from retune.server.routers.runs import MULTIPART_BODY
from retune.server.runs import ServedRun
from retune.server.state import API_VERSION, state
from retune.server.uploads import read_uploads

router = APIRouter()

_LOADED: dict[str, tuple[object, threading.Lock]] = {}  # run directory -> (VqaRun, lock), loaded at the first ask
_LOADING = threading.Lock()


class AskResponse(BaseModel):
    run: str
    file: str
    question: str
    answer: str
    p_yes: float
    note: str


def is_vqa(run: ServedRun) -> bool:
    return run.model.facts.get("kind") == "vqa"


def _answer(run: ServedRun, image, question: str) -> dict:
    """The served VQA run's answer (the run is rebuilt once, then kept; one question at a time per run)."""
    from retune.experiments.vqa import add_texts, answer_pixels, load_vqa_run

    key = str(run.directory.resolve())
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = (load_vqa_run(run.directory, device=str(run.model.backbone.device)), threading.Lock())
    loaded, lock = _LOADED[key]
    with lock:
        add_texts(loaded, [question])
        return answer_pixels(loaded, loaded.prepared.backbone.preprocess(image)[None], [question])[0]


@router.post(f"/{API_VERSION}/runs/{{name}}/ask", tags=["vqa"], response_model=AskResponse,
             openapi_extra=MULTIPART_BODY)
async def ask(
    name: str,
    request: Request,
    question: str = Query(..., min_length=1, max_length=MAX_QUESTION_CHARS, description="A yes/no question."),
) -> AskResponse:
    """A VQA run's yes/no answer to ``question`` about one uploaded image, with its probability of "yes"."""
    served = state(request)
    run = served.run(name)
    if not is_vqa(run):
        raise RetuneError(f"run '{name}' is not a VQA run (kind '{run.model.facts.get('kind', run.kind)}'): use "
                          "/predict")
    text = " ".join(question.split())
    if not text:
        raise RetuneError("empty question")
    uploads = await read_uploads(request, served.config.max_upload_bytes)
    if len(uploads) != 1:
        raise RetuneError(f"send exactly one image to ask about, got {len(uploads)}")
    image = await served.in_decoders(decode_image_bytes, uploads[0].data, uploads[0].name)
    answer = await served.in_decoders(_answer, run, image, text)
    return AskResponse(run=name, file=uploads[0].name, question=text, note=run.metrics.get("note", ""), **answer)
