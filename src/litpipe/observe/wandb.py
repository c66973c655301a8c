"""Optional Weights & Biases logging, always offline (compute nodes rarely reach the internet).

Sync later from a login node with `wandb sync logs/wandb/offline-run-*`.
"""

from lightning.pytorch.loggers import Logger

from litpipe import paths
from litpipe.config import Params
from litpipe.errors import StageError


def wandb_loggers(params: Params, run: str) -> list[Logger]:
    if not params.observe.wandb:
        return []
    try:
        import wandb  # noqa: F401  (checked here so the error names the fix)
    except ImportError:
        raise StageError("observe.wandb is true but wandb is not installed: pip install wandb") from None
    from lightning.pytorch.loggers import WandbLogger

    paths.WANDB.mkdir(parents=True, exist_ok=True)
    return [
        WandbLogger(
            project=params.observe.wandb_project,
            name=run,
            group=run.partition("/")[0],
            save_dir=str(paths.WANDB),
            offline=True,
        )
    ]


def finish(loggers: list[Logger]) -> None:
    """Close W&B runs, so that the next trial in this process starts a run of its own."""
    for logger in loggers:
        logger.experiment.finish()
