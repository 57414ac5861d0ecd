"""Fault injection: every way a run can die leaves a usable run directory and loses nothing.

SIGKILL during a checkpoint write, a reward that raises in the middle of a rollout, a full disk
while checkpointing, and Ctrl-C (a clean stop that writes a final checkpoint); each test then
resumes the run to its end.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_gym.agents import checkpoints as ckpt
from rlhf_gym.agents.cli import main

PROMPTS = ["the movie was", "the food was", "hello world", "i love this"] * 5


def flaky(prompts, completions, **kwargs):
    """A reward plugin that fails once FLAKY_MARKER's file exists (created mid-run)."""
    marker = os.environ.get("FLAKY_MARKER")
    if marker and Path(marker).exists():
        raise RuntimeError("the checker's server went away")
    return [float(len(c)) for c in completions]


@pytest.fixture
def run_args(tmp_path, tiny_lm_dir) -> list[str]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS))
    return [
        "train", "--model", str(tiny_lm_dir), "--prompts", str(prompts), "--max-prompt-tokens", "8",
        "--max-new-tokens", "6", "--num-envs", "4", "--n-steps", "6", "--batch-size", "24",
        "--n-epochs", "1", "--eval-episodes", "4", "--eval-every", "0", "--checkpoint-every", "24",
        "--no-progress-bar", "--output-dir", str(tmp_path / "run"),
    ]  # fmt: skip


def _latest_step(out: Path) -> int:
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None and (latest / "agent" / "policy.safetensors").exists()
    return int(json.loads((latest / "state.json").read_text())["num_timesteps"])


def _finishes(args: list[str], total: int, out: Path) -> None:
    assert main([*args, "--reward", "length", "--total-timesteps", str(total), "--resume"]) == 0
    assert _latest_step(out) == total and (out / "adapter" / "adapter_config.json").exists()


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write(run_args, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main([*run_args, "--reward", "length", "--total-timesteps", "48"]) == 0
    good = _latest_step(out)
    import rlhf_gym.agents.saving as saving

    real = saving.save_file

    def killed_mid_write(tensors, path):
        real(tensors, path)
        if path.endswith("policy.safetensors"):
            raise KeyboardInterrupt  # the process dies after half the checkpoint is written

    monkeypatch.setattr(saving, "save_file", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        main([*run_args, "--reward", "length", "--total-timesteps", "96", "--resume"])
    assert _latest_step(out) == good  # the half-written one is not `latest`
    monkeypatch.setattr(saving, "save_file", real)
    _finishes(run_args, 96, out)


@pytest.mark.slow
def test_a_reward_that_raises_mid_rollout(run_args, tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "fail-now"
    env = dict(os.environ, HF_HUB_OFFLINE="1", FLAKY_MARKER=str(marker), PYTHONPATH=os.getcwd())
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf_gym.agents.cli", *run_args[0:], "--reward",
         "tests.test_faults:flaky", "--total-timesteps", "2400"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while ckpt.latest_checkpoint(out) is None and time.time() < deadline:
        time.sleep(0.05)
    marker.touch()  # the reward fails from the next call on, in the middle of a rollout
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "the checker's server went away" in output
    assert "Traceback" not in output
    step = _latest_step(out)
    _finishes(run_args, step + 48, out)


@pytest.mark.slow
def test_a_full_disk_while_checkpointing(run_args, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main([*run_args, "--reward", "length", "--total-timesteps", "48"]) == 0
    good = _latest_step(out)
    import rlhf_gym.agents.saving as saving

    def disk_full(tensors, path):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(saving, "save_file", disk_full)
    assert main([*run_args, "--reward", "length", "--total-timesteps", "96", "--resume"]) == 2
    assert "No space left on device" in capsys.readouterr().out
    assert _latest_step(out) == good
    monkeypatch.undo()
    _finishes(run_args, 96, out)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_a_final_checkpoint(run_args, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf_gym.agents.cli", *run_args, "--reward", "length",
         "--total-timesteps", "24000", "--checkpoint-every", "100000"],
        env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    progress = out / "progress.csv"
    deadline = time.time() + 120
    while (not progress.exists() or progress.stat().st_size == 0) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "--resume" in " ".join(output.split())
    step = _latest_step(out)  # written by the stop: checkpoint-every alone would not have
    assert 0 < step < 24000
    assert f"after a checkpoint at step {step};" in " ".join(output.split())  # that one
    _finishes(run_args, step + 24, out)
