"""search: Optuna over search.space with search.n_workers processes sharing one study.

Parts (fanout.py), so a cluster can run them as separate jobs (`litpipe search --part ...`):
    setup       create or resume the study, recover trials of stopped workers, enqueue the grid
    worker      take trials until the study needs no more (run N of these, anywhere)
    reevaluate  with search.reevaluate_top_k, one of the best configurations with one seed of replicates.seeds
    collect     write trials.csv, best.json (the best trial, or the best mean over seeds) and the plots
`litpipe search` runs them all, the workers and re-evaluations as local processes (each on its share of the cores, GPUs
round-robin). Each trial is a TensorBoard run, tb/search/trial_NNNN, and a session in the HPARAMS tab.
"""

import logging
import os
import shutil
import signal
import warnings

import optuna
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from optuna.trial import TrialState

from litpipe import fanout, paths
from litpipe.config import Params
from litpipe.data.prepared import load_meta
from litpipe.errors import StageError
from litpipe.io import write_json
from litpipe.models import tasks
from litpipe.search import outputs, reevaluate
from litpipe.search import space as search_space
from litpipe.search import study as shared
from litpipe.search.trial import TrialRunner
from litpipe.models.zoo import check_params as check  # cli.py runs it before any work

log = logging.getLogger(__name__)


def run(params: Params, part: str | None = None, worker: int = 0, candidate: int = 0, seed: int = 0) -> None:
    """The whole search, or the one part of it that a cluster job runs."""
    skipped = nothing_to_search(params)
    if skipped:  # each part of it too: a cluster runs them as jobs
        if part in (None, "setup"):
            log.info("%s: fit will use the values in params.yaml", skipped)
        if part in (None, "collect"):
            outputs.write_disabled(paths.STUDY_JOURNAL, skipped)
        if part == "reevaluate":  # its marker is its job's output: nothing to train again
            write_json(fanout.search_reevaluation(candidate, seed).marker, {"skipped": skipped})
        return
    if part == "setup":
        return setup(params)
    if part == "worker":
        return work(params, worker)
    if part == "reevaluate":
        return reevaluate_one(params, candidate, seed)
    if part == "collect":
        return collect(params)
    setup(params)
    if params.search.n_workers == 1:
        work(params, 0)
    else:
        run_workers(params)
    run_reevaluations(params)
    collect(params)


def nothing_to_search(params: Params) -> str | None:
    """Why a search would train the same network in every trial, or None when it would not."""
    if not params.search.enabled:
        return "search.enabled is false"
    if not search_space.applying(params.search.dimensions(), params.model.arch):
        return f"search.space holds no key for {params.model.arch}, only other networks' arguments"
    return None


def setup(params: Params) -> None:
    _route_optuna_logs()
    dimensions = params.search.dimensions()
    unused = set(dimensions) - set(search_space.applying(dimensions, params.model.arch))
    if unused:
        log.info("search.space: %s left out, for networks this search does not train", ", ".join(sorted(unused)))
    study = shared.setup(params)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        shutil.rmtree(paths.tb_dir("search"), ignore_errors=True)  # a new study: no stale trial runs
    counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    log.info("study %s in %s: %s", study.study_name, _where(params), counts)


def work(params: Params, index: int) -> None:
    """Run trials until the study needs no more, or a signal stops the worker: SIGTERM (scancel) fails the
    current trial and queues its point again, SIGUSR1 lets it finish first."""
    _route_optuna_logs()
    terminated = []
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, lambda received, frame: terminated.append(received))
    study, runner = shared.open_study(params), TrialRunner(params)
    gpu = (
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'all')}"
        if torch.cuda.is_available()
        else "no GPU"
    )
    log.info("worker %d: %d CPU threads, %s", index, torch.get_num_threads(), gpu)
    done = 0
    while not terminated and (trial := shared.next_trial(study, params, stop=lambda: bool(terminated))) is not None:
        state, value = TrialState.FAIL, None
        try:
            with shared.heartbeat(study, trial):
                value, state = runner(trial), TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except SIGTERMException:
            terminated.append(signal.SIGTERM)
        finally:
            study.tell(trial, value, state=state)
        if terminated and state == TrialState.FAIL:
            shared.give_back(study, trial)  # so a re-run of this worker alone finds the point again
        log.info("worker %d: trial %d %s", index, trial.number, state.name)
        done += 1
    if terminated:
        stopped_by = signal.Signals(terminated[0]).name
        raise StageError(f"worker {index} stopped by {stopped_by} after {done} trials; run the stage again to finish")
    log.info("worker %d: no trials left after running %d", index, done)


def run_workers(params: Params) -> None:
    """search.n_workers workers as local processes, all at once (fanout.Launcher: each on its share of the
    cores, GPUs round-robin, under CUDA MPS where several share one); SIGTERM or SIGUSR1 stops them all."""
    workers = fanout.search_workers(params)
    with fanout.Launcher(workers, len(workers), mps=params.search.cuda_mps) as launcher:
        pass
    described = "; ".join(launcher.failed)
    if launcher.signal:
        raise StageError(f"search stopped by {launcher.signal}: {described}; completed trials are kept, run it again")
    if not launcher.failed:
        return
    unfinished = shared.open_study(params).get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    if unfinished:
        raise StageError(f"{described}; completed trials are kept, run the stage again to finish the study")
    log.warning("%s; the other workers retried its trials and finished the study", described)


def reevaluate_one(params: Params, candidate: int, seed: int) -> None:
    _route_optuna_logs()
    if candidate >= params.search.reevaluate_top_k or seed not in params.replicates.seeds:
        raise StageError(
            f"--candidate {candidate} --seed {seed}: not a part of this search (search.reevaluate_top_k "
            f"{params.search.reevaluate_top_k}, replicates.seeds {params.replicates.seeds})"
        )
    reevaluate.reevaluate(params, shared.open_study(params), candidate, seed, TrialRunner(params).train)


def run_reevaluations(params: Params) -> None:
    """The reevaluation parts as local processes, replicates.n_workers at a time (as the replicate fits run)."""
    parts = fanout.search_reevaluations(params)
    if not parts:
        return
    slots = min(params.replicates.n_workers, len(parts))
    log.info(
        "training the %d best configurations again with seeds %s: %d runs, %d at once",
        params.search.reevaluate_top_k,
        params.replicates.seeds,
        len(parts),
        slots,
    )
    with fanout.Launcher(parts, slots, mps=params.search.cuda_mps) as launcher:
        pass
    if launcher.signal:
        raise StageError(f"search stopped by {launcher.signal}; finished runs are kept, run it again")
    if launcher.failed:
        raise StageError(f"{'; '.join(launcher.failed)}; finished runs are kept, run the stage again")


def collect(params: Params) -> None:
    _route_optuna_logs()
    study = shared.open_study(params)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    if waiting:
        raise StageError(f"{len(waiting)} trials are not finished; run the workers (or the stage) again")
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise StageError(f"no trial of study {study.study_name} completed; see logs/search*.log")
    ranked = []
    if params.search.reevaluate_top_k:
        ranked = reevaluate.ranked(reevaluate.results(params, study), tasks.of(load_meta()).score)
    best = outputs.write(study, ranked)
    log.info(
        "best trial %d: val/loss=%.4f with %s; trials by state: %s",
        best["best_trial"],
        study.best_value,
        study.best_trial.user_attrs["params"],
        best["states"],
    )
    for summary in ranked:
        log.info(
            "trial %d over seeds %s: val/loss mean %.4f%s%s",
            summary["trial"],
            summary["seeds"],
            summary["mean"],
            f", 95% CI [{summary['value_ci95_low']:.4f}, {summary['value_ci95_high']:.4f}]"
            if "value_ci95_low" in summary
            else "",
            " (chosen)" if summary is ranked[0] else "",
        )


def _route_optuna_logs() -> None:
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    # Heartbeats and the plots are marked experimental on every call; the log needs it once at most.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _where(params: Params) -> str:
    return str(paths.STUDY_JOURNAL) if params.search.storage == "journal" else params.search.storage.split("@")[-1]
