"""The report a reviewer reads, opened in headless Chromium with the network off."""

import json

import pytest

from .helpers import chromium

pytestmark = pytest.mark.integration

SECTIONS = [
    "Summary", "Data", "Sanity checks", "Learning-rate finder", "Hyperparameter search", "Final fit", "Test",
    "Residual analysis", "Activation analysis", "Runtime", "Experiments",
]  # fmt: skip


def test_report_opens_offline_with_every_image_and_no_console_error(pipeline, tmp_path):
    from playwright.sync_api import sync_playwright

    repo, _, _ = pipeline
    report = repo / "reports/report.html"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_context(offline=True, viewport={"width": 1200, "height": 900}).new_page()
        problems, requests = [], []
        page.on("console", lambda message: message.type in ("error", "warning") and problems.append(message.text))
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(report.as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent.replace('¶', ''))")
        text = page.evaluate("document.body.innerText")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert problems == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # nothing from the network
    assert len(images) >= 15 and all(complete and width > 0 and height > 0 for complete, width, height in images)
    assert headings == SECTIONS
    assert "import json" not in text and "EventAccumulator(" not in text  # code hidden
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_report_states_the_numbers_of_the_run(pipeline):
    repo, _, _ = pipeline
    html = (repo / "reports/report.html").read_text()
    accuracy = json.loads((repo / "results/test/metrics.json").read_text())["accuracy"]
    assert f"{accuracy:.4f}" in html
    assert "suggested SLURM --time" in html
    for stage in ("prepare", "sanity", "lr_find", "search", "fit", "test", "analyze"):
        assert f">{stage}<" in html  # a runtime row per stage
