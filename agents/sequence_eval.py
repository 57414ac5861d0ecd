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

    Rows are visited from longest to shortest; a row joins the representative that first
    registered its prefix (in that order, hence a longest one) when their tokens agree on the
    row's valid part, otherwise it becomes a representative itself and registers all of its
    prefixes. Prefixes are looked up by two independent rolling hashes (vectorised, int64
    arithmetic that wraps): a false merge needs a 128-bit collision.
    Cost: O(N) dictionary lookups plus O(G * L) registrations, instead of comparing every row
    with every representative.
    """
    lengths = valid_lengths(attention_mask)
    n, width = input_ids.shape
    ids = input_ids.long() * attention_mask.long()
    hashes = []
    for base in (1_000_003, 998_244_353):
        powers = torch.full((width,), base, dtype=torch.long, device=ids.device).cumprod(0)
        hashes.append(((ids + 1) * powers).cumsum(1))  # [N, L]: hash of each first t+1 tokens
    prefix_hash = torch.stack(hashes, dim=-1)  # [N, L, 2]
    last = (lengths - 1).clamp(min=0)
    keys = [tuple(k) for k in prefix_hash[torch.arange(n, device=ids.device), last].tolist()]
    lengths_list = lengths.tolist()
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    group = [0] * n
    reps: list[int] = []
    owner: dict[tuple[int, tuple[int, ...]], int] = {}  # (length, prefix hashes) -> representative
    for idx in order:
        length = lengths_list[idx]
        rep = owner.get((length, keys[idx]))
        if rep is not None:
            group[idx] = group[rep]
            continue
        group[idx] = len(reps)
        reps.append(idx)
        for t, h in enumerate(prefix_hash[idx, :length].tolist()):
            owner.setdefault((t + 1, tuple(h)), idx)
    device = input_ids.device
    return PrefixGroups(
        torch.tensor(reps, dtype=torch.long, device=device),
        torch.tensor(group, dtype=torch.long, device=device),
        lengths,
    )
