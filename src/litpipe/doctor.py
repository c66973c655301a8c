"""`litpipe doctor`: whether this machine has what the current params need, one table row per check.

Each check returns rows (the check, ok/info/warn/fail, what it found, the fix). Only what the params need fails:
a GPU for train.accelerator gpu, more GPUs than train.devices, a search database that cannot be reached, a
package litpipe (or an extra the params use) cannot run without. What a workflow may do without (SLURM on a
laptop, a DVC remote, a package that differs from requirements.lock) warns. Nothing is created or changed: the
database is only connected to, DVC and SLURM only asked; every command gets a few seconds.
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from urllib.parse import urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion

from litpipe import dag, paths
from litpipe.bench import overrides
from litpipe.config import Params, load_params
from litpipe.errors import ConfigError

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
TIMEOUT = 5  # seconds for each command or connection: a doctor that hangs on a dead server helps nobody
LOCK = Path("requirements.lock")
REINSTALL = f"pip install -r {LOCK} -e . (in the activated .venv)"
SLURM_SETTINGS = (
    "LITPIPE_SLURM_PARTITION",
    "LITPIPE_SLURM_ACCOUNT",
    "LITPIPE_SLURM_QOS",
    "LITPIPE_GPUS",
    "LITPIPE_GPU_MODEL",
)
# The schemes of DVC remotes on a host that a TCP connection can reach without credentials, and their ports.
HOST_PORTS = {"ssh": 22, "http": 80, "https": 443, "webdav": 80, "webdavs": 443, "hdfs": 8020}
SHOWN_NAMES = 4  # packages named in a row; the rest counted


@dataclass(frozen=True)
class Row:
    check: str
    status: str  # OK, INFO, WARN or FAIL
    found: str
    fix: str = ""


def main(args: argparse.Namespace) -> int:
    """`litpipe doctor`: the table on stdout, then a one-line summary; 1 when something the params need is
    missing."""
    rows = diagnose(args.params, args.set)
    print(table(rows))
    print(summary(rows))
    return 1 if any(row.status == FAIL for row in rows) else 0


def diagnose(params_file: str, assignments: list[str]) -> list[Row]:
    """Every check's rows, the params' first: with params that fail validation, the checks that read them
    report what they can without."""
    params, first = checked_params(params_file, assignments)
    rows = [first]
    for check in CHECKS:
        rows += check(params)
    return rows


def checked_params(params_file: str, assignments: list[str]) -> tuple[Params | None, Row]:
    """The params with the -S changes, and their row; None with a failing row when they do not validate."""
    fix = "correct that key (README: Parameters)"
    try:
        params = load_params(params_file)
        changes = overrides(assignments)
    except ConfigError as error:
        return None, Row("params", FAIL, str(error), fix)
    try:
        params = params.override(changes)
    except ConfigError as error:
        return None, Row("params", FAIL, f"-S {error}", fix)
    changed = f" with -S {', '.join(changes)}" if changes else ""  # keys only: a value may hold a password
    return params, Row("params", OK, f"{params_file}{changed}: valid")


def table(rows: list[Row]) -> str:
    header = Row("CHECK", "STATUS", "FOUND", "FIX")
    widths = [max(len(getattr(row, field)) for row in [header, *rows]) for field in ("check", "status", "found")]
    lines = []
    for row in [header, *rows]:
        cells = [row.check.ljust(widths[0]), row.status.ljust(widths[1])]
        cells.append(row.found.ljust(widths[2]) + "  " + row.fix if row.fix else row.found)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    counts = ", ".join(f"{sum(row.status == s for row in rows)} {s}" for s in (OK, INFO, WARN, FAIL))
    failed = [row.check for row in rows if row.status == FAIL]
    verdict = f"failed: {', '.join(failed)}" if failed else "nothing the params need is missing"
    return f"{len(rows)} checks: {counts}; {verdict}"


# --- packages ---------------------------------------------------------------------------------------------


def packages(params: Params | None) -> list[Row]:
    try:
        lock_text = LOCK.read_text()
    except OSError:
        return [Row("packages", WARN, f"{LOCK} not found", "run litpipe from the repository root")]
    return package_rows(lock_text, needed_packages(extras_used(params)))


def extras_used(params: Params | None) -> set[str]:
    """litpipe's optional extras (pyproject.toml) that the params use."""
    if params is None:
        return set()
    used = {"wandb"} if params.observe.wandb else set()
    return used | ({"postgres"} if params.search.storage.startswith("postgresql") else set())


def needed_packages(extras: set[str], root: str = "litpipe") -> set[str]:
    """The installed distribution `root` with `extras`, and what it needs, followed to the end: the packages
    litpipe cannot run without (normalized names)."""
    needed, todo, seen = set(), [(root, "")] + [(root, extra) for extra in extras], set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue  # missing: named by its parent, which is what the row reports
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                dependency = canonicalize_name(requirement.name)
                needed.add(dependency)
                todo += [(dependency, "")] + [(dependency, wanted) for wanted in requirement.extras]
    return needed


def locked_versions(lock_text: str) -> dict[str, str]:
    """Package -> version of the lock's lines whose platform marker holds here (the lock is for every platform)."""
    locked = {}
    for line in lock_text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue  # not a pin (an option line): pip reads it, nothing to compare
        pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if pins and (requirement.marker is None or requirement.marker.evaluate()):
            locked[canonicalize_name(requirement.name)] = pins[0]
    return locked


def package_rows(lock_text: str, needed: set[str]) -> list[Row]:
    """A failing row for a package in `needed` that is not installed; a warning for each locked package that is
    not installed or has another version; else one ok row."""
    locked = locked_versions(lock_text)
    installed = {name: installed_version(name) for name in needed | set(locked)}
    absent_needed = sorted(name for name in needed if installed[name] is None)
    absent_other = sorted(name for name in set(locked) - needed if installed[name] is None)
    differ = sorted(
        f"{name} {installed[name]} (locked {version})"
        for name, version in locked.items()
        if installed[name] is not None and not pinned_as(installed[name], version)
    )
    rows = []
    if absent_needed:
        rows.append(Row("packages", FAIL, f"not installed: {names(absent_needed)}", REINSTALL))
    if absent_other:
        rows.append(Row("packages", WARN, f"locked, not installed (optional): {names(absent_other)}", REINSTALL))
    if differ:
        rows.append(Row("packages", WARN, f"not as {LOCK} pins them: {names(differ)}", REINSTALL))
    return rows or [Row("packages", OK, f"{len(locked)} installed as {LOCK} pins them")]


def pinned_as(installed: str, locked: str) -> bool:
    """`==locked` as pip reads it: a local build tag (torch's 2.6.0+cpu) matches a pin without one."""
    try:
        return SpecifierSet(f"=={locked}").contains(installed, prereleases=True)
    except InvalidVersion:  # a legacy version string: only the same string matches
        return installed == locked


def installed_version(name: str) -> str | None:
    try:
        return distribution(name).version
    except PackageNotFoundError:
        return None


def names(items: list[str]) -> str:
    more = len(items) - SHOWN_NAMES
    return ", ".join(items[:SHOWN_NAMES]) + (f" and {more} more" if more > 0 else "")


# --- GPU and CUDA -----------------------------------------------------------------------------------------


def gpu(params: Params | None) -> list[Row]:
    """What train.accelerator and train.devices (the fit's devices) need, against the GPUs torch sees."""
    import torch  # only the GPU checks pay for importing it (seconds)

    from litpipe import resources

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    seen = f"torch sees {count} CUDA GPU(s)" + (f": {', '.join(gpu_names(count))}" if count else "")
    if params is None:
        return [Row("gpu", INFO, seen)]
    accelerator, devices = params.train.accelerator, params.train.devices
    missing = resources.missing_device(accelerator, devices)
    if not missing:
        return [Row("gpu", OK, f"train.accelerator: {accelerator}, train.devices: {devices}; {seen}")]
    if count and accelerator != "mps":
        fix = f"train.devices: {count} or fewer, or run where {devices} GPUs are"
    else:
        fix = "train.accelerator: auto (or cpu), or run where a GPU is (SLURM: LITPIPE_GPUS=1)"
    return [Row("gpu", FAIL, missing, fix)]


def gpu_names(count: int) -> list[str]:
    import torch

    return [torch.cuda.get_device_name(index) for index in range(count)]


def cuda(params: Params | None) -> list[Row]:
    """torch's CUDA build against the CUDA version the driver supports (nvidia-smi's header): a build newer than
    the driver sees no GPU. Informative unless the params train on a GPU."""
    import torch

    needed = params is not None and params.train.accelerator in ("gpu", "cuda")
    driver_here = shutil.which("nvidia-smi") is not None
    # The gpu row fails where the params need a GPU torch cannot use; this one says why. Where a driver is
    # installed, train.accelerator: auto silently training on the CPU is worth a warning too.
    problem = WARN if needed or driver_here else INFO
    built = torch.version.cuda
    if built is None:
        return [Row("cuda", problem, f"torch {torch.__version__} is a CPU build", "install a CUDA build of torch")]
    build = f"torch {torch.__version__} built for CUDA {built}"
    if not driver_here:
        return [Row("cuda", problem, f"{build}; nvidia-smi not found (no NVIDIA driver here)")]
    succeeded, text = output_of(["nvidia-smi"])
    driver = driver_cuda(text)
    if not succeeded or driver is None:
        return [Row("cuda", problem, f"{build}; nvidia-smi: {first_line(text)}", "check the NVIDIA driver")]
    if not runs_on(built, driver):
        fix = f"update the NVIDIA driver, or install torch built for CUDA {driver.split('.')[0]}.x"
        return [Row("cuda", WARN, f"{build}; the driver supports CUDA {driver} only", fix)]
    return [Row("cuda", OK, f"{build}; the driver supports CUDA {driver}")]


def driver_cuda(nvidia_smi: str) -> str | None:
    """The newest CUDA version the driver supports, from the header `nvidia-smi` prints ("CUDA Version: 12.4")."""
    found = re.search(r"CUDA Version:\s*(\d+\.\d+)", nvidia_smi)
    return found[1] if found else None


def runs_on(built: str, driver: str) -> bool:
    """Whether a build for CUDA `built` runs on a driver for CUDA `driver`: the driver's major version or an
    older one (CUDA's minor version compatibility covers a newer minor version within a major)."""
    return int(built.split(".")[0]) <= int(driver.split(".")[0])


# --- SLURM ------------------------------------------------------------------------------------------------


def slurm(params: Params | None) -> list[Row]:
    """SLURM's controller and where litpipe's jobs would go (the LITPIPE_SLURM_* settings of common.smk); SLURM
    serves `snakemake --profile slurm` only, so nothing here fails."""
    settings = {name: os.environ.get(name, "") for name in SLURM_SETTINGS}
    shown = ", ".join(f"{name}={value}" for name, value in settings.items() if value) or "no LITPIPE_SLURM_* set"
    if shutil.which("sinfo") is None:
        return [
            Row("slurm", INFO, "not installed (only snakemake --profile slurm needs it)"),
            Row("slurm env", INFO, shown),
        ]
    reachable, answer = output_of(["scontrol", "ping"])
    if not reachable or " DOWN" in answer:
        fix = "start slurmctld, or run on the cluster's login node"
        return [
            Row("slurm", WARN, f"controller not reachable: {first_line(answer)}", fix),
            Row("slurm env", INFO, shown),
        ]
    return [Row("slurm", OK, first_line(answer)), slurm_settings(settings, shown, params)]


def slurm_settings(settings: dict[str, str], shown: str, params: Params | None) -> Row:
    partition, gpus = settings["LITPIPE_SLURM_PARTITION"], settings["LITPIPE_GPUS"] or "0"
    if not gpus.isdigit():
        return Row(
            "slurm env", WARN, f"LITPIPE_GPUS={gpus} is not a count", "export LITPIPE_GPUS=N (0 on CPU clusters)"
        )
    if partition:
        _, found = output_of(["sinfo", "-h", "-p", partition, "-o", "%G"])
        if not found:
            _, listed = output_of(["sinfo", "-h", "-o", "%P"])
            fix = f"export LITPIPE_SLURM_PARTITION=one of: {', '.join(listed.split()).replace('*', '')}"
            return Row("slurm env", WARN, f"partition {partition} does not exist", fix)
        if int(gpus) and "gpu" not in found:
            fix = "choose a GPU partition, or LITPIPE_GPUS=0"
            return Row(
                "slurm env", WARN, f"LITPIPE_GPUS={gpus}, but partition {partition} has no GPUs (gres: {found})", fix
            )
    if params is not None and params.train.accelerator in ("gpu", "cuda") and not int(gpus):
        fix = "export LITPIPE_GPUS=1 (GPUs per search worker and for the fit)"
        return Row("slurm env", WARN, f"LITPIPE_GPUS is 0: SLURM jobs would get no GPU to train on ({shown})", fix)
    return Row("slurm env", OK, shown + ("" if partition else "; jobs go to the default partition"))


# --- DVC --------------------------------------------------------------------------------------------------


def dvc_remote(params: Params | None) -> list[Row]:
    """The default DVC remote (`dvc push` and `dvc pull`): a directory that can be written, a host that answers."""
    succeeded, text = output_of([dvc_program(), "config", "--list"])
    if not succeeded:
        return [Row("dvc remote", WARN, f"dvc config --list: {first_line(text)}", "run from the repository root")]
    # Each level (repository, --local, ...) in turn, the later one counting; paths already resolved.
    config = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
    remotes = {key.split(".")[1] for key in config if key.startswith("remote.")}
    default = config.get("core.remote")
    if default is None or f"remote.{default}.url" not in config:
        fix = "dvc remote add -d storage /shared/dvc-storage (or dvc remote default NAME)"
        listed = f"remotes {', '.join(sorted(remotes))}, none the default" if remotes else "no DVC remote configured"
        return [Row("dvc remote", WARN, f"{listed}: dvc push has nowhere to go", fix)]
    url = config[f"remote.{default}.url"]
    where = f"{default}: {url}"
    moved = f"dvc remote modify --local {default} url NEW"
    scheme = urlsplit(url).scheme
    if scheme in ("", "file"):
        return [local_remote(where, Path(urlsplit(url).path if scheme else url), moved)]
    host, port = urlsplit(url).hostname, urlsplit(url).port or HOST_PORTS.get(scheme)
    if host is None or port is None:
        return [Row("dvc remote", INFO, f"{where} (not checked here: dvc status -c contacts it)")]
    try:
        socket.create_connection((host, port), timeout=TIMEOUT).close()
    except OSError as error:
        return [
            Row(
                "dvc remote",
                WARN,
                f"{where}: {host}:{port} cannot be reached ({error})",
                f"check the network, or {moved}",
            )
        ]
    return [Row("dvc remote", OK, f"{where}: {host}:{port} answers")]


def local_remote(where: str, directory: Path, moved: str) -> Row:
    if directory.is_dir():
        if os.access(directory, os.W_OK):
            return Row("dvc remote", OK, f"{where}: writable, {gigabytes(free_space(directory))} free")
        return Row("dvc remote", WARN, f"{where}: not writable by this user", f"fix its permissions, or {moved}")
    # dvc push would make it, on whatever disk is there: an unmounted share would fill the local one.
    fix = f"mount or create it (mkdir -p {directory}), or {moved}"
    return Row("dvc remote", WARN, f"{where}: does not exist", fix)


def dvc_cache(params: Params | None) -> list[Row]:
    """Free space where DVC caches the outputs, against what the pipeline's outputs here already take."""
    succeeded, text = output_of([dvc_program(), "cache", "dir"])
    if not succeeded:
        return [Row("dvc cache", WARN, f"dvc cache dir: {first_line(text)}", "run from the repository root")]
    cache = Path(first_line(text))
    free = free_space(cache)
    outputs = sum(size_of(Path(path)) for path in pipeline_outputs())
    found = f"{cache}: {gigabytes(free)} free; the pipeline's outputs here take {gigabytes(outputs)}"
    if free < outputs:
        return [Row("dvc cache", WARN, found, "free space, or move it: dvc cache dir --local /bigger/disk")]
    return [Row("dvc cache", OK, found)]


def pipeline_outputs() -> set[str]:
    """What DVC caches: every stage's outputs in dvc.yaml and the raw data (tracked with dvc add)."""
    if not dag.DVC_YAML.is_file():
        return {str(paths.RAW)}
    return {str(paths.RAW)} | {path for stage in dag.load().values() for path in stage.outs + stage.persistent}


def dvc_program() -> str:
    """dvc from litpipe's own environment when it was run without activating it, else from PATH."""
    return shutil.which("dvc", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}") or "dvc"


# --- the search's database --------------------------------------------------------------------------------


def search_storage(params: Params | None) -> list[Row]:
    """A database in search.storage is connected to (nothing created); it fails the search when it cannot be."""
    if params is None:
        return []
    url = params.search.storage
    if url == "journal":
        return [Row("search storage", OK, f"journal: a file, {paths.STUDY_JOURNAL}")]
    from litpipe.search.study import without_password  # optuna: only for a database

    shown = without_password(url)
    problem = database_problem(url)
    if problem is None:
        return [Row("search storage", OK, f"{shown}: reachable")]
    reason, fix = problem
    if not params.search.enabled:
        return [Row("search storage", WARN, f"{shown} cannot be reached: {reason} (search.enabled: false)", fix)]
    return [Row("search storage", FAIL, f"{shown} cannot be reached: {reason}", fix)]


def database_problem(url: str) -> tuple[str, str] | None:
    """Why SQLAlchemy cannot connect to the database at `url`, in one line, and the fix; None when it can. An
    SQLite file is looked for rather than opened: opening one creates it."""
    import sqlalchemy
    import sqlalchemy.exc
    from sqlalchemy.pool import NullPool

    correct = "correct search.storage (or search.storage: journal)"
    if url.partition("://")[2].partition("/")[0].count("@") > 1:  # SQLAlchemy would read the password as the host
        return "'@' in the user name or password", "write '@' there as %40"
    try:
        parsed = sqlalchemy.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            return sqlite_problem(parsed.database)
        timeout = {"connect_timeout": TIMEOUT} if parsed.get_backend_name() in ("postgresql", "mysql") else {}
        engine = sqlalchemy.create_engine(parsed, poolclass=NullPool, connect_args=timeout)
    except ImportError as error:  # the dialect's driver package (psycopg2 for postgresql://)
        driver = getattr(error, "name", None) or "its driver"
        install = "pip install -e '.[postgres]'" if driver == "psycopg2" else f"install the package providing {driver}"
        return f"{driver} is not installed", f"{install}, or {correct}"
    except (sqlalchemy.exc.ArgumentError, ValueError):  # unparsable, an unknown dialect, a port not a number
        return "not a database URL SQLAlchemy can open", correct
    try:
        with engine.connect():
            return None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as error:  # refused, unknown host...
        reason = first_line(str(error.orig)) if error.orig is not None else type(error).__name__
        return reason, f"start the database server, or {correct}"
    finally:
        engine.dispose()


def sqlite_problem(database: str | None) -> tuple[str, str] | None:
    if not database or database == ":memory:":
        return None
    path = Path(database)
    if path.is_file() or os.access(path.parent, os.W_OK):
        return None
    return f"{path.parent} cannot be written (the search creates {path.name} there)", "mkdir -p it, or another path"


# --- helpers ----------------------------------------------------------------------------------------------


def output_of(command: list[str]) -> tuple[bool, str]:
    """(whether `command` succeeded, its output, or why it did not run), within TIMEOUT seconds."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return False, f"{command[0]} gave no answer in {TIMEOUT} s"
    except OSError as error:  # not installed, not executable
        return False, f"{command[0]}: {error.strerror}"
    if done.returncode == 0:
        return True, done.stdout.strip()
    return False, (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}")


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def free_space(path: Path) -> int:
    """Free bytes on the filesystem `path` is (or would be) on: its nearest existing ancestor's."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) if path.is_dir() else 0


def gigabytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


CHECKS: tuple[Callable[[Params | None], list[Row]], ...] = (
    packages,
    gpu,
    cuda,
    slurm,
    dvc_remote,
    dvc_cache,
    search_storage,
)
