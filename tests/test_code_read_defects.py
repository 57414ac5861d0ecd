"""Defects found by reading the code (issue 15), each with a test that fails without its fix."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rlhf_gym.agents import checkpoints as ckpt
from rlhf_gym.envs import PromptDataset
from tests.test_agents_support import PROMPTS, make_env


def test_resaving_a_step_never_leaves_latest_pointing_at_nothing(tmp_path, monkeypatch):
    class Agent:
        pass

    def save_agent(agent, path):
        path.mkdir()
        (path / "agent.json").write_text("{}")

    monkeypatch.setattr(ckpt, "save_agent", save_agent)
    ckpt.save_checkpoint(tmp_path, 8, Agent(), {"num_timesteps": 8})
    real_replace = os.replace

    def killed_at_the_directory_rename(src, dst):
        if str(src).endswith(".tmp") and not str(src).endswith("latest.tmp"):
            raise KeyboardInterrupt  # the process dies here
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_the_directory_rename)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 8, Agent(), {"num_timesteps": 8})
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and (latest / "state.json").exists()
    monkeypatch.setattr(os, "replace", real_replace)
    again = ckpt.save_checkpoint(tmp_path, 8, Agent(), {"num_timesteps": 8})
    assert ckpt.latest_checkpoint(tmp_path) == again and (again / "agent" / "agent.json").exists()


def test_extra_columns_are_computed_once(tiny_tokenizer):
    rows = [{"prompt": p, "answer": str(i)} for i, p in enumerate(PROMPTS)]
    ds = PromptDataset.from_source(rows, tiny_tokenizer, max_prompt_tokens=16)
    assert ds.extra_columns == ["answer"]
    ds.rows = None  # type: ignore[assignment]  # a second walk over the rows would fail
    assert ds.extra_columns == ["answer"]


def test_set_options_reach_the_next_reset(tiny_tokenizer_dir):
    venv = make_env(tiny_tokenizer_dir, num_envs=3)
    venv.set_options({"prompt_index": 2})
    obs = venv.reset()
    assert len({tuple(row) for row in obs["input_ids"]}) == 1  # all three on prompt 2
    venv.set_options([{"prompt_index": 0}, {}, {"prompt_index": 1}])
    obs = venv.reset()
    assert not np.array_equal(obs["input_ids"][0], obs["input_ids"][2])
    assert [e._row.index for e in (venv.envs[0], venv.envs[2])] == [0, 1]


def test_evaluation_does_not_move_a_normalising_rewards_statistics():
    from rlhf_gym.agents.training import _evaluation_reward
    from rlhf_gym.rewards import CompositeReward, Reward

    class Normalising(Reward):
        name = "normalising"

        def __init__(self) -> None:
            self.count = 0

        def __call__(self, prompts, completions, **kwargs):
            self.count += len(prompts)
            return [0.0] * len(prompts)

    train_reward = CompositeReward([Normalising()])
    eval_reward = _evaluation_reward(train_reward)
    eval_reward(prompts=["p"] * 5, completions=["c"] * 5)
    assert train_reward.rewards[0].count == 0 and eval_reward.rewards[0].count == 5
