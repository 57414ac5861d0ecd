"""The vector env: one reward call per step for all finished episodes; SB3 and gym.make_vec faces."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import VecEnv

import rlhf_gym.envs  # noqa: F401
from rlhf_gym.envs import ENV_ID, TextGenerationEnv, TextGenerationVectorEnv, make_vec_env
from rlhf_gym.rewards import Reward

PROMPTS = ["the movie was", "the food was", "hello world", "please write"]


class CountingReward(Reward):
    """Records every call's batch size, like a reward model would see them."""

    name = "counting"

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, prompts, completions, **kwargs):
        self.batch_sizes.append(len(completions))
        return [float(len(c)) for c in completions]


def env_kwargs(tokenizer_dir, reward, **over):
    kw = dict(
        tokenizer=str(tokenizer_dir),
        prompts=PROMPTS,
        reward=reward,
        max_prompt_tokens=8,
        max_new_tokens=3,
    )
    kw.update(over)
    return kw


def test_one_reward_call_per_step_for_all_finished(tiny_tokenizer_dir, tiny_tokenizer):
    reward = CountingReward()
    venv = TextGenerationVectorEnv(4, **env_kwargs(tiny_tokenizer_dir, reward))
    venv.reset(seed=0)
    eos = tiny_tokenizer.eos_token_id
    e = tiny_tokenizer("e")["input_ids"][0]
    # Step 1: envs 0 and 2 emit EOS and finish together -> one call of batch 2.
    _, rewards, term, trunc, info = venv.step(np.array([eos, e, eos, e]))
    assert term.tolist() == [True, False, True, False] and not trunc.any()
    assert reward.batch_sizes == [2]
    assert rewards.tolist() == [0.0, 0.0, 0.0, 0.0]  # EOS decodes to the empty response
    # Steps 2-3: envs 1 and 3 are truncated at max_new_tokens together -> one call of batch 2.
    venv.step(np.array([e, e, e, e]))
    _, rewards, term, trunc, info = venv.step(np.array([e, e, e, e]))
    assert trunc.tolist() == [False, True, False, True]
    assert reward.batch_sizes == [2, 2]
    assert rewards.tolist() == [0.0, 3.0, 0.0, 3.0]
    assert info["_final_info"].tolist() == [False, True, False, True]
    assert info["final_info"]["response"][1] == "eee"
    assert venv.reward_calls == 2


def test_vector_env_matches_single_envs(tiny_tokenizer_dir):
    def reward(prompts, completions, **kw):
        return [float(c.count("e")) for c in completions]

    venv = TextGenerationVectorEnv(3, **env_kwargs(tiny_tokenizer_dir, reward))
    singles = [TextGenerationEnv(**env_kwargs(tiny_tokenizer_dir, reward)) for _ in range(3)]
    obs, _ = venv.reset(seed=10)
    single_obs = [env.reset(seed=10 + i)[0] for i, env in enumerate(singles)]
    rng = np.random.default_rng(0)
    for _ in range(12):
        for i in range(3):
            np.testing.assert_array_equal(obs["input_ids"][i], single_obs[i]["input_ids"])
        actions = rng.integers(0, venv.single_action_space.n, size=3)
        obs, rewards, term, trunc, info = venv.step(actions)
        for i, env in enumerate(singles):
            o, r, te, tr, inf = env.step(actions[i])
            assert (r, te, tr) == (rewards[i], term[i], trunc[i])
            if te or tr:
                np.testing.assert_array_equal(info["final_obs"][i]["input_ids"], o["input_ids"])
                assert info["final_info"]["response"][i] == inf["response"]
                o, _ = env.reset()
            single_obs[i] = o


def test_sb3_vec_env_face(tiny_tokenizer_dir, tiny_tokenizer):
    reward = CountingReward()
    venv = make_vec_env(2, seed=0, **env_kwargs(tiny_tokenizer_dir, reward))
    assert isinstance(venv, VecEnv) and venv.num_envs == 2
    obs = venv.reset()
    assert obs["input_ids"].shape == (2, 11) and obs["input_ids"].dtype == np.int64
    e = tiny_tokenizer("e")["input_ids"][0]
    for _ in range(2):
        venv.step(np.array([e, e]))
    obs, rewards, dones, infos = venv.step(np.array([e, e]))
    assert dones.tolist() == [True, True] and rewards.tolist() == [3.0, 3.0]
    for info in infos:
        assert info["response"] == "eee" and info["TimeLimit.truncated"] is False
        assert info["episode"]["r"] == 3.0 and info["episode"]["l"] == 3
        assert (
            info["terminal_observation"]["attention_mask"].sum()
            > obs["attention_mask"][0].sum() - 1
        )
    assert reward.batch_sizes == [2]
    masks = venv.env_method("action_masks")
    assert len(masks) == 2 and masks[0].all()
    assert venv.get_attr("max_new_tokens") == [3, 3]


def test_gym_make_vec(tiny_tokenizer_dir):
    kwargs = env_kwargs(tiny_tokenizer_dir, lambda prompts, completions, **k: [1.0] * len(prompts))
    venv = gym.make_vec(ENV_ID, num_envs=3, **kwargs)
    assert isinstance(venv.unwrapped, TextGenerationVectorEnv)
    obs, _ = venv.reset(seed=0)
    assert obs["input_ids"].shape == (3, 11)
    for _ in range(3):  # a fixed non-EOS token: a sampled action could be EOS (3% a run)
        obs, rewards, term, trunc, info = venv.step(np.full(3, 5))
    assert trunc.all() and rewards.tolist() == [1.0, 1.0, 1.0]
    sync = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="sync", **kwargs)
    sync.reset(seed=0)
    sync.step(sync.action_space.sample())


def test_wrong_number_of_actions(tiny_tokenizer_dir):
    venv = TextGenerationVectorEnv(2, **env_kwargs(tiny_tokenizer_dir, CountingReward()))
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="expected 2 actions"):
        venv.step(np.array([1, 2, 3]))
