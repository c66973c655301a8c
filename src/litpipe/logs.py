"""Where messages go: the console and logs/<task>.log (cluster job output files have opaque names); and a
failed run's log set aside, so the last good one stays where it was."""

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TextIO

from litpipe import paths


def log_to(log_file: os.PathLike, stream: TextIO = sys.stdout) -> None:
    """Messages go to `stream` (errors to stderr) and to `log_file`."""
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    progress, errors = logging.StreamHandler(stream), logging.StreamHandler(sys.stderr)
    progress.addFilter(lambda record: record.levelno < logging.ERROR)
    errors.setLevel(logging.ERROR)
    handlers: list[logging.Handler] = [progress, errors, logging.FileHandler(log_file, mode="w")]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_DropAdverts())
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    logging.captureWarnings(True)  # library warnings reach the log file too
    # Lightning 2.6 on torch 2.14 warns about its own use of a deprecated pytree API; nothing to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


class _DropAdverts(logging.Filter):
    """Lightning advertises a hosted logger on every Trainer; keep that out of research logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


def adopt_library_loggers() -> None:
    """Lightning attaches its own console handlers on import; route its records through ours instead."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def set_aside(log_file: Path) -> Path | None:
    """Move the last run's log out of the way (this run's log is written where it was, to be followed
    live); `settle` puts it back if this run fails."""
    if not log_file.exists():
        return None
    previous = log_file.with_name(f".{log_file.name}.previous")
    os.replace(log_file, previous)
    return previous


def settle(log_file: Path, previous: Path | None, succeeded: bool) -> None:
    """A failed run changes no output, the last log included: its own log becomes <task>.failed.log."""
    if succeeded:
        if previous:
            previous.unlink(missing_ok=True)
        return
    if log_file.exists():
        os.replace(log_file, paths.failed_log_file(log_file))
    if previous:
        os.replace(previous, log_file)
