"""Evaluate a minibatch of transitions with one forward per sequence, not one per token.

A rollout buffer holds one transition per generated token: the observation of step t of an
episode is the observation of step t+1 minus its last token. Under a causal LM the logits at the
last position of a prefix are the logits at that position of any longer sequence that extends
it, so every transition whose tokens are a prefix of a longer observation in the same
minibatch can be read off that longer sequence's forward.

:func:`group_by_prefix` finds, for each transition, the longest observation in the minibatch of
which it is a prefix (same tokens on its valid part); the caller runs the model once per such
representative and gathers each transition's outputs at its own last position. The result is
the per-transition computation for any minibatch composition (shuffled, partial episodes,
several episodes with identical prompts...), because grouping is decided by token equality,
never by assumed episode boundaries.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class PrefixGroups(NamedTuple):
    """``representatives[g]`` is a row index; transition i is read from row ``representatives[group[i]]``."""

    representatives: torch.Tensor  # [G] long, indices into the minibatch
    group: torch.Tensor  # [N] long, group of each transition
    lengths: torch.Tensor  # [N] number of valid tokens of each transition


def valid_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-row valid length of right-padded observations; refuses masks with holes."""
    mask = attention_mask.long()
    lengths = mask.sum(-1)
    positions = torch.arange(mask.shape[-1], device=mask.device)
    expected = (positions[None, :] < lengths[:, None]).long()
    if not torch.equal(mask, expected):
        raise ValueError(
            "attention_mask must be right-padded (1 on the first n tokens, 0 after): "
            "rlhf_gym observations put the prompt and response first and pad ids last."
        )
    return lengths


def group_by_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PrefixGroups:
    """Group each row with the longest row of which it is a prefix.

    Rows are visited from longest to shortest; a row joins the first representative (in that
    order, hence a longest one) whose tokens agree with it on the row's valid part, otherwise it
    becomes a representative itself. Cost: one vectorised comparison per row against the
    current representatives, O(N * G * L) element compares.
    """
    lengths = valid_lengths(attention_mask)
    n, width = input_ids.shape
    order = torch.argsort(lengths, descending=True, stable=True)
    group = torch.empty(n, dtype=torch.long, device=input_ids.device)
    reps: list[int] = []
    rep_ids = input_ids.new_empty((0, width))
    positions = torch.arange(width, device=input_ids.device)
    for idx in order.tolist():
        length = int(lengths[idx])
        if reps:
            row = input_ids[idx]
            match = ((rep_ids == row) | (positions >= length)).all(-1)
            hits = match.nonzero()
            if len(hits) > 0:
                group[idx] = int(hits[0])
                continue
        group[idx] = len(reps)
        reps.append(idx)
        rep_ids = torch.cat([rep_ids, input_ids[idx : idx + 1]], dim=0)
    representatives = torch.tensor(reps, dtype=torch.long, device=input_ids.device)
    return PrefixGroups(representatives, group, lengths)
