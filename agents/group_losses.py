"""The arithmetic of the group-relative family: advantages, clipped ratios, KL, loss aggregation.

Pure tensor functions, tested against hand calculations (``tests/test_group_losses.py``); the
algorithm (:mod:`rlhf_gym.agents.group_algorithms`) only wires them together. Names and
conventions follow TRL's ``GRPOTrainer`` where it has one, so a user can map settings across:

- advantages: ``(r - baseline) / scale`` with the baseline the group mean (GRPO), the mean of
  the *other* answers to the prompt (RLOO: ``k/(k-1) * (r - mean)``) or the batch mean
  (REINFORCE++, per token), and the scale the group std, the batch std (TRL's
  ``scale_rewards``) or 1 (Dr. GRPO); ``+ 1e-4`` under the std, as TRL;
- ratios: per token ``exp(log pi - log pi_old)``, or per sequence as the exp of the mean
  per-token log-ratio (GSPO), clipped to ``[1 - clip_range, 1 + clip_range_high]`` (DAPO's
  clip-higher when ``clip_range_high > clip_range``);
- KL in the loss: the k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` per token (TRL's
  ``beta``);
- aggregation (``loss_type``): ``"grpo"`` mean over each sequence's tokens, then over
  sequences; ``"bnpo"`` mean over the minibatch's tokens; ``"dapo"`` sum over the minibatch's
  tokens divided by a normaliser fixed for the whole rollout (its mean tokens per sequence
  times the minibatch's sequences), so short and long minibatches weigh each token alike;
  ``"dr_grpo"`` sum divided by ``sequences * max_new_tokens`` (a constant, no length bias).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

#: Sums a tensor over data-parallel ranks (:func:`rlhf_gym.agents.distributed.all_reduce_tensor`).
#: Batch statistics pass their sums through it; ``None`` (one process): the local statistics.
SumFn = Callable[[torch.Tensor], torch.Tensor]


Baseline = Literal["group_mean", "leave_one_out", "batch"]
ScaleRewards = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dapo", "dr_grpo"]
ImportanceLevel = Literal["token", "sequence"]

LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dapo", "dr_grpo")
BASELINES: tuple[str, ...] = ("group_mean", "leave_one_out", "batch")
SCALES: tuple[str, ...] = ("group", "batch", "none")
STD_EPS = 1e-4


def group_advantages(
    rewards: torch.Tensor,
    *,
    baseline: Baseline,
    scale: ScaleRewards,
    sum_fn: SumFn | None = None,
) -> torch.Tensor:
    """Sequence advantages of ``rewards`` ``[G, k]`` (G groups of k answers to one prompt).

    A group whose rewards are all equal has zero advantage whatever the scale (its std is 0,
    the ``1e-4`` keeps the division finite): it adds no policy gradient, only the KL term.
    ``sum_fn`` makes the ``"batch"`` std global over data-parallel ranks.
    """
    if baseline == "group_mean":
        centred = rewards - rewards.mean(-1, keepdim=True)
    elif baseline == "leave_one_out":
        k = rewards.shape[-1]
        if k < 2:
            raise ValueError("the leave-one-out baseline needs groups of at least 2 answers")
        centred = (rewards * k - rewards.sum(-1, keepdim=True)) / (k - 1)
    else:
        raise ValueError(f"group_advantages takes a group baseline, got {baseline!r}")
    if scale == "group":
        std = rewards.std(-1, keepdim=True) if rewards.shape[-1] > 1 else torch.zeros_like(rewards)
        return centred / (std + STD_EPS)
    if scale == "batch":
        return centred / (_batch_std(rewards, sum_fn) + STD_EPS)
    return centred


def _batch_std(values: torch.Tensor, sum_fn: SumFn | None) -> torch.Tensor:
    """Unbiased std of every entry of ``values``: torch's own in one process, two passes over
    every rank's entries with a data-parallel ``sum_fn``."""
    if sum_fn is None:
        return values.std()
    n = sum_fn(values.new_tensor(float(values.numel())))
    mean = sum_fn(values.sum()) / n
    return (sum_fn(((values - mean) ** 2).sum()) / (n - 1).clamp(min=1)).sqrt()


def token_returns(
    rewards: torch.Tensor, kl: torch.Tensor | None, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token returns ``[B, T]`` with gamma 1: ``r - beta * sum_{t' >= t} kl_t'``.

    :param rewards: ``[B]`` terminal rewards; :param kl: ``[B, T]`` per-token ``logp - ref``
        (None: no penalty); :param mask: ``[B, T]`` 1 on response tokens.
    """
    returns = rewards[:, None].expand_as(mask).to(torch.float32) * mask
    if kl is None or beta == 0.0:
        return returns
    tail = torch.flip(torch.cumsum(torch.flip(kl * mask, [1]), 1), [1])  # sum over t' >= t
    return (returns - beta * tail) * mask


def batch_whiten(
    values: torch.Tensor, mask: torch.Tensor, *, scale: bool, sum_fn: SumFn | None = None
) -> torch.Tensor:
    """REINFORCE++: subtract the mean over all valid tokens and (``scale``) divide by their std
    (over every rank's tokens with a data-parallel ``sum_fn``)."""
    total = sum_fn or (lambda t: t)
    n = total(mask.sum()).clamp(min=1)
    mean = total((values * mask).sum()) / n
    centred = (values - mean) * mask
    if not scale:
        return centred
    var = total((centred**2).sum()) / (n - 1).clamp(min=1)
    return centred / (var.sqrt() + STD_EPS)


def k3_kl(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): ``exp(ref - logp) - (ref - logp) - 1`` (>= 0)."""
    delta = ref_log_prob - log_prob
    return torch.exp(delta) - delta - 1.0


def clipped_surrogate(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
    clip_range_high: float | None = None,
    level: ImportanceLevel = "token",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss ``-min(rho A, clip(rho) A)`` ``[B, T]`` and the clipped mask.

    :param advantages: ``[B, T]`` (a sequence advantage broadcast over its tokens, or per token).
    :param level: ``"token"`` ratios, or ``"sequence"`` (GSPO): one ratio per sequence, the exp
        of its mean per-token log-ratio, applied to every token.
    """
    log_ratio = log_prob - old_log_prob
    if level == "sequence":
        per_seq = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        log_ratio = per_seq[:, None].expand_as(log_prob)
    ratio = torch.exp(log_ratio)
    high = clip_range if clip_range_high is None else clip_range_high
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    loss = -torch.min(ratio * advantages, clipped_ratio * advantages)
    was_clipped = (ratio * advantages) > (clipped_ratio * advantages)
    return loss * mask, (was_clipped & mask.bool())


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_type: LossType,
    *,
    max_new_tokens: int,
    tokens_per_sequence: float,
    n_sequences: int | None = None,
    n_tokens: float | None = None,
) -> torch.Tensor:
    """Reduce a ``[B, T]`` per-token loss to a scalar as ``loss_type`` says (module docstring).

    :param max_new_tokens: Dr. GRPO's constant per sequence.
    :param tokens_per_sequence: the rollout's mean response length (DAPO's fixed normaliser).
    :param n_sequences, n_tokens: the minibatch's sequences and response tokens when these
        ``B`` rows are one chunk of it (gradient accumulation): the chunks' losses then sum to
        the minibatch's. Default: these rows are the whole minibatch.
    """
    masked = per_token * mask
    n_seq = per_token.shape[0] if n_sequences is None else n_sequences
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / max(n_seq, 1)
    if loss_type == "bnpo":
        tokens = float(mask.sum()) if n_tokens is None else n_tokens
        return masked.sum() / max(tokens, 1.0)
    if loss_type == "dapo":
        return masked.sum() / max(n_seq * tokens_per_sequence, 1.0)
    if loss_type == "dr_grpo":
        return masked.sum() / (n_seq * max_new_tokens)
    raise ValueError(f"unknown loss_type {loss_type!r}")
