"""Bad input reaching the env gets an error that says what, where and how to fix it."""

from __future__ import annotations

import math

import pytest

from rlhf_gym.envs import TextGenerationEnv, TextGenerationVectorEnv
from rlhf_gym.rewards import RewardError
from tests._tiny import build_tokenizer


def make(tokenizer, reward, **kw):
    kw.setdefault("prompts", ["the movie was", "hello world"])
    return TextGenerationEnv(tokenizer, reward=reward, max_prompt_tokens=16, max_new_tokens=2, **kw)


def zero(prompts, completions, **kwargs):
    return [0.0] * len(completions)


def finish(env):
    env.reset(seed=0)
    env.step(5)
    return env.step(5)


def test_tokenizer_without_pad_or_eos():
    tok = build_tokenizer()
    tok.pad_token = None
    env = make(tok, zero)
    assert env.pad_token_id == tok.eos_token_id  # pad borrows EOS
    tok = build_tokenizer()
    tok.eos_token = None
    with pytest.raises(ValueError, match="has no EOS token.*stop_on_eos=False"):
        make(tok, zero)
    tok.pad_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        make(tok, zero, stop_on_eos=False)


def test_tokenizer_path_that_does_not_exist(tmp_path):
    with pytest.raises(OSError, match="could not load a tokenizer from .*nowhere"):
        make(str(tmp_path / "nowhere"), zero)


def test_reward_plugin_that_raises_is_named(tiny_tokenizer):
    def grumpy(prompts, completions, **kwargs):
        raise RuntimeError("boom")

    env = make(tiny_tokenizer, grumpy)
    with pytest.raises(RewardError, match="grumpy") as info:
        finish(env)
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize(
    "values, message",
    [
        ([1.0, 2.0], "expected 1"),
        ([math.nan], "returned nan at index 0"),
        ([math.inf], "returned inf at index 0"),
    ],
)
def test_reward_plugin_bad_values(tiny_tokenizer, values, message):
    def bad(prompts, completions, **kwargs):
        return values

    with pytest.raises(RewardError, match=message):
        finish(make(tiny_tokenizer, bad))


def test_none_reward_adds_zero_and_is_reported(tiny_tokenizer):
    def sometimes(prompts, completions, **kwargs):
        return [None] * len(completions)

    def one(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    env = make(tiny_tokenizer, [sometimes, one])
    *_, reward, terminated, truncated, info = finish(env)
    assert reward == 1.0
    assert info["reward_components"] == {"sometimes": None, "one": 1.0}


def test_reward_model_path_that_does_not_exist(tiny_tokenizer, tmp_path):
    with pytest.raises(OSError, match="missing_rm"):
        make(
            tiny_tokenizer, {"reward_model": {"weight": 1.0, "path": str(tmp_path / "missing_rm")}}
        )


def test_vector_env_reward_errors_name_plugin(tiny_tokenizer):
    def short(prompts, completions, **kwargs):
        return [1.0]  # one value for a whole batch

    venv = TextGenerationVectorEnv(
        2,
        tokenizer=tiny_tokenizer,
        prompts=["a", "b"],
        reward=short,
        max_prompt_tokens=4,
        max_new_tokens=1,
    )
    venv.reset(seed=0)
    with pytest.raises(RewardError, match="short.*expected 2"):
        venv.step([5, 5])
