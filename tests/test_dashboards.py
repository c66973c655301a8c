"""The README's optuna-dashboard command, run as written against a study litpipe made: it shows the study and
its trials over its HTTP API and listens on 127.0.0.1 alone. (TensorBoard's command: tests/test_faults.py.)"""

import json
import shlex
import subprocess
import urllib.request

import psutil
import pytest

from litpipe import paths
from litpipe.config import Params
from litpipe.search import space as search_space
from litpipe.search.study import next_trial, setup

from .helpers import require_tool, tool_env, wait_until
from .test_faults import readme_server_commands

SPACE = {"model.kwargs.mlp.width": [32, 64], "model.kwargs.mlp.depth": [1, 2]}  # four grid points: four trials, no lr_find needed
SQLITE = "sqlite:///results/search/study.db"


def readme_dashboard_command() -> str:
    """The README's optuna-dashboard command for the study journal, as it is written there."""
    commands = [
        command
        for command in readme_server_commands()
        if command.startswith("optuna-dashboard ") and str(paths.STUDY_JOURNAL) in shlex.split(command)
    ]
    assert len(commands) == 1, f"README: one optuna-dashboard command on {paths.STUDY_JOURNAL} expected: {commands}"
    return commands[0]


def finished_search(params: Params) -> dict[str, dict]:
    """A study in params' storage, made the way the search stage makes it (setup enqueues the grid, workers
    take its points): every point completed with a made-up loss. Returns each trial's params by number."""
    study = setup(params)
    while (trial := next_trial(study, params, stop=lambda: False)) is not None:
        chosen = search_space.suggest(trial, params.search.dimensions(), None, params.model.arch)
        study.tell(trial, 1.0 / (chosen["model.kwargs.mlp.width"] * chosen["model.kwargs.mlp.depth"]))
    return {"name": study.study_name, "trials": {t.number: t.params for t in study.trials}}


def get(port: int, route: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=30) as answer:
        return json.load(answer)


@pytest.mark.parametrize("storage", ["journal", SQLITE], ids=["journal", "sqlite"])
def test_readme_optuna_dashboard_command_shows_the_study_on_loopback_only(
    tmp_path, monkeypatch, default_params, storage
):
    """Started as the README writes it, from the repository root, on a port the OS picks. The README gives the
    journal's command and says the same works with the `search.storage` URL: for a database the URL takes
    the journal path's place."""
    executable = require_tool("optuna-dashboard")
    command = readme_dashboard_command()
    monkeypatch.chdir(tmp_path)  # paths.STUDY_JOURNAL is relative to the repository root, as in the README
    overrides = {"search.space": SPACE, "search.sampler": "grid", "search.storage": storage}
    if storage != "journal":
        overrides["search.n_workers"] = 1  # params refuse several workers on SQLite
        (tmp_path / paths.SEARCH).mkdir(parents=True)
    study = finished_search(Params.model_validate(default_params).override(overrides))
    assert len(study["trials"]) == 4

    argv = [executable, *shlex.split(command)[1:], "--port", "0"]
    if storage != "journal":
        argv[argv.index(str(paths.STUDY_JOURNAL))] = storage
    stored = paths.STUDY_JOURNAL.read_bytes() if storage == "journal" else None
    log = tmp_path / "optuna-dashboard.log"
    with log.open("w") as output:
        server = subprocess.Popen(argv, env=tool_env(), stdout=output, stderr=subprocess.STDOUT)

    def listening() -> list:
        # It opens the storage before it binds, so a listening socket means it is ready to answer. With
        # --port 0 its "Listening on" line says port 0: the socket itself tells which port the OS gave.
        assert server.poll() is None, f"`{command}` exited {server.returncode}:\n{log.read_text()[-3000:]}"
        return [
            connection.laddr
            for connection in psutil.Process(server.pid).net_connections(kind="inet")
            if connection.status == psutil.CONN_LISTEN
        ]

    try:
        addresses = wait_until(listening, 60, f"listening socket of `{' '.join(argv)}`")
        studies = get(addresses[0].port, "/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == [study["name"]], studies
        detail = get(addresses[0].port, f"/api/studies/{studies[0]['study_id']}")
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert {address.ip for address in addresses} == {"127.0.0.1"}, (command, addresses)
    shown = {
        trial["number"]: {p["name"]: int(p["param_external_value"]) for p in trial["params"]}
        for trial in detail["trials"]
    }
    assert shown == study["trials"], detail["trials"]
    assert {trial["state"] for trial in detail["trials"]} == {"Complete"}
    assert len(detail["best_trials"]) == 1 and detail["best_trials"][0]["params"]
    if stored is not None:  # browsing reads the journal the workers append to, and writes nothing to it
        assert paths.STUDY_JOURNAL.read_bytes() == stored
