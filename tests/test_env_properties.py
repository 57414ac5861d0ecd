"""Property-based: random datasets and action sequences keep the Gymnasium contract."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_gym.envs import TextGenerationEnv, TextGenerationVectorEnv
from tests._tiny import build_tokenizer

TOKENIZER = build_tokenizer()
VOCAB = len(TOKENIZER)

words = st.sampled_from(["the", "movie", "was", "great", "food", "bad", "hi", "!", "e", "please"])
prompt = st.lists(words, min_size=1, max_size=12).map(" ".join)
datasets = st.lists(prompt, min_size=1, max_size=6)
actions = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40)


def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def check_obs(env, obs, n_new):
    assert env.observation_space.contains(obs)
    mask = obs["attention_mask"]
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any(), "mask must be one contiguous run from position 0"
    assert (obs["input_ids"][n:] == env.pad_token_id).all()
    assert n == env._prompt_len + n_new


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=datasets,
    acts=actions,
    seed=st.integers(0, 2**16),
    max_prompt=st.integers(1, 8),
    max_new=st.integers(1, 6),
    stop=st.sampled_from([None, ["!"]]),
)
def test_single_env_contract(data, acts, seed, max_prompt, max_new, stop):
    env = TextGenerationEnv(
        TOKENIZER,
        data,
        length_reward,
        max_prompt_tokens=max_prompt,
        max_new_tokens=max_new,
        stop_strings=stop,
    )
    obs, info = env.reset(seed=seed)
    check_obs(env, obs, 0)
    n_new = 0
    for a in acts:
        obs, reward, terminated, truncated, info = env.step(a)
        n_new += 1
        assert isinstance(reward, float) and np.isfinite(reward)
        assert not (terminated and truncated)
        check_obs(env, obs, n_new)
        if terminated or truncated:
            assert n_new <= max_new
            assert truncated == (n_new == max_new and info["finish_reason"] == "length")
            assert reward == float(len(info["response"]))
            assert info["finish_reason"] in {"eos", "stop", "length"}
            obs, info = env.reset()
            n_new = 0
            check_obs(env, obs, 0)
        else:
            assert reward == 0.0 and info == {}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=datasets,
    seed=st.integers(0, 2**16),
    num_envs=st.integers(1, 4),
    max_new=st.integers(1, 5),
    steps=st.integers(1, 15),
    action_seed=st.integers(0, 1000),
)
def test_vector_env_contract(data, seed, num_envs, max_new, steps, action_seed):
    calls = []

    def reward(prompts, completions, **kwargs):
        calls.append(len(completions))
        return length_reward(prompts, completions)

    venv = TextGenerationVectorEnv(
        num_envs,
        tokenizer=TOKENIZER,
        prompts=data,
        reward=reward,
        max_prompt_tokens=8,
        max_new_tokens=max_new,
    )
    obs, _ = venv.reset(seed=seed)
    assert venv.observation_space.contains(obs)
    rng = np.random.default_rng(action_seed)
    for _ in range(steps):
        before = len(calls)
        obs, rewards, term, trunc, info = venv.step(rng.integers(0, VOCAB, size=num_envs))
        assert venv.observation_space.contains(obs)
        done = term | trunc
        assert len(calls) - before == (1 if done.any() else 0)
        if done.any():
            assert calls[-1] == int(done.sum())
        assert (rewards[~done] == 0).all()
        # autoreset in the same step: finished envs already show a fresh prompt
        for i in np.flatnonzero(done):
            assert obs["attention_mask"][i].sum() == venv.envs[i]._prompt_len
