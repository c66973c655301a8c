"""The shared Optuna study: storage, a deterministic name, setup, and taking trials atomically.

Exact grid coverage: `setup` enqueues each missing grid point once as a WAITING trial, and
workers take waiting trials with a compare-and-set on the storage (WAITING -> RUNNING), so no
point runs twice and none is lost however many workers there are. Nothing samples new points
for the grid.

Fault tolerance: the journal file has no heartbeats, so `setup` (which runs while no worker
does) marks trials left RUNNING by a killed worker as FAIL and enqueues their point again.
Database storages get heartbeats: a live worker's trial keeps beating, a dead one's goes stale,
and any worker fails it and retries its point.
"""

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import Trial, TrialState

from litpipe import paths
from litpipe.config import Params
from litpipe.errors import StageError
from litpipe.io import read_json
from litpipe.search import space as search_space

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def lr_suggestion(params: Params) -> float | None:
    if not search_space.uses_lr_find(params.search.dimensions()):
        return None
    return read_json(paths.LR_FIND_RESULT)["suggestion"]


def study_name(params: Params) -> str:
    """Everything that changes what a trial computes, hashed: same settings, same study, resumed."""
    defining = {
        "data": params.data.model_dump(),
        "seed": params.seed,
        "base": {s: getattr(params, s).model_dump() for s in ("model", "optim", "train")},
        "search": params.search.model_dump(
            include={"sampler", "space", "max_epochs", "pruner", "pruner_startup_trials", "pruner_warmup_epochs"}
        ),
        "lr_find": lr_suggestion(params),
    }
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:12]
    return f"litpipe-{digest}"


def open_storage(params: Params) -> BaseStorage:
    url = params.search.storage
    if url == "journal":
        paths.STUDY_JOURNAL.parent.mkdir(parents=True, exist_ok=True)
        # The open(2)-based lock works on NFS, unlike the default symlink lock on some filesystems.
        return JournalStorage(
            JournalFileBackend(str(paths.STUDY_JOURNAL), lock_obj=JournalFileOpenLock(str(paths.STUDY_JOURNAL)))
        )
    if url.startswith("sqlite"):
        return open_database(url)  # single worker only (validated in params)
    # A trial whose worker stopped beating for three intervals is failed and its point re-enqueued
    # (RetryHeartbeatStaleTrialCallback keeps the grid point's fixed params).
    interval = params.search.heartbeat_seconds
    return open_database(
        url,
        heartbeat_interval=interval,
        grace_period=3 * interval,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
    )


def open_database(url: str, **options: Any) -> RDBStorage:
    """An Optuna database storage; a StageError naming the URL, its password hidden, when it cannot be used.

    RDBStorage connects at once (it creates its tables), so an unreachable server fails here, before any work.
    """
    shown = without_password(url)
    authority = url.partition("://")[2].partition("/")[0]
    if authority.count("@") > 1:  # SQLAlchemy would take the password's tail for the host and show it in errors
        raise StageError(f"search.storage {shown} cannot be reached: write '@' in a user name or password as %40")
    try:
        return RDBStorage(url, **options)
    except ImportError as error:  # the dialect's driver package is missing (mysql:// without mysqlclient)
        driver = getattr(error.__cause__, "name", None) or "package"
        raise StageError(f"search.storage {shown} cannot be reached: its driver {driver} is not installed") from error
    except (sqlalchemy.exc.ArgumentError, ValueError) as error:  # unparsable, unknown dialect, a port not a number
        raise StageError(f"search.storage {shown} cannot be reached: not a database URL SQLAlchemy can open") from error
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as error:  # refused, unknown host...
        # The driver's first line says which (drivers do not repeat the password).
        reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else type(error).__name__
        raise StageError(f"search.storage {shown} cannot be reached: {reason}") from error


def without_password(url: str) -> str:
    """The URL as it may be shown: the password in the user part and a `password=` query value replaced by ***."""
    url = re.sub(r"^([^:/]+://[^:/@]*):[^/]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


def open_study(params: Params) -> optuna.Study:
    return optuna.create_study(
        study_name=study_name(params),
        storage=open_storage(params),
        direction="minimize",
        sampler=make_sampler(params),
        pruner=make_pruner(params),
        load_if_exists=True,
    )


def make_sampler(params: Params) -> optuna.samplers.BaseSampler:
    if params.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=params.seed)
    if params.search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=params.seed)
    return optuna.samplers.RandomSampler(seed=params.seed)  # grid trials are all enqueued: never consulted


def make_pruner(params: Params) -> optuna.pruners.BasePruner:
    """Trials report val/loss after every epoch. Median: stop a trial that is worse than the median of the
    others at the same epoch. Successive halving: at epochs w, 3w, 9w, ... (w = the warm-up) keep only the
    best third of the trials that got there. Hyperband: successive halving in brackets of different w."""
    search = params.search
    first_rung = max(1, search.pruner_warmup_epochs)
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=search.pruner_startup_trials, n_warmup_steps=search.pruner_warmup_epochs
        )
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung, reduction_factor=3)
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=first_rung, max_resource=search.max_epochs, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def setup(params: Params) -> optuna.Study:
    """Create or load the study; recover trials a killed worker left RUNNING; enqueue the missing grid points.

    Must run while no worker of this study is running (the stage and the Snakemake rule ensure it).
    """
    study = open_study(params)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning("trial %d was left running by a stopped worker: marking it failed", trial.number)
        study.tell(trial.number, state=TrialState.FAIL)
    if params.search.sampler == "grid":
        enqueue_missing(study, search_space.grid(params.search.dimensions(), params.model.arch))
    return study


def enqueue_missing(study: optuna.Study, grid: list[dict[str, Any]]) -> None:
    """Enqueue each grid point that has no finished, running or waiting trial."""
    covered = [
        trial.system_attrs.get("fixed_params", trial.params)
        for trial in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING, TrialState.WAITING))
    ]
    for point in grid:
        if point not in covered:
            study.enqueue_trial(point)


def next_trial(study: optuna.Study, params: Params, stop: Callable[[], bool]) -> Trial | None:
    """The next trial for this worker, or None when the study needs no more.

    With heartbeats, a worker that finds the queue empty waits while other trials run: if one of
    their workers dies, its trial goes stale and comes back to the queue for this worker to take.
    """
    interval = _heartbeat_interval(study)
    while not stop():
        fail_stale_trials(study)  # database storages: fail and re-enqueue trials whose worker died
        taken = take_waiting(study)
        if taken is not None:
            return taken
        started = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if params.search.sampler != "grid" and len(started) < params.search.n_trials:
            return study.ask()
        if interval is None or not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return None
        time.sleep(interval)
    return None


def give_back(study: optuna.Study, trial: Trial) -> None:
    """Enqueue again the grid point of a trial this worker had to abandon (SIGTERM, as scancel sends)."""
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    point = frozen.system_attrs.get("fixed_params")
    if point is not None:
        study.enqueue_trial(point)
        log.info("trial %d abandoned: its point %s is queued again", trial.number, point)


def take_waiting(study: optuna.Study) -> Trial | None:
    """Take a WAITING trial with a compare-and-set: of two workers racing for it, one gets it."""
    storage = _storage(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return Trial(study, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


@contextmanager
def heartbeat(study: optuna.Study, trial: Trial) -> Iterator[None]:
    """Beat for a trial while it runs, where the storage supports heartbeats."""
    storage = _storage(study)
    interval = _heartbeat_interval(study)
    if interval is None:
        yield  # the journal file: setup recovers trials of stopped workers instead
        return
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), trial.number
    )
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            storage.record_heartbeat(trial_id)
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _heartbeat_interval(study: optuna.Study) -> int | None:
    return getattr(_storage(study), "get_heartbeat_interval", lambda: None)()


def _storage(study: optuna.Study) -> BaseStorage:
    # Optuna has no public accessor for a study's storage; the trial-level calls below are the
    # same public BaseStorage API that Study.ask uses to pop its queue.
    return study._storage  # noqa: SLF001
