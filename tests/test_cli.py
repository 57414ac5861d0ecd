"""The ``rlhf-gym`` command line on tiny models: help, config errors, train, resume, evaluate."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_gym.agents.cli import main

COMMANDS = ["train", "evaluate", "generate", "train-rm", "rewards", "algos", "build-default-task"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: rlhf-gym" in capsys.readouterr().out


def test_lists(capsys):
    assert main(["algos"]) == 0
    assert {"ppo", "a2c", "trpo", "maskable_ppo"} <= set(capsys.readouterr().out.split())
    assert main(["rewards"]) == 0
    assert {"length", "reward_model", "keyword"} <= set(capsys.readouterr().out.split())


def test_config_file_with_unknown_keys_names_them(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("algo: ppo\nlearning_rat: 0.001\nbogus: 1\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().out
    assert "unknown config key(s) 'learning_rat' (did you mean 'learning_rate'?), 'bogus'" in err


def test_resume_without_checkpoint(tmp_path, capsys, tiny_task):
    args = ["train", *tiny_task, "--output-dir", str(tmp_path / "run"), "--resume"]
    assert main(args) == 2
    assert "--resume: no checkpoint under" in capsys.readouterr().out


@pytest.fixture
def tiny_task(tmp_path, tiny_lm_dir) -> list[str]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps({"prompt": p})
            for p in ["the movie was", "the food was", "hello world", "i love this"] * 5
        )
    )
    return [
        "--model", str(tiny_lm_dir), "--prompts", str(prompts), "--reward", '{"keyword": {"weight": 1.0, "keywords": ["e"]}}',
        "--max-prompt-tokens", "8", "--max-new-tokens", "6", "--num-envs", "4", "--n-steps", "6",
        "--batch-size", "24", "--n-epochs", "1", "--eval-episodes", "4", "--eval-fraction", "0.2", "--no-progress-bar",
    ]  # fmt: skip


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "rlhf_gym.agents.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        **kw,
    )


@pytest.mark.slow
def test_train_writes_run_directory(tmp_path, tiny_task):
    out = tmp_path / "run"
    assert main(["train", *tiny_task, "--total-timesteps", "48", "--output-dir", str(out)]) == 0
    for name in [
        "config.yaml",
        "progress.csv",
        "eval.csv",
        "reward_curve.png",
        "samples.json",
        "adapter/adapter_config.json",
    ]:
        assert (out / name).exists(), name
    assert list(out.glob("events.out.tfevents.*")), (
        "tensorboard is installed (dev extra): events expected"
    )
    rows = list(csv.DictReader((out / "eval.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 48]
    samples = json.loads((out / "samples.json").read_text())
    assert len(samples["before"]) == 4 and len(samples["after"]) == 4
    assert not any(s["chat"] for s in samples["before"])  # plain prompts: no chat rows
    assert main(["evaluate", "--adapter", str(out / "adapter"), "--prompts", str(Path(tiny_task[3])),
                 "--reward", "length", "--max-prompt-tokens", "8", "--max-new-tokens", "6", "--episodes", "4",
                 "--output", str(out / "eval.json")]) == 0  # fmt: skip
    report = json.loads((out / "eval.json").read_text())
    assert set(report) == {"base", "adapter"}


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint(tmp_path, tiny_task):
    """Kill a run after its first checkpoint; --resume continues from that step count."""
    out = tmp_path / "run"
    args = [
        "train",
        *tiny_task,
        "--total-timesteps",
        "480",
        "--checkpoint-every",
        "24",
        "--output-dir",
        str(out),
    ]
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_gym.agents.cli", *args], env=dict(os.environ, HF_HUB_OFFLINE="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    pointer = out / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not pointer.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert pointer.exists(), "no checkpoint was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = out / "checkpoints" / pointer.read_text().strip()
    state = json.loads((latest / "state.json").read_text())
    step = state["num_timesteps"]
    assert 24 <= step < 480
    total = step + 48
    resumed = [a if a != "480" else str(total) for a in args]
    done = _cli(*resumed, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    final = json.loads(
        (out / "checkpoints" / pointer.read_text().strip() / "state.json").read_text()
    )
    assert final["num_timesteps"] == total  # continued from `step`, not from 0
    steps = [int(r["time/total_timesteps"]) for r in csv.DictReader((out / "progress.csv").open())]
    assert steps == sorted(set(steps)) and steps[-1] == total  # the log continues, no duplicates


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "reinforce_pp"])
def test_train_and_resume_a_group_algorithm(tmp_path, tiny_task, algo):
    """--algo grpo runs in rounds (--group-size), checkpoints, resumes and exports its adapter."""
    out = tmp_path / "run"
    at = tiny_task.index("--n-steps")  # a rollout is whole rounds, not n_steps
    args = tiny_task[:at] + tiny_task[at + 2 :]
    args = ["train", *args, "--algo", algo, "--group-size", "2", "--output-dir", str(out)]
    assert main([*args, "--total-timesteps", "96", "--checkpoint-every", "48"]) == 0
    config = (out / "adapter" / "adapter_config.json").read_text()
    assert "lora" in config.lower()
    assert not (out / "adapter" / "value_head.safetensors").exists()  # critic-free
    steps = [int(r["time/total_timesteps"]) for r in csv.DictReader((out / "progress.csv").open())]
    assert main([*args, "--total-timesteps", str(steps[-1] + 48), "--resume"]) == 0
    resumed = [
        int(r["time/total_timesteps"]) for r in csv.DictReader((out / "progress.csv").open())
    ]
    assert resumed == sorted(set(resumed)) and resumed[-1] >= steps[-1] + 48


@pytest.mark.slow
def test_a_users_run_shows_no_default_task_checks(tmp_path, tiny_task, capsys):
    out = tmp_path / "run"
    assert main(["train", *tiny_task, "--total-timesteps", "48", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out reward" in printed
    assert "PASS" not in printed and "MISS" not in printed and "rated positive" not in printed
    assert json.loads((out / "summary.json").read_text())["checks"] == []


def test_reward_flag_cannot_run_a_command(tmp_path, tiny_task, capsys):
    marker = tmp_path / "ran"
    args = list(tiny_task)
    at = args.index("--reward")
    args[at + 1] = json.dumps({"os:system": {"command": f"touch {marker}"}})
    assert main(["train", *args, "--output-dir", str(tmp_path / "run")]) == 2
    assert "--trust-reward-factories" in capsys.readouterr().out
    assert not marker.exists()


def _progress_rows(path):
    """progress.csv without the time/ columns (wall clock, fps, this process's iterations)."""
    rows = list(csv.DictReader(path.open()))
    return [
        {k: v for k, v in r.items() if not k.startswith("time/") or k == "time/total_timesteps"}
        for r in rows
    ]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_a_killed_run_resumes_bit_for_bit(tmp_path, tiny_task, algo):
    """SIGKILL between checkpoints, --resume: the same adapter, eval.csv and progress.csv rows
    as the run that was never interrupted."""
    args = list(tiny_task)
    if algo == "grpo":
        at = args.index("--n-steps")
        args = args[:at] + args[at + 2 :] + ["--group-size", "2"]
    common = ["train", *args, "--algo", algo, "--total-timesteps", "240",
              "--checkpoint-every", "24", "--eval-every", "48"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = _cli(*common, "--output-dir", str(whole))
    assert done.returncode == 0, done.stdout + done.stderr
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_gym.agents.cli", *common, "--output-dir",
                             str(killed)], env=dict(os.environ, HF_HUB_OFFLINE="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    pointer = killed / "checkpoints" / "latest"
    deadline = time.time() + 240
    step = 0
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists():
            state = killed / "checkpoints" / pointer.read_text().strip() / "state.json"
            if state.exists() and json.loads(state.read_text())["num_timesteps"] >= 72:
                step = json.loads(state.read_text())["num_timesteps"]
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 72 <= step < 240, "killed too late: the run had finished"
    resumed = _cli(*common, "--output-dir", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a = (whole / "adapter" / "adapter_model.safetensors").read_bytes()
    b = (killed / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == b
    assert (whole / "eval.csv").read_text() == (killed / "eval.csv").read_text()
    rows_a, rows_b = _progress_rows(whole / "progress.csv"), _progress_rows(killed / "progress.csv")
    diff = [
        (i, k, ra.get(k), rb.get(k))
        for i, (ra, rb) in enumerate(zip(rows_a, rows_b, strict=False))
        for k in ra
        if ra.get(k) != rb.get(k)
    ]
    assert rows_a == rows_b, diff[:6]
    again = _cli(*common, "--output-dir", str(killed), "--resume")  # a finished run: no change
    assert again.returncode == 0 and "already finished" in " ".join(again.stdout.split())
    assert (whole / "eval.csv").read_text() == (killed / "eval.csv").read_text()


@pytest.mark.parametrize("algo, chunk", [("ppo", 4), ("grpo", 2), ("ppo", None)])
def test_grad_chunk_size_reaches_the_algorithm(algo, chunk):
    """``--grad-chunk-size`` (YAML ``grad_chunk_size``) is passed to the PPO family and the group
    algorithms alike; unset, each keeps its own default."""
    from rlhf_gym.agents.config import TrainConfig
    from rlhf_gym.agents.training import _algo_kwargs

    kwargs = _algo_kwargs(TrainConfig(algo=algo, grad_chunk_size=chunk))
    assert kwargs.get("grad_chunk_size") == chunk


def test_config_values_of_the_wrong_type_name_the_file_and_key(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text('algo: ppo\nlearning_rate: "fast"\ngrad_chunk_size: 4\n')
    assert main(["train", "--config", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert "run.yaml: learning_rate: expected a number, got 'fast'" in " ".join(out.split())


def test_a_flag_the_algorithm_does_not_take_is_refused_in_one_line(tmp_path, capsys):
    args = ["train", "--algo", "a2c", "--batch-size", "64", "--output-dir", str(tmp_path / "r")]
    assert main(args) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "--batch-size (YAML batch_size) is not an option of --algo a2c" in out
    assert "Traceback" not in out


def test_generate_shows_the_users_turn_and_the_answer_not_the_template(
    tiny_lm_dir, capsys, monkeypatch
):
    from rlhf_gym.agents import cli

    monkeypatch.setattr(cli.console, "width", 200)  # no wrapping, whatever the terminal
    args = ["generate", "--model", str(tiny_lm_dir), "--prompt", "is the movie good", "--seed", "0"]
    assert main([*args, "--max-new-tokens", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("  is the movie good")  # the user's turn alone on its line
    assert lines[at + 1].startswith("    -> ")  # the answer on the next
    assert not any("<|user|>" in line or "<|assistant|>" in line for line in lines)
    assert main([*args, "--max-new-tokens", "4", "--no-chat-template"]) == 0
    plain = capsys.readouterr().out.splitlines()
    assert plain[0].startswith("  is the movie good")  # the continuation runs on
    assert not any(line.startswith("    -> ") for line in plain)


def test_samples_print_text_that_looks_like_markup_as_it_is(capsys, monkeypatch):
    from rlhf_gym.agents import cli

    monkeypatch.setattr(cli.console, "width", 200)
    cli._print_samples("t", [{"prompt": "a [/b] q", "completion": "[bold]x[/]", "reward": 1.0}])
    cli._print_samples(
        "t", [{"prompt": "q :smile:", "completion": "[/i] \\\\", "reward": 0.0, "chat": True}]
    )
    out = capsys.readouterr().out
    assert "a [/b] q[bold]x[/]  (reward 1.00)" in out
    assert "  q :smile:\n    -> [/i] \\\\  (reward 0.00)" in out


def test_an_error_line_keeps_text_that_looks_like_markup(capsys, monkeypatch):
    from rlhf_gym.agents import cli

    monkeypatch.setattr(cli.console, "width", 200)
    message = "unknown keys [foo, bar] in run.yaml; path /a/[/b] :smile:"
    assert cli._report(ValueError(message), debug=False) == 2
    assert f"error: {message}  (--debug shows the traceback)" in capsys.readouterr().out
