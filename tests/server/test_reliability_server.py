"""The served run's decisions: each finding's yes/no comes from the threshold the run chose on validation."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from retune.server import ServeConfig, create_app


def test_predict_decides_with_the_runs_validation_thresholds(served_runs, phantom_run):
    thresholds = json.loads((phantom_run.run / "config.json").read_text())["thresholds"]
    image = sorted((phantom_run.csv.parent / "images").glob("*.png"))[0]
    with TestClient(create_app(served_runs, ServeConfig())) as client:
        response = client.post("/v1/runs/phantom-run/predict", files=[("images", (image.name, image.read_bytes()))])
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    decided = {row["finding"]: row for row in prediction["findings"] if row["decision"] is not None}
    assert set(decided) == set(thresholds) and decided
    for name, row in decided.items():
        assert row["decision"] == (row["probability"] >= thresholds[name])
    assert "Youden" in response.json()["threshold_note"]


def png(side: int) -> bytes:
    """A black greyscale PNG of side x side pixels (tiny on the wire, side² pixels decoded)."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(client: TestClient, *images: bytes, **kwargs):
    files = [("images", (f"image{i}.png", data)) for i, data in enumerate(images)]
    return client.post("/v1/runs/phantom-run/predict", files=files, **kwargs)


def test_a_request_over_the_pixel_budget_is_413_before_decoding_and_a_full_server_503(served_runs):
    big = png(5792)  # within the per-image limits; three of them pass the default per-request budget
    with TestClient(create_app(served_runs, ServeConfig())) as client:
        refused = upload(client, big, big, big)
        assert refused.status_code == 413 and "pixels" in refused.json()["detail"], refused.text
        assert upload(client, png(64)).status_code == 200
        budget = client.app.state.retune.pixels
        budget.used = budget.in_flight - 100  # other requests' images hold nearly all of it
        busy = upload(client, png(64))
        assert busy.status_code == 503 and "retry" in busy.json()["detail"]
        budget.used = 0
        assert upload(client, png(64)).status_code == 200


def test_without_a_token_only_loopback_hosts_are_served_and_cross_origin_posts_are_refused(served_runs):
    with TestClient(create_app(served_runs, ServeConfig()), base_url="http://rebound.example") as foreign:
        response = foreign.get("/v1/runs")
        assert response.status_code == 421 and "loopback" in response.json()["detail"]
    with TestClient(create_app(served_runs, ServeConfig())) as client:
        for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
            assert client.get("/v1/health", headers={"host": host}).status_code == 200
        cross = {"origin": "http://evil.example"}
        assert upload(client, png(64), headers=cross).status_code == 403
        assert upload(client, png(64), headers={"sec-fetch-site": "cross-site"}).status_code == 403
        assert upload(client, png(64), headers={"origin": "http://127.0.0.1"}).status_code == 200
    token = "a-token-of-16-chars-or-more"
    with TestClient(create_app(served_runs, ServeConfig(token=token)), base_url="http://server.example") as remote:
        authorised = {"authorization": f"Bearer {token}"}
        assert remote.get("/v1/runs", headers=authorised).status_code == 200
        assert upload(remote, png(64), headers={**authorised, "origin": "http://evil.example"}).status_code == 403


def test_a_client_disconnecting_mid_upload_is_one_log_line(served_runs, caplog):
    import asyncio
    import logging

    app = create_app(served_runs, ServeConfig())
    messages = iter(
        [
            {"type": "http.request", "body": b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"'
             b"\r\nContent-Type: image/png\r\n\r\n\x89PNG", "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/runs/phantom-run/predict", "raw_path": b"/v1/runs/phantom-run/predict", "root_path": "",
        "query_string": b"", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"multipart/form-data; boundary=b")],
    }
    with caplog.at_level(logging.INFO):
        asyncio.run(app(scope, receive, send))
    lines = [record for record in caplog.records if "disconnected" in record.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert not any(record.exc_info for record in caplog.records)


@pytest.mark.slow  # seconds of work: make test and CI run it, make test-fast does not
def test_slow_clients_are_cut_off_and_other_clients_still_served(served_runs):
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from retune.server.app import uvicorn_config

    config = ServeConfig(header_timeout_s=1.0, body_timeout_s=1.0, max_requests=20)  # fewer than the slow clients
    server = uvicorn.Server(uvicorn_config(create_app(served_runs, config), config, port=0))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    slow = []
    try:
        for _ in range(50):  # unfinished requests: headers that never end
            connection = socket.create_connection(("127.0.0.1", port))
            connection.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(connection)
        started = time.monotonic()
        assert httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=10).status_code == 200
        assert time.monotonic() - started < 5
        time.sleep(2.0)
        for connection in slow:
            connection.settimeout(5)
            assert connection.recv(1024) == b""  # closed by the server after the header deadline
    finally:
        for connection in slow:
            connection.close()
        server.should_exit = True
        thread.join(timeout=30)


def test_docs_page_names_this_server_and_keeps_app_styles_off_swagger(served_runs):
    import re
    from importlib.resources import files

    with TestClient(create_app(served_runs, ServeConfig()), base_url="http://127.0.0.1:8765") as client:
        page = client.get("/docs").text
    assert "http://127.0.0.1:8765/v1/runs/phantom-run/predict" in page and ":8000/" not in page
    css = (files("retune.server") / "static" / "app.css").read_text()
    element_rules = re.findall(r"^((?:h[1-3]|code|a|button|table|th|td|thead|tfoot|select|input)\b[^{]*)\{", css, re.M)
    assert element_rules and all(":not(#swagger-ui *)" in rule for rule in element_rules), element_rules


def test_requests_beyond_max_requests_are_answered_503_while_the_others_finish(served_runs):
    import asyncio

    import httpx

    app = create_app(served_runs, ServeConfig(max_requests=1))
    entered, release = asyncio.Event(), asyncio.Event()

    async def hold() -> dict:
        entered.set()
        await release.wait()
        return {"held": True}

    app.add_api_route("/v1/hold", hold)

    async def scenario() -> tuple[int, int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            held = asyncio.create_task(client.get("/v1/hold"))
            await asyncio.wait_for(entered.wait(), timeout=30)
            busy = await client.get("/v1/health")
            release.set()
            finished = await held
            after = await client.get("/v1/health")
            return busy.status_code, busy.headers.get("retry-after"), finished.status_code, after.status_code

    assert asyncio.run(scenario()) == (503, "1", 200, 200)
