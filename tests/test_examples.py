"""The examples run as written (on the embedded default task's tiny models)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], env=ENV,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_quickstart_env():
    out = run("quickstart_env.py")
    assert "observation:" in out and "vector env rewards" in out


def test_custom_reward():
    out = run("custom_reward.py")
    assert "components: {'politeness':" in out


@pytest.mark.slow
def test_swap_algorithms():
    out = run("swap_algorithms.py", "--steps", "128", "--eval-episodes", "8")
    for name in ["ppo", "a2c", "trpo", "maskable_ppo"]:
        assert name in out
