"""The search's best configurations trained again over seeds (search.reevaluate_top_k), so that the one fit takes
is the best on average, not the one a lucky seed put first.

Each trial ran with one seed, and its validation loss carries that seed's luck: among many trials, the best one
is partly the luckiest. With reevaluate_top_k = k, the k best distinct configurations (candidates) are each
trained again, as a trial is (search.max_epochs, early stopping, no pruning), once per seed of replicates.seeds:
one part per candidate and seed (fanout.py), run locally replicates.n_workers at a time, or as cluster jobs. The
search's own seed (`seed`) is the trial itself: its part takes the trial's value rather than train it again (the
trial was chosen partly for that seed's luck, which the other seeds dilute: list several). Each part leaves its
result in its marker file; collect reads them, and best.json names the candidate with the best mean validation
loss over the seeds (a seed whose fit diverged ranks it last), beside the best single trial.
"""

import logging
import math
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from litpipe import fanout, paths
from litpipe.config import Params
from litpipe.errors import StageError
from litpipe.io import read_json, write_json
from litpipe.models.lit_model import MONITOR
from litpipe.spread import spread

log = logging.getLogger(__name__)


def candidates(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The k completed trials with the lowest validation loss (the earlier trial first on a tie), one per
    configuration: a random or TPE sampler may try a configuration twice."""
    found, seen = [], []
    for trial in sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (t.value, t.number)):
        if trial.user_attrs["params"] not in seen:
            seen.append(trial.user_attrs["params"])
            found.append(trial)
    return found[:k]


def run_name(candidate: int, seed: int) -> str:
    return f"search/reevaluate_{candidate}_seed_{seed}"


def reevaluate(params: Params, study: optuna.Study, candidate: int, seed: int, train: Any) -> None:
    """Train the candidate-th best configuration with `seed` (`train`: trial.TrialRunner.train) and write its
    result to the part's marker. A result already there for the same study, trial and seed is kept: a re-run
    of the stage resumes."""
    part = fanout.search_reevaluation(candidate, seed)
    trials = candidates(study, params.search.reevaluate_top_k)
    trial = trials[candidate] if candidate < len(trials) else None
    identity = {"study": study.study_name, "candidate": candidate, "seed": seed}
    identity["trial"] = None if trial is None else trial.number
    if part.marker.exists() and {key: read_json(part.marker).get(key) for key in identity} == identity:
        log.info("%s: done already (%s)", part.title, part.marker)
        return
    if trial is None:  # fewer completed trials than candidates: nothing to train
        log.info("%s: the study has only %d completed configurations", part.title, len(trials))
        write_json(part.marker, identity)
        return
    chosen = trial.user_attrs["params"]
    reused = seed == params.seed  # the trial trained this configuration with this seed, as a re-evaluation would
    if reused:
        value, epoch = trial.value, trial.user_attrs["best_epoch"]
        scores = {key: number for key, number in trial.user_attrs.items() if key.startswith("val_")}
    else:
        live = paths.reevaluation_live(candidate, seed)
        reevaluated = params.override({**chosen, "seed": seed})
        best, score = train(reevaluated, run_name(candidate, seed), live, [], f"{part.title}: ")
        value, epoch, scores = best[MONITOR], int(best["epoch"]), {f"val_{score}": best[f"val/{score}"]}
    result = {**identity, "params": chosen, "value": value, **scores, "best_epoch": epoch, "reused": reused}
    write_json(part.marker, result)
    log.info("%s (trial %d%s): %s=%.4f", part.title, trial.number, ", itself" * reused, MONITOR, value)


def results(params: Params, study: optuna.Study) -> pd.DataFrame:
    """A row per candidate and seed, from the parts' markers; an error when one is missing or stale."""
    rows, trials = [], candidates(study, params.search.reevaluate_top_k)
    for part in fanout.search_reevaluations(params):
        found = read_json(part.marker) if part.marker.exists() else {}
        candidate = dict(part.options)["candidate"]
        trial = trials[candidate].number if candidate < len(trials) else None
        if found.get("study") != study.study_name or found.get("trial") != trial:
            raise StageError(f"{part.title} has not run for this study; run the stage (or that part) again")
        if found.get("trial") is not None:
            rows.append(found)
    return pd.DataFrame(rows)


def ranked(table: pd.DataFrame, score: str) -> list[dict[str, Any]]:
    """Each candidate's validation loss over the seeds (its values, mean and spread) and its score's (acc, or
    rmse) mean, the best mean first."""
    summaries = []
    for (candidate, trial), runs in table.groupby(["candidate", "trial"], sort=False):
        values = runs["value"].tolist()
        summaries.append(
            {
                "candidate": int(candidate),
                "trial": int(trial),
                "params": runs["params"].iloc[0],
                "seeds": runs["seed"].astype(int).tolist(),
                "values": values,
                "mean": sum(values) / len(values),
                **{f"value_{name}": number for name, number in (spread(values) or {}).items() if name != "mean"},
                f"val_{score}_mean": float(runs[f"val_{score}"].mean()),
            }
        )
    return sorted(summaries, key=rank)


def rank(summary: dict[str, Any]) -> tuple[float, int]:
    """The lower mean first, a diverged (NaN) one last; the better trial first on a tie."""
    return (summary["mean"] if math.isfinite(summary["mean"]) else math.inf, summary["candidate"])
