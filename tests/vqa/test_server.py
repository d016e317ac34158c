"""`retune serve` with a VQA run: POST /v1/runs/{name}/ask and the question box on the runs page."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retune.server import load_served_runs
from retune.server.app import create_app
from retune.server.config import ServeConfig


@pytest.fixture(scope="module")
def client(lora_run):
    app = create_app(load_served_runs([lora_run]), ServeConfig(max_upload_mb=1.0))
    with TestClient(app, base_url="http://127.0.0.1") as test_client:  # loopback: no token needed
        yield test_client


def png_bytes(path: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return buffer.getvalue()


def test_ask_answers_a_typed_question_like_the_api(client, lora_run, question_file):
    from retune import api

    image = pd.read_parquet(question_file)["image_path"].iloc[0]
    response = client.post("/v1/runs/run/ask", params={"question": "Is there an effusion?"},
                           files={"images": ("x.png", png_bytes(image), "image/png")})
    assert response.status_code == 200, response.text
    payload = response.json()
    expected = api.vqa_ask(lora_run, image, "Is there an effusion?")
    assert payload["answer"] == expected["answer"] and payload["p_yes"] == pytest.approx(expected["p_yes"], abs=1e-3)


@pytest.mark.parametrize(
    "params, files, status, message",
    [
        ({"question": "x" * 5000}, True, 422, "question"),
        ({"question": "   "}, True, 400, "empty question"),
        ({"question": "Is there a mass?"}, False, 400, "notes.txt"),
    ],
)
def test_bad_asks_are_one_line_errors(client, question_file, params, files, status, message):
    image = pd.read_parquet(question_file)["image_path"].iloc[0]
    upload = ("x.png", png_bytes(image), "image/png") if files else ("notes.txt", b"not an image", "text/plain")
    response = client.post("/v1/runs/run/ask", params=params, files={"images": upload})
    assert response.status_code == status
    assert message in response.text


def test_the_runs_page_has_a_question_box_for_the_vqa_run(client):
    page = client.get("/runs").text
    assert 'class="vqa-ask" data-run="run"' in page and "/static/vqa.js" in page
    assert "classifier as answerer" not in page  # this run was trained without the classifier baseline
    assert client.get("/static/vqa.js").status_code == 200
