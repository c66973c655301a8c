"""DVC experiments: `litpipe record` makes a Snakemake run one, `litpipe experiments` compares them.

`litpipe experiments` is `dvc exp show` narrowed to what a comparison needs, in a 120-column terminal:
the test metrics (over seed replicates, the accuracy's or RMSE's mean and standard deviation), then the params that
differ between the experiments shown; no timestamps, no hashes of dependencies and outputs (DVC lists every
one of them), no fit-internal metrics. The report's
experiments section shows the same columns (`dvc exp show --csv` with these options).
"""

import argparse
import hashlib
import re
import subprocess
import sys
from typing import Any

from litpipe import paths
from litpipe.config import dotted
from litpipe.yaml12 import read_yaml
from litpipe.errors import StageError

OUTPUT_DIRS = "data|models|results|src|workflow|tb|logs|reports"  # dependency and output columns are paths
SHOW = [
    "exp",
    "show",
    "--only-changed",  # params and metrics that differ across the rows shown
    "--drop",
    # Over seed replicates the score's mean and std are kept (accuracy, or RMSE); intervals (over seeds and the
    # test split's own), the other metrics' spread, the baselines, the notes on seeds that agree exactly and the
    # seed count (replicates.seeds shows the seeds) are in `dvc exp show`, the report and `litpipe compare`.
    # State and Executor: the queue's bookkeeping (which worker ran an experiment), not a result.
    rf"^(Created|State|Executor)$|^({OUTPUT_DIRS})/|^(best_epoch|best_val_\w+|epochs|samples|seeds)$"
    r"|^\w+_ci95_(low|high)$|^(loss|mae|r2)_(mean|std)$|^baselines\.|^notes\."
    # The fit's latest epoch (DVCLive's results/fit/live/metrics.json: train.loss, val.acc, ..., step); not the
    # train.* params.
    r"|^(train|val)\.(loss|acc|rmse|mae|r2)$|^step$",
    "--keep",
    # Experiment names (--only-changed drops the column where no row has one), and results/test/metrics.json,
    # shown even where every experiment has the same.
    r"^(Experiment|accuracy|loss|rmse|mae|r2)$",
]


def show_command(args: argparse.Namespace, unknown: list[str]) -> int:
    """`litpipe experiments [options]`."""
    return show(unknown + args.options)


def record_command(args: argparse.Namespace) -> int:
    """`litpipe record [--name NAME] [--force]`."""
    try:
        print(f"recorded as DVC experiment {record(args.name, args.force)}: see `litpipe experiments`")
    except StageError as error:
        print(f"litpipe: record failed: {error}", file=sys.stderr)
        return 1
    return 0


def show(options: list[str]) -> int:
    """Run `dvc exp show` with SHOW and the user's own options (`--csv`, `-A`, `--sort-by accuracy`, ...)."""
    try:
        return _run(["dvc", *SHOW, "--no-pager", *options]).returncode
    except StageError as error:
        print(f"litpipe: experiments: {error}", file=sys.stderr)
        return 1


def record(name: str | None, force: bool) -> str:
    """Record the workspace that `snakemake` (on a cluster, or locally) finished as a DVC experiment, so that
    `dvc exp show` lists it beside `dvc exp run`s and `dvc exp apply` brings its outputs back: `dvc commit`
    takes the outputs as the stages' results (hashing them into the cache and dvc.lock, running nothing),
    then `dvc exp save` stores params, metrics and lock under the name. Returns the name."""
    unfinished = _snakemake_pending()
    if unfinished:
        raise StageError(f"the Snakemake run is not finished ({unfinished}); run snakemake again, then record it")
    name = name or name_from_params()
    _dvc(["commit", "--force", "--quiet"])
    _dvc(["exp", "save", "--name", name, *(["--force"] if force else [])])
    return name


def name_from_params() -> str:
    """`slurm-` and the params that differ from the last commit's params.yaml (`slurm-optim.lr-0.005`), or a
    hash of the params when none does or there are too many for a name."""
    text = paths.PARAMS.read_text()
    shown = _run(["git", "show", f"HEAD:{paths.PARAMS}"], capture_output=True, text=True)
    committed = dotted(read_yaml(shown.stdout)) if shown.returncode == 0 else {}
    changed = [f"{key}-{value}" for key, value in dotted(read_yaml(text)).items() if committed.get(key) != value]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(changed))  # what a git ref name may hold
    if not changed or len(name) > 60:
        name = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"slurm-{name}"


def _snakemake_pending() -> str:
    """What `snakemake --dry-run` would still run ("" when nothing): the run to record must be complete."""
    dry = _run(["snakemake", "--dry-run", "--quiet", "rules"], capture_output=True, text=True)
    if dry.returncode != 0:
        return (dry.stderr.strip().splitlines() or ["snakemake --dry-run failed"])[-1]
    return "" if "Nothing to be done" in dry.stdout + dry.stderr else "snakemake --dry-run lists jobs to run"


def _dvc(args: list[str]) -> None:
    done = _run(["dvc", *args], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise StageError(f"dvc {' '.join(args[:2])}: {lines[-1] if lines else f'exit {done.returncode}'}")


def _run(command: list[str], **options: Any) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, check=False, **options)
    except FileNotFoundError:
        raise StageError(f"{command[0]} is not on PATH (make install puts it in .venv/bin: activate that)") from None
