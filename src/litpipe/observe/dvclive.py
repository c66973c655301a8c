"""Each fit's and each search trial's epoch curves in DVCLive's files, which DVC reads: `dvc plots show` and `dvc
plots diff` draw them across experiments, and `dvc exp show` lists their latest values while a run goes on.

A run's directory (`paths.FitRun.live`, `paths.trial_live`) holds what DVCLive writes: `plots/metrics/<split>/
<metric>.tsv`, a row per epoch (DVCLive's `step` is the epoch, counted from 0 as in history.csv), and
`metrics.json`, the latest epoch's values, rewritten at each epoch's end. dvc.yaml declares them (its top-level
`plots` and `metrics`): DVCLive writes no dvc.yaml, saves no experiment and posts nothing to DVC Studio.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dvclive import Live
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


class EpochCurves(DVCLiveLogger):
    """DVCLive's Lightning logger, written once per epoch with the rows of training.History.

    Lightning and the monitors log to every logger every `log_every_n_steps` steps (gradient norms, device
    statistics: TensorBoard's), and DVCLive's own `log_metrics` inspects the call stack on each call: those
    calls are dropped. The curves are History's rows instead, handed over whole (`write`): a resumed fit's
    restored rows are written again at its start, into files that DVC or Snakemake deleted with the failed
    run's outputs, so a resumed run's files are those of a run never interrupted."""

    def __init__(self, directory: Path) -> None:
        super().__init__(run_name=directory.name)
        self.directory = directory
        self.written = 0  # History's rows in the files

    @property
    @rank_zero_experiment  # under DDP the other ranks get a dummy, and write nothing
    def experiment(self) -> Live:
        if self._experiment is None:
            # Lightning asks for it as the Trainer sets up: an earlier run's files leave the directory then.
            self._experiment = FilesOnly(str(self.directory), save_dvc_exp=False, dvcyaml=None, report=None)
        return self._experiment

    @rank_zero_only
    def write(self, rows: list[dict[str, float]]) -> None:
        """The rows not written yet, each `split/metric` value a line of its file, then metrics.json; with no
        rows (a fresh run's start), an empty directory."""
        live = self.experiment
        for row in rows[self.written :]:
            live.step = int(row["epoch"])
            for name, value in row.items():
                if "/" in name:
                    live.log_metric(name, value)
        if len(rows) > self.written:
            live.make_summary()
        self.written = len(rows)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, sync: bool | None = False) -> None:
        """Dropped: see the class."""

    def log_hyperparams(self, params: Any) -> None:
        """Dropped: the params are in params.yaml, which `dvc exp show` lists."""

    def finalize(self, status: str) -> None:
        """Nothing left: each epoch's `write` completed the files (DVCLive's `end` would post to Studio and, in a
        `dvc exp run`, stage files in git)."""


class FilesOnly(Live):
    """DVCLive without its DVC, git and Studio sides. On start DVCLive opens the repository: outside a DVC
    repository but inside a git one it runs `dvc init` and stages the files in git, in a git repository without
    commits it fails; at the end of a `dvc exp run` it stages in git what is untracked in its directory; with a
    Studio token configured it posts every epoch to DVC Studio. The orchestrators own the repository and the
    experiments, and dvc.yaml declares these files (dvclive is pinned: these are two of its own methods)."""

    def _init_dvc(self) -> None:
        pass

    def _init_studio(self) -> None:
        self._studio_events_to_skip.update(("start", "data", "done"))
