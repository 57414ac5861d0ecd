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
    # Forwards that return hidden states run the sequences (a shared prompt's forwards do not).
    hook = base.register_forward_hook(
        lambda m, a, kw, out: rows.append(int(kw["input_ids"].shape[0]))
        if torch.is_grad_enabled() and kw.get("output_hidden_states") else None,
        with_kwargs=True,
    )  # fmt: skip
    agent.learn(48)
    hook.remove()
    segments = len(agent.rollout_buffer.episode_minibatches(8))
    n_segments = int(agent.rollout_buffer.episode_starts[1:].sum() + 4)
    assert sum(rows) == 2 * n_segments  # n_epochs x one forward per episode segment
    assert segments >= 1


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_gradient_accumulation_in_chunks_gives_the_same_update(
    tiny_tokenizer_dir, tiny_lm_dir, algo
):
    """``grad_chunk_size``: a minibatch scored and backpropagated a few sequences at a time
    takes the step stable-baselines3's own ``train()`` takes on the whole minibatch, and each
    backward holds at most that many sequences."""
    agents = []
    for chunk in (None, 2):
        env = make_env(tiny_tokenizer_dir, num_envs=4, max_new_tokens=5)
        options = {"n_epochs": 2, "batch_size": 48} if algo == "ppo" else {}
        agent = make_agent(
            algo, env, model=str(tiny_lm_dir), lora={"r": 4, "init_lora_weights": False},
            n_steps=12, device="cpu", seed=0, grad_chunk_size=chunk, **options,
            # SGD without clipping: the step IS the gradient (Adam would hide a wrong scale);
            # no shared prefix: the hook counts sequences, not batch-of-one prefix forwards.
            learning_rate=0.5, max_grad_norm=1e9,
            policy_kwargs={"share_prefix": False, "optimizer_class": torch.optim.SGD},
        )  # fmt: skip
        initial = [p.detach().clone() for p in agent.policy.parameters() if p.requires_grad]
        rows: list[int] = []

        def count(m, a, kw, out, rows=rows):  # type: ignore[no-untyped-def]
            if torch.is_grad_enabled():
                rows.append(int(kw["input_ids"].shape[0]))

        hook = agent.policy.model.get_base_model().register_forward_hook(count, with_kwargs=True)
        agent.learn(48)
        hook.remove()
        trained = [p.detach() for p in agent.policy.parameters() if p.requires_grad]
        moved = max(float((t - i).abs().max()) for t, i in zip(trained, initial, strict=True))
        assert moved > 1e-3  # a real step, so the comparison below means something
        agents.append((agent, rows))
    (whole, whole_rows), (chunked, chunked_rows) = agents
    assert max(chunked_rows) <= 2 < max(whole_rows)
    assert sum(chunked_rows) == sum(whole_rows)  # the same sequences, nothing scored twice
    for (name, a), b in zip(
        whole.policy.named_parameters(), chunked.policy.parameters(), strict=True
    ):
        if a.requires_grad:
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=name)
    for key in ("train/value_loss", "train/entropy_loss"):
        assert whole.logger.name_to_value[key] == pytest.approx(
            chunked.logger.name_to_value[key], rel=1e-4
        ), key


def test_grad_chunk_size_must_be_positive(tiny_tokenizer_dir, tiny_lm_dir):
    env = make_env(tiny_tokenizer_dir, num_envs=2, max_new_tokens=3)
    with pytest.raises(ValueError, match="grad_chunk_size must be >= 1"):
        make_agent("ppo", env, model=str(tiny_lm_dir), n_steps=4, device="cpu", grad_chunk_size=0)


@pytest.mark.parametrize("target_kl", [None, 1e-9])
def test_chunked_update_logs_what_sb3_logs(tiny_tokenizer_dir, tiny_lm_dir, target_kl):
    """With chunks (one process, this repo's update) the ``train/`` keys are stable-baselines3's:
    the last epoch's mean approximate KL, and the stopped minibatch's losses included. (Losses
    are per-sample means where SB3 averages minibatch means: equal with one minibatch per
    epoch, as here.)"""
    logs = []
    for chunk in (None, 2):
        env = make_env(tiny_tokenizer_dir, num_envs=4, max_new_tokens=5)
        agent = make_agent(
            "ppo", env, model=str(tiny_lm_dir), lora={"r": 4, "init_lora_weights": False},
            n_steps=12, batch_size=48, n_epochs=3, device="cpu", seed=0, grad_chunk_size=chunk,
            target_kl=target_kl,
        )  # fmt: skip
        agent.learn(48)
        logs.append(dict(agent.logger.name_to_value))
    whole, chunked = logs
    for key in ("train/approx_kl", "train/value_loss", "train/entropy_loss", "train/clip_fraction"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-3, abs=1e-7), key
