"""The served segmentation run: masks of an upload at its original size (PNG and run-length), the page, 404s."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retune.data.masks import decode_siim_rle
from retune.server.app import create_app
from retune.server.config import ServeConfig
from retune.server.routers.seg import is_seg_run, load_seg_runs


@pytest.fixture(scope="module")
def client(phantom_run):
    root = phantom_run[0]
    assert is_seg_run(root / "run") and not is_seg_run(root / "data")
    app = create_app({}, ServeConfig())
    app.state.retune.seg_runs = load_seg_runs([root / "run"])
    with TestClient(app, base_url="http://127.0.0.1") as test_client:  # loopback: no token needed
        yield test_client


def _upload(root, size=(72, 40)) -> dict:
    buffer = io.BytesIO()
    Image.open(root / "data" / "images" / "mask_phantom_00000.png").resize(size).save(buffer, format="PNG")
    return {"images": ("wide.png", buffer.getvalue(), "image/png")}


def test_segment_returns_masks_at_the_original_size(client, phantom_run):
    response = client.post("/v1/runs/run/segment", files=_upload(phantom_run[0]))
    assert response.status_code == 200, response.text
    image = response.json()["images"][0]
    assert (image["width"], image["height"]) == (72, 40)
    assert [mask["structure"] for mask in image["masks"]] == ["lungs", "nodule"]
    lungs = Image.open(io.BytesIO(base64.b64decode(image["masks"][0]["png_base64"])))
    assert lungs.size == (72, 40) and int((np.asarray(lungs) > 0).sum()) == image["masks"][0]["pixels"]

    rle = client.post("/v1/runs/run/segment?encoding=rle", files=_upload(phantom_run[0])).json()["images"][0]
    decoded = decode_siim_rle(rle["masks"][0]["rle"] if rle["masks"][0]["rle"] != "-1" else "", (72, 40), "x")
    assert int(decoded.sum()) == image["masks"][0]["pixels"]


def test_page_and_unknown_run(client):
    page = client.get("/seg/run")
    assert page.status_code == 200 and "seg.js" in page.text and "nodule" in page.text
    missing = client.post("/v1/runs/other/segment", files={"images": ("x.png", b"x", "image/png")})
    assert missing.status_code == 404 and "run" in missing.json()["detail"]
    assert client.get("/v1/seg/runs").json()["runs"][0]["structures"] == ["lungs", "nodule"]
