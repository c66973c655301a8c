"""Loaded at the start of every Python process that the test pipeline starts (conftest.py puts this folder on
PYTHONPATH for `dvc repro`): at exit, a process that loaded litpipe modules writes which, with its command
line, to $LITPIPE_IMPORT_RECORDS/<pid>.json. tests/test_dag.py holds them against each stage's deps in
dvc.yaml: what a stage really imports when it runs must be among them."""

import atexit
import json
import os
import sys


def _record() -> None:
    directory = os.environ.get("LITPIPE_IMPORT_RECORDS")
    files = sorted(
        {
            module.__file__
            for name, module in list(sys.modules.items())
            if name.split(".")[0] == "litpipe" and getattr(module, "__file__", None)
        }
    )
    if directory and files:
        with open(os.path.join(directory, f"{os.getpid()}.json"), "w") as record:
            json.dump({"argv": sys.argv, "files": files}, record)


atexit.register(_record)
