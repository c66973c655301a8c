"""`litpipe <command>`: each stage of dvc.yaml, the one command both orchestrators call, and the tools beside it.

Imports stay lazy, so `litpipe --help` is instant and params.yaml is validated before a stage's module (and
torch) is imported. A stage's code dependencies start here and at its module (`litpipe dag`): a tool's module
is imported by name only when its command runs, so no stage depends on the tools.
"""

import argparse
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from litpipe import dag, fanout, paths

ON_DEVICE = {"sanity", "lr_find", "search", "fit", "test"}  # the stages that train or evaluate on train.accelerator


@dataclass(frozen=True)
class Tool:
    """A command beside the stages: `function` ("module:function") takes the parsed arguments, returns the
    exit status."""

    help: str
    description: str
    function: str
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    passes_on_unknown: bool = False  # options it does not know go to the program it wraps


def set_argument(
    parser: argparse.ArgumentParser,
    metavar: str = "KEY=VALUE",
    help: str = "override a param for this run, as `dvc exp run -S` does (e.g. -S train.batch_size=256)",
) -> None:
    parser.add_argument("-S", "--set", action="append", default=[], metavar=metavar, help=help)


def sweep_arguments(parser: argparse.ArgumentParser) -> None:
    set_argument(
        parser,
        "KEY=V1,V2",
        "a param and its values, comma-separated YAML (e.g. -S optim.lr=0.001,0.003,0.01); several -S: their grid",
    )
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="P",
        help="run each point with `snakemake --profile P` (e.g. slurm; repeat to merge profiles), else `dvc exp run`",
    )
    parser.add_argument(
        "--jobs", type=int, metavar="N", help="points at once (default: all with --profile, else one per core)"
    )
    parser.add_argument("--name", default="sweep", help="the experiments' names start with this (default: %(default)s)")


def bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--synthetic",
        nargs="?",
        const="mnist",
        choices=("mnist", "cifar10"),
        help="synthetic data instead of data/prepared: MNIST-shaped (60,000 training images of 1 x 28 x 28; the "
        "default) or CIFAR-10-shaped (50,000 of 3 x 32 x 32); -S data.train_images=N trains on N of them",
    )
    set_argument(parser)
    parser.add_argument(
        "--epochs", type=int, default=5, metavar="E", help="epochs per run or trial (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="R",
        help="runs of each variant (or worker count), in turn (default: %(default)s)",
    )
    parser.add_argument("--search", type=int, metavar="N", help="search throughput with 1 and N workers instead")
    parser.add_argument("--points", type=int, metavar="P", help="grid points of the search (default: 2 N)")


def experiments_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options for `dvc exp show`")


def compare_arguments(parser: argparse.ArgumentParser) -> None:
    for side in ("a", "b"):
        parser.add_argument(
            side, metavar=side.upper(), help="a DVC experiment (`dvc exp show`), a git revision (HEAD), or workspace"
        )


def record_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="the experiment's name (default: slurm- and the params that changed)")
    parser.add_argument("--force", action="store_true", help="replace an experiment of the same name")


def dag_arguments(parser: argparse.ArgumentParser) -> None:
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="exit 1, naming the stage, where dvc.yaml differs")
    action.add_argument("--write", action="store_true", help="write them into dvc.yaml (the rest of it kept as it is)")


def schema_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="exit 1 where the file differs, writing nothing")


def predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files or folders searched for them; for a table, CSV or Parquet"
    )
    parser.add_argument("--checkpoint", default=str(paths.BEST_CKPT), help="the model (default: %(default)s)")
    parser.add_argument("--out", default="predictions.csv", help="the CSV written (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=3, metavar="K", help="classes listed per image (default: 3)")
    parser.add_argument(
        "--skip-bad", action="store_true", help="go on past files (or rows) that cannot be read, naming each"
    )


TOOLS = {
    "bench": Tool(
        "Time litpipe's training path against a plain PyTorch loop (prints JSON).",
        "Time the fit's training path against a plain PyTorch loop doing the same work, on the prepared splits or "
        "synthetic MNIST-shaped data; or, with --search N, search throughput with 1 and N workers. Prints one JSON "
        "object; progress goes to stderr and logs/bench.log.",
        "litpipe.bench:main",
        bench_arguments,
    ),
    "experiments": Tool(
        "dvc exp show with the test metrics and the changed params first (options go to dvc).",
        "`dvc exp show` narrowed to the test metrics and the params that differ between the experiments shown "
        "(no timestamps or hashes); other options are passed to it, e.g. --csv, -A.",
        "litpipe.experiments:show_command",
        experiments_arguments,
        passes_on_unknown=True,
    ),
    "compare": Tool(
        "Is B better than A? Paired over their seeds, with intervals and tests.",
        "Compare two runs trained with the same seeds (replicates.seeds), metric by metric: B - A paired by seed, "
        "its 95% confidence interval, a paired t-test's p-value (and from 6 seeds on the Wilcoxon signed-rank "
        "test's), and each run's test split's own 95% interval. Says when the seeds are too few to tell.",
        "litpipe.compare:command",
        compare_arguments,
    ),
    "record": Tool(
        "Record a finished Snakemake run (e.g. on SLURM) as a DVC experiment.",
        "After `snakemake` (e.g. `--profile slurm`) finished, record the workspace as a DVC experiment: `dvc exp "
        "show` lists it beside `dvc exp run`s, `dvc exp apply NAME` brings its outputs back.",
        "litpipe.experiments:record_command",
        record_arguments,
    ),
    "predict": Tool(
        "What a trained model gives new images or table rows (a CSV).",
        "Classify image files (or the images in folders) with a trained model, prepared as its training images "
        "were; writes the file, the predicted class, its probability and the next classes to a CSV. For a model "
        "trained on a table, give CSV or Parquet files with its columns: each row is written with its prediction.",
        "litpipe.predict:main",
        predict_arguments,
    ),
    "doctor": Tool(
        "Check that this machine has what the params need (packages, GPU, SLURM, DVC, search database).",
        "One row per check, each problem with its fix: packages against requirements.lock; the GPUs torch sees "
        "and its CUDA build against the driver; SLURM and the LITPIPE_SLURM_* settings; the DVC remote and the "
        "cache's free space; the search database when search.storage is a URL. Exits 1 when something the params "
        "need is missing; -S checks other params without editing params.yaml.",
        "litpipe.doctor:main",
        set_argument,
    ),
    "sweep": Tool(
        "Run a grid of params at once, locally or as SLURM jobs, each point a DVC experiment.",
        "Every combination of the -S values (-S optim.lr=0.001,0.01 -S train.batch_size=32,64), each point in a "
        "workspace of its own under sweeps/ sharing the DVC cache (unchanged stages are not run again), run at the "
        "same time: `dvc exp run` per point, or with --profile `snakemake --profile P` (its jobs on the cluster) and "
        "`litpipe record`. Each point becomes a DVC experiment in this repository (`litpipe experiments`); a point "
        "that fails is one line with its log, the others are kept. Other options go to snakemake (or dvc exp run).",
        "litpipe.sweep:main",
        sweep_arguments,
        passes_on_unknown=True,
    ),
    "dag": Tool(
        "Each stage's code dependencies: the package files its code imports.",
        "List each stage's code dependencies (the files of src/litpipe its code imports, followed to the end); "
        "--check compares them with dvc.yaml's, --write writes them there. Run from the repository root.",
        "litpipe.codedeps:main",
        dag_arguments,
    ),
    "schema": Tool(
        "Write params.schema.json, the JSON Schema editors check params.yaml with.",
        "Write params.schema.json, generated from the params models (src/litpipe/config.py): params.yaml names it "
        "for the YAML language server, so editors complete its keys and flag unknown keys, wrong types and values "
        "out of range. --check exits 1 where the file is not what the models give. Run from the repository root.",
        "litpipe.schema:main",
        schema_arguments,
    ),
}


def command_line() -> argparse.ArgumentParser:
    """The stages of dvc.yaml, each with the options that pick one of its parts (fanout.py), then the tools."""
    parser = argparse.ArgumentParser(prog="litpipe", description="Run one stage of the litpipe pipeline, or a tool.")
    parser.add_argument("--params", default=str(paths.PARAMS), help="parameter file (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in dag.stage_list().values():
        fanout.add_arguments(stage.name, commands.add_parser(stage.name, help=stage.desc, description=stage.desc))
    for name, tool in TOOLS.items():
        tool.arguments(commands.add_parser(name, help=tool.help, description=tool.description))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = command_line()
    args, unknown = parser.parse_known_args(argv)
    tool = TOOLS.get(args.command)
    if unknown and not (tool and tool.passes_on_unknown):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if tool:
        module, _, function = tool.function.partition(":")
        return getattr(importlib.import_module(module), function)(args, *([unknown] if tool.passes_on_unknown else []))

    from litpipe.config import load_params
    from litpipe.errors import ConfigError

    try:
        params = load_params(args.params)
    except ConfigError as error:
        print(f"litpipe: {error}", file=sys.stderr)
        return 2
    part = fanout.chosen(args.command, args, params)
    missing = missing_input_or_device(part.stage, params)
    if missing:  # before the log is opened: a stage run out of order, or on a lacking device, changes nothing
        print(f"litpipe: {missing}", file=sys.stderr)
        return 1
    # cuBLAS reads this once, when CUDA initialises: it must be set before torch does any work.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    started = time.perf_counter()  # the stage's time includes its imports, as a job's does
    stage = importlib.import_module(f"litpipe.stages.{part.stage}")
    try:
        getattr(stage, "check", lambda params: None)(params)  # what else in the params the stage refuses
    except ConfigError as error:
        print(f"litpipe: {args.params}: {error}", file=sys.stderr)
        return 2
    with stage_session(part, started) as session:
        stage.run(params, **dict(part.options))
    return session.code


def missing_input_or_device(stage: str, params) -> str | None:
    """Why the stage cannot run here, in one line: an input another stage makes, or the device it trains on."""
    missing = dag.missing_input(stage)
    if not missing and stage in ON_DEVICE:
        from litpipe import resources  # imports torch, as the stage would

        missing = resources.missing_device(params.train.accelerator, params.train.devices if stage == "fit" else 1)
    return missing


@dataclass
class Session:
    code: int = 1  # the exit status


@contextmanager
def stage_session(part: fanout.Part, started: float) -> Iterator[Session]:
    """Around a stage (or one part of it), whose module was imported from `started` on: its log (a
    failed run leaves the last good log in place), its CPU share, one line and exit status 1 for a failure it
    can name, and the timing that the part completing the stage records for the report."""
    from litpipe import logs, resources  # resources imports torch, as every stage does
    from litpipe.errors import ConfigError, StageError
    from litpipe.io import write_json

    task, completes = part.task, part.completes
    rank = process_rank()
    if rank:  # a DDP process that Lightning started: a log of its own, and no timing
        task, completes = f"{task}.rank{rank}", False
    log_file = paths.log_file(task)
    previous = logs.set_aside(log_file)
    session = Session()
    log = logging.getLogger("litpipe")
    try:
        logs.log_to(log_file)
        resources.use_cpu_share()
        logs.adopt_library_loggers()  # after the stage's imports: importing lightning adds a console handler
        try:
            yield session
        except StageError as error:
            log.error("%s failed: %s", task, " ".join(str(error).split()))  # one line, whatever a library said
            return
        except ConfigError as error:  # found once the data is known (a network's output for its input shape)
            log.error("%s failed: %s", task, " ".join(str(error).split()))
            session.code = 2
            return
        except FileNotFoundError as error:  # an input read outside a repository, where dvc.yaml cannot name it
            log.error("%s failed: %s: not found", task, error.filename)
            return
        except SystemExit as stop:
            if stop.code not in (None, 0):
                raise
            # Lightning stops a Trainer on SIGTERM with SystemExit and no status: the stage did not finish.
            log.error("%s stopped by SIGTERM before it finished", task)
            return
        seconds = time.perf_counter() - started
        # Peak resident memory: this process's, or its largest child's (a part the launcher ran, which needs as
        # much in a job of its own), for the report's suggested --mem. Linux counts kB, macOS bytes.
        import resource

        largest = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        peak_mb = largest / (2**20 if sys.platform == "darwin" else 2**10)
        if completes:  # recorded for the report, which totals them and suggests a SLURM --time and --mem
            timing = {"stage": part.stage, "seconds": round(seconds, 2), "peak_mb": round(peak_mb)}
            write_json(paths.timing_file(part.stage), timing)
        log.info("%s finished in %.1f s (peak memory %.0f MB)", task, seconds, peak_mb)
        session.code = 0
    finally:
        logs.settle(log_file, previous, succeeded=session.code == 0)


def process_rank() -> int:
    """This process's rank under DDP, from the variables Lightning and SLURM set (0 when alone)."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
