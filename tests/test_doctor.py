"""`litpipe doctor`: a row per check, a failure only for what the params need, each problem with its fix.

The CLI runs for real in a copy of the repository (this machine's GPUs, SLURM, DVC and a PostgreSQL server);
the package comparison is checked on lock texts written here, since the environment itself is the lock's.
"""

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import sqlalchemy
import torch

from litpipe import doctor
from litpipe.config import load_params

from . import test_search
from .helpers import ROOT, copy_repo, edit_params, require_tool, run
from .test_workflow import slurm_cluster

postgres = test_search.postgres  # the real PostgreSQL server the search's tests start

CHECKS = ["params", "packages", "gpu", "cuda", "slurm", "slurm env", "dvc remote", "dvc cache", "search storage"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("doctor"))


def litpipe_doctor(repo: Path, *changes: str) -> subprocess.CompletedProcess:
    return run([require_tool("litpipe"), "doctor", *changes], repo, check=False, timeout=120)


def rows(stdout: str) -> list[list[str]]:
    """The table's rows, each [check, status, found, fix] (fix absent where there is none)."""
    lines = stdout.strip().split("\n")
    assert lines[0].split() == ["CHECK", "STATUS", "FOUND", "FIX"], stdout
    return [re.split(r"\s{2,}", line) for line in lines[1:-1]]


def failed(stdout: str) -> list[list[str]]:
    return [row for row in rows(stdout) if row[1] == "fail"]


def gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the command ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_params_pass_with_a_row_for_each_check(repo):
    result = litpipe_doctor(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    found = rows(result.stdout)
    assert sorted({row[0] for row in found}, key=CHECKS.index) == CHECKS
    assert all(row[1] in ("ok", "info", "warn") for row in found), result.stdout
    assert all(len(row) == 4 for row in found if row[1] == "warn"), f"a warning without its fix:\n{result.stdout}"
    summary = result.stdout.strip().split("\n")[-1]
    assert summary.startswith(f"{len(found)} checks: ") and summary.endswith("nothing the params need is missing")


@pytest.mark.slow
@pytest.mark.parametrize("given", ["in params.yaml", "with -S"])
def test_gpu_params_without_the_gpus_fail_in_one_line(repo, tmp_path, given):
    """train.accelerator: gpu where torch sees no GPU (or more train.devices than it sees) exits 1, saying so in
    the gpu row alone, with its fix; -S leaves params.yaml as it is."""
    count = gpus()
    changes = {"train.accelerator": "gpu"} | ({"train.devices": count + 1, "train.strategy": "ddp"} if count else {})
    before = (repo / "params.yaml").read_text()
    if given == "in params.yaml":
        shutil.copy(repo / "params.yaml", tmp_path / "params.yaml")
        edit_params(tmp_path, changes)
        result = run([require_tool("litpipe"), "--params", str(tmp_path / "params.yaml"), "doctor"], repo, check=False)
    else:
        result = litpipe_doctor(repo, *[word for key, value in changes.items() for word in ("-S", f"{key}={value}")])
    assert result.returncode == 1, result.stdout + result.stderr
    [row] = failed(result.stdout)
    assert row[0] == "gpu" and len(row) == 4, row
    expected = "this machine has no CUDA GPU" if count == 0 else f"but this machine has {count} CUDA GPU(s)"
    assert expected in row[2], row
    assert sum(expected in line for line in result.stdout.split("\n")) == 1, result.stdout
    assert result.stdout.strip().split("\n")[-1].endswith("failed: gpu")
    assert (repo / "params.yaml").read_text() == before


@pytest.mark.slow
def test_an_unreachable_database_fails_in_one_row_with_its_fix(repo):
    url = f"postgresql://litpipe:secret@127.0.0.1:{free_port()}/litpipe"
    result = litpipe_doctor(repo, "-S", f"search.storage={url}")
    assert result.returncode == 1, result.stdout + result.stderr
    [row] = failed(result.stdout)
    assert row[0] == "search storage" and "cannot be reached" in row[2] and "refused" in row[2], row
    assert "start the database server" in row[3], row
    assert "secret" not in result.stdout + result.stderr, "the password is shown"
    # Not needed when the search is off: a warning, and the command succeeds.
    off = litpipe_doctor(repo, "-S", f"search.storage={url}", "-S", "search.enabled=false")
    assert off.returncode == 0 and not failed(off.stdout), off.stdout


@pytest.mark.slow
def test_a_reachable_database_passes_and_is_left_as_it_was(repo, postgres):
    result = litpipe_doctor(repo, "-S", f"search.storage={postgres}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [row[:2] for row in rows(result.stdout) if row[0] == "search storage"] == [["search storage", "ok"]]
    engine = sqlalchemy.create_engine(postgres)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == [], "doctor created tables"
    finally:
        engine.dispose()


@pytest.mark.slow
def test_params_that_fail_validation_are_the_first_row_and_the_rest_still_runs(repo):
    result = litpipe_doctor(repo, "-S", "train.devices=0")
    assert result.returncode == 1
    found = rows(result.stdout)
    assert found[0][:2] == ["params", "fail"] and "train.devices" in found[0][2], found[0]
    assert {"packages", "slurm", "dvc remote"} <= {row[0] for row in found}


# --- the checks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        (["train.devices=0"], "-S train.devices: input should be greater than or equal to 1 (got 0)"),
        (["no_equals_sign"], "-S 'no_equals_sign': expected KEY=VALUE"),
        (["search.storage=postgres"], "-S search.storage: 'journal' or a database URL"),
    ],
)
def test_params_that_fail_validation_fail_with_the_config_error(changes, message):
    params, row = doctor.checked_params(str(ROOT / "params.yaml"), changes)
    assert params is None and row.status == "fail" and row.found.startswith(message), row
    assert row.fix


def test_a_broken_params_file_is_its_error(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 0\nseed: 1\n")
    params, row = doctor.checked_params(str(tmp_path / "params.yaml"), [])
    assert params is None and row.status == "fail" and "seed" in row.found, row


def test_the_params_row_names_the_changed_keys_not_their_values():
    params, row = doctor.checked_params(
        str(ROOT / "params.yaml"), ["search.storage=postgresql://u:secret@db/x", "train.batch_size=32"]
    )
    assert params.train.batch_size == 32 and row.status == "ok"
    assert "search.storage, train.batch_size" in row.found and "secret" not in row.found


def test_a_version_other_than_the_locks_warns_naming_both():
    installed = doctor.installed_version("numpy")
    found = doctor.package_rows("numpy==0.0.1\nscipy==" + doctor.installed_version("scipy") + "\n", set())
    assert [(row.status, row.found) for row in found] == [
        ("warn", f"not as requirements.lock pins them: numpy {installed} (locked 0.0.1)")
    ]
    assert "pip install -r requirements.lock" in found[0].fix


def test_a_local_build_tag_matches_a_pin_without_one():
    version = doctor.installed_version("numpy")
    assert doctor.pinned_as(f"{version}+cpu", version) and not doctor.pinned_as(version, f"{version}+cu130")
    assert doctor.package_rows(f"numpy=={version}\n", set())[0].status == "ok"


def test_a_needed_package_not_installed_fails_and_an_optional_one_warns():
    lock = "no-such-package-litpipe==1.0\nanother-absent-package==2.0\n"
    found = doctor.package_rows(lock, {"no-such-package-litpipe"})
    assert [(row.status, row.found) for row in found] == [
        ("fail", "not installed: no-such-package-litpipe"),
        ("warn", "locked, not installed (optional): another-absent-package"),
    ]


def test_lock_lines_for_another_platform_and_options_are_not_compared():
    lock = "# comment\n--extra-index-url https://example.invalid\nnumpy==0.0.1 ; sys_platform == 'no-such-os'\n"
    assert doctor.locked_versions(lock) == {}
    assert [row.status for row in doctor.package_rows(lock, set())] == ["ok"]


def test_the_lock_of_this_repository_is_what_is_installed(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert [row.status for row in doctor.packages(load_params(ROOT / "params.yaml"))] == ["ok"]


def test_what_litpipe_needs_is_its_requirements_followed_and_the_extras_the_params_use():
    needed = doctor.needed_packages(set())
    assert {"torch", "lightning", "optuna", "dvc", "numpy", "sqlalchemy"} <= needed  # numpy, sqlalchemy: indirect
    assert not {"pytest", "psycopg2-binary", "wandb"} & needed
    assert "psycopg2-binary" in doctor.needed_packages({"postgres"})
    params = load_params(ROOT / "params.yaml").override({"search.storage": "postgresql://db/x", "observe.wandb": True})
    assert doctor.extras_used(params) == {"postgres", "wandb"}


NVIDIA_SMI = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.90.07              Driver Version: 550.90.07      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""


def test_the_drivers_cuda_version_against_torchs_build():
    assert doctor.driver_cuda(NVIDIA_SMI) == "12.4"
    assert doctor.driver_cuda("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver") is None
    assert doctor.runs_on("12.1", "12.4") and doctor.runs_on("12.8", "12.4")  # minor version compatibility
    assert doctor.runs_on("11.8", "12.4") and not doctor.runs_on("13.0", "12.9")


def test_the_cuda_row_names_the_build_and_never_fails():
    for accelerator in ("auto", "gpu"):
        params = load_params(ROOT / "params.yaml").override({"train.accelerator": accelerator})
        [row] = doctor.cuda(params)
        assert row.status != "fail" and (torch.version.cuda or "CPU build") in row.found, row


def test_slurm_rows_name_the_settings_and_check_the_partition(monkeypatch):
    slurm_cluster()
    partitions = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout
    partition = partitions.split()[0].rstrip("*")
    for name in doctor.SLURM_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    params = load_params(ROOT / "params.yaml")

    reachable, settings = doctor.slurm(params)
    assert reachable.status == "ok" and "UP" in reachable.found, reachable
    assert settings.status == "ok" and "default partition" in settings.found, settings

    monkeypatch.setenv("LITPIPE_SLURM_PARTITION", partition)
    monkeypatch.setenv("LITPIPE_SLURM_ACCOUNT", "lab")
    _, settings = doctor.slurm(params)
    assert (
        settings.status == "ok" and f"LITPIPE_SLURM_PARTITION={partition}, LITPIPE_SLURM_ACCOUNT=lab" in settings.found
    )

    monkeypatch.setenv("LITPIPE_SLURM_PARTITION", "no-such-partition")
    _, settings = doctor.slurm(params)
    assert settings.status == "warn" and "no-such-partition does not exist" in settings.found, settings
    assert partition in settings.fix, settings

    monkeypatch.setenv("LITPIPE_SLURM_PARTITION", partition)
    monkeypatch.setenv("LITPIPE_GPUS", "two")
    assert doctor.slurm(params)[1].status == "warn"

    monkeypatch.delenv("LITPIPE_GPUS")
    _, settings = doctor.slurm(params.override({"train.accelerator": "gpu"}))
    assert settings.status == "warn" and "jobs would get no GPU" in settings.found and "LITPIPE_GPUS" in settings.fix


@pytest.mark.slow
def test_dvc_remote_rows(tmp_path, monkeypatch):
    dvc = require_tool("dvc")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    monkeypatch.chdir(workspace)
    run([dvc, "init", "--no-scm", "-q"], workspace)
    [row] = doctor.dvc_remote(None)
    assert row.status == "warn" and "no DVC remote configured" in row.found and "dvc remote add -d" in row.fix

    storage = tmp_path / "storage"
    run([dvc, "remote", "add", "-d", "storage", str(storage)], workspace)
    [row] = doctor.dvc_remote(None)
    assert row.status == "warn" and f"storage: {storage}: does not exist" in row.found, row
    assert "dvc remote modify --local storage url" in row.fix

    storage.mkdir()
    [row] = doctor.dvc_remote(None)
    assert row.status == "ok" and "writable" in row.found, row

    port = free_port()
    run([dvc, "remote", "add", "-d", "--force", "server", f"ssh://127.0.0.1:{port}/dvc"], workspace)
    [row] = doctor.dvc_remote(None)
    assert row.status == "warn" and f"127.0.0.1:{port} cannot be reached" in row.found, row

    [row] = doctor.dvc_cache(None)
    assert row.status == "ok" and str(workspace / ".dvc" / "cache") in row.found and "free" in row.found, row
