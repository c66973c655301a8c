#!/usr/bin/env bash
# The GPU check, run on a lent GPU machine (see README): the stages on CUDA, device statistics from
# NVML in TensorBoard, and search throughput with 1 worker against 4 workers sharing the one GPU.
# Writes what it finds under $OUT (or ./gpu-check). Needs torch, lightning and the project's
# other dependencies importable; PYTHONPATH=src is enough, without installing the package.
set -euo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
repo=$(pwd)
work=$(mktemp -d)
cp params.yaml "$work/"
cd "$work"
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
litpipe() { python3 -m litpipe.cli "$@"; }
python3 - <<'PY'
import yaml
params = yaml.safe_load(open("params.yaml"))
params["train"]["accelerator"] = "gpu"
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
for stage in prepare sanity lr_find; do litpipe "$stage" > "$out/$stage.log" 2>&1; done
for workers in 1 4; do
    rm -rf results/search tb/search
    sed -i "s/^  n_workers: .*/  n_workers: $workers/" params.yaml
    start=$(date +%s%N)
    litpipe search > "$out/search-$workers.log" 2>&1
    echo "search with $workers workers on 1 GPU: $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a "$out/summary.txt"
done
for stage in fit test analyze; do litpipe "$stage" > "$out/$stage.log" 2>&1; done
python3 - "$out" <<'PY' | tee -a "$out/summary.txt"
import csv, json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
tags = EventAccumulator("tb/fit").Reload().Tags()["scalars"]
trials = list(csv.DictReader(open("results/search/trials.csv")))
workers = {row["user_attrs_worker"] for row in trials if row.get("user_attrs_worker")}
print("device scalars:", sorted(t for t in tags if t.startswith("device/")))
print("search trials:", {s: sum(r["state"] == s for r in trials) for s in {r["state"] for r in trials}},
      "by", len(workers), "worker processes")
print("fit:", {k: v for k, v in json.load(open("results/fit/summary.json")).items() if k in ("best_epoch", "epochs", "test_acc_in_fit", "checkpoint_is_averaged")})
print("test:", json.load(open("results/test/metrics.json")))
print("system:", json.load(open("results/fit/summary.json"))["system"]["gpus"])
PY
