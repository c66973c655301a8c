"""`litpipe experiments`: `dvc exp show` narrowed to what a comparison needs, in a 120-column terminal:
the test metrics, then the params that differ between the experiments shown; no timestamps, no hashes
of dependencies and outputs (DVC lists every one of them), no fit-internal metrics. The report's
experiments section shows the same columns (`dvc exp show --csv` with these options).
"""

import subprocess

OUTPUT_DIRS = "data|models|results|src|workflow|tb|logs|reports"  # dependency and output columns are paths
SHOW = [
    "exp",
    "show",
    "--only-changed",  # params and metrics that differ across the rows shown
    "--drop",
    rf"^Created$|^({OUTPUT_DIRS})/|^(best_epoch|best_val_acc|best_val_loss|epochs|samples)$",
    "--keep",
    # Experiment names (--only-changed drops the column where no row has one), and results/test/metrics.json,
    # shown even where every experiment has the same.
    r"^(Experiment|accuracy|loss)$",
]


def show(options: list[str]) -> int:
    """Run `dvc exp show` with SHOW and the user's own options (`--csv`, `-A`, `--sort-by accuracy`, ...)."""
    return subprocess.run(["dvc", *SHOW, "--no-pager", *options], check=False).returncode
