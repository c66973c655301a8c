"""Fixtures: the default pipeline run once by `dvc repro`, a prepared digits directory, the default params.
Hooks: the slow tier, skips that fail under LITPIPE_REQUIRE_TOOLS=1, signal handlers restored after each test."""

import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from .helpers import FAST, IMPORT_RECORDER, REQUIRE_TOOLS, ROOT, copy_repo, import_records, require_tool, run

# The signals a fit (litpipe.preemption, Lightning, the fan-out launcher) installs handlers for.
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """An integration test drives the real tools end to end: always in the slow tier. Tests that share a costly
    fixture run in one xdist worker (an xdist_group), so that it is built once (shared_fixture_groups)."""
    for item in items:
        if item.get_closest_marker("integration") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
    for item, group in shared_fixture_groups(items).items():
        item.add_marker(pytest.mark.xdist_group(group))


class GroupedNodeIds:
    """pytest-xdist's loadgroup sends a group's tests to one worker by the "@group" it appends to their node ids, as
    `item._nodeid`; pytest 9 reads a node's id from `item._id` instead, so the suffix never took effect and every
    shared fixture was built in both workers. Put it where pytest reads it, after xdist wrote it."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        from _pytest.nodeid import coerce_node_id

        for item in items:
            grouped = item.__dict__.get("_nodeid")
            if grouped and grouped != item.nodeid:
                item._id = coerce_node_id(grouped)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(GroupedNodeIds(), "litpipe-grouped-node-ids")


CHEAP_SHARED = {"default_params"}  # shared fixtures that cost nothing to build twice


def shared_fixture_groups(items: list[pytest.Item]) -> dict[pytest.Item, str]:
    """Each test that uses a costly fixture of ours of module or session scope (a pipeline run, a study, a
    server), with its group. The tests of a module that share its module fixtures are one group, whatever
    session fixture they use too; the other tests of a session fixture (the default pipeline) are another. A
    worker builds a session fixture once, so the default pipeline is built at most once per worker, and no
    group grows to hold most of the suite, which would leave the other worker idle."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    def costly(definition) -> bool:  # ours (not pytest's, like tmp_path_factory), and shared
        ours = definition.func.__module__.startswith("tests.") and definition.argname not in CHEAP_SHARED
        return ours and definition.scope in ("module", "session")

    grouped = {}
    for item in items:
        definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        used = [definitions[name][-1] for name in item.fixturenames if name in definitions]
        used = [definition for definition in used if costly(definition)]
        keys = [f"{item.module.__name__}::{d.argname}" for d in used if d.scope == "module"]
        keys = keys or [f"session::{d.argname}" for d in used]
        if keys:
            grouped[item] = keys[0]
            for key in keys[1:]:
                parent[root(key)] = root(keys[0])
    return {item: root(key) for item, key in grouped.items()}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under LITPIPE_REQUIRE_TOOLS=1 (CI) a skip is a failure, however it came (helpers.missing, pytest.skip,
    a skipif mark), unless the test is marked needs_gpu: a machine without a GPU is the one thing CI may lack."""
    report = yield
    if (
        REQUIRE_TOOLS
        and report.skipped
        and not hasattr(report, "wasxfail")  # an expected failure is reported as a skip: not one
        and item.get_closest_marker("needs_gpu") is None
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under LITPIPE_REQUIRE_TOOLS=1 (only needs_gpu tests may skip): {reason}"
    return report


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    """A fit run in the test's own process installs handlers for these signals (and Lightning's outlive its
    Trainer): each test starts with the handlers the one before it found."""
    before = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    yield
    for signum, handler in before.items():
        if handler is not None and signal.getsignal(signum) is not handler:  # None: installed outside Python
            signal.signal(signum, handler)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> tuple[Path, str, float]:
    """The default pipeline, run once by `dvc repro` exactly as the README's `make repro` does:
    the repository copy, dvc's output, and the wall time. Tests that change a workspace change a copy
    of it (helpers.copy_workspace)."""
    require_tool("dvc")
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    records = import_records(repo)  # what each stage's processes imported (tests/test_dag.py)
    records.mkdir()
    recording = {"PYTHONPATH": os.pathsep.join(filter(None, [str(IMPORT_RECORDER), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    result = run(["dvc", "repro"], repo, env={**recording, "LITPIPE_IMPORT_RECORDS": str(records)})
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
