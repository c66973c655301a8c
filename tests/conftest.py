"""Fixtures: the default pipeline run once by `dvc repro`, a prepared digits directory, the default params."""

import time
from pathlib import Path

import pytest
import yaml

from .helpers import FAST, ROOT, copy_repo, require_tool, run


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> tuple[Path, str, float]:
    """The default pipeline, run once by `dvc repro` exactly as the README's `make repro` does:
    the repository copy, dvc's output, and the wall time. Tests that change a workspace change a copy
    of it (helpers.copy_workspace)."""
    require_tool("dvc")
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    started = time.perf_counter()
    result = run(["dvc", "repro"], repo)
    return repo, result.stdout, time.perf_counter() - started


@pytest.fixture
def workspace(tmp_path, monkeypatch, default_params):
    """A fresh working directory, the test's current one. Returns a function that sets params (dotted
    changes to params.yaml's values), writes them to params.yaml and, on its first call, prepares the data."""
    from litpipe import paths
    from litpipe.config import Params
    from litpipe.stages import prepare

    monkeypatch.chdir(tmp_path)

    def set_params(changes: dict | None = None) -> Params:
        params = Params.model_validate(default_params).override(changes or {})
        paths.PARAMS.write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
        if not paths.META.exists():
            prepare.run(params)
        return params

    return set_params


@pytest.fixture
def digits(workspace):
    """The digits data prepared in a fresh working directory; returns FAST params."""
    return workspace({k: v for k, v in FAST.items() if k != "search.space"})


@pytest.fixture(scope="session")
def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def saved(tmp_path, monkeypatch) -> dict:
    """In a fresh working directory: each figure that plots.save writes (a matplotlib Figure), by file stem,
    once written."""
    from litpipe import plots

    monkeypatch.chdir(tmp_path)
    figures = {}
    save = plots.save

    def recording_save(fig, path: Path) -> None:
        save(fig, path)
        figures[Path(path).stem] = fig

    monkeypatch.setattr(plots, "save", recording_save)
    return figures
