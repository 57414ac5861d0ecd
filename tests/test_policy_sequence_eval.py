"""Training-time evaluation: one forward per sequence, results equal to per-transition forwards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf_gym.agents import LoRAPolicy
from rlhf_gym.agents.sequence_eval import group_by_prefix, valid_lengths
from tests.test_agents_support import full_forward, make_env, rollout_observations


def test_group_by_prefix_hand_example() -> None:
    ids = torch.tensor(
        [
            [1, 2, 0, 0],  # prefix of rows 1 and 2 -> joins the longest (row 1)
            [1, 2, 3, 4],
            [1, 2, 3, 0],
            [1, 5, 0, 0],  # diverges at token 2: own group
            [7, 0, 0, 0],
        ]
    )
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    groups = group_by_prefix(ids, mask)
    reps = groups.representatives[groups.group].tolist()
    assert reps == [1, 1, 1, 3, 4]
    assert groups.lengths.tolist() == [2, 4, 3, 2, 1]
    with pytest.raises(ValueError, match="right-padded"):
        valid_lengths(torch.tensor([[0, 1, 1]]))


@pytest.fixture(scope="module")
def setup(tiny_tokenizer_dir: Path, tiny_lm_dir: Path):
    env = make_env(tiny_tokenizer_dir, num_envs=3, max_new_tokens=5)
    policy = LoRAPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 1e-3,
        model=str(tiny_lm_dir),
        lora={"init_lora_weights": False},
        value_head="mlp",
    )
    observations = rollout_observations(env, steps=14)
    ids = np.concatenate([o["input_ids"] for o in observations])
    mask = np.concatenate([o["attention_mask"] for o in observations])
    actions = np.random.default_rng(1).integers(0, 300, size=len(ids))
    reference = []
    for i in range(len(ids)):
        logp, value = full_forward(policy, torch.as_tensor(ids[i, : mask[i].sum()]))
        reference.append((logp[actions[i]], value, -(logp.exp() * logp).sum()))
    return policy, ids, mask, actions, reference


@pytest.mark.parametrize(
    "composition", ["whole_buffer", "shuffled_minibatches", "reversed_pairs", "duplicates"]
)
@pytest.mark.parametrize("entropy, chunk", [(True, 64), (False, 64), (False, 3)])
def test_evaluate_actions_equals_per_transition(
    setup, composition: str, entropy: bool, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entropy off scores duplicate transitions on shared logits rows; chunk 3 splits the
    sequences over several forwards."""
    policy, ids, mask, actions, reference = setup
    monkeypatch.setattr(policy, "compute_entropy", entropy)
    monkeypatch.setattr(policy, "eval_chunk_size", chunk)
    n = len(ids)
    rng = np.random.default_rng(3)
    if composition == "whole_buffer":
        batches = [np.arange(n)]
    elif composition == "shuffled_minibatches":
        batches = np.array_split(rng.permutation(n), 5)
    elif composition == "duplicates":  # repeated transitions share one logits position
        batches = [np.concatenate([rng.permutation(n), np.arange(0, n, 4)])]
    else:
        batches = [np.array([i + 1, i]) for i in range(0, n - 1, 2)]
    for idx in batches:
        obs = {
            "input_ids": torch.as_tensor(ids[idx], dtype=torch.float32),
            "attention_mask": torch.as_tensor(mask[idx], dtype=torch.float32),
        }
        values, log_prob, entropies = policy.evaluate_actions(obs, torch.as_tensor(actions[idx]))
        assert (entropies is not None) == entropy
        for j, i in enumerate(idx):
            ref_logp, ref_value, ref_entropy = reference[i]
            torch.testing.assert_close(log_prob[j].detach(), ref_logp, atol=1e-5, rtol=0)
            torch.testing.assert_close(values[j].detach(), ref_value, atol=1e-5, rtol=0)
            if entropies is not None:
                torch.testing.assert_close(entropies[j].detach(), ref_entropy, atol=1e-5, rtol=0)


def test_one_forward_row_per_sequence_and_gradients_flow(setup) -> None:
    policy, ids, mask, actions, _ = setup
    obs = {
        "input_ids": torch.as_tensor(ids, dtype=torch.float32),
        "attention_mask": torch.as_tensor(mask, dtype=torch.float32),
    }
    expected_rows = len(
        group_by_prefix(obs["input_ids"].long(), obs["attention_mask"].long()).representatives
    )
    fed_rows: list[int] = []
    hook = policy.model.get_base_model().register_forward_pre_hook(
        lambda _m, _a, kw: fed_rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        values, log_prob, _ = policy.evaluate_actions(obs, torch.as_tensor(actions))
    finally:
        hook.remove()
    assert (
        sum(fed_rows) == expected_rows < len(ids) // 3
    )  # 14 steps x 3 envs, episodes of <= 6 tokens
    (log_prob.sum() + values.sum()).backward()
    no_grad = [n for n, p in policy.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad, no_grad
    policy.optimizer.zero_grad()
