"""The pipeline's DAG as dvc.yaml defines it: the one definition that both engines run.

DVC reads dvc.yaml itself. The Snakefile builds one rule per stage from `load()` at parse time and adds
only what a cluster needs (workflow/rules/common.smk): resources, the stages that run on the submit
host, and the fan-out of the stages that run in parts (litpipe/fanout.py). So a stage, a dependency, an
output or a tracked param is written once, in dvc.yaml, and both engines re-run the same stages when it
changes. The CLI takes the stage list and each stage's description from here too.

A stage's code dependencies are not picked by hand: they are the package files its code imports, which
`litpipe dag --write` writes into dvc.yaml (litpipe/codedeps.py).

Two things DVC infers that Snakemake must be told, by rules that hold for every stage:
- an output without a file extension is a directory (`data/prepared`, `tb/fit`);
- a dependency that no stage produces and that is a directory (`src/litpipe/models`) stands for the
  files in it: Snakemake notices a changed file, not a changed directory's contents.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

DVC_YAML = Path("dvc.yaml")
# The repository litpipe is installed from (an editable install): its dvc.yaml gives the CLI its stages when
# the command runs elsewhere (a test's working directory).
INSTALLED_DVC_YAML = Path(__file__).resolve().parents[2] / "dvc.yaml"
IGNORED = {"__pycache__"}  # as .dvcignore: not part of a source directory


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    desc: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs and metrics, which a re-run replaces
    persistent: tuple[str, ...]  # outs kept between runs (`persist: true`): what a re-run resumes from
    params: tuple[str, ...]  # dotted params.yaml keys

    @property
    def logs(self) -> tuple[str, ...]:
        return tuple(path for path in self.outs if path.startswith("logs/"))

    @property
    def results(self) -> tuple[str, ...]:
        return tuple(path for path in self.outs if not path.startswith("logs/"))


def load(path: Path = DVC_YAML) -> dict[str, Stage]:
    """The stages of dvc.yaml, in its order."""
    return {name: _stage(name, spec) for name, spec in yaml.safe_load(path.read_text())["stages"].items()}


def _stage(name: str, spec: dict) -> Stage:
    outs, persistent = [], []
    for entry in spec.get("outs", []) + spec.get("metrics", []):
        path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        (persistent if options.get("persist") else outs).append(path)
    return Stage(
        name,
        spec["cmd"],
        spec.get("desc", ""),
        tuple(spec.get("deps", [])),
        tuple(outs),
        tuple(persistent),
        tuple(spec.get("params", [])),
    )


def stage_list() -> dict[str, Stage]:
    """The stages the CLI offers: those of dvc.yaml here, or of the repository litpipe is installed from."""
    for path in (DVC_YAML, INSTALLED_DVC_YAML):
        if path.is_file():
            return load(path)
    return {}


def is_directory(path: str) -> bool:
    return not PurePosixPath(path).suffix


def inputs(stage: Stage, stages: dict[str, Stage], root: Path = Path()) -> list[str]:
    """The stage's dependencies for Snakemake: other stages' outputs (a file inside an output directory
    stands for that directory, which is what Snakemake knows), and files."""
    produced = [path for other in stages.values() for path in other.outs + other.persistent]
    found: list[str] = []
    for dep in stage.deps:
        output = next((out for out in produced if dep == out or dep.startswith(out.rstrip("/") + "/")), None)
        for path in [output] if output else _files(dep, root):
            if path not in found:
                found.append(path)
    return found


def _files(dep: str, root: Path) -> Iterator[str]:
    path = root / dep
    if not path.is_dir():
        yield dep
        return
    for file in sorted(path.rglob("*")):
        if file.is_file() and not IGNORED & set(file.relative_to(root).parts):
            yield file.relative_to(root).as_posix()


def param_values(stage: Stage, params: dict[str, Any]) -> dict[str, Any]:
    """The values of the params.yaml keys the stage tracks, by dotted key."""
    values = {}
    for dotted in stage.params:
        node = params
        for key in dotted.split("."):
            node = node[key]
        values[dotted] = node
    return values


def missing_input(name: str, root: Path = Path()) -> str | None:
    """Why stage `name` cannot run yet, in one line: the first of its dependencies that another stage makes
    and that is not there, with that stage. None when all are there, or when there is no dvc.yaml (a
    working directory outside a repository: the stage's own reads say what is missing)."""
    if not (root / DVC_YAML).exists():
        return None
    stages = load(root / DVC_YAML)
    for dep in stages[name].deps:
        maker = next((other for other in stages.values() if makes(other, dep)), None)
        if maker and not (root / dep).exists():
            return (
                f"{name} needs {dep}, which the {maker.name} stage makes: "
                f"run `dvc repro {maker.name}` (or `litpipe {maker.name}`) first"
            )
    return None


def written_by_pipeline(root: Path = Path()) -> Callable[[str], bool]:
    """A test of whether a path (relative to the root) is something `dvc repro` writes: dvc.lock, or a
    stage's output."""
    stages = list(load(root / DVC_YAML).values()) if (root / DVC_YAML).exists() else []
    return lambda path: path == "dvc.lock" or any(makes(stage, path) for stage in stages)


def makes(stage: Stage, path: str) -> bool:
    return any(path == out or path.startswith(out.rstrip("/") + "/") for out in stage.outs + stage.persistent)
