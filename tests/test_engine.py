"""The LM engine's one switch: with ``fast_paths=False`` every forward is peft's and
transformers' plain one, and the fast paths compute the same function."""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf_gym.agents import LoRAPolicy
from rlhf_gym.agents.fused import _USE_MERGED
from tests.test_agents_support import make_env, to_tensor_obs
from tests.test_policy_cache import _policy


def _seeded_policy(env, tiny_lm_dir: Path, fast: bool) -> LoRAPolicy:
    torch.manual_seed(0)
    return _policy(env, tiny_lm_dir, fast_paths=fast)


def test_fast_paths_compute_the_plain_forwards_function(tiny_tokenizer_dir, tiny_lm_dir):
    env = make_env(tiny_tokenizer_dir, num_envs=3, max_new_tokens=5)
    fast, plain = _seeded_policy(env, tiny_lm_dir, True), _seeded_policy(env, tiny_lm_dir, False)
    plain.load_state_dict(fast.state_dict())
    fused = [m for m in plain.model.modules() if "forward" in m.__dict__]
    assert not fused, "fast_paths=False left a fused forward in the model"
    merged_seen = []
    original = plain.engine.model.forward

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        merged_seen.append(_USE_MERGED.get())
        return original(*args, **kwargs)

    plain.engine.model.forward = spy
    obs = env.reset()
    for _ in range(4):
        t = to_tensor_obs(obs)
        with torch.no_grad():
            logits_fast, hidden_fast = fast._last_outputs(t, use_cache=True)
            logits_plain, hidden_plain = plain._last_outputs(t, use_cache=True)
        torch.testing.assert_close(logits_fast, logits_plain, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(hidden_fast, hidden_plain, atol=2e-5, rtol=1e-5)
        obs, _, _, _ = env.step(logits_fast.argmax(-1).numpy())
    assert fast.kv_cache(3) is not None and plain.kv_cache(3) is None
    assert merged_seen and not any(merged_seen)  # no merged rollout weights either
