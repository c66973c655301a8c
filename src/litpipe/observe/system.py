"""What the run ran on and from: hardware, package versions, git commit."""

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version

import psutil
import torch

from litpipe import dag

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


def git_state() -> dict[str, str | bool | list[str]]:
    """The commit the code came from, and whether the code, params or data differed from it: the files
    that did (new files included), not counting what the pipeline itself writes (its outputs and
    dvc.lock), which every run rewrites before the report reads this."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False)

    commit = git("rev-parse", "HEAD")
    if commit.returncode != 0:
        return {"commit": "unknown (not a git checkout)", "dirty": False, "changed": []}
    changed, ours = [], dag.written_by_pipeline()
    entries = iter(git("status", "--porcelain", "-z", "--untracked-files=all").stdout.split("\0"))
    for entry in entries:  # "XY path"; a rename or copy is followed by the path it came from
        if len(entry) < 4:
            continue
        if "R" in entry[:2] or "C" in entry[:2]:
            next(entries, None)
        if not ours(entry[3:]):
            changed.append(entry[3:])
    return {"commit": commit.stdout.strip(), "dirty": bool(changed), "changed": changed}


def markdown_table(rows: dict[str, object]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in rows.items())
