"""`litpipe sweep -S key=v1,v2 [-S ...] [--profile P] [--jobs N]`: the grid of those values, every point run at
the same time in a workspace of its own and recorded as a DVC experiment, one row each in `dvc exp show`.

DVC's own queue runs experiments on this machine only, and a Snakemake run is one configuration. So each point
gets a clone of the last commit under sweeps/<name>/ that shares this repository's DVC cache and takes this
workspace's dvc.lock: `dvc checkout` puts the outputs it records in place (the stages a point does not change,
prepare among them, are not run again), and the point's params are written into its params.yaml. Then, at once for up to N points:
- without a profile: `dvc exp run --name NAME`, a local process per point, the cores shared out;
- with a profile (`--profile slurm`): `snakemake --profile P`, forcing the stages DVC finds changed (a fresh
  clone has no Snakemake records of its params), its jobs in the cluster's queue beside the other points';
  then `litpipe record --name NAME` records the finished run as an experiment.
Each experiment is pushed back into this repository (`dvc exp push`: a git ref; the outputs are in the shared
cache already). A point that fails is one line naming its log, its workspace is kept, and the others go on;
a point that succeeds leaves nothing behind but its experiment and its log (logs/sweep-<name>.log).
"""

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from litpipe import dag, fanout, paths
from litpipe.config import Params, load_params
from litpipe.errors import ConfigError, StageError

SWEEPS = Path("sweeps")  # the points' workspaces (git- and DVC-ignored)
LOCK = Path("dvc.lock")


@dataclass(frozen=True)
class Point:
    settings: dict[str, Any]  # dotted key: value
    name: str  # its experiment's name

    @property
    def workspace(self) -> Path:
        return SWEEPS / self.name

    @property
    def log(self) -> Path:
        return paths.log_file(f"sweep-{self.name}")

    @property
    def label(self) -> str:
        return " ".join(f"{key}={yaml_text(value)}" for key, value in self.settings.items())


def main(args: argparse.Namespace, unknown: list[str]) -> int:
    """`litpipe sweep`: one line per point as it ends, then where to see them; exit 1 if a point failed."""
    try:
        points = grid(args.set, args.name)
        params = [load_params(args.params).override(point.settings) for point in points]
    except ConfigError as error:
        print(f"litpipe: sweep: {error}", file=sys.stderr)
        return 2
    try:
        base = committed_base()
    except StageError as error:
        print(f"litpipe: sweep: {error}", file=sys.stderr)
        return 1
    jobs = args.jobs or (len(points) if args.profile else min(len(points), os.cpu_count() or 1))
    runner = Runner(base, [profile_path(name) for name in args.profile], unknown, threads_per_point(jobs))
    print(
        f"sweep: {len(points)} points, {jobs} at once ({'snakemake --profile ' + ' '.join(args.profile) if args.profile else 'dvc exp run'})"
    )
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        failed = [message for message in pool.map(runner.run, points, params) if message]
    print(f"sweep: {len(points) - len(failed)} of {len(points)} points recorded; see `litpipe experiments`")
    return 1 if failed else 0


def grid(assignments: list[str], prefix: str) -> list[Point]:
    """Every combination of the values of `KEY=V1,V2,...` (each value read as YAML, so [0, 1] is one list)."""
    if not assignments:
        raise ConfigError("nothing to sweep: give -S KEY=V1,V2 (e.g. -S optim.lr=0.001,0.01)")
    keys, choices = [], []
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key or not text:
            raise ConfigError(f"-S {assignment!r}: expected KEY=V1,V2,..., e.g. optim.lr=0.001,0.01")
        try:
            values = yaml.safe_load(f"[{text}]")
        except yaml.YAMLError:
            raise ConfigError(f"-S {assignment!r}: the values are not a comma-separated YAML list") from None
        if key in keys:
            raise ConfigError(f"-S {key} is given twice: list its values once, comma-separated")
        keys.append(key)
        choices.append(list(dict.fromkeys(map(yaml_text, values))))  # each distinct value once
    points = [dict(zip(keys, (yaml.safe_load(v) for v in combination))) for combination in itertools.product(*choices)]
    return [Point(settings, experiment_name(prefix, settings)) for settings in points]


def experiment_name(prefix: str, settings: dict[str, Any]) -> str:
    """`sweep-optim.lr-0.001`: what a git ref name may hold."""
    text = "-".join([prefix, *(f"{key}-{yaml_text(value)}" for key, value in settings.items())])
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def yaml_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def committed_base() -> str:
    """The commit every point starts from: the last one, when the working tree holds nothing uncommitted that a
    point would miss (what the pipeline writes, dvc.lock and its outputs, does not count: a point runs its
    stages itself, reusing those in the cache)."""
    head = output_of(["git", "rev-parse", "--verify", "HEAD"]).strip()
    written = dag.written_by_pipeline()
    changed = [line[3:] for line in output_of(["git", "status", "--porcelain", "--untracked-files=no"]).splitlines()]
    changed = [path for path in changed if not written(path)]
    if changed:
        raise StageError(
            f"{changed[0]} has uncommitted changes: each point starts from the last commit; commit them first"
        )
    return head


def profile_path(name: str) -> str:
    """A profile as the points' Snakemake finds it: a directory of this repository by its absolute path (an
    untracked one, such as slurm.local, is not in the points' clones)."""
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def threads_per_point(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


class Runner:
    """Runs points: each one's workspace, its run, its record and its push, in that order."""

    def __init__(self, base: str, profiles: list[str], extra: list[str], threads: int) -> None:
        self.base, self.profiles, self.extra = base, profiles, extra
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # local points share the cores out
        self.cache = Path(output_of(["dvc", "cache", "dir"]).strip()).resolve()
        self.origin = Path.cwd()
        self._print = threading.Lock()

    def run(self, point: Point, params: Params) -> str:
        """The point run and recorded: "" then, else the one line that says why not."""
        point.log.parent.mkdir(parents=True, exist_ok=True)
        self._say(f"sweep: {point.label}: started (log: {point.log})")
        with point.log.open("w") as log:
            try:
                self._set_up(point, log)
                if self.profiles:
                    self._step(self._snakemake(point.workspace, params), point.workspace, log)
                    self._step(["litpipe", "record", "--name", point.name], point.workspace, log)
                else:
                    self._step(["dvc", "exp", "run", "--name", point.name, *self.extra], point.workspace, log)
                self._step(["dvc", "exp", "push", "--no-cache", "--force", "origin", point.name], point.workspace, log)
            except StageError as error:
                message = f"sweep: {point.label}: failed: {error} (log: {point.log}; workspace kept: {point.workspace})"
                self._say(message)
                return message
        self._say(f"sweep: {point.label}: recorded as {point.name}{score(point.workspace)}")
        shutil.rmtree(point.workspace)
        return ""

    def _set_up(self, point: Point, log: TextIO) -> None:
        """A clone of the base commit with the point's params, the committed outputs from the shared cache."""
        workspace = point.workspace
        if workspace.exists():  # a failed earlier sweep's: start it over
            shutil.rmtree(workspace)
        workspace.parent.mkdir(parents=True, exist_ok=True)
        self._step(
            ["git", "clone", "--quiet", "--shared", "--no-checkout", str(self.origin), str(workspace)], None, log
        )
        self._step(["git", "checkout", "--quiet", "--detach", self.base], workspace, log)
        self._step(["dvc", "cache", "dir", "--local", str(self.cache)], workspace, log)
        if LOCK.exists():  # what the stages run here since the last commit left in the cache, a point reuses too
            shutil.copy2(LOCK, workspace / LOCK)
        write_params(workspace / paths.PARAMS, point.settings)
        # What the cache lacks is run (dvc checkout says so, exit 1): not a failure of the point.
        subprocess.run(["dvc", "checkout", "--quiet"], cwd=workspace, capture_output=True, check=False)

    def _snakemake(self, workspace: Path, params: Params) -> list[str]:
        """The point's Snakemake command: forced to run what DVC finds changed, after marking the outputs checked
        out from the cache up to date (whatever their times say)."""
        rules = [rule for stage in changed_stages(workspace) for rule in fanout.rules(stage, params)]
        output_of(["snakemake", "--touch", "--cores", "1", "--quiet"], workspace)
        profiles = [word for profile in self.profiles for word in ("--profile", profile)]
        return ["snakemake", *profiles, *(["--forcerun", *rules] if rules else []), *self.extra]

    def _step(self, command: list[str], cwd: Path | None, log: TextIO) -> None:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        done = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=self.env, check=False)
        if done.returncode != 0:
            raise StageError(
                f"{' '.join(command[:2])} exited with {done.returncode}: {last_line(Path(log.name).read_text()) or 'no output'}"
            )

    def _say(self, message: str) -> None:
        with self._print:
            print(message, flush=True)


def write_params(path: Path, settings: dict[str, Any]) -> None:
    """Set dotted keys in params.yaml, its comments and layout kept (as `dvc exp run -S` does)."""
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    document = yaml_rt.load(path.read_text())
    for dotted, value in settings.items():
        *parents, leaf = dotted.split(".")
        node = document
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    with path.open("w") as file:
        yaml_rt.dump(document, file)


def changed_stages(workspace: Path) -> list[str]:
    """The stages DVC would run in the workspace: changed params, code or data, or outputs it lacks."""
    status = json.loads(output_of(["dvc", "status", "--json"], workspace) or "{}")
    return [name.split(":")[-1] for name in status]


def score(workspace: Path) -> str:
    metrics = workspace / paths.TEST_METRICS
    if not metrics.exists():
        return ""
    values = json.loads(metrics.read_text())
    shown = [f"{key} {value:.4g}" for key, value in values.items() if isinstance(value, float)][:3]
    return f" ({', '.join(shown)})" if shown else ""


def output_of(command: list[str], cwd: Path | None = None) -> str:
    """The output of a command that must succeed; when it fails, its last line of output says why."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StageError(
            f"{' '.join(command[:2])}: {last_line(done.stderr + done.stdout) or f'exit {done.returncode}'}"
        )
    return done.stdout


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
