"""The report a reviewer reads, opened in headless Chromium with the network off."""

import json

import pytest

from .helpers import chromium, copy_workspace, run

pytestmark = pytest.mark.integration

SECTIONS = [
    "Summary", "Data", "Sanity checks", "Learning-rate finder", "Hyperparameter search", "Final fit", "Test",
    "Seed replicates", "Residual analysis", "Activation analysis", "Runtime", "Experiments",
]  # fmt: skip


def test_report_opens_offline_with_every_image_and_no_console_error(pipeline, tmp_path, default_params):
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
        described = page.evaluate("Array.from(document.images).map(i => i.alt)")
        title = page.title()
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent.replace('¶', ''))")
        text = page.evaluate("document.body.innerText")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert problems == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # nothing from the network
    assert len(images) >= 15 and all(complete and width > 0 and height > 0 for complete, width, height in images)
    assert headings == SECTIONS
    assert title == default_params["report"]["title"]  # the browser tab names the report, not "Notebook"
    # Every figure says what it shows; nbconvert's stand-in for a missing one ("No description has been provided")
    # would be here too, so each is the notebook's own: it names what the figure plots.
    assert len(described) == len(images) and all(len(alt) > 20 for alt in described)
    assert not any("No description" in alt for alt in described)
    assert "import json" not in text and "EventAccumulator(" not in text  # code hidden
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_report_states_the_numbers_of_the_run(pipeline):
    repo, _, _ = pipeline
    html = (repo / "reports/report.html").read_text()
    accuracy = json.loads((repo / "results/test/metrics.json").read_text())["accuracy"]
    assert f"{accuracy:.4f}" in html
    assert "suggested SLURM --time" in html and "suggested SLURM --mem" in html
    for stage in ("prepare", "sanity", "lr_find", "search", "fit", "test", "analyze"):
        assert f">{stage}<" in html  # a runtime row per stage
        timing = json.loads((repo / f"results/timing/{stage}.json").read_text())
        assert timing["peak_mb"] > 0  # under DVC too: each stage records its peak memory
    assert "set-resources:" not in html  # the rules' block: only once a Snakemake run left benchmark files


def test_a_fresh_run_reports_a_clean_tree_and_a_change_is_named(pipeline, tmp_path, monkeypatch):
    """`dvc repro` rewrites dvc.lock and its outputs before the fit records the git state: those are the
    pipeline's own, not uncommitted changes. A changed source file, params.yaml or a new file are."""
    from litpipe.observe.system import git_state

    repo, _, _ = pipeline
    html = (repo / "reports/report.html").read_text()
    assert json.loads((repo / "results/fit/summary.json").read_text())["git"]["dirty"] is False
    assert "uncommitted changes" not in html

    workspace = copy_workspace(repo, tmp_path / "workspace")
    monkeypatch.chdir(workspace)
    (workspace / "dvc.lock").write_text((workspace / "dvc.lock").read_text() + "\n")
    (workspace / "results/test/metrics.json").write_text("{}")  # a metric git tracks, which the test stage writes
    assert git_state()["changed"] == []
    (workspace / "params.yaml").write_text((workspace / "params.yaml").read_text() + "\n")
    (workspace / "src/litpipe/new_module.py").write_text("")
    run(["git", "mv", "src/litpipe/io.py", "src/litpipe/files.py"], workspace)
    state = git_state()
    assert state["dirty"] is True
    assert sorted(state["changed"]) == ["params.yaml", "src/litpipe/files.py", "src/litpipe/new_module.py"]
