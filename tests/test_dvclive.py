"""DVCLive's curves of the fit and of every search trial (litpipe/observe/dvclive.py): a row per epoch with the
numbers of history.csv, metrics.json rewritten at each epoch's end, a resumed fit's files those of a fit never
interrupted, and nothing done to the repository. `dvc plots diff` of two experiments: tests/test_sweep.py."""

import csv
import json
import subprocess
from pathlib import Path

import lightning.pytorch as pl
import optuna
import pytest
from lightning.pytorch.callbacks import Callback
from optuna.trial import TrialState

from litpipe import paths
from litpipe.data.prepared import PreparedData, load_meta, load_split
from litpipe.io import write_json
from litpipe.preemption import fingerprint, resume_point
from litpipe.search import outputs
from litpipe.search.trial import TrialRunner
from litpipe.stages import fit
from litpipe.training import History, build_model, fit_trainer, seed_everything

from .helpers import run

SCORE = "acc"  # digits: a classification
METRICS = ("train/loss", f"train/{SCORE}", "val/loss", f"val/{SCORE}")


def curves(live: Path) -> dict[str, list[tuple[int, float]]]:
    """Each metric's file in DVCLive's directory: its (step, value) rows."""
    found = {}
    for file in sorted((live / "plots/metrics").rglob("*.tsv")):
        name = file.relative_to(live / "plots/metrics").with_suffix("").as_posix()
        rows = list(csv.reader(file.open(), delimiter="\t"))
        assert rows[0] == ["step", name.split("/")[-1]], file
        found[name] = [(int(step), float(value)) for step, value in rows[1:]]
    return found


def files(directory: Path) -> dict[str, bytes]:
    return {str(f.relative_to(directory)): f.read_bytes() for f in sorted(directory.rglob("*")) if f.is_file()}


class Killed(Exception):
    """A fit that dies without warning (SIGKILL), here at an epoch's end."""


class WatchThenKill(Callback):
    """The curves as training starts; after History's epoch-end work, what metrics.json holds (what `dvc exp
    show` reads then) and History's row; at the end of epoch `kill_at`, before that epoch's resume point is
    written, the fit dies."""

    def __init__(self, live: Path, kill_at: int) -> None:
        self.live, self.kill_at = live, kill_at
        self.at_start: dict[str, list[tuple[int, float]]] | None = None
        self.seen: list[tuple[dict, dict]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.at_start = curves(self.live)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = next(callback for callback in trainer.callbacks if isinstance(callback, History))
        self.seen.append((json.loads((self.live / "metrics.json").read_text()), dict(history.rows[-1])))
        if trainer.current_epoch == self.kill_at:
            raise Killed


def killed_fit(params, kill_at: int) -> WatchThenKill:
    """The fit stage's training (stages/fit.train) with a resume point at every epoch's end, dying at the end
    of epoch `kill_at`: its last resume point is epoch kill_at - 1's, its curves have a row more."""
    run = paths.fit_run(params.seed, params.replicates.seeds)
    seed_everything(params.seed)
    meta = load_meta()
    watch = WatchThenKill(run.live, kill_at)
    identity = fingerprint(params, meta)
    session = fit_trainer(params, load_split("val").head(params.observe.probe_size).x, run, [watch], identity)
    with pytest.raises(Killed):
        session.trainer.fit(
            build_model(params, meta),
            datamodule=PreparedData.from_params(params),
            ckpt_path=resume_point(identity, run),
            weights_only=True,
        )
    return watch


@pytest.mark.slow
def test_the_fits_curves_are_its_history_epoch_by_epoch_and_a_resumed_fit_writes_the_same(digits):
    """In a git repository without commits (DVCLive's own start runs `dvc init` in a git repository, and fails in
    one without commits): the fit's DVCLive files hold history.csv's numbers, a row per epoch, and nothing else;
    metrics.json had each epoch's numbers at its end. A fit killed after a resume point (its files a row ahead of
    it) and run again ends with the same files, byte for byte, whether DVC deleted them meanwhile or not."""
    subprocess.run(["git", "init", "-q"], check=True)
    params = digits.override({"train.max_epochs": 5, "train.early_stopping_patience": 50})
    write_json(paths.SEARCH_BEST, {"params": {}})
    live = paths.fit_run(params.seed, params.replicates.seeds).live
    assert live == Path("results/fit/live")
    fit.run(params)

    history = list(csv.DictReader(paths.FIT_HISTORY.open()))
    assert len(history) == 5
    assert curves(live) == {name: [(int(row["epoch"]), float(row[name])) for row in history] for name in METRICS}
    last = history[-1]
    assert json.loads((live / "metrics.json").read_text()) == {
        "val": {"loss": float(last["val/loss"]), SCORE: float(last[f"val/{SCORE}"])},
        "train": {"loss": float(last["train/loss"]), SCORE: float(last[f"train/{SCORE}"])},
        "step": 4,
    }
    assert {path.split("/")[0] for path in files(live)} == {"metrics.json", "plots"}  # no dvc.yaml, params, report
    assert not Path(".dvc").exists() and not Path("dvc.yaml").exists()
    staged = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True).stdout
    assert "A " not in staged, staged  # nothing staged in git
    uninterrupted, uninterrupted_curves = files(live), curves(live)

    every_epoch = params.override({"train.resume_every_minutes": 1e-6})
    for deleted in (False, True):
        watch = killed_fit(every_epoch, kill_at=2)
        assert watch.at_start == {}  # the last run's curves gone as this one starts
        for epoch, (shown, row) in enumerate(watch.seen):
            assert shown["step"] == epoch == row["epoch"] and shown["val"]["loss"] == row["val/loss"]
        assert len(curves(live)["val/loss"]) == 3 and paths.RESUME_CKPT.exists()  # a row after the resume point
        if deleted:  # as `dvc repro` and Snakemake delete a failed stage's outputs before the re-run
            subprocess.run(["rm", "-r", str(live)], check=True)
        resumed = killed_fit(every_epoch, kill_at=3)  # from epoch 1's resume point: its rows are there at once
        assert resumed.at_start == {name: rows[:2] for name, rows in uninterrupted_curves.items()}
        fit.run(params)  # resumes from epoch 2's
        assert files(live) == uninterrupted


class PruneTrialOne(optuna.pruners.BasePruner):
    """Prunes trial 1 at epoch 1, whatever its numbers."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1 and trial.last_step == 1


def test_each_search_trial_writes_its_own_curves_and_the_outputs_keep_only_the_studys(digits):
    """A completed trial's curves have its best validation loss (the trial's value), a pruned one's end with the
    validation the pruner judged (its value); an earlier study's trial is gone once the search writes its outputs."""
    params = digits.override(
        {"search.space": {"model.kwargs.mlp.width": [16, 32]}, "search.max_epochs": 3, "search.pruner": "median"}
    )
    stale = paths.trial_live(7)
    stale.mkdir(parents=True)
    study = optuna.create_study(
        sampler=optuna.samplers.GridSampler({"model.kwargs.mlp.width": [16, 32]}), pruner=PruneTrialOne()
    )
    study.optimize(TrialRunner(params), n_trials=2)

    completed, pruned = (curves(paths.trial_live(number)) for number in (0, 1))
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[1].state == TrialState.PRUNED
    assert set(completed) == set(pruned) == set(METRICS)
    assert [step for step, _ in completed["val/loss"]] == [step for step, _ in completed["train/loss"]] == [0, 1, 2]
    assert min(value for _, value in completed["val/loss"]) == study.trials[0].value
    assert [step for step, _ in pruned["val/loss"]] == [step for step, _ in pruned["train/loss"]] == [0, 1]
    assert pruned["val/loss"][-1][1] == study.trials[1].value
    outputs.keep_only_live_curves_of(study)
    assert sorted(path.name for path in paths.SEARCH_LIVE.iterdir()) == ["trial_0000", "trial_0001"]


@pytest.mark.integration
def test_dvc_reads_the_fits_curves_and_latest_values_and_every_trial_has_its_own(pipeline, tmp_path):
    """The default pipeline under `dvc repro`: `dvc plots show` draws the fit's curves from DVCLive's files, `dvc
    metrics show` (so `dvc exp show`, whose workspace row is these files while a run goes on) lists their last
    epoch, and each trial of trials.csv has its curves, whose validation losses give its value."""
    repo, _, _ = pipeline
    history = list(csv.DictReader((repo / paths.FIT_HISTORY).open()))
    shown = json.loads(run(["dvc", "plots", "show", "--json", "-o", str(tmp_path)], repo).stdout)["data"]
    for name in METRICS:
        (plot,) = shown[f"results/fit/live/plots/metrics/{name}.tsv"]
        drawn = plot["content"]["data"]["values"]
        assert [(int(point["step"]), float(point[name.split("/")[1]])) for point in drawn] == [
            (int(row["epoch"]), float(row[name])) for row in history
        ]
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    latest = metrics[""]["data"]["results/fit/live/metrics.json"]["data"]
    assert latest["step"] == len(history) - 1 and latest["val"]["loss"] == float(history[-1]["val/loss"])

    trials = list(csv.DictReader((repo / paths.SEARCH_TRIALS).open()))
    assert sorted(p.name for p in (repo / paths.SEARCH_LIVE).iterdir()) == [
        paths.trial_live(int(trial["number"])).name for trial in trials
    ]
    for trial in trials:
        found = curves(repo / paths.trial_live(int(trial["number"])))
        assert [step for step, _ in found["val/loss"]] == list(range(len(found["val/loss"])))
        judged = min if trial["state"] == "COMPLETE" else lambda values: list(values)[-1]  # a pruned trial's last
        assert judged(value for _, value in found["val/loss"]) == float(trial["value"]), trial
