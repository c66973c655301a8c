"""The search: space parsing, exact grid coverage with parallel workers, resume after SIGKILL and
SIGTERM, pruning, samplers, lr_find-relative learning rates, and PostgreSQL with heartbeats."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from litpipe.config import Params, load_params
from litpipe.errors import ConfigError
from litpipe.search import space as search_space

from .helpers import freeze_a_worker_mid_trial, missing, tool_env

GRID_12 = {
    "model.kwargs.mlp.width": [8, 16, 32],
    "model.kwargs.mlp.dropout": [0.0, 0.1],
    "model.kwargs.mlp.depth": [1, 2],
}


def settings(**search: object) -> dict:
    """Small trials: the point is how trials are scheduled, not how good they are. One worker (in the search's
    own process, trials in order) unless a test is about parallel workers and says how many."""
    return {
        "train.early_stopping_patience": 50,
        "observe.histograms": False,
        "observe.device_stats": False,
        "search.pruner": "none",
        "search.max_epochs": 2,
        "search.n_workers": 1,
        **{f"search.{k}": v for k, v in search.items()},
    }


def litpipe(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["litpipe", *args], env=tool_env(), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(
            f"litpipe {' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr}"
        )
    return result


def trials() -> list[dict]:
    return list(csv.DictReader(open("results/search/trials.csv")))


def point(row: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in row.items() if k.startswith("params_")))


# --- the space -----------------------------------------------------------------------------


def test_space_kinds_parse():
    dims = search_space.parse(
        {
            "model.kwargs.mlp.width": [64, 128],
            "model.kwargs.mlp.depth": {"low": 1, "high": 3},
            "optim.weight_decay": {"low": 1.0e-6, "high": 1.0e-2, "log": True},
            "optim.lr": {"lr_find": [0.3, 1, 3]},
        }
    )
    assert dims["model.kwargs.mlp.width"] == search_space.Categorical((64, 128))
    assert dims["model.kwargs.mlp.depth"].integer and not dims["optim.weight_decay"].integer
    assert dims["optim.lr"] == search_space.LrFindMultiples((0.3, 1.0, 3.0))
    with pytest.raises(ValueError, match="grid sampler needs a list"):
        search_space.grid(dims, "mlp")
    grid = search_space.grid({k: v for k, v in dims.items() if k in ("model.kwargs.mlp.width", "optim.lr")}, "mlp")
    assert len(grid) == 6 and {"model.kwargs.mlp.width", "optim.lr@lr_find"} == set(grid[0])


PER_NETWORK = {
    "model.arch": ["mlp", "cnn"],
    "model.kwargs.mlp.width": [8, 16],
    "model.kwargs.mlp.depth": [1, 2],
    "model.kwargs.cnn.width": [4, 8],
    "model.kwargs.SmallResNet.channels": [4],  # a network neither trial trains
}


def test_a_networks_arguments_are_searched_with_that_network_only():
    """The grid is each network with its own points (4 of the mlp's, 2 of the cnn's), not their product (16);
    a sampler asks a trial for the arguments of the network it drew, and of no other."""
    dims = search_space.parse(PER_NETWORK)
    grid = search_space.grid(dims, "mlp")
    assert len(grid) == 6 and len({tuple(sorted(p.items())) for p in grid}) == 6
    for point in grid:
        assert {search_space.network_of(k) for k in point} == {None, point["model.arch"]}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        chosen = search_space.suggest(trial, dims, None, "mlp")
        assert chosen == trial.params and {search_space.network_of(k) for k in chosen} == {None, chosen["model.arch"]}
        study.tell(trial, 0.0)
    assert {t.params["model.arch"] for t in study.trials} == {"mlp", "cnn"}


def test_without_the_network_in_the_space_only_its_own_arguments_apply():
    dims = search_space.parse({k: v for k, v in PER_NETWORK.items() if k != "model.arch"} | {"optim.lr": [0.1]})
    assert set(search_space.applying(dims, "cnn")) == {"model.kwargs.cnn.width", "optim.lr"}
    assert [sorted(p) for p in search_space.grid(dims, "cnn")] == [["model.kwargs.cnn.width", "optim.lr"]] * 2
    assert set(search_space.applying(dims, "nets/small.py:SmallResNet")) == {
        "model.kwargs.SmallResNet.channels",
        "optim.lr",
    }
    assert search_space.applying(search_space.parse({"model.kwargs.mlp.width": [8]}), "resnet18") == {}


@pytest.mark.parametrize(
    ("search", "message"),
    [
        (
            {"space": {"model.kwargs.mlp.dropout": {"low": 0.0, "high": 0.5}}},
            "search.space.model.kwargs.mlp.dropout: the grid sampler needs a list",
        ),
        (
            {"space": {"model.kwargs.mlp.width": {"lr_find": [1]}}},
            "search.space.model.kwargs.mlp.width: lr_find multiples apply to optim.lr only",
        ),
        (
            {"space": {"model.kwargs.mlp.width": {"low": 8}}},
            "search.space.model.kwargs.mlp.width: a range needs low and high",
        ),
        (
            {"space": {"model.kwargs.mlp.width": [8, 16], "model.kwargs.mlp.depth": "1"}},
            "search.space.model.kwargs.mlp.depth: expected a list of values",
        ),
        ({"space": {"model.kwargs.mlp.dropout": {"low": 0.5, "high": 0.1}}, "sampler": "tpe"}, "low < high"),
        ({"space": {"optim.weight_decay": [0.1, -1.0]}}, "search.space.optim.weight_decay: value -1.0"),
        ({"storage": "sqlite:///study.db", "n_workers": 2}, "SQLite cannot be shared by parallel workers"),
        ({"storage": "postgres"}, "search.storage: 'journal' or a database URL"),
    ],
)
def test_bad_search_settings_are_config_errors(tmp_path, default_params, search, message):
    params = json.loads(json.dumps(default_params))
    params["search"].update(search)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_params(path)


def test_the_best_mean_over_seeds_is_chosen_over_the_best_single_trial(tmp_path, monkeypatch):
    """Trial 0 has the lower validation loss, but seeds 1 and 2 put its configuration behind trial 1's: best.json
    (what the fit trains) takes trial 1, keeps trial 0 as the best single trial, and ranks both with their means."""
    import pandas as pd

    from litpipe.search import outputs, reevaluate

    monkeypatch.chdir(tmp_path)
    widths = optuna.distributions.CategoricalDistribution([8, 16])
    study = optuna.create_study(direction="minimize")
    for width, loss in ((8, 0.10), (16, 0.12)):
        attrs = {"params": {"model.kwargs.mlp.width": width}, "val_acc": 0.9, "best_epoch": 2}
        study.add_trial(
            optuna.trial.create_trial(
                params={"model.kwargs.mlp.width": width}, distributions={"model.kwargs.mlp.width": widths},
                value=loss, user_attrs=attrs,
            )
        )  # fmt: skip
    values = {0: [0.10, 0.20, 0.22], 1: [0.12, 0.13, 0.14]}  # seeds 0, 1, 2 of each candidate (= trial here)
    table = pd.DataFrame(
        [
            {"candidate": trial, "trial": trial, "seed": seed, "value": value, "val_acc": 0.9,
             "params": {"model.kwargs.mlp.width": (8, 16)[trial]}}
            for trial, losses in values.items() for seed, value in enumerate(losses)
        ]
    )  # fmt: skip
    best = outputs.write(study, reevaluate.ranked(table, "acc"))
    assert best["params"] == {"model.kwargs.mlp.width": 16} and best["trial"] == 1 and best["best_trial"] == 0
    assert [r["trial"] for r in best["reevaluated"]] == [1, 0]
    assert [r["mean"] for r in best["reevaluated"]] == pytest.approx([0.13, 0.52 / 3])
    assert json.loads(Path("results/search/best.json").read_text())["trial"] == 1
    # A seed whose fit diverged (NaN) ranks its configuration last, whatever its other seeds gave.
    table.loc[table["trial"] == 0, "value"] = [0.01, 0.01, float("nan")]
    assert [r["trial"] for r in reevaluate.ranked(table, "acc")] == [1, 0]


def test_of_trials_that_tie_the_earliest_is_the_best(tmp_path, monkeypatch):
    """Two trials with the same validation loss (the best): best.json, which the fit trains with, names the
    one that ran first, so a re-run of the search's outputs picks the same params."""
    from litpipe.search import outputs

    monkeypatch.chdir(tmp_path)
    widths = optuna.distributions.CategoricalDistribution([8, 16, 32])
    study = optuna.create_study(direction="minimize")
    for width, loss in ((32, 0.5), (8, 0.25), (16, 0.25)):
        attrs = {"params": {"model.kwargs.mlp.width": width}, "val_acc": 0.9, "best_epoch": 2}
        study.add_trial(
            optuna.trial.create_trial(
                params={"model.kwargs.mlp.width": width},
                distributions={"model.kwargs.mlp.width": widths},
                value=loss,
                user_attrs=attrs,
            )
        )
    best = outputs.write(study)
    assert (best["trial"], best["params"], best["value"]) == (1, {"model.kwargs.mlp.width": 8}, 0.25)
    assert json.loads(Path("results/search/best.json").read_text())["trial"] == 1


# --- scheduling and fault tolerance ------------------------------------------------------------


@pytest.mark.slow
def test_grid_of_12_with_2_workers_runs_each_point_exactly_once(workspace):
    workspace(settings(space=GRID_12, n_workers=2))
    output = litpipe("search").stdout
    assert "worker 0: no trials left" in output and "worker 1: no trials left" in output
    rows = trials()
    assert len(rows) == 12 and {row["state"] for row in rows} == {"COMPLETE"}
    assert len({point(row) for row in rows}) == 12
    best = json.loads(Path("results/search/best.json").read_text())
    assert best["states"]["COMPLETE"] == 12 and set(best["params"]) == set(GRID_12)
    for plot in ("history", "importances", "parallel_coordinates", "slice"):
        assert Path(f"results/search/{plot}.png").stat().st_size > 0


def start_search(output: Path) -> subprocess.Popen:
    """`litpipe search` in the background, its output to files (a pipe nobody reads would block it when full)."""
    with (output.with_suffix(".out")).open("w") as stdout, (output.with_suffix(".err")).open("w") as stderr:
        return subprocess.Popen(["litpipe", "search"], env=tool_env(), stdout=stdout, stderr=stderr)


def worker_running(params: Params, number: int) -> int | None:
    """The pid of the worker running trial `number`, read from the study, or None once it is not running."""
    from litpipe.search.study import open_study

    trial = open_study(params).trials[number]
    if trial.state != TrialState.RUNNING or "worker" not in trial.user_attrs:
        return None
    return int(trial.user_attrs["worker"].rpartition(":")[2])


def same_point(trial: optuna.trial.FrozenTrial) -> dict:
    return trial.system_attrs["fixed_params"]  # the grid point enqueued for it


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "workers", "rerun"),
    [
        (signal.SIGKILL, 2, [["search"]]),
        (signal.SIGTERM, 1, [["search"]]),
        # As after `scancel` on a cluster: only the stopped worker runs again, then collect.
        (signal.SIGTERM, 1, [["search", "--part", "worker"], ["search", "--part", "collect"]]),
    ],
)
def test_a_killed_worker_loses_nothing_and_the_rerun_completes_the_grid(workspace, tmp_path, signum, workers, rerun):
    from litpipe.search.study import open_study

    params = workspace(settings(space=GRID_12, n_workers=workers, max_epochs=12))
    search = start_search(tmp_path / "search")
    victim, pid = freeze_a_worker_mid_trial(
        Path.cwd(), lambda number: worker_running(params, number), 12, lambda: search.poll() is None
    )
    os.kill(pid, signum)
    os.kill(pid, signal.SIGCONT)
    assert search.wait(timeout=300) == 1
    assert "run the stage again" in (tmp_path / "search.err").read_text()

    # Before any re-run, the storage itself: what the stopped worker left behind.
    trials = open_study(params).trials
    interrupted = trials[victim]
    waiting = [same_point(t) for t in trials if t.state == TrialState.WAITING]
    if signum == signal.SIGTERM:
        # The worker failed the trial it was training and queued its point again.
        assert interrupted.state == TrialState.FAIL
        assert waiting.count(same_point(interrupted)) == 1
    else:
        # SIGKILL leaves the trial RUNNING (a journal file has no heartbeats): the re-run's setup recovers it.
        assert interrupted.state == TrialState.RUNNING
        assert same_point(interrupted) not in waiting
    before = {t.number: (t.params, t.value, t.datetime_complete) for t in trials if t.state == TrialState.COMPLETE}
    assert before and len(before) < 12

    for command in rerun:
        litpipe(*command)
    study = open_study(params)
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(completed) == 12
    assert len({tuple(sorted(t.params.items())) for t in completed}) == 12  # every point once
    assert same_point(interrupted) in [same_point(t) for t in completed]  # the interrupted point ran again
    after = {t.number: (t.params, t.value, t.datetime_complete) for t in completed}
    assert all(after[number] == done for number, done in before.items())  # nothing completed ran again
    assert [t.number for t in study.trials if t.state == TrialState.FAIL] == [victim]


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
def test_pruning_shows_in_the_trials_table(workspace, pruner):
    # Widest first: the narrow nets that follow fall behind early and get pruned.
    workspace(
        settings(
            space={"model.kwargs.mlp.width": [128, 64, 32, 16, 4, 2]},
            pruner=pruner,
            pruner_startup_trials=1,
            pruner_warmup_epochs=1,
            max_epochs=15,
        )
    )
    litpipe("search")
    rows = trials()
    states = [row["state"] for row in rows]
    assert len(states) == 6 and "PRUNED" in states and "COMPLETE" in states
    assert all(row["params_model.kwargs.mlp.width"] != "2" for row in rows if row["state"] == "COMPLETE")


@pytest.mark.slow
def test_hyperband_runs_and_prunes(workspace):
    """search.pruner: hyperband (successive halving in brackets that start at different epochs), on one worker,
    so that the trials run in order: the narrow nets that follow the widest fall behind and are pruned."""
    workspace(
        settings(
            space={"model.kwargs.mlp.width": [128, 64, 32, 16, 4, 2]},
            pruner="hyperband",
            pruner_warmup_epochs=1,
            max_epochs=15,
        )
    )
    litpipe("search")
    states = [row["state"] for row in trials()]
    assert len(states) == 6 and "PRUNED" in states and "COMPLETE" in states, states
    best = json.loads(Path("results/search/best.json").read_text())
    assert best["states"]["PRUNED"] == states.count("PRUNED") and best["params"]["model.kwargs.mlp.width"] != 2


def studies() -> dict[str, list[optuna.trial.FrozenTrial]]:
    """Every study in the journal, read with Optuna's own storage classes: its trials, by study name."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend("results/search/study.journal"))
    return {
        summary.study_name: optuna.load_study(study_name=summary.study_name, storage=storage).trials
        for summary in optuna.get_all_study_summaries(storage)
    }


@pytest.mark.slow
def test_raising_n_trials_continues_the_study_and_a_changed_setting_starts_another(workspace):
    space = {
        "model.kwargs.mlp.width": {"low": 8, "high": 64, "step": 8},
        "model.kwargs.mlp.dropout": {"low": 0.0, "high": 0.5},
    }
    workspace(settings(sampler="random", n_trials=2, max_epochs=1, space=space))
    litpipe("search")
    ((name, first),) = studies().items()
    assert len(first) == 2

    workspace(settings(sampler="random", n_trials=3, max_epochs=1, space=space))
    litpipe("search")
    ((same_name, continued),) = studies().items()  # the same study, the earlier trials kept as they were
    assert same_name == name and len(continued) == 3 and continued[:2] == first
    assert [int(row["number"]) for row in trials()] == [0, 1, 2]

    workspace(settings(sampler="random", n_trials=3, max_epochs=2, space=space))  # other epochs
    litpipe("search")
    found = studies()
    assert len(found) == 2 and found[name] == continued  # a new study beside the old one, which is untouched
    (new,) = set(found) - {name}
    assert len(found[new]) == 3 and {t.state for t in found[new]} == {TrialState.COMPLETE}
    assert [float(row["value"]) for row in trials()] == [t.value for t in found[new]]  # the table is the new one's


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_random_and_tpe_sample_ranges_for_n_trials(workspace, sampler):
    workspace(
        settings(
            sampler=sampler,
            n_trials=4,
            space={
                "model.kwargs.mlp.width": {"low": 8, "high": 64, "step": 8},
                "model.kwargs.mlp.dropout": {"low": 0.0, "high": 0.5},
                "optim.weight_decay": {"low": 1.0e-6, "high": 1.0e-2, "log": True},
            },
        )
    )
    litpipe("search")
    rows = trials()
    assert len(rows) == 4 and {row["state"] for row in rows} == {"COMPLETE"}
    for row in rows:
        assert (
            int(row["params_model.kwargs.mlp.width"]) % 8 == 0 and 8 <= int(row["params_model.kwargs.mlp.width"]) <= 64
        )
        assert 0 <= float(row["params_model.kwargs.mlp.dropout"]) <= 0.5
        assert 1e-6 <= float(row["params_optim.weight_decay"]) <= 1e-2


@pytest.mark.slow
def test_learning_rate_as_multiples_of_the_lr_finder_suggestion_for_each_optimiser(workspace):
    # The one-cycle schedule takes optim.lr as its peak: the finder's multiples apply to it as to any rate.
    space = {"optim.lr": {"lr_find": [0.5, 2.0]}, "optim.name": ["adamw", "sgd"]}
    workspace({**settings(space=space), "optim.scheduler": "onecycle"})
    litpipe("lr_find")
    suggestion = json.loads(Path("results/lr_find/lr_find.json").read_text())["suggestion"]
    litpipe("search")
    rows = trials()
    assert {row["state"] for row in rows} == {"COMPLETE"}
    chosen = sorted((row["params_optim.name"], float(row["params_optim.lr@lr_find"])) for row in rows)
    assert chosen == [("adamw", 0.5), ("adamw", 2.0), ("sgd", 0.5), ("sgd", 2.0)]
    best = json.loads(Path("results/search/best.json").read_text())
    assert best["params"]["optim.lr"] == pytest.approx(best["optuna_params"]["optim.lr@lr_find"] * suggestion)
    assert best["params"]["optim.name"] in ("adamw", "sgd")


@pytest.mark.slow
def test_a_search_over_networks_trains_each_with_its_own_arguments(workspace):
    space = {"model.arch": ["mlp", "cnn"], "model.kwargs.mlp.width": [8, 16], "model.kwargs.cnn.width": [4]}
    workspace(settings(space=space))
    litpipe("search")
    rows = trials()
    assert {row["state"] for row in rows} == {"COMPLETE"}
    chosen = sorted(
        (row["params_model.arch"], row["params_model.kwargs.mlp.width"], row["params_model.kwargs.cnn.width"])
        for row in rows
    )
    assert chosen == [("cnn", "", "4"), ("mlp", "16", ""), ("mlp", "8", "")]  # empty: not a parameter of that trial
    best = json.loads(Path("results/search/best.json").read_text())
    network = best["params"]["model.arch"]
    assert {search_space.network_of(key) for key in best["params"]} == {None, network}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"model.arch": "cnn"}, "search.space holds no key for cnn, only other networks' arguments"),
        ({"search.enabled": False}, "search.enabled is false"),
    ],
)
def test_a_search_with_nothing_to_vary_trains_nothing_whole_or_in_parts(workspace, changes, said):
    """The space is the mlp's and the network the cnn (`dvc exp run -S model.arch=cnn`), or the search is off:
    every trial would train the same network. The stage, and each of the parts a cluster runs as jobs, trains
    nothing and writes outputs that say why; the fit then uses params.yaml."""
    workspace({**settings(space={"model.kwargs.mlp.width": [8, 16]}, reevaluate_top_k=1), **changes})
    reevaluation = ["--part", "reevaluate", "--candidate", "0", "--seed", "0"]  # its marker is a cluster job's output
    for parts in (
        [[]],
        [["--part", "setup"], ["--part", "worker", "--worker", "0"], reevaluation, ["--part", "collect"]],
    ):
        shutil.rmtree("results/search", ignore_errors=True)
        output = "".join(litpipe("search", *part).stdout for part in parts)
        assert output.count(f"{said}: fit will use the values in params.yaml") == 1
        assert json.loads(Path("results/search/best.json").read_text()) == {
            "enabled": False,
            "reason": said,
            "params": {},
        }
        assert trials() == [] and Path("results/search/study.journal").stat().st_size == 0
        marker = Path("results/search/jobs/reevaluate0-seed0.json")
        assert marker.exists() == (len(parts) > 1) and (
            not marker.exists() or "skipped" in json.loads(marker.read_text())
        )
        assert not Path("tb/search").exists() or list(Path("tb/search").iterdir()) == [Path("tb/search/summary")]


@pytest.mark.slow
def test_rerunning_a_finished_study_runs_nothing(workspace):
    workspace(settings(space={"model.kwargs.mlp.width": [8, 16]}))
    litpipe("search")
    first = trials()
    output = litpipe("search").stdout
    assert "no trials left after running 0" in output
    assert trials() == first


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL 15 server on 127.0.0.1 (Debian's packages), run as the postgres user."""
    bindir = Path("/usr/lib/postgresql/15/bin")
    if not (bindir / "initdb").exists() or shutil.which("runuser") is None:
        missing("PostgreSQL 15 is not installed (apt-get install postgresql)")
    # pytest's own temporary directories are private to root; the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="litpipe-postgres-"))
    shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def as_postgres(*command: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, cwd="/")

    as_postgres(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    as_postgres(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(data / "server.log"),
        "-w",
        "-o",
        f"-p {port} -h 127.0.0.1 -k {data}",
        "start",
    )
    as_postgres(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "litpipe")
    yield f"postgresql://postgres@127.0.0.1:{port}/litpipe"
    as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
    shutil.rmtree(base)


@pytest.mark.slow
def test_postgresql_study_with_3_workers_loses_nothing(workspace, postgres):
    space = {"model.kwargs.mlp.width": [8, 16, 32], "model.kwargs.mlp.dropout": [0.0, 0.1]}
    workspace(settings(space=space, n_workers=3, storage=postgres))
    output = litpipe("search").stdout
    assert all(f"worker {i}: no trials left" in output for i in range(3))
    rows = trials()
    assert len(rows) == 6 and {row["state"] for row in rows} == {"COMPLETE"}
    assert len({point(row) for row in rows}) == 6


@pytest.mark.slow
def test_postgresql_heartbeats_retry_a_killed_workers_trial(workspace, postgres, tmp_path):
    from litpipe.search.study import open_study

    space = {"model.kwargs.mlp.width": [8, 16, 32, 64], "model.kwargs.mlp.depth": [1, 2]}
    params = workspace(settings(space=space, n_workers=3, storage=postgres, heartbeat_seconds=1, max_epochs=12))
    search = start_search(tmp_path / "search")
    victim, pid = freeze_a_worker_mid_trial(
        Path.cwd(), lambda number: worker_running(params, number), 12, lambda: search.poll() is None
    )
    os.kill(pid, signal.SIGKILL)  # while its trial is RUNNING, with heartbeats
    stdout = (tmp_path / "search.out").read_text
    # The surviving workers saw the trial go stale, failed it and ran its point again, in the same run.
    assert search.wait(timeout=300) == 0, stdout()[-2000:]
    assert "the other workers retried its trials" in stdout()
    study = open_study(params)
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(completed) == 8 and len({tuple(sorted(t.params.items())) for t in completed}) == 8
    assert study.trials[victim].state == TrialState.FAIL
    assert same_point(study.trials[victim]) in [same_point(t) for t in completed]


# --- re-evaluation of the best configurations over seeds ------------------------------------------------------------


@pytest.mark.slow
def test_the_best_configurations_are_trained_again_with_each_seed_and_the_best_mean_is_chosen(workspace):
    """search.reevaluate_top_k 2 and three seeds: the two best trials' configurations trained again with each
    seed, replicates.n_workers at a time; best.json takes the one with the best mean validation loss over the
    seeds, and keeps the best single trial's number. A re-run trains nothing again."""
    workspace(
        {**settings(space={"model.kwargs.mlp.width": [8, 16, 32]}, reevaluate_top_k=2), "replicates.seeds": [0, 1, 2]}
    )
    output = litpipe("search").stdout
    completed = sorted((float(row["value"]), int(row["number"])) for row in trials() if row["state"] == "COMPLETE")
    reruns = [json.loads(path.read_text()) for path in Path("results/search/jobs").glob("reevaluate*.json")]
    assert sorted((r["candidate"], r["seed"]) for r in reruns) == [(c, s) for c in (0, 1) for s in (0, 1, 2)]
    assert {r["trial"] for r in reruns if r["candidate"] == 0} == {completed[0][1]}
    assert {r["trial"] for r in reruns if r["candidate"] == 1} == {completed[1][1]}
    means = {trial: [r["value"] for r in reruns if r["trial"] == trial] for trial in {r["trial"] for r in reruns}}
    means = {trial: sum(values) / len(values) for trial, values in means.items()}
    best = json.load(open("results/search/best.json"))
    assert best["trial"] == min(means, key=lambda trial: (means[trial], trial))
    assert best["best_trial"] == completed[0][1] and best["chosen_by"] == "mean over seeds"
    assert [r["trial"] for r in best["reevaluated"]] == sorted(means, key=lambda trial: (means[trial], trial))
    for summary in best["reevaluated"]:  # the interval over three seeds, around their mean
        assert summary["mean"] == pytest.approx(means[summary["trial"]])
        assert summary["value_ci95_low"] <= summary["mean"] <= summary["value_ci95_high"]
    assert "training the 2 best configurations again with seeds [0, 1, 2]: 6 runs, 2 at once" in output
    for candidate in (0, 1):  # seed 0, the search's own, is the trial itself: the others trained again
        assert [r["value"] for r in reruns if r["candidate"] == candidate and r.get("reused")] == [
            completed[candidate][0]
        ]
        for seed in (1, 2):
            assert Path(f"results/search/live/reevaluate_{candidate}_seed_{seed}/metrics.json").exists()
            assert Path(f"tb/search/reevaluate_{candidate}_seed_{seed}").is_dir()
    again = litpipe("search").stdout
    assert again.count("done already") == 6 and json.load(open("results/search/best.json")) == best
