"""Scenario results in the server: the /v1/scenarios endpoints, the heatmap PNGs, the runs page's scenario section,
their token guard, 404s, escaping, and one-line errors for corrupt folders."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retune.errors import RetuneError
from retune.server import ServeConfig, create_app, load_served_scenarios

TOKEN = "s3cret-token-for-tests"
SCENARIO = "phantom-scenario"
HOSTILE_FOLDER = '<img src=x onerror="document.title=1">'
HOSTILE_METHOD = "<script>alert('m')</script>"


@pytest.fixture(scope="module")
def client(served_runs, served_scenarios):
    with TestClient(create_app(served_runs, ServeConfig(), served_scenarios)) as test_client:
        yield test_client


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(folder.rglob("*"))}


def test_scenarios_list_headlines_mean_and_sd_over_runs(client, phantom_scenario):
    (summary,) = client.get("/v1/scenarios").json()["scenarios"]
    assert summary["name"] == SCENARIO and summary["scenario"] == SCENARIO and summary["kind"] == "class"
    assert summary["methods"] == ["simplecil", "naive"] and summary["n_tasks"] == 2
    assert "general-domain" in summary["note"]
    for method in summary["methods"]:
        result = json.loads((phantom_scenario / method / "results.json").read_text())
        headline = summary["headline"][method]
        finals = [run["final_mean_auroc"] for run in result["orders"]]
        assert headline["final_mean_auroc"]["n"] == 2 == len(finals)
        assert headline["final_mean_auroc"]["mean"] == pytest.approx(np.mean(finals))
        assert headline["final_mean_auroc"]["std"] == pytest.approx(np.std(finals, ddof=1))
        forgetting = [run["forgetting"] for run in result["orders"]]
        assert headline["forgetting"]["mean"] == pytest.approx(np.mean(forgetting))
        final_row = result["auroc_matrix"][-1]
        counted = [
            c
            for i, c in enumerate(result["classes"])
            if final_row[i] is not None and result["n_test_positives"][c] >= 2
        ]
        assert headline["min_positives"] == 2 and headline["n_classes_in_mean"] == len(counted)
        assert summary["heatmaps"][method] == f"/v1/scenarios/{SCENARIO}/methods/{method}/auroc_matrix.png"
    assert client.get("/v1/health").json()["scenarios"] == [SCENARIO]


def test_scenario_details_hold_config_and_every_results_json(client, phantom_scenario):
    details = client.get(f"/v1/scenarios/{SCENARIO}").json()
    assert details["config"]["methods"] == ["simplecil", "naive"] and details["config"]["seeds"] == [0, 1]
    saved = json.loads((phantom_scenario / "naive" / "results.json").read_text())
    assert details["results"]["naive"]["auroc_matrix"] == saved["auroc_matrix"]


def test_heatmap_is_a_png_with_an_etag_the_browser_revalidates(client):
    url = client.get("/v1/scenarios").json()["scenarios"][0]["heatmaps"]["naive"]
    response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    image = Image.open(io.BytesIO(response.content))
    image.verify()
    assert image.format == "PNG" and image.size[0] > 200
    assert response.headers["cache-control"] == "private, no-cache" and response.headers["etag"]
    again = client.get(url, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    other = client.get(url.replace("naive", "simplecil"))
    assert other.status_code == 200 and other.headers["etag"] != response.headers["etag"]
    assert client.get("/v1/scenarios").headers["cache-control"] == "no-store"  # JSON stays uncached


def test_runs_page_shows_each_method_row_and_heatmap(client):
    page = client.get("/runs").text
    assert "Served runs" in page and "Served scenarios" in page
    section = page[page.index('<article class="card scenario">') :]
    for method in ("simplecil", "naive"):
        assert f"<td>{method}</td>" in section
        assert f'src="/v1/scenarios/{SCENARIO}/methods/{method}/auroc_matrix.png"' in section
    assert "final mean AUROC [95% CI]" in section and "over runs (mean ± sd)" in section
    assert "classes with &gt;= 2 test positives" in section  # the min-positives sentence


def test_serving_never_writes_into_the_scenario_folder(phantom_scenario):
    before = folder_state(phantom_scenario)
    scenarios = load_served_scenarios([phantom_scenario])
    with TestClient(create_app({}, ServeConfig(), scenarios)) as scenarios_only:
        assert scenarios_only.get("/runs").status_code == 200
        assert "runs page" in scenarios_only.get("/").text  # no run to predict with: the page says where to go
        assert scenarios_only.get(f"/v1/scenarios/{SCENARIO}/methods/naive/auroc_matrix.png").status_code == 200
    assert folder_state(phantom_scenario) == before


def test_unknown_scenario_or_method_is_404_listing_the_served_ones(client):
    response = client.get("/v1/scenarios/no-such-scenario")
    assert response.status_code == 404 and response.json()["scenarios"] == [SCENARIO]
    assert SCENARIO in response.json()["detail"]
    missing = client.get(f"/v1/scenarios/{SCENARIO}/methods/ewc/auroc_matrix.png")
    assert missing.status_code == 404 and missing.json()["methods"] == ["simplecil", "naive"]
    assert client.get("/v1/scenarios/no-such-scenario/methods/naive/auroc_matrix.png").status_code == 404


def test_token_guards_scenario_endpoints_and_page(served_runs, served_scenarios):
    with TestClient(create_app(served_runs, ServeConfig(host="0.0.0.0", token=TOKEN), served_scenarios)) as guarded:
        heatmap = f"/v1/scenarios/{SCENARIO}/methods/naive/auroc_matrix.png"
        for path in ("/v1/scenarios", f"/v1/scenarios/{SCENARIO}", heatmap):
            assert guarded.get(path).status_code == 401, path
            assert guarded.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
        page = guarded.get("/runs", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"


def test_folder_and_method_names_from_disk_are_escaped(phantom_scenario, tmp_path):
    """A hostile folder name and a hostile method name in results.json: text on the page, encoded in URLs."""
    hostile = tmp_path / HOSTILE_FOLDER
    shutil.copytree(phantom_scenario, hostile, ignore=shutil.ignore_patterns("work", "mlruns"))
    result_file = hostile / "naive" / "results.json"
    result_file.write_text(json.dumps({**json.loads(result_file.read_text()), "method": HOSTILE_METHOD}))
    with TestClient(create_app({}, ServeConfig(), load_served_scenarios([hostile]))) as client:
        page = client.get("/runs").text
        (summary,) = client.get("/v1/scenarios").json()["scenarios"]
        heatmap = client.get(summary["heatmaps"][HOSTILE_METHOD])
        details = client.get(summary["heatmaps"][HOSTILE_METHOD].rsplit("/methods/", 1)[0])
    assert HOSTILE_FOLDER not in page and HOSTILE_METHOD not in page
    assert "&lt;img src=x onerror=&#34;document.title=1&#34;&gt;" in page and "&lt;script&gt;" in page
    assert summary["name"] == HOSTILE_FOLDER and HOSTILE_METHOD in summary["methods"]
    assert heatmap.status_code == 200 and heatmap.content[:4] == b"\x89PNG"
    assert details.status_code == 200 and details.json()["name"] == HOSTILE_FOLDER


def drop_matrix(folder: Path) -> None:
    path = folder / "naive" / "results.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "auroc_matrix"}))


DAMAGES = [
    ("truncated results", lambda d: (d / "naive" / "results.json").write_text('{"method": "na'), "not valid JSON"),
    ("results without a matrix", drop_matrix, "results.json: field 'auroc_matrix'"),
    ("corrupt scenario.json", lambda d: (d / "scenario.json").write_text("{"), "scenario.json: not valid JSON"),
    ("no results at all", lambda d: [shutil.rmtree(d / m) for m in ("naive", "simplecil")], r"no \*/results"),
]


@pytest.mark.parametrize("case, damage, message", DAMAGES, ids=[damage[0] for damage in DAMAGES])
def test_corrupt_or_partial_folder_is_one_line_naming_the_file(phantom_scenario, tmp_path, case, damage, message):
    broken = tmp_path / "broken"
    shutil.copytree(phantom_scenario, broken, ignore=shutil.ignore_patterns("work", "mlruns"))
    damage(broken)
    with pytest.raises(RetuneError, match=message) as error:
        load_served_scenarios([broken])
    assert "\n" not in str(error.value) and str(broken) in str(error.value)


def test_serve_command_refuses_a_corrupt_scenario_folder_in_one_line(phantom_scenario, tmp_path):
    """`retune serve RUN SCENARIO` sorts folders by their scenario.json and stops before binding on a bad one."""
    from typer.testing import CliRunner

    from retune.cli import app

    broken = tmp_path / "broken"
    shutil.copytree(phantom_scenario, broken, ignore=shutil.ignore_patterns("work", "mlruns"))
    (broken / "simplecil" / "results.json").write_text("[]")
    result = CliRunner().invoke(app, ["serve", str(broken)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "simplecil/results.json: expected a JSON object" in result.output and "Traceback" not in result.output
