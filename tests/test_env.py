"""TextGenerationEnv: spaces, episode mechanics, seeding, checkers and gym.make."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import InvalidAction, ResetNeeded
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rlhf_gym.envs  # noqa: F401  (registers the env id)
from rlhf_gym.envs import ENV_ID, TextGenerationEnv

PROMPTS = [
    {"prompt": "the movie was", "reference": "great", "topic": "film"},
    {"prompt": "the food was", "reference": "terrible", "topic": "food"},
    {"prompt": "please write a short review of", "reference": "the phone", "topic": "tech"},
    {"prompt": "hello world", "reference": "hi", "topic": "misc"},
]


def count_e(prompts, completions, **kwargs):
    return [float(c.count("e")) for c in completions]


@pytest.fixture
def make_env(tiny_tokenizer_dir):
    def _make(**overrides):
        kwargs = dict(
            tokenizer=str(tiny_tokenizer_dir),
            prompts=PROMPTS,
            reward=count_e,
            max_prompt_tokens=24,
            max_new_tokens=5,
        )
        kwargs.update(overrides)
        return TextGenerationEnv(**kwargs)

    return _make


def token(tokenizer, text: str) -> int:
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == 1, f"{text!r} is not one token: {ids}"
    return ids[0]


def test_spaces_and_reset(make_env, tiny_tokenizer):
    env = make_env()
    assert env.action_space == gym.spaces.Discrete(len(tiny_tokenizer))
    L = 24 + 5
    assert env.observation_space["input_ids"].shape == (L,)
    assert env.observation_space["input_ids"].dtype == np.int64
    assert env.observation_space["attention_mask"].dtype == np.int64
    obs, info = env.reset(seed=0)
    row = env.dataset[info["prompt_index"]]
    n = len(row.input_ids)
    np.testing.assert_array_equal(obs["input_ids"][:n], row.input_ids)
    assert (obs["input_ids"][n:] == tiny_tokenizer.pad_token_id).all()
    np.testing.assert_array_equal(obs["attention_mask"], [1] * n + [0] * (L - n))


def test_reward_only_at_end_and_truncation(make_env, tiny_tokenizer):
    env = make_env()
    obs, info = env.reset(seed=1)
    n = int(obs["attention_mask"].sum())
    e_tok = token(tiny_tokenizer, "e")
    for k in range(4):
        obs, reward, terminated, truncated, step_info = env.step(e_tok)
        assert (reward, terminated, truncated, step_info) == (0.0, False, False, {})
        assert obs["input_ids"][n + k] == e_tok and obs["attention_mask"][n + k] == 1
    obs, reward, terminated, truncated, final = env.step(e_tok)
    assert (terminated, truncated) == (False, True)
    assert final["response"] == "eeeee" and reward == 5.0
    assert final["finish_reason"] == "length" and final["num_tokens"] == 5
    assert final["reward_components"] == {"count_e": 5.0}
    row = PROMPTS[final["prompt_index"]]
    assert final["prompt"] == row["prompt"]
    assert final["extras"] == {"reference": row["reference"], "topic": row["topic"]}
    with pytest.raises(ResetNeeded):
        env.step(e_tok)


def test_terminates_on_eos(make_env, tiny_tokenizer):
    env = make_env()
    env.reset(seed=0)
    env.step(token(tiny_tokenizer, "e"))
    _, reward, terminated, truncated, info = env.step(tiny_tokenizer.eos_token_id)
    assert terminated and not truncated
    assert info["finish_reason"] == "eos" and info["response"] == "e" and reward == 1.0


def test_stop_string_cuts_response(make_env, tiny_tokenizer):
    env = make_env(stop_strings=["!"], max_new_tokens=10)
    env.reset(seed=0)
    for text in ["e", "e", "!"]:
        _, reward, terminated, truncated, info = env.step(token(tiny_tokenizer, text))
    assert terminated and not truncated
    assert info["finish_reason"] == "stop" and info["response"] == "ee" and reward == 2.0


def test_invalid_actions_rejected(make_env, tiny_tokenizer):
    env = make_env()
    env.reset(seed=0)
    for bad in [len(tiny_tokenizer), -1, 1.5, "a", [1, 2]]:
        with pytest.raises(InvalidAction):
            env.step(bad)
    env.step(np.int64(5))  # numpy integers are fine
    env.step(np.array(5))


def test_seeded_reproducibility(make_env):
    def rollout(seed):
        env = make_env()
        trace = []
        rng = np.random.default_rng(123)
        obs, info = env.reset(seed=seed)
        trace.append((obs["input_ids"].tolist(), info))
        for _ in range(40):
            obs, r, term, trunc, info = env.step(int(rng.integers(env.action_space.n)))
            trace.append((obs["input_ids"].tolist(), r, term, trunc, info))
            if term or trunc:
                obs, info = env.reset()
                trace.append((obs["input_ids"].tolist(), info))
        return trace

    assert rollout(7) == rollout(7)
    orders = {
        seed: [make_env().reset(seed=seed)[1]["prompt_index"] for _ in range(1)]
        for seed in range(10)
    }
    assert len({tuple(v) for v in orders.values()}) > 1


def test_epoch_sampling_visits_each_prompt_once(make_env):
    env = make_env()
    env.reset(seed=3)
    first = env._row.index
    seen = [first] + [env.reset()[1]["prompt_index"] for _ in range(3)]
    assert sorted(seen) == [0, 1, 2, 3]
    second = [env.reset()[1]["prompt_index"] for _ in range(4)]
    assert sorted(second) == [0, 1, 2, 3]
    env_u = make_env(sampling="uniform")
    env_u.reset(seed=3)
    draws = [env_u.reset()[1]["prompt_index"] for _ in range(40)]
    assert set(draws) == {0, 1, 2, 3}


def test_different_seeds_give_different_prompt_orders(make_env):
    def order(seed):
        env = make_env()
        idx = [env.reset(seed=seed)[1]["prompt_index"]]
        return idx + [env.reset()[1]["prompt_index"] for _ in range(3)]

    assert order(0) == order(0)
    assert len({tuple(order(s)) for s in range(6)}) > 1


def test_checkers_pass_without_warnings(tiny_tokenizer_dir):
    kwargs = dict(
        tokenizer=str(tiny_tokenizer_dir),
        prompts=PROMPTS,
        reward=count_e,
        max_prompt_tokens=24,
        max_new_tokens=5,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Through gym.make so the checker also exercises the registered spec and render modes.
        gym_check_env(
            gym.make(ENV_ID, render_mode="ansi", **kwargs).unwrapped, skip_render_check=False
        )
        sb3_check_env(TextGenerationEnv(**kwargs), warn=True)


def test_render_ansi(make_env, tiny_tokenizer):
    env = make_env(render_mode="ansi")
    env.reset(seed=0)
    env.step(token(tiny_tokenizer, "e"))
    text = env.render()
    assert isinstance(text, str) and text.endswith("\u2502e")
    assert make_env().render() is None


def test_action_masks(make_env, tiny_tokenizer):
    e_tok = token(tiny_tokenizer, "e")
    env = make_env(banned_tokens=[e_tok])
    mask = env.action_masks()
    assert mask.dtype == bool and mask.shape == (len(tiny_tokenizer),)
    assert not mask[e_tok] and mask.sum() == len(tiny_tokenizer) - 1
    env = make_env(allowed_tokens=["e", e_tok + 1])
    mask = env.action_masks()
    assert set(np.flatnonzero(mask)) == {e_tok, e_tok + 1, tiny_tokenizer.eos_token_id}
    with pytest.raises(ValueError, match="not a token"):
        make_env(banned_tokens=[10**6])


def test_gym_make_by_id_and_module_form(tiny_tokenizer_dir):
    kwargs = dict(
        tokenizer=str(tiny_tokenizer_dir),
        prompts=PROMPTS,
        reward=count_e,
        max_prompt_tokens=24,
        max_new_tokens=3,
    )
    env = gym.make(ENV_ID, **kwargs)
    obs, _ = env.reset(seed=0)
    assert isinstance(env.unwrapped, TextGenerationEnv)
    env2 = gym.make("rlhf_gym.envs:rlhf_gym/TextGeneration-v0", **kwargs)
    obs2, _ = env2.reset(seed=0)
    np.testing.assert_array_equal(obs["input_ids"], obs2["input_ids"])
    for _ in range(3):
        *_, term, trunc, info = env.step(5)  # 5 is not EOS: the episode runs to max_new_tokens
    assert trunc and "response" in info


def test_vocab_size_override(make_env, tiny_tokenizer):
    env = make_env(vocab_size=len(tiny_tokenizer) + 20)
    assert env.action_space.n == len(tiny_tokenizer) + 20
    env.reset(seed=0)
    env.step(len(tiny_tokenizer) + 5)  # an id the tokenizer does not know is still a valid action


def test_chat_template_rendering(make_env, tiny_tokenizer):
    rows = [{"messages": [{"role": "user", "content": "hi there"}], "id": 1}]
    env = make_env(prompts=rows, max_prompt_tokens=40)
    env.reset(seed=0)
    assert env._row.text == "<|user|>hi there\n<|assistant|>"
    assert env._row.extras == {"id": 1}
    env = make_env(prompts=["hi there"], chat_template=True, max_prompt_tokens=40)
    env.reset(seed=0)
    assert env._row.text == "<|user|>hi there\n<|assistant|>"
