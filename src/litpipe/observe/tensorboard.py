"""TensorBoard runs under one root, `tb/`, with deterministic names, and HPARAMS sessions done right.

Every search trial and the final fit declare the same hyperparameter columns and the same metric
columns (hp_metrics), so whichever run TensorBoard reads first, the HPARAMS table is the same.
No placeholder values are logged: a column a run never fills stays empty instead of NaN.
"""

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_summary import ModelSummary
from matplotlib.figure import Figure
from torch.utils.tensorboard.summary import hparams

from litpipe import paths
from litpipe.config import Params, dotted
from litpipe.observe.system import git_state, markdown_table, system_info

log = logging.getLogger(__name__)


def hp_metrics(score: str) -> tuple[str, str, str]:
    """The metric columns: the best epoch's val/loss and its score (the task's: accuracy, or RMSE), and (the fit
    only) its checkpoint's test score."""
    return ("hp/best_val_loss", f"hp/best_val_{score}", f"hp/test_{score}")


def open_run(run: str) -> TensorBoardLogger:
    """The logger for tb/<run>, e.g. "fit" or "search/trial_0007", replacing any earlier run of that name
    (TensorBoard would otherwise merge the old and new event files into one confusing run)."""
    if rank_zero_only.rank == 0:  # DDP ranks re-run the stage: only the first may clear the run
        shutil.rmtree(paths.TB / run, ignore_errors=True)
    parent, _, leaf = run.rpartition("/")
    return TensorBoardLogger(str(paths.TB), name=parent, version=leaf, default_hp_metric=False)


def hparam_columns(params: Params, epochs: int) -> dict[str, Any]:
    """The hyperparameters shown for every session: identical keys for trials and fit."""
    return {
        "data.dataset": params.data.dataset,
        "seed": params.seed,
        # A network's argument may be a list or null: TensorBoard's HPARAMS shows numbers, strings and booleans.
        # The network's own arguments only: those of the networks it is not are not part of the run.
        **{key: _shown(value) for key, value in dotted(params.model.trained(), "model.").items()},
        **{f"optim.{key}": value for key, value in params.optim.model_dump().items()},
        "train.batch_size": params.train.batch_size,
        "train.max_epochs": epochs,
    }


def _shown(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) else str(value)


@rank_zero_only  # under DDP the other ranks' TensorBoard writers are dummies
def start_session(logger: TensorBoardLogger, params: Params, epochs: int, score: str) -> None:
    experiment, start, end = hparams(hparam_columns(params, epochs), dict.fromkeys(hp_metrics(score), 0.0))
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)


@rank_zero_only
def end_session(logger: TensorBoardLogger, metrics: dict[str, float], step: int) -> None:
    """Log the session's metric values (the HPARAMS table shows each tag's last value)."""
    unknown = [name for name in metrics if not name.startswith("hp/")]
    if unknown:
        raise ValueError(f"not HPARAMS metric columns: {sorted(unknown)}")
    logger.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=step)
    logger.experiment.flush()


@rank_zero_only
def add_text(logger: TensorBoardLogger, tag: str, markdown: str) -> None:
    logger.experiment.add_text(tag, markdown)


@rank_zero_only
def add_code(logger: TensorBoardLogger, tag: str, text: str) -> None:
    """Preformatted text (tables, logs): TensorBoard renders markdown, so indent it as code."""
    add_text(logger, tag, "\n".join("    " + line for line in text.splitlines()))


@rank_zero_only
def add_params(logger: TensorBoardLogger, params: Params) -> None:
    add_code(logger, "params", yaml.safe_dump(params.model_dump(), sort_keys=False))


@rank_zero_only
def add_figure(logger: TensorBoardLogger, tag: str, figure: Figure, step: int = 0) -> None:
    logger.experiment.add_figure(tag, figure, global_step=step, close=False)


@rank_zero_only
def add_log_file(logger: TensorBoardLogger, log_file: Path) -> None:
    """Everything the stage printed so far, in the text tab."""
    if Path(log_file).exists():
        add_code(logger, "log", Path(log_file).read_text())


@rank_zero_only
def describe_run(logger: TensorBoardLogger, params: Params, model: pl.LightningModule) -> dict[str, Any]:
    """Model summary, system, git state and params: to the text tab and to the log. Returns system and git."""
    summary = str(ModelSummary(model, max_depth=-1))
    system, git = system_info(), git_state()
    log.info("model summary:\n%s", summary)
    log.info("system: %s", ", ".join(f"{k}={v}" for k, v in system.items()))
    log.info("git: commit %s%s", git["commit"], " (uncommitted changes)" if git["dirty"] else "")
    add_code(logger, "model/summary", summary)
    add_text(logger, "system", markdown_table(system))
    add_text(logger, "git", markdown_table(git))
    add_params(logger, params)
    return {"system": system, "git": git}
