"""The web page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium).

The server runs on 127.0.0.1 in a thread; the test uploads a real NIH image and checks that the findings list
and the explanation map render, that a hostile file name stays text, that the runs page shows the scenario's table
and heatmaps, and saves screenshots in its temp dir.
Without Chromium it skips with the reason; under CI (RETUNE_REQUIRE_SHARED_DATA=1) it fails instead, since
``.ci/run`` installs the browser.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHROMIUM_NAMES = ("chromium", "chromium-browser")
# CI's switch, as for ../shared (tests/conftest.py): a missing browser fails instead of skipping.
REQUIRE_BROWSER = os.environ.get("RETUNE_REQUIRE_SHARED_DATA") == "1"
HOSTILE_NAME = '<img src=x onerror="document.title=1">.png'
CHROMIUM = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = " and ".join(name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path)
REASON = f"{MISSING} not found: install Debian's chromium and chromium-driver packages to run the browser test"
if MISSING and not REQUIRE_BROWSER:
    pytest.skip(REASON, allow_module_level=True)  # before any fixture trains a run


@pytest.fixture(scope="module")
def live_server(served_runs, served_scenarios):
    """The app (the phantom run and scenario) served by uvicorn on a free 127.0.0.1 port in a background thread."""
    import uvicorn

    from retune.server import ServeConfig, create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(served_runs, ServeConfig(port=port), served_scenarios),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 30 s"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if MISSING:
        pytest.fail(REASON + " (RETUNE_REQUIRE_SHARED_DATA=1 forbids skipping; .ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_page_shows_findings_and_explanation_map_for_a_real_nih_image(
    live_server, browser, nih_dir: Path, tmp_path: Path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    upload = tmp_path / HOSTILE_NAME
    shutil.copyfile(sorted((nih_dir / "images").glob("*.png"))[0], upload)
    browser.get(live_server + "/")
    title = browser.title
    browser.find_element(By.ID, "file").send_keys(str(upload))
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#findings li"))
    WebDriverWait(browser, 120).until(lambda d: d.find_element(By.ID, "explanation").is_displayed())
    rows = browser.find_elements(By.CSS_SELECTOR, "#findings li")
    values = [float(row.find_element(By.CSS_SELECTOR, ".value").text) for row in rows]
    assert len(rows) > 1 and values == sorted(values, reverse=True) and all(0 <= v <= 1 for v in values)
    assert rows[0].get_attribute("class") == "selected"  # the top finding is mapped first
    painted = browser.execute_script(
        "const c = document.getElementById('overlay');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return [c.width, c.height, n];"
    )
    assert painted[0] > 0 and painted[2] > 0.25 * painted[0] * painted[1], painted  # the map covers the image
    assert "occlusion" in browser.find_element(By.ID, "explanation").text
    assert browser.find_element(By.ID, "filename").text == HOSTILE_NAME  # shown as text...
    assert not browser.find_elements(By.CSS_SELECTOR, "img[src='x']") and browser.title == title  # ...never as markup
    import httpx  # the page marks each finding the run's validation threshold decides, as the API decides it

    files = [("images", ("upload.png", upload.read_bytes()))]
    api = httpx.post(f"{live_server}/v1/runs/phantom-run/predict", files=files, timeout=120).json()
    api = api["predictions"][0]["findings"]
    expected = {row["finding"]: {True: "positive", False: "negative", None: None}[row["decision"]] for row in api}
    shown = {row.get_attribute("data-finding"): row.get_attribute("data-decision") for row in rows}
    assert shown == expected and {"positive", "negative"} & set(shown.values()), (shown, expected)
    rows[1].click()
    assert browser.find_element(By.ID, "map-finding").text == rows[1].find_element(By.CSS_SELECTOR, ".name").text
    browser.save_screenshot(str(tmp_path / "predict-page.png"))
    assert (tmp_path / "predict-page.png").stat().st_size > 10_000
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors  # no CSP violation, no failed asset


def test_runs_and_docs_pages_render_without_errors(live_server, browser, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(live_server + "/runs")
    assert browser.find_elements(By.CSS_SELECTOR, "article.run table tbody tr")
    assert browser.execute_script("return document.querySelector('img.roc').naturalWidth") > 0
    assert len(browser.find_elements(By.CSS_SELECTOR, "article.scenario table tbody tr")) == 2  # one row per method
    widths = browser.execute_script("return [...document.querySelectorAll('img.heatmap')].map(i => i.naturalWidth)")
    assert len(widths) == 2 and min(widths) > 0, widths  # every method's AUROC-matrix heatmap loaded
    browser.save_screenshot(str(tmp_path / "runs-page.png"))
    browser.get(live_server + "/docs")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock")
    )  # Swagger UI drew the endpoints
    browser.save_screenshot(str(tmp_path / "docs-page.png"))
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
