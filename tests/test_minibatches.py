"""PPO minibatches of whole episodes: one forward per episode per epoch, whatever the size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf_gym.agents import make_agent
from tests.test_agents_support import make_env


def _agent(tokenizer_dir, lm_dir, batch_size):
    env = make_env(tokenizer_dir, num_envs=4, max_new_tokens=5)
    return make_agent(
        "ppo", env, model=str(lm_dir), lora={"r": 4}, n_steps=12, batch_size=batch_size,
        n_epochs=2, device="cpu", seed=0,
    )  # fmt: skip


def test_minibatches_are_shuffled_whole_episode_segments(tiny_tokenizer_dir, tiny_lm_dir):
    agent = _agent(tiny_tokenizer_dir, tiny_lm_dir, batch_size=8)
    agent.learn(48)  # one rollout of 12 steps x 4 envs
    buffer = agent.rollout_buffer
    batches = buffer.episode_minibatches(8)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(48))  # each transition once per epoch
    starts = buffer.episode_starts.astype(bool)  # [n_steps, n_envs]
    for indices in batches:
        assert len(indices) <= 12 or len(np.unique(indices // 12)) == 1  # long segment: alone
        for env in np.unique(indices // 12):
            steps = np.sort(indices[indices // 12 == env] % 12)
            # Every episode that a minibatch touches is in it whole (within this rollout).
            episode = np.cumsum(starts[:, env]) if starts[0, env] else np.cumsum(starts[:, env]) + 1
            for e in np.unique(episode[steps]):
                assert set(np.flatnonzero(episode == e)) <= set(steps.tolist())
    assert [len(b) for b in buffer.episode_minibatches(None)] == [48]


@pytest.mark.parametrize("batch_size", [8, 48])
def test_an_epoch_forwards_each_episode_once(tiny_tokenizer_dir, tiny_lm_dir, batch_size):
    """The sequences the model sees in training do not depend on the minibatch size."""
    agent = _agent(tiny_tokenizer_dir, tiny_lm_dir, batch_size=batch_size)
    rows: list[int] = []
    base = agent.policy.model.get_base_model()
    hook = base.register_forward_hook(
        lambda m, a, kw, out: rows.append(int(kw["input_ids"].shape[0])) if torch.is_grad_enabled() else None,
        with_kwargs=True,
    )  # fmt: skip
    agent.learn(48)
    hook.remove()
    segments = len(agent.rollout_buffer.episode_minibatches(8))
    n_segments = int(agent.rollout_buffer.episode_starts[1:].sum() + 4)
    assert sum(rows) == 2 * n_segments  # n_epochs x one forward per episode segment
    assert segments >= 1
