"""The inverse-CDF token sampler draws from the given distribution and never a masked token."""

from __future__ import annotations

import pytest
import torch

from rlhf_gym.agents.distributions import (
    MaskableVocabCategoricalDistribution,
    VocabCategoricalDistribution,
    sample_categorical,
    sample_with_log_prob,
)


def test_sample_frequencies_match_probabilities() -> None:
    torch.manual_seed(0)
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.0, 0.0, 0.0, 1.0]])
    draws = sample_categorical(probs.expand(20000, 2, 4).reshape(-1, 4).contiguous())
    draws = draws.reshape(20000, 2)
    first = torch.bincount(draws[:, 0], minlength=4).double() / 20000
    # Standard error of a frequency near 0.5 with 20k draws is 0.0035: 0.02 is over 5 sigma.
    torch.testing.assert_close(first, probs[0].double(), atol=0.02, rtol=0)
    assert int((draws[:, 0] == 1).sum()) == 0  # probability 0 is never drawn
    assert bool((draws[:, 1] == 3).all())


def test_zero_mass_at_the_end_is_unreachable_even_when_rows_sum_below_one() -> None:
    torch.manual_seed(1)
    probs = torch.zeros(5000, 2048)
    probs[:, :7] = 0.999 / 7  # the row sums to 0.999, the last 2041 tokens have mass 0
    draws = sample_categorical(probs)
    assert int(draws.max()) <= 6 and int(draws.min()) >= 0


def test_distributions_use_the_sampler_and_keep_sb3_semantics() -> None:
    logits = torch.tensor([[0.0, 5.0, -1.0], [2.0, 0.0, 0.0]])
    dist = VocabCategoricalDistribution(3).proba_distribution(logits)
    torch.manual_seed(2)
    actions = dist.get_actions()
    torch.manual_seed(2)
    assert torch.equal(actions, sample_categorical(torch.softmax(logits, -1)))
    assert torch.equal(dist.get_actions(deterministic=True), torch.tensor([1, 0]))
    torch.testing.assert_close(
        dist.log_prob(actions), torch.log_softmax(logits, -1)[[0, 1], actions]
    )

    masked = MaskableVocabCategoricalDistribution(3).proba_distribution(logits)
    masked.apply_masking(torch.tensor([[True, False, True], [False, False, True]]))
    torch.manual_seed(3)
    for _ in range(50):
        a = masked.get_actions()
        assert int(a[0]) != 1 and int(a[1]) == 2


def test_rollout_fast_path_matches_the_distribution_objects() -> None:
    torch.manual_seed(4)
    logits = torch.randn(6, 50) * 3
    masks = torch.rand(6, 50) > 0.3
    masks[:, 0] = True  # every row keeps at least one action
    for action_masks, dist in (
        (None, VocabCategoricalDistribution(50).proba_distribution(logits)),
        (masks, MaskableVocabCategoricalDistribution(50).proba_distribution(logits)),
    ):
        if action_masks is not None:
            dist.apply_masking(action_masks)
        torch.manual_seed(5)
        actions, log_prob = sample_with_log_prob(logits, action_masks=action_masks)
        torch.manual_seed(5)
        assert torch.equal(actions, dist.get_actions())
        torch.testing.assert_close(log_prob, dist.log_prob(actions), atol=1e-6, rtol=0)
        best, best_lp = sample_with_log_prob(logits, deterministic=True, action_masks=action_masks)
        assert torch.equal(best, dist.get_actions(deterministic=True))
        torch.testing.assert_close(best_lp, dist.log_prob(best), atol=1e-6, rtol=0)
    assert bool(masks[torch.arange(6), sample_with_log_prob(logits, action_masks=masks)[0]].all())


def test_nan_logits_are_a_clear_error() -> None:
    logits = torch.zeros(2, 5)
    logits[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN logits"):
        sample_with_log_prob(logits)


def test_large_vocabularies_search_in_blocks_with_the_same_draws() -> None:
    """Past 4 blocks the sampler picks a block, then a token in it: the same tokens as the
    one-level search for the same draws, frequencies that match, zero mass never reached."""
    from rlhf_gym.agents import distributions

    vocab = 6 * distributions.CDF_BLOCK + 7  # padded to whole blocks
    torch.manual_seed(6)
    probs = torch.softmax(torch.randn(400, vocab) * 4, -1)
    torch.manual_seed(7)
    blocked = sample_categorical(probs)
    torch.manual_seed(7)
    cdf = probs.double().cumsum(-1)
    flat = torch.searchsorted(
        cdf, torch.rand(400, 1, dtype=torch.float64) * cdf[:, -1:], right=True
    )
    assert torch.equal(blocked, flat.squeeze(-1))

    spiky = torch.zeros(3, vocab)
    spiky[0, [5, 2000, vocab - 1]] = torch.tensor([0.2, 0.5, 0.3])  # first, middle, last block
    spiky[1, 4096 : 4096 + 3] = 0.999 / 3  # sums below one; every other block has zero mass
    spiky[2, 1023] = 1.0  # a block's last token, then only zeros
    draws = sample_categorical(spiky.expand(5000, 3, vocab).reshape(-1, vocab)).reshape(-1, 3)
    first = torch.bincount(draws[:, 0], minlength=vocab)[[5, 2000, vocab - 1]].double() / 5000
    # Standard error of a frequency near 0.5 with 5k draws is 0.007: 0.035 is 5 sigma.
    torch.testing.assert_close(first, torch.tensor([0.2, 0.5, 0.3]).double(), atol=0.035, rtol=0)
    assert bool(spiky[torch.arange(3), draws].gt(0).all())  # zero mass is never drawn
    assert bool((draws[:, 2] == 1023).all())
