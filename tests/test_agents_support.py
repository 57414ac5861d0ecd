"""Helpers shared by the agents tests (no tests here): envs, rewards and reference computations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROMPTS = [
    "hello world",
    "the movie was",
    "write a poem about the sea",
    "thank you",
    "what is two plus two?",
]
#: Token ids that the toy reward pays for: 10% of the 300-token vocabulary.
TARGET_IDS = frozenset(range(1, 31))


def target_fraction(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """Reward: fraction of completion tokens whose id is in :data:`TARGET_IDS`."""
    return [
        sum(t in TARGET_IDS for t in ids) / max(1, len(ids)) for ids in kwargs["completion_ids"]
    ]


def make_env(
    tokenizer_dir: Path,
    num_envs: int = 4,
    *,
    seed: int = 0,
    max_prompt_tokens: int = 16,
    max_new_tokens: int = 6,
    prompts: Any = PROMPTS,
    **kwargs: Any,
):
    from rlhf_gym.envs import make_vec_env

    return make_vec_env(
        num_envs,
        seed=seed,
        tokenizer=str(tokenizer_dir),
        prompts=prompts,
        reward=target_fraction,
        max_prompt_tokens=max_prompt_tokens,
        max_new_tokens=max_new_tokens,
        **kwargs,
    )


def to_tensor_obs(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Observations as SB3's buffers hand them to the policy (float32)."""
    return {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in obs.items()}


def cached_outputs_in_lockstep(
    envs: tuple[Any, Any], policies: tuple[Any, Any], steps: int, *, atol: float = 1e-5
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Roll two copies of an env in lockstep, one policy each, through the rollout KV cache.

    Every step, both policies' ``(logits, hidden)`` at the rows' last tokens must agree (to
    ``atol``, ``rtol=1e-5``); yields ``(step, the first env's observation)`` after the check, so
    the caller can look at the caches, then both envs take the first policy's greedy tokens.
    """
    obs = [env.reset() for env in envs]
    for step in range(steps):
        with torch.no_grad():
            (logits_a, hidden_a), (logits_b, hidden_b) = (
                policy._last_outputs(to_tensor_obs(o), use_cache=True)
                for policy, o in zip(policies, obs, strict=True)
            )
        torch.testing.assert_close(logits_a, logits_b, atol=atol, rtol=1e-5)
        torch.testing.assert_close(hidden_a, hidden_b, atol=atol, rtol=1e-5)
        yield step, obs[0]
        actions = logits_a.argmax(-1).numpy()
        obs = [env.step(actions)[0] for env in envs]


@torch.no_grad()
def full_forward(
    policy: Any, ids: torch.Tensor, *, adapter: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row reference: a plain forward of the row's valid tokens alone, no cache, no grouping.

    Returns (log-softmax of the next-token logits [vocab], value [1]).
    """
    ids = ids.long().unsqueeze(0)
    mask = torch.ones_like(ids)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        out = policy.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        logp = torch.log_softmax(out.logits[0, -1].float(), -1)
        return logp, policy.value_head(out.hidden_states[-1][0, -1].float())

    if adapter:
        return run()
    with policy.model.disable_adapter():
        return run()


def rollout_observations(env: Any, steps: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Observations of ``steps`` random steps (a buffer-like set with several episodes per env)."""
    rng = np.random.default_rng(seed)
    obs = env.reset()
    out = []
    for _ in range(steps):
        out.append({k: v.copy() for k, v in obs.items()})
        actions = rng.integers(1, env.action_space.n, size=env.num_envs)
        obs, _, _, _ = env.step(actions)
    return out
