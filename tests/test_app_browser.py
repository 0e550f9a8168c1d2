"""The demo in a real browser: headless Debian Chromium driven by Playwright types a prompt, starts a
short run, waits for the result and takes a screenshot (saved to $DEMO_SCREENSHOT when set)."""
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import start_demo

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_a_person_generates_an_asset_in_the_page(tmp_path):
    from playwright.sync_api import sync_playwright

    demo = start_demo(tmp_path, "trainer.log_every=1", "video.resolution=128")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
                                                 env={**os.environ, "HOME": str(tmp_path)})
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(demo.local_url)
            page.get_by_label("Prompt").first.fill("a green torus")
            page.get_by_label("Steps").first.fill("6")
            page.get_by_role("button", name="Generate").click()
            page.get_by_text("Done:").wait_for(timeout=120_000)
            page.wait_for_timeout(1500)  # let the video and the 3D viewer draw
            screenshot = tmp_path / "demo.png"
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
        assert screenshot.stat().st_size > 10_000
        assert next(Path(tmp_path / "outputs" / "app").glob("a_green_torus@*/mesh/model.glb"))
        if os.environ.get("DEMO_SCREENSHOT"):
            shutil.copy(screenshot, os.environ["DEMO_SCREENSHOT"])
    finally:
        demo.close()
