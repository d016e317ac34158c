"""The served run's decisions: each finding's yes/no comes from the threshold the run chose on validation."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from retune.server import ServeConfig, create_app


def test_predict_decides_with_the_runs_validation_thresholds(served_runs, phantom_run):
    thresholds = json.loads((phantom_run[0] / "config.json").read_text())["thresholds"]
    image = sorted((phantom_run[1].parent / "images").glob("*.png"))[0]
    with TestClient(create_app(served_runs, ServeConfig())) as client:
        response = client.post("/v1/runs/phantom-run/predict", files=[("images", (image.name, image.read_bytes()))])
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    decided = {row["finding"]: row for row in prediction["findings"] if row["decision"] is not None}
    assert set(decided) == set(thresholds) and decided
    for name, row in decided.items():
        assert row["decision"] == (row["probability"] >= thresholds[name])
    assert "Youden" in response.json()["threshold_note"]
