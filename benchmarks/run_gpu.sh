#!/usr/bin/env bash
# The benchmark suite on a CUDA machine with bf16 models (issue 5, item 4), in one command:
#
#     bash benchmarks/run_gpu.sh [RESULTS_DIR [RUN_PY_ARGS...]]     # RESULTS_DIR default: benchmarks/
#
# Extra arguments go to both run.py calls after the GPU ones, so they override them:
# `bash benchmarks/run_gpu.sh /tmp/r --device cpu --dtype float32 --quick` rehearses this script
# (wheels, shim, one Python for both contestants) on a CPU machine before spending GPU time.
#
# Meant for a machine that already has a CUDA build of torch in `python3` (a lent GPU box with no
# package index): the other packages come from wheels in `.whl/` when that folder exists
# (benchmarks/fetch_gpu_wheels.sh; benchmarks/README.md, "On a GPU"), else from what `python3`
# has. rlhf_gym runs from this checkout without being installed. TRL runs in the same Python as ours here: the machine
# is throwaway, so the separate-venv rule that keeps TRL out of the library's environment is
# kept by never installing either into a lasting environment.
#
# Two runs, so that a time limit on the lent machine costs at most the second: the main sections
# (env, rollout, end-to-end, TRL), then the scaling sweep. Each run appends every worker's
# result to RESULTS_DIR/*.progress.jsonl as it arrives.
set -uo pipefail
cd "$(dirname "$0")/.."
results=${1:-benchmarks}
shift || true
mkdir -p "$results"

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/rlhf-gym-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/rlhf-gym-site${PYTHONPATH:+:$PYTHONPATH}
fi
# rlhf_gym is a namespace package assembled from three top-level folders (pyproject's package-dir).
shim=$(mktemp -d)
mkdir -p "$shim/rlhf_gym"
for d in envs agents rewards; do ln -s "$PWD/$d" "$shim/rlhf_gym/$d"; done
export PYTHONPATH=$shim:$PYTHONPATH

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
fi
python3 - <<'EOF' || exit 1
import importlib
for name in ("torch", "transformers", "peft", "gymnasium", "stable_baselines3", "sb3_contrib",
             "trl", "accelerate", "datasets", "tokenizers"):
    mod = importlib.import_module(name)
    print(f"{name} {mod.__version__} ({mod.__file__})")
import torch
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), "bf16 supported:", torch.cuda.is_bf16_supported())
else:
    print("no CUDA device visible to torch: only a --device cpu rehearsal can run")
import rlhf_gym.agents, rlhf_gym.envs  # noqa: E401  the shim works
EOF

common=(--device cuda --dtype bfloat16 --trl-python "$(command -v python3)")
python3 benchmarks/run.py "${common[@]}" --sections env,rollout,e2e,trl \
    --output "$results/results-cuda-bfloat16.json" "$@"
python3 benchmarks/run.py "${common[@]}" --sections scaling \
    --output "$results/results-cuda-bfloat16-scaling.json" "$@"
