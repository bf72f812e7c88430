"""The operator's page in headless Chromium (Debian's chromium and chromium-driver): upload an
image, read the decision and score off the page, see the feed; a screenshot is written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from tests.serve.servekit import REPO, Models, Server

from feddymem.detect.overlay import _legend_layout

pytestmark = pytest.mark.slow

SHOTS = Path(os.environ.get("FEDDYMEM_TEST_OUTPUT", REPO / "tmp" / "test-output"))


def _driver():  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1200,760",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=DriverService(executable_path=driver), options=options)


def test_page_scores_an_upload(watched_server: tuple[Server, Path, Path], models: Models) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    server, _, _ = watched_server
    image = sorted((models.data / "test" / "spot").glob("*.png"))[1]
    expected = httpx.post(server.url + "/v1/score", content=image.read_bytes(), timeout=60).json()
    browser = _driver()
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element(By.ID, "model-version").text not in ("", "…", "?"))
        assert browser.find_element(By.ID, "model-version").text == expected["model_version"]
        browser.find_element(By.ID, "file").send_keys(str(image))
        wait.until(ec.visibility_of_element_located((By.ID, "result")))
        wait.until(lambda b: b.find_element(By.ID, "r-name").text == image.name)
        decision = browser.find_element(By.ID, "decision").text
        score = float(browser.find_element(By.ID, "r-score").text)
        threshold = float(browser.find_element(By.ID, "r-threshold").text)
        assert decision == expected["decision"]
        assert score == pytest.approx(expected["score"], abs=1e-3)
        assert threshold == pytest.approx(expected["threshold"], abs=1e-3)
        overlay_loaded = browser.execute_script(
            "const i = document.getElementById('overlay'); return i.complete && i.naturalWidth;"
        )
        assert overlay_loaded == _legend_layout(64)[0]  # the 64 px image, its legend below
        # the upload reaches the live feed (polled every second)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#feed li")) >= 2)
        assert image.name in browser.find_element(By.ID, "feed").text
        SHOTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SHOTS / "serve-page.png"))
    finally:
        browser.quit()
