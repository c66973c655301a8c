#!/usr/bin/env bash
# The GPU check, run once on a lent GPU machine (see README, "Speed"): litpipe bench on CUDA with
# MNIST-shaped data at batch 256 and 1024 (32-bit and bf16-mixed) and resnet18 on CIFAR-shaped data,
# search throughput with 1 and 4 workers sharing the one GPU, and the stages on CUDA with NVML statistics
# in TensorBoard.
# Writes everything under $OUT (or ./gpu-check). Needs the project's dependencies importable;
# PYTHONPATH=src is enough, without installing the package. LITPIPE_ACCELERATOR=cpu dry-runs it here.
set -euo pipefail
out=$(realpath -m "${OUT:-gpu-check}")
accelerator=${LITPIPE_ACCELERATOR:-gpu}
mkdir -p "$out"
repo=$(pwd)
work=$(mktemp -d)
cp params.yaml "$work/"
cd "$work"
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
litpipe() { python3 -m litpipe.cli "$@"; }
on_device=(-S "train.accelerator=$accelerator")

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"; } | tee "$out/gpu.txt"
command -v nvidia-cuda-mps-control >/dev/null && echo "CUDA MPS: installed" | tee -a "$out/gpu.txt"

# Training speed: litpipe's fit path against a plain loop, on the same GPU.
for batch in 256 1024; do
    litpipe bench --synthetic --epochs 4 --repeats 2 "${on_device[@]}" -S train.batch_size=$batch \
        > "$out/bench-$batch.json" 2> "$out/bench-$batch.log"
done
litpipe bench --synthetic --epochs 4 "${on_device[@]}" -S train.batch_size=1024 -S train.precision=bf16-mixed \
    > "$out/bench-1024-bf16.json" 2> "$out/bench-1024-bf16.log"
litpipe bench --synthetic --epochs 4 "${on_device[@]}" -S train.batch_size=1024 -S train.compile=true \
    > "$out/bench-1024-compile.json" 2> "$out/bench-1024-compile.log"
# Another network: resnet18 on CIFAR-10-shaped images (50,000 of 3 x 32 x 32).
litpipe bench --synthetic cifar10 --epochs 3 "${on_device[@]}" -S model.arch=resnet18 -S train.batch_size=256 \
    > "$out/bench-resnet18.json" 2> "$out/bench-resnet18.log"

# Search throughput: 8 equal trials, 1 worker against 4 workers on the one GPU (CUDA MPS when installed).
litpipe bench --synthetic --search 4 --points 8 --epochs 10 "${on_device[@]}" -S train.batch_size=256 \
    > "$out/search-4.json" 2> "$out/search-4.log"

# The stages on CUDA (digits), with NVML device statistics in TensorBoard.
python3 - "$accelerator" <<'PY'
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
params["train"]["accelerator"] = sys.argv[1]
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
for stage in prepare sanity lr_find search fit test analyze; do litpipe "$stage" > "$out/$stage.log" 2>&1; done
python3 - "$out" <<'PY' | tee "$out/summary.txt"
import glob, json, os, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
out = sys.argv[1]
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    result = json.load(open(path))
    keys = ("ratio", "ratio_monitors_off", "plain_epoch_s", "litpipe_epoch_s", "data_path", "device", "precision",
            "compile", "search_trials_per_min", "speedup")
    print(os.path.basename(path), {k: result[k] for k in keys if k in result})
tags = EventAccumulator("tb/fit").Reload().Tags()["scalars"]
print("device scalars:", sorted(t for t in tags if t.startswith("device/")))
print("test:", json.load(open("results/test/metrics.json")))
PY
