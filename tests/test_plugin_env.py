"""A third-party reward package, installed for real, is usable by name in ``gym.make``."""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

import rlhf_gym.envs  # noqa: F401
from rlhf_gym.envs import ENV_ID
from tests._tiny import install_example_reward_plugin

REPO = Path(__file__).resolve().parents[1]


def test_installed_plugin_by_name_in_gym_make(
    tmp_path, monkeypatch, tiny_tokenizer_dir, tiny_tokenizer
):
    target = install_example_reward_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(target))
    monkeypatch.delitem(sys.modules, "rlhf_gym_example_reward", raising=False)
    env = gym.make(ENV_ID, tokenizer=str(tiny_tokenizer_dir), prompts=["say it"], reward={"shouting": 2.0},
                   max_prompt_tokens=8, max_new_tokens=2)  # fmt: skip
    env.reset(seed=0)
    upper = tiny_tokenizer.convert_tokens_to_ids("E")  # byte-level BPE has every byte
    lower = tiny_tokenizer.convert_tokens_to_ids("e")
    env.step(np.int64(upper))
    _, reward, _, truncated, info = env.step(np.int64(lower))
    assert truncated and info["response"] == "Ee"
    assert info["reward_components"] == {"shouting": 0.5}  # half the letters are upper case
    assert reward == 1.0
    sys.modules.pop("rlhf_gym_example_reward", None)
