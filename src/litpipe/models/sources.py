"""The files of a researcher's own networks (and of their starting weights), and whether dvc.yaml tracks them.

`model.arch` may name a module of the repository (`package.module:Class`, `path/file.py:Class`). Every stage
that builds networks (its code imports models/zoo.py) depends on that file and on the repository's files it
imports: `litpipe dag --write` writes them into dvc.yaml (codedeps.py), and a stage that builds networks refuses
to start while dvc.yaml does not list them, since editing them would then re-run nothing (models/zoo.py).
"""

from pathlib import Path

from litpipe import imports
from litpipe.config import WEIGHT_SUFFIXES
from litpipe.dag import DVC_YAML, load
from litpipe.paths import PARAMS
from litpipe.yaml12 import read_yaml

ZOO = imports.SOURCE / imports.PACKAGE / "models" / "zoo.py"  # a stage whose code imports it builds networks


def network_deps(root: Path = Path()) -> list[Path]:
    """The researcher's network that params.yaml names, as files: each network's file, the repository's files
    it imports (followed to the end), the package files it imports, and the file of starting weights."""
    roots = network_files(root)
    own = imports.closure(roots, root, package=None)
    return sorted({*own, *imports.closure(roots, root / imports.SOURCE), *weights_file(root)})


def weights_file(root: Path = Path()) -> list[Path]:
    """params.yaml's `model.weights`, when it names a file that is there."""
    model = _raw_params(root).get("model")
    weights = model.get("weights") if isinstance(model, dict) else None
    path = root / weights if isinstance(weights, str) and weights.endswith(WEIGHT_SUFFIXES) else None
    return [path] if path is not None and path.is_file() else []


def _raw_params(root: Path) -> dict:
    """params.yaml as plain YAML, or {} when it is unusable (every stage refuses it before any work anyway)."""
    try:
        raw = read_yaml((root / PARAMS).read_text())
    except Exception:  # noqa: BLE001
        return {}
    return raw if isinstance(raw, dict) else {}


def network_files(root: Path = Path()) -> list[Path]:
    """The files defining the own networks params.yaml names (`package.module:Class`, `path/file.py:Class`):
    `model.arch`, and each `model.arch` in search.space when the search is on. Read as plain YAML: `litpipe dag`
    runs on any params.yaml, and a module outside the repository (installed) is pinned by the environment."""
    raw = _raw_params(root)
    model, search = (raw.get(key) if isinstance(raw.get(key), dict) else {} for key in ("model", "search"))
    archs = [model.get("arch")]
    if search.get("enabled") is True and isinstance(search.get("space"), dict):
        choices = search["space"].get("model.arch")
        archs += choices if isinstance(choices, list) else []
    files = []
    for arch in archs:
        module = arch.partition(":")[0] if isinstance(arch, str) and ":" in arch else ""
        path = root / module if module.endswith(".py") else imports.module_file(module, root) if module else None
        if path is not None and path.is_file() and path not in files:
            files.append(path)
    return files


def untracked_networks(root: Path = Path()) -> list[str]:
    """The network files that some stage building networks does not list in dvc.yaml (editing one would not
    re-run it): none outside a repository."""
    if not (root / DVC_YAML).is_file():
        return []
    builders = [stage for stage in load(root / DVC_YAML).values() if ZOO.as_posix() in stage.deps]
    wanted = [path.relative_to(root).as_posix() for path in network_deps(root)]
    return [dep for dep in wanted if any(dep not in stage.deps for stage in builders)]
