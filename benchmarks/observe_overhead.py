"""What the training monitors cost: the search stage with every monitor on, then with all off.

    python benchmarks/observe_overhead.py [--repeats 3]

Runs in a temporary directory on the digits data, prints seconds per search and the ratio.
"""

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from litpipe.config import load_params
from litpipe.stages import prepare, search

REPO = Path(__file__).resolve().parents[1]
MONITORS = ("gradient_norms", "histograms", "device_stats", "activations")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    base = load_params(REPO / "params.yaml").override({"search.space": {"model.width": [128, 512]}})
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        prepare.run(base)
        timings = {}
        for label, on in (("monitors on", True), ("monitors off", False)):
            params = base.override({f"observe.{name}": on for name in MONITORS})
            timings[label] = [timed_search(params) for _ in range(args.repeats)]
    on, off = (statistics.median(timings[k]) for k in ("monitors on", "monitors off"))
    for label, values in timings.items():
        print(f"{label:13s} median {statistics.median(values):6.2f} s  runs {', '.join(f'{v:.2f}' for v in values)}")
    print(f"overhead ratio (on / off): {on / off:.2f}")


def timed_search(params) -> float:
    for stale in ("results", "tb"):
        shutil.rmtree(stale, ignore_errors=True)
    started = time.perf_counter()
    search.run(params)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
