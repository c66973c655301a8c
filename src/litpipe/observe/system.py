"""What the run ran on and from: hardware, package versions, git commit."""

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version

import psutil
import torch

PACKAGES = ("torch", "torchvision", "lightning", "optuna", "tensorboard", "numpy", "pandas", "dvc", "snakemake")


def system_info() -> dict[str, str]:
    info = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "cuda": torch.version.cuda or "none",
        "gpus": ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none",
    }
    for package in PACKAGES:
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "not installed"
    return info


def git_state() -> dict[str, str | bool]:
    """The commit the code came from and whether tracked files differed from it."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False)

    commit = git("rev-parse", "HEAD")
    if commit.returncode != 0:
        return {"commit": "unknown (not a git checkout)", "dirty": False}
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
    return {"commit": commit.stdout.strip(), "dirty": dirty}


def markdown_table(rows: dict[str, object]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in rows.items())
