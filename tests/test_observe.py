"""Observability against the real TensorBoard server, plus the profiler, logs and W&B offline."""

import csv
import json
import math
import os
import pty
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ProgressBar
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from litpipe import paths
from litpipe.observe.monitors import Monitors
from litpipe.observe.tensorboard import hp_metrics, open_run
from litpipe.stages import sanity
from litpipe.training import make_trainer

from .helpers import ROOT, STAGES, require_module, require_tool, tool_env


def documented_hparams_tab(params: dict) -> tuple[set[str], list[str]]:
    """The HPARAMS tab's hyperparameter and metric columns as the README (or a page of docs/) describes them:
    `key.*` stands for every param under that key of params.yaml (`params`, the raw YAML: `optim.*`,
    `model.kwargs.mlp.*`), dotted to its leaves as `dvc exp show` names them (`model.kwargs.mlp.width`)."""

    def leaves(tree, prefix):
        if not isinstance(tree, dict):
            return {prefix}
        return {leaf for key, value in tree.items() for leaf in leaves(value, f"{prefix}.{key}")}

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = next(
        text for text in (page.read_text() for page in pages) if re.search(r"hyperparameter\s+columns\s*\(", text)
    )
    bullet = text[text.index("**HPARAMS tab.**") :].split("\n- ")[0]
    listed = re.findall(r"`([^`]+)`", re.search(r"hyperparameter\s+columns\s*\(([^)]*)\)", bullet)[1])
    columns = set()
    for name in listed:
        if not name.endswith(".*"):
            columns.add(name)
            continue
        tree = params
        for key in name.removesuffix(".*").split("."):
            tree = tree[key]
        columns |= leaves(tree, name.removesuffix(".*"))
    return columns, list(dict.fromkeys(re.findall(r"`(hp/\w+)`", bullet)))


class TensorBoardServer:
    """A real `tensorboard` on 127.0.0.1, queried through the HTTP API its frontend uses."""

    def __init__(self, logdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [
                require_tool("tensorboard"),
                "--logdir",
                str(logdir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--load_fast",
                "false",
                "--reload_interval",
                "1",
            ],
            env=tool_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def get(self, route: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{route}", timeout=10) as response:
            return json.loads(response.read())

    def post(self, route: str, body: dict):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{route}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def session_groups(self, hparams: list[str]) -> list[dict]:
        columns = [{"hparam": name, "includeInResult": True} for name in hparams]
        columns += [{"metric": {"tag": tag, "group": ""}, "includeInResult": True} for tag in hp_metrics("acc")]
        body = {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": columns,
            "startIndex": 0,
            "sliceSize": 1000,
        }
        return self.post("/data/plugin/hparams/session_groups", body)["sessionGroups"]

    def wait_until(self, ready, timeout: float = 90):
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = ready()
                if value:
                    return value
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise AssertionError("tensorboard did not serve the runs in time")
            time.sleep(1)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def tensorboard(pipeline):
    repo, _, _ = pipeline
    server = TensorBoardServer(repo / "tb")
    yield server
    server.close()


@pytest.mark.integration
def test_hparams_tab_lists_every_trial_and_the_fit_with_real_values(pipeline, tensorboard):
    repo, _, _ = pipeline
    finished = [
        row
        for row in csv.DictReader((repo / "results/search/trials.csv").open())
        if row["state"] in ("COMPLETE", "PRUNED")
    ]  # a pruned trial reports what it reached
    expected_sessions = {"fit"} | {f"search/trial_{int(row['number']):04d}" for row in finished}
    experiment = tensorboard.wait_until(
        lambda: (e := tensorboard.post("/data/plugin/hparams/experiment", {"experimentName": ""}))["metricInfos"] and e
    )
    columns = [info["name"] for info in experiment["hparamInfos"]]
    documented_columns, documented_metrics = documented_hparams_tab(yaml.safe_load((repo / "params.yaml").read_text()))
    assert set(columns) == documented_columns
    assert [info["name"]["tag"] for info in experiment["metricInfos"]] == documented_metrics

    # Every session and each one's metric values: TensorBoard loads a run's files a while after it lists the run.
    groups = tensorboard.wait_until(
        lambda: (g := tensorboard.session_groups(columns))
        and {x["name"] for x in g} == expected_sessions
        and all(len(x["metricValues"]) >= 2 for x in g)
        and g
    )
    test_accuracy = json.loads((repo / "results/test/metrics.json").read_text())["accuracy"]
    for group in groups:
        assert set(group["hparams"]) == set(columns), group["name"]  # same hyperparameter columns everywhere
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        wanted = documented_metrics if group["name"] == "fit" else ("hp/best_val_loss", "hp/best_val_acc")
        for tag in wanted:
            assert math.isfinite(values[tag]), (group["name"], tag, values)
        assert "hp/test_acc" in values or group["name"] != "fit"
    fit = next(g for g in groups if g["name"] == "fit")
    fit_test_acc = next(m["value"] for m in fit["metricValues"] if m["name"]["tag"] == "hp/test_acc")
    # Eval parity: the fit's in-process test of its checkpoint equals the fresh-process test stage.
    assert fit_test_acc == pytest.approx(test_accuracy, abs=1e-6)


def hidden_layers(repo) -> list[str]:
    """The hidden blocks of the fitted model: as many as the depth the search chose."""
    depth = json.loads((repo / "results/fit/summary.json").read_text())["params"]["model"]["kwargs"]["mlp"]["depth"]
    return [f"hidden{i}" for i in range(1, depth + 1)]


@pytest.mark.integration
def test_text_histograms_and_scalars_reach_tensorboard(pipeline, tensorboard):
    layers = hidden_layers(pipeline[0])
    # TensorBoard loads the runs one after another: wait for every run whose text is checked.
    runs = {"fit", "lr_find", "search/summary", "sanity"}
    text_tags = tensorboard.wait_until(lambda: runs <= set(t := tensorboard.get("/data/plugin/text/tags")) and t)
    for tag in (
        "model/summary/text_summary",
        "system/text_summary",
        "git/text_summary",
        "params/text_summary",
        "log/text_summary",
    ):
        assert tag in text_tags["fit"]
    summary = tensorboard.get("/data/plugin/text/text?run=fit&tag=model/summary/text_summary")
    assert "In sizes" in summary[0]["text"] and "Out sizes" in summary[0]["text"]
    system = tensorboard.get("/data/plugin/text/text?run=fit&tag=system/text_summary")[0]["text"]
    assert "lightning" in system and "torch" in system
    assert "lr_find/text_summary" in text_tags["lr_find"]
    assert "search/summary/text_summary" in text_tags["search/summary"]
    assert "profile/top_operations/text_summary" in text_tags["sanity"]

    images = tensorboard.get("/data/plugin/images/tags")
    assert "curves" in images["fit"] and "lr_find/curve" in images["lr_find"] and "sanity/overfit" in images["sanity"]
    histograms = tensorboard.get("/data/plugin/histograms/tags")["fit"]
    assert {*(f"activations/{layer}" for layer in layers), "params/net.head.weight"} <= set(histograms)
    scalars = tensorboard.get("/data/plugin/scalars/tags")
    fit_scalars = set(scalars["fit"])
    assert {"grad_norm/total", "grad_norm/net.head", "grad_norm/net.hidden.hidden1.0"} <= fit_scalars
    assert {"activations/hidden1/mean", "activations/hidden1/std", "activations/hidden1/dead_fraction"} <= fit_scalars
    assert {
        "device/cpu_percent",
        "device/ram_used_percent",
        "lr-Adam",
        "train/loss",
        "val/loss",
        "val/acc",
    } <= fit_scalars
    assert {"grad_norm/total", "activations/hidden1/mean"} <= set(scalars["search/trial_0000"])


@pytest.mark.integration
def test_logs_mirror_what_tensorboard_gets(pipeline):
    repo, _, _ = pipeline
    log = (repo / "logs/fit.log").read_text()
    assert "model summary:" in log and "In sizes" in log
    assert "epoch 1/60 " in log and "val/loss=" in log and "train/loss=" in log
    assert "\r" not in log  # plain lines, no progress-bar carriage returns in batch logs
    # The search's workers each log to logs/search-workerN.log; the stage's log says it started them.
    workers = yaml.safe_load((repo / "params.yaml").read_text())["search"]["n_workers"]
    stage_log = (repo / "logs/search.log").read_text()
    assert all(f"search worker {i} started (pid " in stage_log for i in range(workers))
    worker_logs = "".join((repo / f"logs/search-worker{i}.log").read_text() for i in range(workers))
    assert "trial 0 epoch 1/30" in worker_logs


@pytest.mark.integration
def test_activations_and_wall_times_are_recorded_for_analysis_and_report(pipeline):
    repo, _, _ = pipeline
    rows = list(csv.DictReader((repo / "results/fit/activations.csv").open()))
    epochs = json.loads((repo / "results/fit/metrics.json").read_text())["epochs"]
    assert len(rows) == len(hidden_layers(repo)) * epochs  # one row per hidden layer per epoch
    assert {row["layer"] for row in rows} == set(hidden_layers(repo))
    assert {"mean", "std", "dead_fraction", "q05", "q50", "q95"} <= set(rows[0])
    assert all(0 <= float(row["dead_fraction"]) <= 1 for row in rows)
    assert (repo / "results/analysis/activations_evolution.png").stat().st_size > 0
    for stage in STAGES:
        timing = json.loads((repo / f"results/timing/{stage}.json").read_text())
        assert timing["stage"] == stage and timing["seconds"] > 0


def test_profiler_on_three_batches_writes_a_training_trace_and_an_op_table(digits):
    operations = sanity.profile(digits.override({"sanity.profile_batches": 3}), json.loads(paths.META.read_text()))
    traces = sorted(p.name for p in paths.PROFILE_DIR.iterdir() if p.name.endswith(".pt.trace.json"))
    assert traces == ["training_step.pt.trace.json", "validation_step.pt.trace.json"]
    events = json.loads((paths.PROFILE_DIR / "training_step.pt.trace.json").read_text())["traceEvents"]
    names = {event.get("name", "") for event in events}
    assert any("training_step" in name for name in names)
    assert any(name.startswith("Optimizer.step") for name in names) and "aten::addmm" in names
    assert (paths.PROFILE_DIR / "fit-profile.txt").read_text() == operations
    # The table: the 20 operations that took the most CPU time (which ones depends on the machine's load, so
    # the operations themselves are checked in the trace above), then the total.
    assert "CPU total" in operations and "Self CPU time total" in operations
    rows = [line for line in operations.splitlines() if line.startswith(("aten::", "Optimizer.", "[pl][", "cudaM"))]
    assert 1 <= len(rows) <= 20, operations


def test_progress_bar_only_on_a_terminal(digits, monkeypatch):
    # Under pytest stderr is not a terminal: no live bar, the History lines carry the progress.
    assert not sys.stderr.isatty()
    assert make_trainer(digits).progress_bar_callback is None
    # On a real terminal (a pseudo-terminal's device as stderr): Lightning's live bar.
    terminal, device = pty.openpty()
    with os.fdopen(device, "w") as stderr, os.fdopen(terminal, "rb"):
        monkeypatch.setattr(sys, "stderr", stderr)
        assert sys.stderr.isatty()
        assert isinstance(make_trainer(digits).progress_bar_callback, ProgressBar)


class Exploding(pl.LightningModule):
    """A real module whose gradients become NaN after the first step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).sum()
        return loss * float("nan") if self.global_step > 0 else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_non_finite_gradient_norms_are_skipped_with_a_warning(tmp_path, monkeypatch, digits, caplog):
    run = open_run("guard")
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(6, 4)), batch_size=2)
    trainer = make_trainer(
        digits,
        max_epochs=1,
        logger=run,
        callbacks=[Monitors(every=1, gradient_norms=True, histograms=False, device_stats=False, probe=None)],
        gradient_clip_val=None,
    )
    trainer.fit(Exploding(), train_dataloaders=data)
    events = EventAccumulator(str(paths.TB / "guard")).Reload()
    logged = events.Scalars("grad_norm/total")
    assert [e.step for e in logged] == [0] and math.isfinite(logged[0].value)
    assert "non-finite gradient norms at step 1" in caplog.text


@pytest.mark.slow
def test_wandb_offline_run_is_written(digits, monkeypatch):
    require_module("wandb")
    from litpipe.io import write_json
    from litpipe.stages import fit

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    write_json(paths.SEARCH / "best.json", {"params": {}})
    fit.run(digits.override({"observe.wandb": True, "train.max_epochs": 2}))
    runs = list((paths.WANDB / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
