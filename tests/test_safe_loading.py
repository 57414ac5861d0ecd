"""Agents and checkpoints load without unpickling; an SB3 zip is an explicit opt-in."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zipfile

import pytest
import torch

from rlhf_gym.agents import load_agent, make_agent, save_agent
from tests.test_agents_support import make_env


class _RunsCode:
    """Unpickling this object touches a file: what a crafted agent.zip can do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _crafted_zip(path, marker) -> None:
    payload = base64.b64encode(pickle.dumps(_RunsCode(str(marker)))).decode()
    data = {"policy_class": {":type:": "<class 'type'>", ":serialized:": payload}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data", json.dumps(data))


def test_a_crafted_zip_does_not_run_code(tmp_path):
    marker, crafted = tmp_path / "ran", tmp_path / "agent.zip"
    _crafted_zip(crafted, marker)
    with pytest.raises(ValueError, match="holds a pickle.*trust_pickle=True"):
        load_agent(crafted)
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017  the opt-in does unpickle: the danger is real
        load_agent(crafted, trust_pickle=True)
    assert marker.exists()


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_save_agent_round_trips_tensors_and_json_only(
    tiny_tokenizer_dir, tiny_lm_dir, tmp_path, algo
):
    k = 2 if algo == "grpo" else 1
    env = make_env(tiny_tokenizer_dir, num_envs=2, group_size=k)
    agent = make_agent(algo, env, model=str(tiny_lm_dir), lora={"r": 4}, device="cpu",
                       seed=0, kl_target=1.0)  # fmt: skip
    agent.learn(64)
    out = save_agent(agent, tmp_path / "agent")
    assert sorted(p.name for p in out.iterdir()) == [
        "agent.json", "optimizer.json", "optimizer.safetensors", "policy.safetensors",
    ]  # fmt: skip
    loaded = load_agent(out, env, device="cpu")
    assert type(loaded) is type(agent) and loaded.num_timesteps == agent.num_timesteps
    assert loaded.kl_controller.value == agent.kl_controller.value
    for key, value in agent.policy.state_dict().items():
        assert torch.equal(value, loaded.policy.state_dict()[key]), key
    a, b = agent.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict()
    for index, entries in a["state"].items():
        for name, value in entries.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][name]))
    loaded.learn(32, reset_num_timesteps=False)  # it trains on


def test_checkpoints_hold_no_pickle(tmp_path, tiny_lm_dir):
    from rlhf_gym.agents.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["a b", "c d", "e f"] * 4))
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_lm_dir), "--prompts", str(prompts), "--reward", "length",
            "--max-prompt-tokens", "8", "--max-new-tokens", "4", "--num-envs", "2",
            "--n-steps", "8", "--eval-episodes", "2", "--checkpoint-every", "16",
            "--output-dir", str(out), "--no-progress-bar"]  # fmt: skip
    assert main([*args, "--total-timesteps", "32"]) == 0
    files = [p.name for p in (out / "checkpoints").rglob("*") if p.is_file()]
    assert files and not [f for f in files if f.endswith((".zip", ".pth", ".pkl", ".pt"))]
    assert main([*args, "--total-timesteps", "48", "--resume"]) == 0
    assert os.path.isdir(out / "adapter")
