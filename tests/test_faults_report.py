"""Faults at the edges: markup in the strings the report shows, servers the README starts, two `dvc repro`
at once in one workspace, and a study database that cannot be reached."""

import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import psutil
import pytest
import yaml

from .helpers import ROOT, copy_workspace, edit_params, missing, require_tool, run, tool_env

# --- the report shows every string as text ---------------------------------------------------------

SCRIPT = "<script>window.__pwned=1</script>"
TITLE = f"Weekly {SCRIPT} and <b>bold</b> report"
CLASS_NAME = "<img src=x onerror=window.__pwned=2>"  # an image that fails to load runs its onerror
SEARCHED_VALUE = "<u>wide</u>"
TRIAL_STATE = "<i>LOST</i>"
EXPERIMENT = "<s>exp-1</s>"

# Per source of outside strings: the string, and a check in the page that is true when it was rendered as
# markup instead of shown as text.
INJECTED = {
    "title script": (SCRIPT, "[...document.scripts].some(s => s.text.includes('__pwned'))"),
    "title bold": ("<b>bold</b>", "[...document.querySelectorAll('b')].some(e => e.textContent === 'bold')"),
    "class name": (CLASS_NAME, "[...document.images].some(i => !i.src.startsWith('data:'))"),
    "searched value": (SEARCHED_VALUE, "[...document.querySelectorAll('u')].some(e => e.textContent === 'wide')"),
    "trial state": (TRIAL_STATE, "[...document.querySelectorAll('i')].some(e => /lost/i.test(e.textContent))"),
    "experiment name": (EXPERIMENT, "[...document.querySelectorAll('s')].some(e => e.textContent === 'exp-1')"),
}  # fmt: skip


def chromium() -> str:
    path = shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        missing("needs Debian's chromium and the playwright package")
    return path


def inject_markup(repo: Path) -> None:
    """Markup in a param (report.title), meta.json (a class name) and the search's JSON and CSV results."""
    edit_params(repo, {"report.title": TITLE})
    meta_path = repo / "data/prepared/meta.json"
    meta = json.loads(meta_path.read_text())
    meta["class_names"][3] = CLASS_NAME
    meta_path.write_text(json.dumps(meta))
    best_path = repo / "results/search/best.json"
    best = json.loads(best_path.read_text())
    best["params"]["model.width"] = SEARCHED_VALUE
    best_path.write_text(json.dumps(best))
    trials_path = repo / "results/search/trials.csv"
    with trials_path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    rows[0]["state"] = TRIAL_STATE
    with trials_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def injected_report(pipeline, tmp_path_factory) -> dict:
    """The report stage alone, re-run on a copy of the finished pipeline with markup in its inputs, then
    opened in headless Chromium: the HTML source, the page's text, which injections rendered, and what
    the page requested or complained about."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    repo = copy_workspace(pipeline[0], tmp_path_factory.mktemp("injected") / "repo")
    inject_markup(repo)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DVC_EXP_NAME", EXPERIMENT)  # as `dvc exp run` names the experiment; the summary shows it
        run(["litpipe", "report"], repo)
    report = repo / "reports/report.html"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_context(offline=True).new_page()
        problems, requests = [], []
        page.on("console", lambda message: message.type in ("error", "warning") and problems.append(message.text))
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(report.as_uri(), wait_until="load")
        rendered = {case: page.evaluate(check) for case, (_, check) in INJECTED.items()}
        pwned = page.evaluate("window.__pwned ?? null")  # set by the injected script or onerror, had either run
        text = page.evaluate("document.body.innerText")
        browser.close()
    return {
        "source": report.read_text(),
        "text": text,
        "rendered": rendered,
        "pwned": pwned,
        "problems": problems,
        "requests": requests,
        "uri": report.as_uri(),
    }


@pytest.mark.integration
@pytest.mark.parametrize("case", INJECTED)
def test_report_shows_injected_markup_as_literal_text(injected_report, case):
    markup, _ = INJECTED[case]
    assert not injected_report["rendered"][case], f"the {case} {markup!r} was rendered as markup"
    assert markup in injected_report["text"], f"the {case} {markup!r} is not visible as text"


@pytest.mark.integration
@pytest.mark.parametrize("case", INJECTED)
def test_report_source_escapes_injected_markup(injected_report, case):
    markup, _ = INJECTED[case]
    escaped = markup.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert markup.lower() not in injected_report["source"].lower()  # the report may change its case (states)
    assert escaped in injected_report["source"]


@pytest.mark.integration
def test_report_with_injected_markup_runs_nothing_and_fetches_nothing(injected_report):
    assert injected_report["pwned"] is None
    assert injected_report["problems"] == []
    # The page itself and its embedded images, nothing else (an <img src=x> would request file:///.../x).
    assert all(url == injected_report["uri"] or url.startswith("data:") for url in injected_report["requests"]), (
        injected_report["requests"]
    )
    assert TITLE in injected_report["text"]


# --- servers the README starts bind 127.0.0.1 ------------------------------------------------------

SERVERS = ("tensorboard", "optuna-dashboard")


def readme_server_commands() -> list[str]:
    """Every command the README gives for starting a server: a code line or an inline `code` span."""
    text = (ROOT / "README.md").read_text()
    starts = "|".join(re.escape(server) for server in SERVERS)
    lines = re.findall(rf"^\s*((?:{starts}) .*?)\s*$", text, re.MULTILINE)
    spans = re.findall(rf"`((?:{starts}) [^`]*)`", text)
    return list(dict.fromkeys(lines + spans))


def bound_host(argv: list[str]) -> str | None:
    for index, argument in enumerate(argv):
        if argument == "--host" and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith("--host="):
            return argument.removeprefix("--host=")
    return None


def test_readme_server_commands_bind_loopback():
    commands = readme_server_commands()
    assert any(command.startswith("tensorboard ") for command in commands), commands
    for command in commands:
        argv = shlex.split(command)
        assert bound_host(argv) == "127.0.0.1", f"README: `{command}` does not bind 127.0.0.1"
        assert "--bind_all" not in argv, command


@pytest.mark.integration
def test_readme_tensorboard_command_listens_on_loopback_only(tmp_path):
    """Started exactly as the README writes it, on a port the OS picks: it listens on 127.0.0.1 alone."""
    executable = require_tool("tensorboard")
    (tmp_path / "tb").mkdir()
    commands = [command for command in readme_server_commands() if command.startswith("tensorboard ")]
    assert commands
    for command in commands:
        argv = [executable, *shlex.split(command)[1:], "--port", "0"]
        server = subprocess.Popen(argv, cwd=tmp_path, env=tool_env(), stderr=subprocess.PIPE, text=True)
        watchdog = threading.Timer(120, server.kill)  # a server that never says where it listens ends the wait
        watchdog.start()
        try:
            # Handshake: tensorboard prints its URL once its socket is bound.
            announced = next((line for line in server.stderr if re.search(r"TensorBoard .* at http://", line)), None)
            assert announced is not None, f"`{command}` exited {server.wait()} without serving"
            listening = [
                connection.laddr
                for connection in psutil.Process(server.pid).net_connections(kind="inet")
                if connection.status == psutil.CONN_LISTEN
            ]
        finally:
            watchdog.cancel()
            server.terminate()
            server.wait(timeout=30)
        assert listening, f"`{command}` listens nowhere ({announced.strip()})"
        assert {address.ip for address in listening} == {"127.0.0.1"}, (command, listening)
        assert f"http://127.0.0.1:{listening[0].port}/" in announced


# --- two `dvc repro` at once -----------------------------------------------------------------------


@pytest.mark.integration
def test_second_dvc_repro_is_refused_while_the_first_holds_the_lock(pipeline, tmp_path):
    repo = copy_workspace(pipeline[0], tmp_path / "repo")
    edit_params(repo, {"report.mistakes_shown": 8})  # analyze and report run again
    first = subprocess.Popen(
        ["dvc", "repro"],
        cwd=repo,
        env=tool_env() | {"PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, stages included
    )
    try:
        # Handshake: dvc announces a stage once it holds the stage's entries in .dvc/tmp/rwlock (it lets go of the
        # repository lock while the command runs).
        output = []
        for line in first.stdout:
            output.append(line)
            if line.startswith("Running stage"):
                break
        assert output and output[-1].startswith("Running stage"), "".join(output)
        # Paused, the first keeps its lock for as long as the second needs to give up, however fast either is.
        os.killpg(first.pid, signal.SIGSTOP)
        try:
            second = run(["dvc", "repro"], repo, check=False, timeout=300)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        output.append(first.communicate(timeout=900)[0])
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert second.returncode != 0, second.stdout
    # DVC releases the repository lock while a stage's command runs and keeps its outputs in the rwlock: the
    # second stops at whichever it meets, and says so.
    assert re.search(r"Unable to acquire lock|is busy, it is being blocked by", second.stderr), second.stderr
    assert "lock" in second.stderr
    assert first.returncode == 0, "".join(output)[-5000:]
    assert "Running stage 'report'" in "".join(output)
    # Nothing corrupted: every output matches dvc.lock, and nothing is left to run.
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout
    again = run(["dvc", "repro"], repo).stdout
    assert "Running stage" not in again, again
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["analyze"]["params"]["params.yaml"]["report.mistakes_shown"] == 8
    assert json.loads((repo / "results/analysis/summary.json").read_text())["mistakes"] >= 0
    assert "</html>" in (repo / "reports/report.html").read_text()


# --- a study database that cannot be reached -------------------------------------------------------

PASSWORD = "s3cret-pw"


@pytest.mark.parametrize(
    "storage",
    [
        f"postgresql://nobody:{PASSWORD}@127.0.0.1:1/none",  # nothing listens on port 1
        "postgresql://nobody@no-such-host.invalid/none",  # .invalid never resolves (RFC 2606)
        f"mysql://nobody:{PASSWORD}@127.0.0.1/none",  # a dialect whose driver is not installed
    ],
)
def test_unreachable_study_database_stops_search_with_one_line(workspace, storage):
    workspace({"search.storage": storage})
    search_dir = Path("results/search")
    before = sorted(search_dir.rglob("*")) if search_dir.exists() else []
    result = run(["litpipe", "search"], Path.cwd(), check=False, timeout=300)
    shown = storage.replace(PASSWORD, "***")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert shown in lines[0] and "cannot be reached" in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert PASSWORD not in result.stderr + result.stdout + Path("logs/search.log").read_text()
    after = sorted(search_dir.rglob("*")) if search_dir.exists() else []
    assert after == before
