#!/usr/bin/env bash
# Download the wheels that benchmarks/run_gpu.sh installs on a lent GPU machine with no package
# index (its python3 already has CUDA torch, accelerate, tokenizers, pyarrow, pandas ...):
#
#     bash benchmarks/fetch_gpu_wheels.sh [PYTHON_VERSION]     # default 3.12, into ./.whl
#
# The versions are the ones measured here (constraints.txt; TRL as in results.json). `.whl/` must be
# ignored by git (add `/.whl/` to .git/info/exclude) and carried to the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-3.12}
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
    --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    transformers==5.24.0 peft==0.21.2 gymnasium==1.4.0 Farama-Notifications==0.0.6 \
    stable_baselines3==2.9.2 sb3_contrib==2.9.2 trl==1.16.0 datasets==5.2.0 dill==0.4.1 \
    multiprocess==0.70.19 fsspec==2026.9.0 regex==2026.11.19
ls .whl
