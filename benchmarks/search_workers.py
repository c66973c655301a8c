"""Search throughput: trials per minute with 1 worker, then with 2, on the same grid.

    python benchmarks/search_workers.py [--points 12] [--epochs 30]

Runs `litpipe search` in a temporary directory on the digits data (process start-up included,
as a user would see it) and prints trials per minute for each and the ratio.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=12, help="grid points (model.width values)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per trial")
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["search"].update(
        sampler="grid",
        pruner="none",
        max_epochs=args.epochs,
        space={"model.width": [32 + i for i in range(args.points)]},
    )
    params["train"]["early_stopping_patience"] = args.epochs
    rates = {}
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        litpipe(params, "prepare")
        for workers in (1, 2):
            params["search"]["n_workers"] = workers
            Path("results/search/study.journal").unlink(missing_ok=True)  # a fresh study for each run
            started = time.perf_counter()
            litpipe(params, "search")
            seconds = time.perf_counter() - started
            rates[workers] = args.points / seconds * 60
            label = f"{workers} worker{'s' if workers > 1 else ' '}"
            print(f"{label}: {args.points} trials in {seconds:6.1f} s = {rates[workers]:5.1f} trials/min")
    print(f"speed-up with 2 workers: {rates[2] / rates[1]:.2f}x on {os.cpu_count()} CPU cores")


def litpipe(params: dict, stage: str) -> None:
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "litpipe.cli", stage], check=True, capture_output=True)


if __name__ == "__main__":
    main()
