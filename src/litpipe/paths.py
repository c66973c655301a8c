"""Every path the pipeline reads or writes, relative to the repository root.

dvc.yaml (and later the Snakefile) repeat these strings because orchestrators need them
literally; tests check that the two stay in agreement.
"""

from pathlib import Path

PARAMS = Path("params.yaml")

PREPARED = Path("data/prepared")
META = PREPARED / "meta.json"


def split_file(split: str) -> Path:
    return PREPARED / f"{split}.pt"


SPLITS = ("train", "val", "test")

RESULTS = Path("results")
SANITY = RESULTS / "sanity"
LR_FIND = RESULTS / "lr_find"
SEARCH = RESULTS / "search"
FIT = RESULTS / "fit"
TEST = RESULTS / "test"
ANALYSIS = RESULTS / "analysis"
REPORT_WORK = RESULTS / "report"

MODELS = Path("models")
BEST_CKPT = MODELS / "best.ckpt"
# A preempted fit's full training state, and its best checkpoint so far: not pipeline outputs
# (orchestrators delete outputs before a re-run), the state a re-run resumes from.
RESUME_CKPT = MODELS / "resume.ckpt"
RESUME_BEST_CKPT = MODELS / "resume-best.ckpt"

TB = Path("tb")
LOGS = Path("logs")
WANDB = LOGS / "wandb"  # offline Weights & Biases runs, when observe.wandb is on
TIMING = RESULTS / "timing"
REPORT_NOTEBOOK = Path("workflow/notebooks/report.ipynb")
REPORT_HTML = Path("reports/report.html")


def tb_dir(stage: str) -> Path:
    return TB / stage


def log_file(stage: str) -> Path:
    return LOGS / f"{stage}.log"


def timing_file(stage: str) -> Path:
    return TIMING / f"{stage}.json"
