"""Stages that run in parts, declared once, and the launcher that runs parts as local processes.

Two stages run in parts:
- search: `setup` creates or resumes the study, N `worker`s take its trials, with search.reevaluate_top_k a
  `reevaluate` part per candidate and seed trains the best configurations again, `collect` writes the results;
- fit: one part per seed of replicates.seeds, the first seed's writing the stage's own outputs.
A part is a command line (`litpipe <stage> <args>`), a task name (its log is logs/<task>.log; with _ for -,
it is its Snakemake rule), the marker file a cluster job of it leaves where its outputs do not show it ran,
and whether it completes the stage (its end is the stage's: it writes the stage's own log and timing). The
CLI, both stages and workflow/rules/{search,fit}.smk take all of these from here.

`Launcher` is the one place litpipe starts a stage's processes: it shares out the cores and GPUs, passes
SIGTERM and SIGUSR1 on to the parts, and names a part that died. It imports no stage: the stages import it.
"""

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from litpipe import paths

if TYPE_CHECKING:
    from litpipe.config import Params

log = logging.getLogger(__name__)

SEARCH_JOBS = paths.SEARCH / "jobs"  # the markers of the search's cluster jobs
SEARCH_PARTS = ("setup", "worker", "reevaluate", "collect")


@dataclass(frozen=True)
class Part:
    """`litpipe <stage> <args>`: the whole stage when it has no args, else one part of it."""

    stage: str
    task: str  # its name in logs/ ("search-worker0", "fit-seed-1"); the stage's own name when it completes it
    options: tuple[
        tuple[str, int | str], ...
    ] = ()  # the stage's run(params, **options); --key value on the command line
    title: str = ""  # how messages name it: "search worker 0", "the fit of seed 1"
    marker: Path | None = None  # the empty file its cluster job leaves (Snakemake's output for it)

    @property
    def completes(self) -> bool:
        """Its end is the stage's: it writes the stage's own log and timing."""
        return self.task == self.stage

    @property
    def args(self) -> tuple[str, ...]:
        return tuple(word for key, value in self.options for word in (f"--{key}", str(value)))

    @property
    def command(self) -> str:
        return " ".join(["litpipe", self.stage, *self.args])

    @property
    def log(self) -> Path:
        return paths.log_file(self.task)

    @property
    def rule(self) -> str:
        return self.task.replace("-", "_")


def whole(stage: str) -> Part:
    """The whole stage as one part: `litpipe <stage>`."""
    return Part(stage, stage, title=f"litpipe {stage}")


def search_setup() -> Part:
    return Part("search", "search-setup", (("part", "setup"),), "the search's setup", SEARCH_JOBS / "setup.done")


def search_worker(index: int) -> Part:
    options = (("part", "worker"), ("worker", index))
    return Part(
        "search", f"search-worker{index}", options, f"search worker {index}", SEARCH_JOBS / f"worker{index}.done"
    )


def search_reevaluation(candidate: int, seed: int) -> Part:
    """The candidate-th best configuration of the search trained again with `seed`; its marker is its result."""
    task = f"search-reevaluate{candidate}-seed{seed}"
    options = (("part", "reevaluate"), ("candidate", candidate), ("seed", seed))
    title = f"the re-evaluation of candidate {candidate} with seed {seed}"
    return Part("search", task, options, title, SEARCH_JOBS / f"reevaluate{candidate}-seed{seed}.json")


def search_reevaluations(params: "Params") -> list[Part]:
    """Every seed of replicates.seeds for each of the search.reevaluate_top_k best configurations."""
    return [
        search_reevaluation(candidate, seed)
        for candidate in range(params.search.reevaluate_top_k)
        for seed in params.replicates.seeds
    ]


def search_collect() -> Part:
    return Part("search", "search", (("part", "collect"),), "the search's collect")


def search_workers(params: "Params") -> list[Part]:
    return [search_worker(index) for index in range(params.search.n_workers)]


def fit_seed(seed: int, seeds: Sequence[int]) -> Part:
    """The fit of one seed: the first seed's completes the stage (paths.fit_run has its paths)."""
    return Part("fit", paths.fit_run(seed, seeds).task, (("seed", seed),), f"the fit of seed {seed}")


def rules(stage: str, params: "Params") -> list[str]:
    """The Snakemake rules that run `stage` from its start: the search's setup (its workers and collect follow
    it), every seed's fit, or the stage's own rule."""
    if stage == "search":
        return [search_setup().rule]
    if stage == "fit":
        return [fit_seed(seed, params.replicates.seeds).rule for seed in params.replicates.seeds]
    return [stage]


def add_arguments(stage: str, parser: argparse.ArgumentParser) -> None:
    """The options that pick one part of `stage` on the command line (none for a stage that has no parts)."""
    if stage == "search":
        parser.add_argument(
            "--part",
            choices=SEARCH_PARTS,
            help="run one part only, as cluster jobs do (default: all, with search.n_workers local workers)",
        )
        parser.add_argument("--worker", type=int, default=0, metavar="N", help="worker index (with --part worker)")
        parser.add_argument(
            "--candidate", type=int, default=0, metavar="I", help="the I-th best configuration (with --part reevaluate)"
        )
        parser.add_argument("--seed", type=int, default=0, metavar="S", help="its seed (with --part reevaluate)")
    if stage == "fit":
        parser.add_argument(
            "--seed",
            type=int,
            metavar="S",
            help="fit this seed of replicates.seeds only, as cluster jobs do (default: every seed, "
            "replicates.n_workers at once)",
        )


def chosen(stage: str, args: argparse.Namespace, params: "Params") -> Part:
    """The part of `stage` that the command line asks for; the whole stage when it asks for none."""
    part, seed = getattr(args, "part", None), getattr(args, "seed", None)
    if part == "setup":
        return search_setup()
    if part == "worker":
        return search_worker(args.worker)
    if part == "reevaluate":
        return search_reevaluation(args.candidate, seed)
    if part == "collect":
        return search_collect()
    if stage == "fit" and seed is not None:
        return fit_seed(seed, params.replicates.seeds)
    return whole(stage)


class Launcher:
    """Runs parts as local processes, `slots` at a time as slots free up, each on its own share of the cores and
    a GPU round-robin (under a private CUDA MPS daemon where several share one and `mps` is "auto").

    SIGTERM or SIGUSR1 to this process is passed on to every running part, and no further part starts; so does
    an error in the block that the launcher runs around. A part that exits with an error is one line in `failed`,
    naming it and its log; `signal` is the signal that stopped the parts, if one did. The caller decides what
    either means for the stage.

    With `hold_first`, slot 0 belongs to this process's own part (the fit's first seed, whose handlers take the
    signals meanwhile) until `first_done`. The parts write their output where this process does, or to `output`.
    """

    def __init__(
        self,
        parts: Sequence[Part],
        slots: int,
        mps: str = "off",
        hold_first: bool = False,
        output: TextIO | None = None,
    ) -> None:
        from litpipe import resources  # imports torch: kept out of the command line's --help

        self.resources = resources
        self.slots = max(1, slots)
        self.shares, self.gpus = resources.cpu_shares(self.slots), resources.visible_gpus()
        self.mps, self.output = mps, output
        self.pending = deque(parts)
        self.running: dict[int, tuple[Part, subprocess.Popen]] = {}
        self.failed: list[str] = []
        self.signal: str | None = None
        self._environment: dict[str, str] = {}
        self._first_done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._schedule, name="launcher", daemon=True)
        self._previous_handlers: dict[int, Any] = {}
        self._exit = contextlib.ExitStack()
        if not hold_first:
            self._first_done.set()

    @property
    def first_share(self) -> list[int] | None:
        """The cores of this process's own part (with `hold_first`); None when it alone keeps every core."""
        return self.shares[0] if self.slots > 1 else None

    def first_done(self, late_signal: str | None = None) -> None:
        """This process's own part is over: its slot is free, and SIGTERM or SIGUSR1 to this process (which its
        part handled until now) stops the others; so does `late_signal`, one its part received but finished."""
        self._listen()
        if late_signal:
            self._interrupted(signal.Signals[late_signal], None)
        self._first_done.set()

    def __enter__(self) -> "Launcher":
        sharing = -(-self.slots // len(self.gpus)) if self.gpus else 0  # parts per GPU, rounded up
        self._environment = self._exit.enter_context(self.resources.cuda_mps(sharing, self.mps))
        if self._first_done.is_set():
            self._listen()
        self._thread.start()
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is not None:
            self._stop.set()
        self._first_done.set()
        # In steps: Python runs signal handlers in the main thread only, and a signal that another thread of
        # this process took (the kernel may hand it to any) would wait until this thread runs Python again.
        while self._thread.is_alive():
            self._thread.join(0.2)
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._exit.close()

    def _listen(self) -> None:
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            self._previous_handlers.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._interrupted)

    def _interrupted(self, signum: int, frame) -> None:
        self.signal = signal.Signals(signum).name
        self._stop.set()

    def _schedule(self) -> None:
        stopping = False
        while self.pending or self.running:
            for slot, (part, process) in list(self.running.items()):
                if process.poll() is not None:
                    del self.running[slot]
                    self._finished(part, process.returncode)
            if self._stop.is_set() and not stopping:
                stopping = True
                self.pending.clear()
                for part, process in self.running.values():
                    log.info("stopping %s", part.title)
                    process.send_signal(signal.Signals[self.signal] if self.signal else signal.SIGTERM)
            busy = set(self.running) | (set() if self._first_done.is_set() else {0})
            for slot in range(self.slots):
                if self.pending and slot not in busy:
                    self._start(self.pending.popleft(), slot)
            self._stop.wait(0.2)

    def _start(self, part: Part, slot: int) -> None:
        share = self.shares[slot]
        env = {**os.environ, **self._environment, **self.resources.worker_environment(slot, share, self.gpus)}
        # Its errors go with its progress: the stage's one error line on stderr is this process's.
        command = [sys.executable, "-m", "litpipe.cli", part.stage, *part.args]
        process = subprocess.Popen(command, env=env, stdout=self.output, stderr=subprocess.STDOUT)
        self.running[slot] = (part, process)
        log.info("%s started (pid %d, cores %s)", part.title, process.pid, share)

    def _finished(self, part: Part, code: int) -> None:
        if code == 0:
            log.info("%s finished", part.title)
            return
        failed_log = paths.failed_log_file(part.log)
        where = failed_log if failed_log.exists() else part.log
        self.failed.append(f"{part.title} exited with {self.resources.exit_reason(code)} (see {where})")
        log.warning("%s", self.failed[-1])
