"""`litpipe <stage>`: the one command both orchestrators call.

Imports stay lazy so `litpipe --help` and params validation are instant; params.yaml is
validated before a stage module (and torch) is even imported.
"""

import argparse
import importlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from litpipe import paths

if TYPE_CHECKING:
    from litpipe.config import Params

STAGES = {
    "prepare": "Load the dataset, split it, store tensors and meta.json.",
    "sanity": "Overfit one batch and run every loop once; stop the pipeline if the model cannot learn.",
    "lr_find": "Lightning's learning-rate finder: suggestion (JSON) and curve (PNG).",
    "search": "Optuna hyperparameter search over search.space.",
    "fit": "Final training with the best params: early stopping, SWA, best checkpoint; once per seed.",
    "test": "Evaluate models/best.ckpt on the test split in a fresh process.",
    "analyze": "Confusion matrix, residuals, PCA of hidden activations.",
    "report": "Execute the report notebook and write reports/report.html.",
}

ON_DEVICE = {"sanity", "lr_find", "search", "fit", "test"}  # the stages that train or evaluate on train.accelerator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="litpipe", description="Run one stage of the litpipe pipeline.")
    parser.add_argument("--params", default=str(paths.PARAMS), help="parameter file (default: %(default)s)")
    commands = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, summary in STAGES.items():
        command = commands.add_parser(name, help=summary, description=summary)
        if name == "search":
            command.add_argument(
                "--part",
                choices=("setup", "worker", "collect"),
                help="run one part only, as cluster jobs do (default: all, with search.n_workers local workers)",
            )
            command.add_argument("--worker", type=int, default=0, metavar="N", help="worker index (with --part worker)")
        if name == "fit":
            command.add_argument(
                "--seed",
                type=int,
                metavar="S",
                help="fit this seed of replicates.seeds only, as cluster jobs do (default: every seed, "
                "replicates.n_workers at once)",
            )
    bench = commands.add_parser(
        "bench",
        help="Time litpipe's training path against a plain PyTorch loop (prints JSON).",
        description="Time the fit's training path against a plain PyTorch loop doing the same work, on the "
        "prepared splits or synthetic MNIST-shaped data; or, with --search N, search throughput with 1 and N "
        "workers. Prints one JSON object; progress goes to stderr and logs/bench.log.",
    )
    bench.add_argument("--synthetic", action="store_true", help="60,000 MNIST-shaped images instead of data/prepared")
    bench.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param for this run, as `dvc exp run -S` does (e.g. -S train.batch_size=256)",
    )
    bench.add_argument(
        "--epochs", type=int, default=5, metavar="E", help="epochs per run or trial (default: %(default)s)"
    )
    bench.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="R",
        help="runs of each variant (or worker count), in turn (default: %(default)s)",
    )
    bench.add_argument("--search", type=int, metavar="N", help="search throughput with 1 and N workers instead")
    bench.add_argument("--points", type=int, metavar="P", help="grid points of the search (default: 2 N)")
    experiments = commands.add_parser(
        "experiments",
        help="dvc exp show with the test metrics and the changed params first (options go to dvc).",
        description="`dvc exp show` narrowed to the test metrics and the params that differ between the "
        "experiments shown (no timestamps or hashes); other options are passed to it, e.g. --csv, -A.",
    )
    experiments.add_argument("options", nargs=argparse.REMAINDER, help="options for `dvc exp show`")
    record = commands.add_parser(
        "record",
        help="Record a finished Snakemake run (e.g. on SLURM) as a DVC experiment.",
        description="After `snakemake` (e.g. `--profile slurm`) finished, record the workspace as a DVC experiment: "
        "`dvc exp show` lists it beside `dvc exp run`s, `dvc exp apply NAME` brings its outputs back.",
    )
    record.add_argument("--name", help="the experiment's name (default: slurm- and the params that changed)")
    record.add_argument("--force", action="store_true", help="replace an experiment of the same name")
    args, unknown = parser.parse_known_args(argv)
    if args.stage == "record":
        return run_record(args.name, args.force)
    if args.stage == "experiments":
        from litpipe import experiments as comparison

        return comparison.show(unknown + args.options)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.stage == "bench":
        return run_bench(args)

    from litpipe import dag
    from litpipe.config import load_params
    from litpipe.errors import ConfigError

    try:
        params = load_params(args.params)
    except ConfigError as error:
        print(f"litpipe: {error}", file=sys.stderr)
        return 2
    part, seed = getattr(args, "part", None), getattr(args, "seed", None)
    # Collecting closes the stage: it writes the stage's own log and timing, as the whole stage does; so does
    # the fit of the first seed, whose outputs are the stage's own.
    whole = part in (None, "collect") and seed in (None, params.replicates.seeds[0])
    if seed is not None:  # "fit" for the first seed; else the log a cluster job declares
        task = paths.fit_run(seed, params.replicates.seeds).task
    else:
        task = args.stage if whole else f"{args.stage}-{part}" + (str(args.worker) if part == "worker" else "")
    # Before the log is opened: a stage run out of order, or on a device this machine lacks, changes
    # nothing, its last log included.
    missing = dag.missing_input(args.stage)
    if not missing and args.stage in ON_DEVICE:
        from litpipe import resources  # imports torch, as the stage would

        missing = resources.missing_device(params.train.accelerator, params.train.devices if args.stage == "fit" else 1)
    if missing:
        print(f"litpipe: {missing}", file=sys.stderr)
        return 1

    # cuBLAS reads this once, when CUDA initialises: it must be set before torch does any work.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    rank = process_rank()
    if rank:  # a DDP process that Lightning started: a log of its own, and no timing
        task, whole = f"{task}.rank{rank}", False
    log_file = paths.log_file(task)
    previous = set_aside(log_file)
    code = 1
    try:
        log_to(log_file)
        options = {"seed": seed} if seed is not None else {}
        code = run_stage(args.stage, part, getattr(args, "worker", 0), params, task, whole, options)
    finally:
        settle_log(log_file, previous, succeeded=code == 0)
    return code


def run_stage(
    name: str, part: str | None, worker: int, params: "Params", task: str, whole: bool, options: dict | None = None
) -> int:
    """Run the stage (or one part of it); its one-line error and exit status when it fails."""
    from litpipe.errors import StageError
    from litpipe.io import write_json

    log = logging.getLogger("litpipe")
    started = time.perf_counter()
    stage = importlib.import_module(f"litpipe.stages.{name}")
    from litpipe import resources  # imports torch, as every stage does

    resources.use_cpu_share()
    adopt_library_loggers()
    try:
        if part is None:
            stage.run(params, **(options or {}))
        elif part == "worker":
            stage.worker(params, worker)
        else:
            getattr(stage, part)(params)
    except StageError as error:
        log.error("%s failed: %s", task, " ".join(str(error).split()))  # one line, whatever a library said
        return 1
    except FileNotFoundError as error:  # an input read outside a repository, where dvc.yaml cannot name its stage
        log.error("%s failed: %s: not found", task, error.filename)
        return 1
    except SystemExit as stop:
        if stop.code not in (None, 0):
            raise
        # Lightning stops a Trainer on SIGTERM with SystemExit and no status: the stage did not finish.
        log.error("%s stopped by SIGTERM before it finished", task)
        return 1
    seconds = time.perf_counter() - started
    if whole:  # recorded for the report, which totals them and suggests SLURM time limits
        write_json(paths.timing_file(name), {"stage": name, "seconds": round(seconds, 2)})
    log.info("%s finished in %.1f s", task, seconds)
    return 0


def set_aside(log_file: Path) -> Path | None:
    """Move the last run's log out of the way (this run's log is written where it was, to be followed
    live); `settle_log` puts it back if this run fails."""
    if not log_file.exists():
        return None
    previous = log_file.with_name(f".{log_file.name}.previous")
    os.replace(log_file, previous)
    return previous


def settle_log(log_file: Path, previous: Path | None, succeeded: bool) -> None:
    """A failed run changes no output, the last log included: its own log becomes <task>.failed.log."""
    if succeeded:
        if previous:
            previous.unlink(missing_ok=True)
        return
    if log_file.exists():
        os.replace(log_file, paths.failed_log_file(log_file))
    if previous:
        os.replace(previous, log_file)


def run_bench(args: argparse.Namespace) -> int:
    """`litpipe bench`: the JSON result alone on stdout, progress on stderr and in logs/bench.log."""
    from litpipe.config import load_params
    from litpipe.errors import ConfigError, StageError

    try:
        params = load_params(args.params)
        params = params.override(overrides(args.set))
    except ConfigError as error:
        print(f"litpipe: {error}", file=sys.stderr)
        return 2
    counts = {
        "--epochs": (args.epochs, 2),
        "--repeats": (args.repeats, 1),
        "--search": (args.search, 1),
        "--points": (args.points, 1),
    }
    for flag, (value, least) in counts.items():
        if value is not None and value < least:
            print(f"litpipe: bench: {flag} must be at least {least} (got {value})", file=sys.stderr)
            return 2
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    log_to(paths.log_file("bench"), stream=sys.stderr)
    from litpipe import bench, resources

    resources.use_cpu_share()
    adopt_library_loggers()
    try:
        result = bench.run(params, args.synthetic, args.epochs, args.repeats, args.search, args.points)
    except StageError as error:
        logging.getLogger("litpipe").error("bench failed: %s", error)
        return 1
    print(bench.dumps(result))
    return 0


def overrides(assignments: list[str]) -> dict[str, object]:
    """`KEY=VALUE` pairs, each value read as YAML (so 256 is a number and [1, 2] a list)."""
    import yaml

    from litpipe.errors import ConfigError

    values = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"-S {assignment!r}: expected KEY=VALUE, e.g. train.batch_size=256")
        values[key] = yaml.safe_load(value)
    return values


def run_record(name: str | None, force: bool) -> int:
    from litpipe import experiments
    from litpipe.errors import StageError

    try:
        print(f"recorded as DVC experiment {experiments.record(name, force)}: see `litpipe experiments`")
    except StageError as error:
        print(f"litpipe: record failed: {error}", file=sys.stderr)
        return 1
    return 0


def process_rank() -> int:
    """This process's rank under DDP, from the variables Lightning and SLURM set (0 when alone)."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def log_to(log_file: os.PathLike, stream: TextIO = sys.stdout) -> None:
    """Messages go to `stream` (errors to stderr) and to logs/<stage>.log (cluster job output files
    have opaque names)."""
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    progress, errors = logging.StreamHandler(stream), logging.StreamHandler(sys.stderr)
    progress.addFilter(lambda record: record.levelno < logging.ERROR)
    errors.setLevel(logging.ERROR)
    handlers: list[logging.Handler] = [progress, errors, logging.FileHandler(log_file, mode="w")]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_DropAdverts())
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    logging.captureWarnings(True)  # library warnings reach the log file too
    # Lightning 2.6 on torch 2.14 warns about its own use of a deprecated pytree API; nothing to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


class _DropAdverts(logging.Filter):
    """Lightning advertises a hosted logger on every Trainer; keep that out of research logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


def adopt_library_loggers() -> None:
    """Lightning attaches its own console handlers on import; route its records through ours instead."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


if __name__ == "__main__":
    sys.exit(main())
