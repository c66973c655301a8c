"""`litpipe bench`: litpipe's training path against a plain PyTorch loop doing the same work (speed.py
measures). Its arguments and params are checked first, in one line and exit status 2, before the
measurements and their imports (torch, Lightning) are loaded; the JSON result alone goes to stdout,
progress to stderr and logs/bench.log.
"""

import argparse
import json
import logging
import os
import sys

import yaml

from litpipe import logs, paths
from litpipe.config import load_params
from litpipe.errors import ConfigError, StageError

log = logging.getLogger(__name__)


def main(args: argparse.Namespace) -> int:
    """`litpipe bench`: the JSON result alone on stdout, progress on stderr and in logs/bench.log."""
    try:
        params = load_params(args.params).override(overrides(args.set))
    except ConfigError as error:
        print(f"litpipe: {error}", file=sys.stderr)
        return 2
    counts = {
        "--epochs": (args.epochs, 2),
        "--repeats": (args.repeats, 1),
        "--search": (args.search, 1),
        "--points": (args.points, 1),
    }
    for flag, (value, least) in counts.items():
        if value is not None and value < least:
            print(f"litpipe: bench: {flag} must be at least {least} (got {value})", file=sys.stderr)
            return 2
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    logs.log_to(paths.log_file("bench"), stream=sys.stderr)
    from litpipe import resources, speed  # torch and Lightning: loaded once the arguments are known to be good

    resources.use_cpu_share()
    logs.adopt_library_loggers()
    try:
        result = speed.run(params, args.synthetic, args.epochs, args.repeats, args.search, args.points)
    except StageError as error:
        log.error("bench failed: %s", error)
        return 1
    print(dumps(result))
    return 0


def overrides(assignments: list[str]) -> dict[str, object]:
    """`KEY=VALUE` pairs, each value read as YAML (so 256 is a number and [1, 2] a list)."""
    values = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"-S {assignment!r}: expected KEY=VALUE, e.g. train.batch_size=256")
        values[key] = yaml.safe_load(value)
    return values


def dumps(result: dict) -> str:
    return json.dumps(result, indent=2)
