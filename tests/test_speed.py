"""The speed work, proven by behaviour rather than timings: the exact speed-ups change no number, both
data paths give the same batches and metrics, processes keep to their cores, and `litpipe bench`
reports what it measured. Speed itself is measured by `litpipe bench`, never asserted here."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from litpipe import paths, resources
from litpipe.data import prepared
from litpipe.data.prepared import PreparedData, choose_path, load_meta
from litpipe.io import read_json, write_json
from litpipe.models.lit_model import backward_is_plain_autograd
from litpipe.models.networks import MLP
from litpipe.observe.monitors import gradient_norms
from litpipe.stages import fit
from litpipe.training import History, build_model, make_trainer, seed_everything

from .helpers import ROOT, tool_env

MONITORS_OFF = {f"observe.{name}": False for name in ("gradient_norms", "histograms", "device_stats", "activations")}


def fitted(params) -> tuple[dict, str]:
    """Fit with the given params; the metrics and the per-epoch history it wrote."""
    write_json(paths.SEARCH / "best.json", {"params": {}})
    fit.run(params)
    return read_json(paths.FIT / "metrics.json"), (paths.FIT / "history.csv").read_text()


# --- data paths ------------------------------------------------------------------------------


def batches(data: PreparedData, epochs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loaders = [data.train_dataloader(), data.val_dataloader()]
    return [(x.clone(), y.clone()) for _ in range(epochs) for loader in loaders for x, y in loader]


def test_loader_path_yields_exactly_the_resident_batches(digits):
    resident = PreparedData(48, seed=3, path="resident")
    loader = PreparedData(48, seed=3, path="loader", workers=2)
    for data in (resident, loader):
        data.setup("fit")
    assert (resident.path, loader.path) == ("resident", "loader")
    first, second = batches(resident, epochs=2), batches(loader, epochs=2)
    assert len(first) == len(second) > 0
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # A new epoch is a new permutation, on both paths.
    assert not torch.equal(first[0][1], first[len(first) // 2][1])


@pytest.mark.slow
@pytest.mark.parametrize("augmented", [False, True], ids=["plain", "augmented"])
def test_fit_gives_the_same_metrics_on_both_data_paths(digits, caplog, augmented):
    params = digits.override({"train.augment_flip": augmented, "train.augment_crop": 2 if augmented else 0})
    caplog.set_level("INFO")
    resident = fitted(params.override({"train.data_path": "resident"}))
    assert "data: resident on cpu" in caplog.text
    streamed = fitted(params.override({"train.data_path": "loader", "train.loader_workers": 2}))
    assert "data: DataLoader with 2 workers on cpu" in caplog.text
    assert streamed == resident


def test_splits_above_the_resident_threshold_stream(digits, caplog):
    caplog.set_level("INFO")
    fitted(digits.override({"train.data_path": "auto", "train.resident_max_mb": 0.05, "train.max_epochs": 1}))
    assert "data: DataLoader with 2 workers on cpu (splits 0 MiB" in caplog.text  # digits: 0.13 MB
    caplog.clear()
    fitted(digits.override({"train.data_path": "auto", "train.resident_max_mb": 1, "train.max_epochs": 1}))
    assert "data: resident on cpu" in caplog.text


def test_auto_path_streams_splits_that_do_not_fit_the_device(digits, monkeypatch, caplog):
    assert choose_path("auto", needed=100, free=1000) == "resident"
    assert choose_path("auto", needed=600, free=1000) == "loader"
    assert choose_path("resident", needed=600, free=1000) == "resident"  # an explicit choice is kept
    monkeypatch.setattr(prepared, "free_memory", lambda device: 1024)  # a device with 1 KiB free
    caplog.set_level("INFO")
    metrics, _ = fitted(digits.override({"train.data_path": "auto", "train.max_epochs": 2}))
    assert "data: DataLoader with 2 workers on cpu" in caplog.text
    assert math.isfinite(metrics["best_val_loss"])


# --- exact speed-ups -------------------------------------------------------------------------


def test_monitors_do_not_change_the_training(digits):
    assert fitted(digits) == fitted(digits.override(MONITORS_OFF))


@pytest.mark.slow
def test_several_steps_per_batch_train_exactly_as_one(digits):
    """1,222 training images in steps of 64: 20 steps, in batches of 7, 7 and 6 steps with 7 per call;
    the 228 validation images in 4 pieces of one batch. Same samples, same steps, same numbers."""
    one_step = fitted(digits.override({"train.steps_per_call": 1}))
    assert fitted(digits.override({"train.steps_per_call": 7})) == one_step
    assert fitted(digits.override({"train.steps_per_call": 1024})) == one_step  # one batch per epoch


class BackwardListener(Callback):
    def __init__(self) -> None:
        self.calls = 0

    def on_after_backward(self, trainer, pl_module) -> None:
        self.calls += 1


def test_the_plain_backward_trains_as_lightnings(digits):
    """Where nothing listens to the backward hooks the module calls autograd itself; with a listener,
    Lightning's backward, which calls it on every step. Both train alike."""
    params = digits.override({"train.max_epochs": 3, **MONITORS_OFF})

    def train(*callbacks: Callback) -> tuple[list[dict], bool]:
        seed_everything(params.seed)
        history = History()
        trainer = make_trainer(params, callbacks=[history, *callbacks])
        trainer.fit(build_model(params, load_meta()), datamodule=PreparedData.from_params(params))
        return history.rows, backward_is_plain_autograd(trainer)

    listener = BackwardListener()
    plain, hooked = train(), train(listener)
    assert plain[1] and not hooked[1]
    assert listener.calls == 3 * math.ceil(load_meta()["sizes"]["train"] / params.train.batch_size)  # every step
    assert hooked[0] == plain[0]


def test_epoch_metrics_are_the_sample_weighted_means_of_the_batches(digits):
    """Metrics are summed on the device and logged once per epoch: check them against a direct evaluation
    of the checkpoint (before averaging starts, so the checkpoint holds the validated weights)."""
    from litpipe.data.prepared import load_split
    from litpipe.models.lit_model import LitModel

    params = digits.override({"train.max_epochs": 3, "train.swa_epoch_start": 1.0, "train.batch_size": 100})
    metrics, _ = fitted(params)
    model = LitModel.load_from_checkpoint(paths.BEST_CKPT, map_location="cpu").eval()
    val = load_split("val")  # 228 samples: batches of 100, 100 and 28 must be weighted by size
    with torch.no_grad():
        logits = model(val.x)
    assert metrics["best_val_loss"] == pytest.approx(F.cross_entropy(logits, val.y).item(), rel=1e-5)
    assert metrics["best_val_acc"] == pytest.approx((logits.argmax(1) == val.y).float().mean().item(), abs=1e-6)


def test_gradient_norms_match_a_direct_computation():
    torch.manual_seed(0)
    net = MLP((1, 8, 8), num_classes=10, width=16, depth=2, dropout=0.0)
    F.cross_entropy(net(torch.randn(32, 1, 8, 8)), torch.randint(0, 10, (32,))).backward()
    norms = gradient_norms(net)
    for layer in ("hidden.hidden1.0", "hidden.hidden2.0", "head"):
        module = net.get_submodule(layer)
        expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in module.parameters()))
        assert norms[f"grad_norm/{layer}"] == pytest.approx(expected, rel=1e-5)
    total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in net.parameters()))
    assert norms["grad_norm/total"] == pytest.approx(total, rel=1e-5)


def test_bf16_mixed_precision_trains_on_the_cpu(digits):
    metrics, _ = fitted(digits.override({"train.precision": "bf16-mixed", "train.max_epochs": 3}))
    assert metrics["best_val_acc"] > 0.5


@pytest.mark.slow
def test_compiled_network_trains_to_the_eager_numbers(digits):
    params = digits.override({"train.max_epochs": 2, "model.kwargs.mlp.dropout": 0.0, **MONITORS_OFF})
    eager, _ = fitted(params)
    compiled, _ = fitted(params.override({"train.compile": True}))
    assert compiled["best_val_loss"] == pytest.approx(eager["best_val_loss"], rel=1e-3)


# --- cores -----------------------------------------------------------------------------------


def physical_cores_of_this_process() -> int:
    """One thread per physical core this process may run on (what `litpipe bench`, a child, inherits), read
    from the kernel's CPU topology; no more than OMP_NUM_THREADS when that is set."""
    cores = set()
    for cpu in os.sched_getaffinity(0):
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        cores.add(tuple((topology / name).read_text().strip() for name in ("physical_package_id", "core_id")))
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return min(len(cores), int(limit)) if limit.isdigit() else len(cores)


def test_cpu_shares_are_disjoint_and_fall_back_to_one_core_each():
    cpus = sorted(os.sched_getaffinity(0))
    assert resources.available_cpus() == cpus
    shares = resources.cpu_shares(len(cpus))
    assert sorted(cpu for share in shares for cpu in share) == cpus
    if len(cpus) >= 2:
        halves = resources.cpu_shares(2)
        assert not set(halves[0]) & set(halves[1]) and len(halves[0]) == len(halves[1])
    crowded = resources.cpu_shares(len(cpus) + 1)
    assert all(len(share) == 1 for share in crowded) and crowded[-1] == crowded[0]


def test_a_worker_keeps_to_its_share_of_cores():
    """In a fresh process, as `litpipe search` starts its workers: pinned to its cores, one thread each."""
    share = resources.available_cpus()[:1]
    env = {**tool_env(), **resources.worker_environment(0, share, gpus=[])}
    probe = "import json, os, torch; from litpipe import resources; threads = resources.use_cpu_share(); "
    probe += "print(json.dumps([sorted(os.sched_getaffinity(0)), threads, torch.get_num_threads()]))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [share, 1, 1]


# --- litpipe bench ---------------------------------------------------------------------------


def bench(*args: str, timeout: int = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`litpipe bench ...` as a user runs it; it must succeed."""
    command = ["litpipe", "bench", *args]
    result = subprocess.run(command, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_bench_times_both_loops_and_reports_what_ran(digits, tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = bench("--epochs", "2", "-S", "train.batch_size=128")
    report = json.loads(result.stdout)  # the JSON alone on stdout; progress went to stderr
    assert "plain epoch 2" in result.stderr
    assert report["batch_size"] == 128 and report["data_path"] == "resident" and report["device"].startswith("cpu")
    assert report["steps_per_epoch"] == math.ceil(report["train_samples"] / 128)
    # One run of each fit variant with 1 epoch timed, each paired with the plain epoch run just before it.
    plain, fitted, monitors_off = (report["epoch_s"][name] for name in ("plain", "litpipe", "litpipe_monitors_off"))
    assert [len(run) for run in plain + fitted + monitors_off] == [1, 1, 1, 1] and min(min(plain), min(fitted)) > [0]
    assert report["ratio"] == pytest.approx(fitted[0][0] / plain[0][0], rel=2e-3)
    assert report["ratio_monitors_off"] == pytest.approx(monitors_off[0][0] / plain[1][0], rel=2e-3)
    assert report["threads"] == physical_cores_of_this_process()
    assert not (tmp_path / "models").exists() and not (tmp_path / "tb").exists()  # ran in a scratch directory


@pytest.mark.slow
def test_bench_takes_any_network_on_cifar_shaped_data(tmp_path):
    """resnet18 on CIFAR-10-shaped synthetic images: the bench prepares them itself and times the same two loops.
    Small, to be quick on a CPU: 128 training images (data.train_images), resized to 8 pixels, few to validate."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    settings = [
        "model.arch=resnet18",
        "data.train_images=128",
        "data.image_size=8",
        "data.val_fraction=0.01",
        "observe.probe_size=16",
    ]
    result = bench("--synthetic", "cifar10", "--epochs", "2", *(f"-S{s}" for s in settings), cwd=tmp_path)
    report = json.loads(result.stdout)
    assert report["dataset"] == "synthetic_cifar10" and report["input_shape"] == [3, 8, 8]
    assert report["train_samples"] == 128 and report["steps_per_epoch"] == 2  # batches of 64
    assert report["model"] == {"arch": "resnet18", "kwargs": {}, "stem": "auto", "weights": None}
    assert report["ratio"] > 0 and [len(run) for run in report["epoch_s"]["litpipe"]] == [1]


@pytest.mark.slow
def test_bench_search_counts_trials_per_minute_for_one_and_n_workers(digits, tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = bench("--search", "2", "--points", "2", "--epochs", "2", timeout=900)
    report = json.loads(result.stdout)
    assert set(report["search_trials_per_min"]) == {"1", "2"} and report["trials"] == 2
    rates = report["search_trials_per_min"]
    assert report["speedup"] == pytest.approx(rates["2"] / rates["1"], abs=1e-2)
    assert "litpipe search: 2 trials of 2 epochs with 2 worker(s)" in result.stderr


@pytest.mark.slow
def test_bench_refuses_bad_arguments_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = subprocess.run(
        ["litpipe", "bench", "--epochs", "1"], cwd=tmp_path, env=tool_env(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--epochs must be at least 2" in result.stderr
    for bad, message in [
        ("train.batch_size=0", "train.batch_size: input should be greater than or equal to 1"),
        ("train.precison=bf16-mixed", "train.precison: unknown key"),
        ("trian.batch_size=8", "trian: unknown key"),
        ("seed.x=1", "seed.x: seed is a value, not a section"),
        ("train.batch_size", "expected KEY=VALUE"),
    ]:
        result = subprocess.run(
            ["litpipe", "bench", "-S", bad], cwd=tmp_path, env=tool_env(), capture_output=True, text=True, check=False
        )
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    result = subprocess.run(
        ["litpipe", "bench"], cwd=tmp_path, env=tool_env(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 1 and "run `litpipe prepare`" in result.stderr and "Traceback" not in result.stderr
    assert os.path.exists(tmp_path / "logs" / "bench.log")
