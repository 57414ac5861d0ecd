"""Outlier rewards and non-finite losses stop a run with a clear message (or are clipped)."""

from __future__ import annotations

import json

import pytest

from rlhf_gym.agents import make_agent
from rlhf_gym.agents.cli import main
from rlhf_gym.envs import TextGenerationEnv
from tests.test_agents_support import PROMPTS, make_env


def huge(prompts, completions, **kwargs):
    return [1e6] * len(prompts)


def enormous(prompts, completions, **kwargs):
    return [1e30 if i % 2 else 0.0 for i in range(len(prompts))]


def _env(tokenizer_dir, **kw):
    env = TextGenerationEnv(tokenizer=str(tokenizer_dir), prompts=PROMPTS, reward=huge,
                            max_prompt_tokens=16, max_new_tokens=1, **kw)  # fmt: skip
    env.reset(seed=0)
    return env


def test_a_reward_beyond_the_bound_stops_or_is_clipped(tiny_tokenizer_dir):
    with pytest.raises(ValueError, match=r"reward 1e\+06 .* outside reward_bound=10000"):
        _env(tiny_tokenizer_dir).step(5)
    with pytest.warns(UserWarning, match="clipped"):
        assert _env(tiny_tokenizer_dir, reward_clip=True).step(5)[1] == 1e4
    assert _env(tiny_tokenizer_dir, reward_bound=None).step(5)[1] == 1e6
    venv = make_env(tiny_tokenizer_dir, num_envs=2, max_new_tokens=1, reward_clip=True,
                    reward_bound=100.0)  # fmt: skip
    venv.vector_env.reward_fn.rewards[0] = huge
    venv.reset()
    with pytest.warns(UserWarning):
        _, rewards, _, _ = venv.step([5, 5])
    assert rewards.tolist() == [100.0, 100.0]


def test_an_infinite_value_loss_stops_ppo_before_a_checkpoint(tiny_tokenizer_dir, tiny_lm_dir):
    env = make_env(tiny_tokenizer_dir, num_envs=2, max_new_tokens=2, reward_bound=None)
    env.vector_env.reward_fn.rewards[0] = enormous
    agent = make_agent("ppo", env, model=str(tiny_lm_dir), lora={"r": 2}, n_steps=4,
                       batch_size=8, device="cpu", seed=0)  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"train/value_loss became inf.*reward_bound"):
        agent.learn(16)


def test_the_cli_reports_an_outlier_in_one_line(tmp_path, tiny_lm_dir, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS * 4))
    code = main(["train", "--model", str(tiny_lm_dir), "--prompts", str(prompts),
                 "--reward", "tests.test_outliers:huge", "--max-prompt-tokens", "8",
                 "--max-new-tokens", "2", "--num-envs", "2", "--total-timesteps", "8",
                 "--output-dir", str(tmp_path / "run"), "--no-progress-bar"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 2 and "--reward-bound" in out and "Traceback" not in out


def test_observations_longer_than_the_position_limit_are_refused_at_build(
    tiny_tokenizer_dir, tiny_lm_dir
):
    """The tiny GPT-2 has 128 positions: 100 + 40 would crash mid-run inside torch."""
    env = make_env(tiny_tokenizer_dir, num_envs=2, max_prompt_tokens=100, max_new_tokens=40)
    with pytest.raises(
        ValueError, match=r"= 140 exceeds the model's position limit 128.*at most 128"
    ):
        make_agent("ppo", env, model=str(tiny_lm_dir), device="cpu")


def test_debug_shows_the_traceback(tmp_path, tiny_lm_dir):
    args = ["train", "--model", str(tiny_lm_dir), "--prompts", str(tmp_path / "missing.jsonl"),
            "--output-dir", str(tmp_path / "run"), "--no-progress-bar"]  # fmt: skip
    assert main(args) == 2
    with pytest.raises((FileNotFoundError, OSError, ValueError)):
        main([*args, "--debug"])


def nan_reward(prompts, completions, **kwargs):
    return [float("nan")] * len(prompts)


def short_reward(prompts, completions, **kwargs):
    return [1.0]


@pytest.mark.parametrize(
    ("reward", "message"),
    [("tests.test_outliers:nan_reward", "nan"), ("tests.test_outliers:short_reward", "1")],
)
def test_bad_reward_plugins_end_in_one_line(tmp_path, tiny_lm_dir, capsys, reward, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS * 4))
    code = main(["train", "--model", str(tiny_lm_dir), "--prompts", str(prompts),
                 "--reward", reward, "--max-prompt-tokens", "8", "--max-new-tokens", "2",
                 "--num-envs", "2", "--total-timesteps", "8", "--output-dir",
                 str(tmp_path / "run"), "--no-progress-bar"])  # fmt: skip
    out = " ".join(capsys.readouterr().out.split())
    assert code == 2 and "error:" in out and message in out.lower()


def test_a_lone_surrogate_names_the_file_and_line(tmp_path, tiny_tokenizer):
    from rlhf_gym.envs import PromptDataset

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "bad \\ud800 text"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2.*'\\\\ud800'.*lone surrogate"):
        PromptDataset.from_source(str(path), tiny_tokenizer, max_prompt_tokens=16)


def test_internal_errors_keep_their_traceback(monkeypatch, tmp_path):
    import rlhf_gym.agents.cli as cli

    def buggy(args):
        return None + 1  # a bug, not a check: its TypeError must not become a one-liner

    monkeypatch.setattr(cli, "_dispatch", buggy)
    with pytest.raises(TypeError):
        main(["algos"])


def test_a_missing_model_is_reported_as_the_model(tmp_path, capsys):
    code = main(["train", "--model", str(tmp_path / "no-such-model"), "--output-dir",
                 str(tmp_path / "run"), "--no-progress-bar"])  # fmt: skip
    out = " ".join(capsys.readouterr().out.split())
    assert (
        code == 2
        and "--model" in out
        and "no such directory" in out
        and "tokenizer from" not in out
    )
