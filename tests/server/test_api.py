"""The server's JSON API through FastAPI's test client: every endpoint, every error, and that it keeps serving."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from server_payloads import dicom_bytes, png_bytes

from retune.data.phantoms import png_claiming_size
from retune.errors import ConfigError
from retune.server import ServeConfig, create_app

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def client(served_runs):
    with TestClient(create_app(served_runs, ServeConfig(max_upload_mb=1.0))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def phantom_png(phantom_run) -> tuple[str, bytes]:
    path = sorted((phantom_run.csv.parent / "images").glob("*.png"))[0]
    return path.name, path.read_bytes()


def predict(client: TestClient, *files: tuple[str, bytes], run: str = "phantom-run", **kwargs):
    return client.post(f"/v1/runs/{run}/predict", files=[("images", (name, data)) for name, data in files], **kwargs)


def test_health_and_runs_list_the_served_run(client, phantom_run):
    assert client.get("/v1/health").json()["runs"] == ["phantom-run"]
    (summary,) = client.get("/v1/runs").json()["runs"]
    assert summary["name"] == "phantom-run" and summary["kind"] == "train" and summary["method"] == "retune"
    assert summary["backbone"] == "default" and len(summary["classes"]) > 1
    saved = json.loads((phantom_run.run / "metrics.json").read_text())
    assert summary["headline"]["split"] == "test" and summary["headline"]["mean_auroc"] == saved["mean_auroc"]


def test_run_details_hold_metrics_config_and_roc_plot(client, phantom_run):
    details = client.get("/v1/runs/phantom-run").json()
    assert set(details["metrics"]["per_class"]) == set(details["classes"])
    saved = json.loads((phantom_run.run / "config.json").read_text())
    assert details["config"]["train_config"] == saved["train_config"] and saved["train_config"]["n_bootstrap"] == 50
    roc = client.get("/v1/runs/phantom-run/roc.png")
    assert roc.status_code == 200 and roc.headers["content-type"] == "image/png" and roc.content[:4] == b"\x89PNG"


def test_predict_matches_retune_predict_through_the_store(client, phantom_run, phantom_png):
    """In-memory scoring gives the same probabilities as `retune predict` (which goes through the embedding store)."""
    from retune.experiments.inference import predict_images

    expected, _ = predict_images(phantom_run.run, [phantom_run.csv.parent / "images" / phantom_png[0]])
    response = predict(client, phantom_png)
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert prediction["file"] == phantom_png[0]
    got = {row["finding"]: row["probability"] for row in prediction["findings"]}
    for finding in expected.columns[1:]:
        assert got[finding] == pytest.approx(float(expected[finding].iloc[0]), abs=1e-4)
    probabilities = [row["probability"] for row in prediction["findings"]]
    assert probabilities == sorted(probabilities, reverse=True)
    facts = json.loads((phantom_run.run / "config.json").read_text())
    for row in prediction["findings"]:  # RE-tune's probability is sigmoid(tau * (positive - negative similarity))
        margin = facts["tau"] * (row["positive_similarity"] - row["negative_similarity"])
        assert row["probability"] == pytest.approx(1 / (1 + math.exp(-margin)), abs=1e-4)
        threshold = facts["thresholds"].get(row["finding"])  # chosen on validation, where it had positives
        assert row["decision"] == (None if threshold is None else row["probability"] >= threshold)


def test_predict_several_images_keeps_their_order(client, phantom_png):
    dark = ("dark.png", png_bytes(np.zeros((64, 64), dtype=np.uint8)))
    response = predict(client, dark, phantom_png, dark)
    assert response.status_code == 200, response.text
    files = [p["file"] for p in response.json()["predictions"]]
    assert files == ["dark.png", phantom_png[0], "dark.png"]
    scores = [
        [f["probability"] for f in sorted(p["findings"], key=lambda f: f["finding"])]
        for p in response.json()["predictions"]
    ]
    assert scores[0] == pytest.approx(scores[2]) and scores[0] != pytest.approx(scores[1])


def test_dicom_is_decoded_in_memory_and_its_identifiers_never_returned(client):
    ramp = np.tile(np.linspace(0, 4000, 96), (96, 1)).astype(np.uint16)
    response = predict(client, ("scan.dcm", dicom_bytes(ramp, patient_name="Doe^Jane")))
    assert response.status_code == 200, response.text
    assert "Doe" not in response.text and "PID-123456" not in response.text


def test_explain_gives_an_occlusion_map_per_finding(client, phantom_png):
    response = client.post("/v1/runs/phantom-run/explain?grid=4", files={"images": phantom_png})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["explanation"] == "occlusion" and payload["grid"] == 4
    maps = np.array(list(payload["maps"].values()))
    assert maps.shape == (len(payload["probabilities"]), 4, 4)
    assert np.abs(maps).max() > 0  # covering parts of the image moves the scores


def test_patch_map_where_the_backbone_allows_it(client, served_runs, phantom_png):
    """The default backbone's 7 x 7 feature map gives patch-to-prompt maps; a run without them refuses the method."""
    assert client.get("/v1/runs").json()["runs"][0]["explanations"] == ["occlusion", "patch"]
    response = client.post("/v1/runs/phantom-run/explain?method=patch", files={"images": phantom_png})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["explanation"] == "patch" and payload["grid"] == 7 and payload["region"] == "centre-square"
    maps = np.array(list(payload["maps"].values()))
    assert maps.shape == (len(payload["maps"]), 7, 7) and maps.std() > 0
    pooled_only = dataclasses.replace(served_runs["phantom-run"], patches=None)
    with TestClient(create_app({"phantom-run": pooled_only}, ServeConfig())) as occlusion_only:
        refused = occlusion_only.post("/v1/runs/phantom-run/explain?method=patch", files={"images": phantom_png})
    assert refused.status_code == 400 and "offers explanation(s) occlusion" in refused.json()["detail"]


def test_uploads_never_spool_to_disk(served_runs, monkeypatch):
    """A 2 MiB upload (Starlette spools parts above 1 MiB to a temporary file) stays in memory."""

    def refuse(*args, **kwargs):
        raise AssertionError("an upload was written to a temporary file")

    noise = np.random.default_rng(0).integers(0, 256, (860, 860, 3), dtype=np.uint8)
    data = png_bytes(noise)
    assert 2**20 < len(data) < 4 * 2**20
    with TestClient(create_app(served_runs, ServeConfig(max_upload_mb=4))) as roomy:
        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
        monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
        response = predict(roomy, ("noise.png", data))
    assert response.status_code == 200, response.text


def truncated_png(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_INPUTS = [
    (
        "non-image",
        lambda png: {"files": [("images", ("notes.txt", b"just some text, not an image"))]},
        400,
        r"notes\.txt: not a recognised image format",
    ),
    (
        "truncated PNG",
        lambda png: {"files": [("images", ("cut.png", truncated_png(png)))]},
        400,
        r"cut\.png: cannot decode image",
    ),
    (
        "DICOM without pixel data",
        lambda png: {"files": [("images", ("nopixels.dcm", dicom_bytes(None)))]},
        400,
        r"nopixels\.dcm: .*(no Pixel Data|cannot decode DICOM)",
    ),
    (
        "20000x20000 PNG",
        lambda png: {"files": [("images", ("bomb.png", png_claiming_size(20000, 20000)))]},
        400,
        r"bomb\.png: .*(pixel budget|decompression bomb)",
    ),
    (
        "empty multipart",
        lambda png: {"files": [("other", ("x.txt", b"x"))]},
        400,
        r"no image in the request.*'images' field",
    ),
    ("empty file", lambda png: {"files": [("images", ("empty.png", b""))]}, 400, r"empty\.png: empty file"),
    (
        "wrong content type",
        lambda png: {"json": {"images": "chest.png"}},
        415,
        r"expected a multipart/form-data upload.*application/json",
    ),
    (
        "oversized upload",
        lambda png: {"files": [("images", ("big.png", b"\0" * (2**20 + 10)))]},
        413,
        r"larger than the limit of 1 MiB",
    ),
]


@pytest.mark.parametrize("case, request_kwargs, status, message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_a_4xx_json_error_then_a_good_request_succeeds(
    client, phantom_png, case, request_kwargs, status, message
):
    response = client.post("/v1/runs/phantom-run/predict", **request_kwargs(phantom_png[1]))
    assert response.status_code == status, response.text
    assert re.search(message, response.json()["detail"]), response.json()
    assert "Traceback" not in response.text
    assert predict(client, phantom_png).status_code == 200


def test_unknown_run_is_404_listing_the_served_runs(client, phantom_png):
    response = predict(client, phantom_png, run="no-such-run")
    assert response.status_code == 404
    assert response.json()["runs"] == ["phantom-run"] and "phantom-run" in response.json()["detail"]
    assert client.get("/v1/runs/no-such-run").status_code == 404


def test_every_response_carries_a_content_security_policy(client):
    for path in ("/", "/runs", "/docs", "/v1/health", "/openapi.json"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        assert response.headers["x-content-type-options"] == "nosniff"


def test_docs_page_loads_its_assets_from_this_server(client):
    """FastAPI's default docs page pulls Swagger UI from a CDN; ours references local files only."""
    page = client.get("/docs").text
    references = re.findall(r'(?:src|href)="([^"]+)"', page)
    local = [ref for ref in references if ref.startswith(("/", "data:")) and not ref.startswith("//")]
    assert references and local == references, references
    for ref in references:
        if ref.startswith("/static/"):
            assert client.get(ref).status_code == 200, ref
    assert client.get("/openapi.json").json()["paths"]["/v1/runs/{name}/predict"]["post"]["requestBody"]


def test_pages_escape_names(served_runs):
    """Run names reach the page through Jinja autoescape."""
    hostile_name = "<b>x</b>"
    run = dataclasses.replace(next(iter(served_runs.values())), name=hostile_name)
    with TestClient(create_app({hostile_name: run}, ServeConfig())) as hostile:
        pages = hostile.get("/runs").text + hostile.get("/").text
    assert hostile_name not in pages and "&lt;b&gt;x&lt;/b&gt;" in pages


def test_token_guards_api_and_page(served_runs, phantom_png):
    with TestClient(create_app(served_runs, ServeConfig(host="0.0.0.0", token=TOKEN))) as guarded:
        missing = guarded.get("/v1/runs")
        assert missing.status_code == 401 and "bearer token" in missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "Bearer"
        assert guarded.get("/v1/runs", headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
        assert predict(guarded, phantom_png).status_code == 401
        assert guarded.get("/openapi.json").status_code == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert guarded.get("/v1/runs", headers=bearer).status_code == 200
        assert predict(guarded, phantom_png, headers=bearer).status_code == 200
        page = guarded.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert guarded.post("/login", data={"token": "wrong"}).status_code == 401
        assert guarded.post("/login", data={"token": "x" * 5000}).status_code == 413  # the public form is bounded
        login = guarded.post("/login", data={"token": TOKEN}, follow_redirects=False)
        assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
        assert guarded.get("/", follow_redirects=False).status_code == 200  # the cookie now authorises the page
        assert guarded.get("/v1/runs").status_code == 200  # and the page's own API calls


def test_non_loopback_host_requires_a_token():
    with pytest.raises(ConfigError, match="--token"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", token=TOKEN).token == TOKEN
    assert ServeConfig(host="::1").token is None


def test_serve_command_refuses_a_network_address_without_a_token(tmp_path):
    """`retune serve --host 0.0.0.0` without --token: one error line, exit 2, nothing loaded or bound."""
    from typer.testing import CliRunner

    from retune.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--host", "0.0.0.0"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "--token" in result.output and "Traceback" not in result.output


@pytest.mark.slow  # seconds of training: make test and CI run it, make test-fast does not
def test_a_peft_run_is_served_with_the_scores_of_retune_predict(phantom_run):
    """A `retune peft run` checkpoint (freeze-k, frozen-prefix cache) serves the probabilities `retune predict`
    gives, here through the whole tuned tower on the uploaded pixels."""
    from retune.config import PeftExperimentConfig
    from retune.experiments.inference import predict_images
    from retune.experiments.peft import run_peft_experiment
    from retune.server import load_served_runs

    csv, peft_dir = phantom_run.csv, phantom_run.root / "peft-freeze"
    settings = {"method": "freeze", "freeze_blocks": 6, "epochs": 1, "n_bootstrap": 0}
    config = PeftExperimentConfig.model_validate(
        {"data": {"csv": str(csv)}, "store": str(phantom_run.store), **settings}
    )
    run_peft_experiment(config, peft_dir)
    image = min((csv.parent / "images").glob("*.png"))
    expected, _ = predict_images(peft_dir, [image])
    with TestClient(create_app(load_served_runs([peft_dir]), ServeConfig())) as peft_client:
        assert peft_client.get("/v1/runs").json()["runs"][0]["kind"] == "peft"
        response = predict(peft_client, (image.name, image.read_bytes()), run="peft-freeze")
    assert response.status_code == 200, response.text
    got = {row["finding"]: row["probability"] for row in response.json()["predictions"][0]["findings"]}
    for finding in expected.columns[1:]:
        assert got[finding] == pytest.approx(float(expected[finding].iloc[0]), abs=1e-4)
