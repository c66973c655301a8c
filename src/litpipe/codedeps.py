"""`litpipe dag`: each stage's code dependencies, the package files its code imports, kept in dvc.yaml.

A stage's code starts at the CLI and its own module (`litpipe <stage>` runs src/litpipe/cli.py, which runs
src/litpipe/stages/<stage>.py), and at any code among its other dependencies (the report's notebook); its
code dependencies are the package files that code imports, followed to the end (imports.py). A stage that
builds networks (its code imports models/zoo.py) depends on the researcher's own network too: the file
params.yaml's `model.arch` names (and each one the search may choose), with the repository's files it
imports. Picked by hand, such lists drift, and a cache that serves results of old code is the worst failure
a reproducible pipeline can have: `--write` writes them into dvc.yaml (every `src/litpipe/...` dependency of
a stage, and every Python one of a `litpipe` stage; its other dependencies, and the rest of the file with its
comments, stay as they are), and `--check` (and a test) fails where dvc.yaml differs from them. Snakemake
reads the same dependencies from dvc.yaml (dag.py).
"""

import argparse
import io
import sys
from pathlib import Path, PurePosixPath

from litpipe import imports
from litpipe.config import WEIGHT_SUFFIXES
from litpipe.dag import DVC_YAML, Stage, load, makes
from litpipe.models import sources

PACKAGE_DIR = imports.SOURCE / imports.PACKAGE  # src/litpipe: a dependency under it is written by `--write`
CLI = PACKAGE_DIR / "cli.py"  # what `litpipe <stage>` runs first
STAGE_MODULES = PACKAGE_DIR / "stages"  # `litpipe <stage>` then runs stages/<stage>.py


def code_roots(stage: Stage, stages: dict[str, Stage], root: Path = Path()) -> list[Path]:
    """Where the stage's code starts: for `litpipe <name>`, the CLI and the stage's module; and any code among
    its other dependencies that no stage makes (the report's notebook), whose imports run too."""
    words = stage.cmd.split()
    roots = [root / CLI, root / STAGE_MODULES / f"{words[1]}.py"] if words[:1] == ["litpipe"] else []
    for dep in hand_written(stage, stages):
        if not any(makes(other, dep) for other in stages.values()):
            roots += imports.code_files(root / dep)
    return roots


def code_deps(stage: Stage, stages: dict[str, Stage], root: Path = Path()) -> list[str]:
    """The package files the stage's code imports, then the researcher's network files when it builds
    networks: the code dependencies dvc.yaml must list for it."""
    found = imports.closure(code_roots(stage, stages, root), root / imports.SOURCE)
    networks = sources.network_deps(root) if root / sources.ZOO in found else []
    return [path.relative_to(root).as_posix() for path in [*found, *(n for n in networks if n not in found)]]


def hand_written(stage: Stage, stages: dict[str, Stage]) -> list[str]:
    """The stage's dependencies that are not code `litpipe dag` writes: data, other stages' outputs, notebooks."""
    return [dep for dep in stage.deps if not _is_code(stage, dep, stages)]


def _is_code(stage: Stage, dep: str, stages: dict[str, Stage]) -> bool:
    """What `litpipe dag` writes: the package's files, and any Python file a `litpipe` stage depends on (the
    researcher's networks: its own code starts at the CLI, so nothing else there is code) or file of weights
    that no stage makes (`model.weights`; models/best.ckpt, which the fit makes, is data)."""
    if PurePosixPath(dep).is_relative_to(PurePosixPath(PACKAGE_DIR.as_posix())):
        return True
    if stage.cmd.split()[:1] != ["litpipe"]:
        return False
    weights = dep.endswith(WEIGHT_SUFFIXES) and not any(makes(other, dep) for other in stages.values())
    return dep.endswith(".py") or weights


def drift(root: Path = Path()) -> list[str]:
    """One line per stage whose src/litpipe dependencies in dvc.yaml are not the files its code imports."""
    problems = []
    stages = load(root / DVC_YAML)
    for stage in stages.values():
        declared = {dep for dep in stage.deps if _is_code(stage, dep, stages)}
        imported = set(code_deps(stage, stages, root))
        if declared != imported:
            missing, extra = sorted(imported - declared), sorted(declared - imported)
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"not imported {', '.join(extra)}"] if extra else []
            problems.append(f"{DVC_YAML}: stage {stage.name}: {'; '.join(parts)}")
    return problems


def write_code_deps(root: Path = Path()) -> list[str]:
    """Rewrite each stage's src/litpipe dependencies in dvc.yaml as the files its code imports, after its other
    dependencies; everything else in the file, comments included, stays as it is. The stages changed."""
    from ruamel.yaml import YAML  # DVC's own YAML library: it writes back what it read, comments included

    reader = YAML()
    reader.indent(mapping=2, sequence=4, offset=2)
    reader.width = 4096
    reader.preserve_quotes = True
    path = root / DVC_YAML
    document = reader.load(path.read_text())
    stages = load(path)
    changed = []
    for name, spec in document["stages"].items():
        wanted = code_deps(stages[name], stages, root)
        deps = spec.get("deps")
        if deps is None:
            if not wanted:
                continue
            spec["deps"] = deps = []
        if [dep for dep in deps if _is_code(stages[name], str(dep), stages)] == wanted:
            continue
        for index in reversed(range(len(deps))):
            if _is_code(stages[name], str(deps[index]), stages):
                del deps[index]
        deps.extend(wanted)
        changed.append(name)
    if changed:
        text = io.StringIO()
        reader.dump(document, text)
        path.write_text(text.getvalue())
    return changed


def main(args: argparse.Namespace) -> int:
    """`litpipe dag`: each stage's code dependencies; --check compares them with dvc.yaml, --write writes them."""
    if not DVC_YAML.is_file():
        print(f"litpipe: dag: no {DVC_YAML} here; run it from the repository root", file=sys.stderr)
        return 2
    if args.write:
        changed = write_code_deps()
        print(f"{DVC_YAML}: wrote the code dependencies of {', '.join(changed) or 'no stage: all were current'}")
        return 0
    if args.check:
        problems = drift()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("litpipe: dag: run `litpipe dag --write` to write them", file=sys.stderr)
        return 1 if problems else 0
    stages = load()
    for stage in stages.values():
        print(f"{stage.name}: {' '.join(code_deps(stage, stages)) or '(no package code)'}")
    return 0
