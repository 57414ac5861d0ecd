"""The group-relative arithmetic against hand calculations (in the style of SB3's test_gae.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_gym.agents import group_losses as gl

EPS = gl.STD_EPS


def test_group_mean_baseline_scaled_by_the_group_std() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    std = math.sqrt((4 + 1 + 0 + 9) / 3)  # unbiased, as torch.std and TRL
    adv = gl.group_advantages(rewards, baseline="group_mean", scale="group")
    expected = torch.tensor([[-2.0, -1.0, 0.0, 3.0]]) / (std + EPS)
    torch.testing.assert_close(adv, expected)


def test_leave_one_out_baseline_is_the_mean_of_the_others() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    adv = gl.group_advantages(rewards, baseline="leave_one_out", scale="none")
    expected = torch.tensor([[1 - 11 / 3, 2 - 10 / 3, 3 - 9 / 3, 6 - 6 / 3]])
    torch.testing.assert_close(adv, expected)


def test_batch_scale_and_no_scale() -> None:
    rewards = torch.tensor([[0.0, 2.0], [4.0, 10.0]])
    batch_std = float(rewards.std())
    adv = gl.group_advantages(rewards, baseline="group_mean", scale="batch")
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 1.0], [-3.0, 3.0]]) / (batch_std + EPS))
    adv = gl.group_advantages(rewards, baseline="group_mean", scale="none")  # Dr. GRPO
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 1.0], [-3.0, 3.0]]))


def test_a_group_with_equal_rewards_has_zero_advantage() -> None:
    rewards = torch.tensor([[0.7, 0.7, 0.7], [0.0, 1.0, 2.0]])
    for baseline in ("group_mean", "leave_one_out"):
        for scale in ("group", "batch", "none"):
            adv = gl.group_advantages(rewards, baseline=baseline, scale=scale)  # type: ignore[arg-type]
            assert torch.isfinite(adv).all()
            assert adv[0].abs().max() == 0.0


def test_token_returns_carry_the_kl_penalty_of_the_tokens_ahead() -> None:
    rewards = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    returns = gl.token_returns(rewards, kl, mask, beta=0.5)
    expected = torch.tensor([[1 - 0.5 * 0.6, 1 - 0.5 * 0.5, 1 - 0.5 * 0.3], [2 - 0.5 * 0.4, 0, 0]])
    torch.testing.assert_close(returns, expected)


def test_batch_whitening_over_valid_tokens() -> None:
    values = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = gl.batch_whiten(values, mask, scale=True)  # mean 2, unbiased std 1
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]) / (1 + EPS))
    centred = gl.batch_whiten(values, mask, scale=False)
    torch.testing.assert_close(centred, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))


def test_k3_kl() -> None:
    logp = torch.tensor([math.log(0.5), math.log(0.3)])
    ref = torch.tensor([math.log(0.25), math.log(0.3)])
    expected = torch.tensor([0.5 - math.log(0.5) - 1, 0.0])
    torch.testing.assert_close(gl.k3_kl(logp, ref), expected)


def test_clipped_ratios_token_level_and_clip_higher() -> None:
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5]]))
    mask = torch.ones(1, 2)
    loss, clipped = gl.clipped_surrogate(logp, old, torch.ones(1, 2), mask, clip_range=0.2)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.5]]))
    assert clipped.tolist() == [[True, False]]
    loss, clipped = gl.clipped_surrogate(logp, old, -torch.ones(1, 2), mask, clip_range=0.2)
    torch.testing.assert_close(loss, torch.tensor([[1.5, 0.8]]))
    assert clipped.tolist() == [[False, True]]
    loss, _ = gl.clipped_surrogate(
        logp, old, torch.ones(1, 2), mask, clip_range=0.2, clip_range_high=0.28
    )
    torch.testing.assert_close(loss, torch.tensor([[-1.28, -0.5]]))


def test_sequence_level_ratio_is_the_exp_of_the_mean_log_ratio() -> None:
    old = torch.zeros(1, 3)
    logp = torch.tensor([[math.log(2.0), 0.0, 123.0]])  # the third token is padding
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = torch.ones(1, 3)
    loss, _ = gl.clipped_surrogate(logp, old, adv, mask, clip_range=0.5, level="sequence")
    ratio = math.sqrt(2.0)
    torch.testing.assert_close(loss, torch.tensor([[-ratio, -ratio, 0.0]]))


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [("grpo", (1.5 + 3.0) / 2), ("bnpo", 6 / 3), ("dapo", 6 / (2 * 2.5)), ("dr_grpo", 6 / (2 * 4))],
)
def test_loss_aggregation(loss_type: str, expected: float) -> None:
    per_token = torch.tensor([[1.0, 2.0, 7.0], [3.0, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    out = gl.aggregate(
        per_token,
        mask,
        loss_type,  # type: ignore[arg-type]
        max_new_tokens=4,
        tokens_per_sequence=2.5,
    )
    assert float(out) == pytest.approx(expected)
