"""How litpipe processes share a machine: each its own CPU cores, GPUs round-robin, CUDA MPS when
several search workers share a GPU.

Every `litpipe` command runs one thread per core it was given: its CPU affinity, which SLURM sets to
the job's allocation (torch would otherwise start a thread per core of the whole node), and no more
than OMP_NUM_THREADS when a scheduler sets it. `litpipe search`
splits its cores between the workers it starts and hands each its share in the environment.
"""

import logging
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import torch

log = logging.getLogger(__name__)

WORKER_CPUS = "LITPIPE_WORKER_CPUS"  # the cores a local worker may use, e.g. "0,1"
MPS_CONTROL = "nvidia-cuda-mps-control"


def available_cpus() -> list[int]:
    """The cores this process may run on (its affinity: a SLURM job's allocation, a taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_shares(workers: int) -> list[list[int]]:
    """Disjoint, equal sets of cores for `workers` processes; with more workers than cores, one core each,
    in turn. Workers on separate cores run as fast as one alone; oversubscribed, all slow down."""
    cpus = available_cpus()
    if workers >= len(cpus):
        return [[cpus[index % len(cpus)]] for index in range(workers)]
    size = len(cpus) // workers
    return [cpus[index * size : (index + 1) * size] for index in range(workers)]


def worker_environment(index: int, share: list[int], gpus: list[str]) -> dict[str, str]:
    """What worker `index` runs with: its cores, as many threads, and its GPU (round-robin)."""
    threads = str(threads_for(share))  # also bounds the thread pools of numpy's and scikit-learn's libraries
    env = {WORKER_CPUS: ",".join(map(str, share)), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as CUDA_VISIBLE_DEVICES names them (so a worker's choice maps to the same GPU)."""
    count = torch.cuda.device_count()
    if count == 0:
        return []
    listed = [name.strip() for name in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if name.strip()]
    return listed[:count] if listed else [str(index) for index in range(count)]


def use_cpu_share() -> int:
    """Keep to the cores this process was given (a launcher's share, else its affinity), one thread per
    physical core among them, and no more than OMP_NUM_THREADS where a scheduler set it (Snakemake sets
    it to the rule's threads). Returns the number of threads."""
    given = os.environ.get(WORKER_CPUS)
    return use_cpus([int(cpu) for cpu in given.split(",")] if given else available_cpus(), pin=bool(given))


def use_cpus(cpus: list[int], pin: bool = True) -> int:
    """Run on these cores (pinned to them), one thread per physical core; the number of threads."""
    if pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    threads = threads_for(cpus)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
    torch.set_num_threads(threads)
    return threads


def exit_reason(code: int) -> str:
    """A child process's exit status in words: "code 1", "signal SIGKILL"."""
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"


def threads_for(cpus: list[int]) -> int:
    """One thread per physical core: hyperthreads share a core's arithmetic units, a second thread on
    them only adds contention."""
    logical = psutil.cpu_count() or 1
    per_core = max(1, logical // (psutil.cpu_count(logical=False) or logical))
    return max(1, len(cpus) // per_core)


@contextmanager
def cuda_mps(workers_per_gpu: int, setting: str) -> Iterator[dict[str, str]]:
    """Several processes on one GPU take turns on it; under CUDA MPS their kernels run side by side.

    With `setting` "auto", more than one worker per GPU and MPS installed, start a private MPS control
    daemon (its own pipe directory, so no other user's or job's daemon is touched) for the workers and
    stop it afterwards. An MPS daemon that is already running (CUDA_MPS_PIPE_DIRECTORY set, as a cluster
    sets it for `--gres=mps`) is used as it is. Yields the environment the workers need.
    """
    if setting == "off" or workers_per_gpu <= 1:
        yield {}
        return
    if os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        log.info("CUDA MPS: using the running daemon at %s", os.environ["CUDA_MPS_PIPE_DIRECTORY"])
        yield {}
        return
    if shutil.which(MPS_CONTROL) is None:
        log.info("CUDA MPS is not installed (%s): %d workers per GPU take turns on it", MPS_CONTROL, workers_per_gpu)
        yield {}
        return
    with tempfile.TemporaryDirectory(prefix="litpipe-mps-") as directory:
        env = {"CUDA_MPS_PIPE_DIRECTORY": f"{directory}/pipe", "CUDA_MPS_LOG_DIRECTORY": f"{directory}/log"}
        for path in env.values():
            os.makedirs(path)
        daemon_env = {**os.environ, **env}
        started = subprocess.run([MPS_CONTROL, "-d"], env=daemon_env, capture_output=True, text=True, check=False)
        if started.returncode != 0:
            log.warning("CUDA MPS did not start (%s); workers take turns on the GPU", started.stderr.strip())
            yield {}
            return
        log.info("CUDA MPS: started a daemon for %d workers per GPU", workers_per_gpu)
        try:
            yield env
        finally:
            subprocess.run([MPS_CONTROL], input="quit\n", env=daemon_env, capture_output=True, text=True, check=False)


def missing_device(accelerator: str, devices: int) -> str | None:
    """Why `devices` devices of `accelerator` (train.accelerator) cannot be had on this machine, in one
    line; None when they can. Asked before a stage opens its log, so a wrong device changes nothing."""
    where = f"train.accelerator: {accelerator}"
    if accelerator in ("gpu", "cuda"):
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if found == 0:
            return f"{where}, but this machine has no CUDA GPU (torch sees none); use auto or cpu"
        if devices > found:
            return f"{where} with train.devices: {devices}, but this machine has {found} CUDA GPU(s)"
    if accelerator == "mps" and not torch.backends.mps.is_available():
        return f"{where}, but this machine has no Apple GPU (torch.backends.mps is not available); use auto or cpu"
    return None


CGROUP = Path("/sys/fs/cgroup")
NO_LIMIT = 2**60  # what cgroup v1 reports for "unlimited" (9223372036854771712), and above


def memory_available() -> int:
    """Bytes of memory this process can still take: the machine's available RAM, or less when a cgroup limits
    it (a SLURM job's --mem, a container), which psutil does not see: it reports the whole node's."""
    available = psutil.virtual_memory().available
    for limit, usage, reclaimable in _cgroup_memory():
        available = min(available, limit - usage + reclaimable)
    return max(0, available)


def _cgroup_memory() -> Iterator[tuple[int, int, int]]:
    """(limit, usage, reclaimable page cache) of each cgroup above this process that has a memory limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return  # not Linux
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            files, directory = ("memory.max", "memory.current", "inactive_file"), CGROUP / path.lstrip("/")
        elif "memory" in controllers.split(","):  # cgroup v1
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
            directory = CGROUP / controllers / path.lstrip("/")
        else:
            continue
        while directory.is_relative_to(CGROUP) and directory != CGROUP:
            limit = _read_number(directory / files[0])
            if limit is not None and limit < NO_LIMIT:
                usage = _read_number(directory / files[1]) or 0
                yield limit, usage, _stat(directory / "memory.stat", files[2])
            directory = directory.parent


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # v2 writes "max" for no limit


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except OSError:
        pass
    return 0
