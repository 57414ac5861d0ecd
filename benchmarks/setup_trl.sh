#!/usr/bin/env bash
# Create benchmarks/.venv-trl: TRL (+ peft) for the side-by-side run, and py-spy for hotspots.py.
#
# TRL lives in its own environment so it never becomes a dependency of rlhf_gym. torch is
# installed FIRST with the pin of ../constraints.txt (on the dev machines torch==2.13.0 resolves to
# a local CPU wheel; any other torch spec would download gigabytes of CUDA wheels), and every later
# install is constrained by the same file, so pip can never pick another torch.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV=.venv-trl
CONSTRAINTS=../constraints.txt
TORCH_PIN="$(grep -E '^torch==' "$CONSTRAINTS")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet -c "$CONSTRAINTS" "$TORCH_PIN"
"$VENV/bin/pip" install --quiet -c "$CONSTRAINTS" trl peft py-spy
"$VENV/bin/python" -c "import torch, trl, peft; print('torch', torch.__version__, 'trl', trl.__version__, 'peft', peft.__version__)"
