"""One rule ends responses, in the env and in evaluation: any EOS id, stop strings, the limit."""

from __future__ import annotations

import json

import numpy as np

from rlhf_gym.agents.evaluation import sample
from rlhf_gym.envs import TextGenerationEnv, end_of_response, eos_token_ids
from tests import _tiny


def test_generation_config_eos_ids_end_episodes(tmp_path, tiny_tokenizer):
    """An instruct model's turn-end token listed in generation_config.json ends the episode."""
    tok_dir = _tiny.save_tokenizer(tmp_path / "model", tiny_tokenizer)
    turn_end = tiny_tokenizer("e")["input_ids"][0]
    (tok_dir / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [tiny_tokenizer.eos_token_id, turn_end]})
    )
    ids = eos_token_ids(tiny_tokenizer, tok_dir)
    assert ids == {tiny_tokenizer.eos_token_id, turn_end}
    env = TextGenerationEnv(
        tokenizer=str(tok_dir), prompts=["hello"], reward="length",
        max_prompt_tokens=8, max_new_tokens=5,
    )  # fmt: skip
    env.reset(seed=0)
    other = tiny_tokenizer("w")["input_ids"][0]
    assert env.step(other)[2:4] == (False, False)
    _, _, terminated, truncated, info = env.step(turn_end)
    assert terminated and not truncated and info["finish_reason"] == "eos"
    extra = TextGenerationEnv(
        tokenizer=tiny_tokenizer, prompts=["hello"], reward="length", max_prompt_tokens=8,
        max_new_tokens=5, eos_token_ids=[other],
    )  # fmt: skip
    assert other in extra.eos_token_ids


def test_end_of_response_rule():
    def decode(ids):
        return "".join(chr(ord("a") + i) for i in ids)

    rule = dict(eos_ids=frozenset({9}), stop_strings=("cd",), max_new_tokens=6, decode=decode)
    assert end_of_response([0, 1, 9, 2], **rule) == ([0, 1, 9], "abj", "eos")
    assert end_of_response([0, 2, 3, 4], **rule) == ([0, 2, 3], "a", "stop")
    assert end_of_response([0, 0, 0, 0, 0, 0, 0], **rule) == ([0] * 6, "aaaaaa", "length")


def test_evaluation_ends_episodes_like_the_env(tiny_tokenizer, tiny_lm_dir):
    """Sampled completions and the env fed the same tokens end at the same token, same text."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    env = TextGenerationEnv(
        tokenizer=tiny_tokenizer, prompts=["the movie was", "hello world"], reward="length",
        max_prompt_tokens=8, max_new_tokens=12, stop_strings=["e"],
    )  # fmt: skip
    rows = list(env.dataset)
    out = sample(model, env.tokenizer, rows, max_new_tokens=12, stop_strings=env.stop_strings,
                 eos_token_ids=env.eos_token_ids, seed=0)  # fmt: skip
    for i, row in enumerate(rows):
        env.reset(options={"prompt_index": row.index})
        info: dict = {}
        for token in out.completion_ids[i]:
            _, _, terminated, truncated, info = env.step(np.int64(token))
            if terminated or truncated:
                break
        assert terminated or truncated
        assert info["num_tokens"] == len(out.completion_ids[i])
        assert info["response"] == out.completions[i]
