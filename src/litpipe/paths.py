"""Every path the pipeline reads or writes, relative to the repository root.

dvc.yaml repeats these strings because the orchestrators need them literally (the Snakefile reads
them from there); a test checks that every file named here is an output dvc.yaml declares.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PARAMS = Path("params.yaml")

RAW = Path("data/raw")  # raw datasets, each tracked by DVC (`dvc add data/raw/<name>`); prepare depends on it
PREPARED = Path("data/prepared")
META = PREPARED / "meta.json"


def split_files(split: str) -> tuple[Path, Path]:
    """The split's inputs (images: uint8 N x C x H x W; a table's rows: float32 N x F) and targets (classes: int64 N;
    regression: float64 N), as NumPy arrays."""
    return PREPARED / f"{split}-x.npy", PREPARED / f"{split}-y.npy"


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
# The fit's last resume point: its full training state with its best checkpoint so far. Not a pipeline output
# (orchestrators delete outputs before a re-run): the state a re-run resumes from.
RESUME_CKPT = MODELS / "resume.ckpt"

TB = Path("tb")
LOGS = Path("logs")

# Each seed of replicates.seeds after the first: its checkpoint, results and TensorBoard run, one entry per
# seed in each of these directories (fit_run). Empty with one seed.
REPLICATE_DIRS = (MODELS / "replicates", RESULTS / "replicates", TB / "replicates")
REPLICATES_INDEX = "seeds.json"  # in each of them: where every seed's run is (written by `litpipe fit`)
WANDB = LOGS / "wandb"  # offline Weights & Biases runs, when observe.wandb is on
TIMING = RESULTS / "timing"
# Snakemake's `benchmark:` file of each rule (<rule>.tsv: its wall time and peak memory), which the report reads
# when present. No stage's output: DVC never writes them, and a finished `dvc repro` is still complete for
# `snakemake`, which checks only the files that a rule or the target asks for, and none asks for these.
BENCHMARKS = TIMING / "benchmarks"
REPORT_NOTEBOOK = Path("workflow/notebooks/report.ipynb")
REPORT_HTML = Path("reports/report.html")


# Files one stage writes and a later one (or the report) reads.
SANITY_SUMMARY = SANITY / "summary.json"
OVERFIT_PLOT = SANITY / "overfit.png"
PROFILE_DIR = SANITY / "profile"
PROFILE_TABLE = PROFILE_DIR / "fit-profile.txt"
LR_FIND_RESULT = LR_FIND / "lr_find.json"
LR_FIND_PLOT = LR_FIND / "lr_find.png"
STUDY_JOURNAL = SEARCH / "study.journal"
# Each trial's DVCLive curves (observe/dvclive.py), a directory per trial (trial_live); kept between runs, as tb/search.
SEARCH_LIVE = SEARCH / "live"
SEARCH_TRIALS = SEARCH / "trials.csv"
SEARCH_BEST = SEARCH / "best.json"
SEARCH_PLOTS = {name: SEARCH / f"{name}.png" for name in ("history", "importances", "parallel_coordinates", "slice")}
FIT_HISTORY = FIT / "history.csv"
FIT_ACTIVATIONS = FIT / "activations.csv"
FIT_CURVES = FIT / "curves.png"
FIT_SUMMARY = FIT / "summary.json"
FIT_METRICS = FIT / "metrics.json"
TEST_METRICS = TEST / "metrics.json"
TEST_SEEDS = TEST / "seeds.csv"  # the test metrics of each seed's checkpoint
ANALYSIS_SUMMARY = ANALYSIS / "summary.json"
PER_CLASS_TABLE = ANALYSIS / "per_class.csv"
ANALYSIS_PLOTS = {
    name: ANALYSIS / f"{name}.png"
    for name in ("confusion", "mistakes", "reliability", "per_class", "activations_pca", "activations_evolution")
}
# Regression's residual analysis (analysis/regression.py); a table's mistakes with their values.
REGRESSION_PLOTS = {
    name: ANALYSIS / f"{name}.png"
    for name in (
        "residuals_vs_fitted",
        "predicted_vs_actual",
        "residual_distribution",
        "residuals_vs_features",
        "error_by_decile",
        "importance",
    )
}
MISTAKES_TABLE = ANALYSIS / "mistakes.csv"  # tables: the largest errors with their rows' values
IMPORTANCE_TABLE = ANALYSIS / "importance.csv"  # regression on a table: permutation importance per column


@dataclass(frozen=True)
class FitRun:
    """Where one fit writes: its checkpoint, its results (history.csv, summary.json, ...), its TensorBoard
    run and log, and what a preempted run resumes from."""

    task: str  # its name in logs/ ("fit", "fit-seed-1")
    checkpoint: Path
    results: Path
    tensorboard: Path
    resume: Path  # its last resume point, the best checkpoint inside (preemption.py)

    @property
    def log(self) -> Path:
        return log_file(self.task)

    @property
    def run_name(self) -> str:  # the TensorBoard run, relative to tb/
        return self.tensorboard.relative_to(TB).as_posix()

    @property
    def outputs(self) -> tuple[Path, ...]:  # what it makes, as orchestrators declare it
        return self.checkpoint, self.results, self.tensorboard

    live = property(lambda self: self.results / "live")  # its DVCLive curves (observe/dvclive.py)
    history = property(lambda self: self.results / "history.csv")
    activations = property(lambda self: self.results / "activations.csv")
    curves = property(lambda self: self.results / "curves.png")
    summary = property(lambda self: self.results / "summary.json")
    metrics = property(lambda self: self.results / "metrics.json")


def fit_run(seed: int, seeds: Sequence[int]) -> FitRun:
    """The fit of `seed` among replicates.seeds: the first seed's at the stage's own paths (models/best.ckpt,
    results/fit, tb/fit), each other seed's under replicates/seed-<seed>."""
    if seed == seeds[0]:
        return FitRun("fit", BEST_CKPT, FIT, TB / "fit", RESUME_CKPT)
    tag = f"seed-{seed}"
    models, results, tensorboard = REPLICATE_DIRS
    return FitRun(
        f"fit-{tag}",
        models / f"{tag}.ckpt",
        results / tag,
        tensorboard / tag,
        MODELS / f"resume-{tag}.ckpt",
    )


def trial_live(number: int) -> Path:
    """Search trial `number`'s DVCLive curves."""
    return SEARCH_LIVE / f"trial_{number:04d}"


def reevaluation_live(candidate: int, seed: int) -> Path:
    """The DVCLive curves of the search's candidate-th best configuration trained again with `seed`."""
    return SEARCH_LIVE / f"reevaluate_{candidate}_seed_{seed}"


def tb_dir(stage: str) -> Path:
    return TB / stage


def log_file(stage: str) -> Path:
    return LOGS / f"{stage}.log"


def failed_log_file(log: Path) -> Path:
    """Where the log of a run that failed goes (logs/fit.failed.log), leaving the last good one in place."""
    return log.with_suffix(".failed.log")


def timing_file(stage: str) -> Path:
    return TIMING / f"{stage}.json"


def benchmark_file(rule: str) -> Path:
    return BENCHMARKS / f"{rule}.tsv"


def report_inputs() -> dict[str, str]:
    """What the report notebook reads, by name: its papermill parameter `paths`."""
    named = {
        "meta": META,
        "sanity_summary": SANITY_SUMMARY,
        "overfit_plot": OVERFIT_PLOT,
        "profile_table": PROFILE_TABLE,
        "lr_find_result": LR_FIND_RESULT,
        "lr_find_plot": LR_FIND_PLOT,
        "search_trials": SEARCH_TRIALS,
        "search_best": SEARCH_BEST,
        **{f"search_{name}_plot": path for name, path in SEARCH_PLOTS.items()},
        "fit_history": FIT_HISTORY,
        "fit_curves": FIT_CURVES,
        "fit_summary": FIT_SUMMARY,
        "fit_tensorboard": tb_dir("fit"),
        "test_metrics": TEST_METRICS,
        "test_seeds": TEST_SEEDS,
        "replicates": REPLICATE_DIRS[1],
        "analysis_summary": ANALYSIS_SUMMARY,
        "per_class_table": PER_CLASS_TABLE,
        **{f"{name}_plot": path for name, path in ANALYSIS_PLOTS.items()},
        **{f"{name}_plot": path for name, path in REGRESSION_PLOTS.items()},
        "mistakes_table": MISTAKES_TABLE,
        "importance_table": IMPORTANCE_TABLE,
        "timing": TIMING,
        "benchmarks": BENCHMARKS,
    }
    return {name: str(path) for name, path in named.items()}
