"""Log-probs of chosen tokens straight from hidden states: the LM head, softmax and gather fused.

Scoring a token costs a ``[vocab]`` row of logits, and autograd's way of getting its gradient is
expensive at real vocabularies: the gather's backward zero-fills and scatters a dense
``[chunk, vocab]`` gradient, ``log_softmax`` has its own backward pass over the block, and under a
memory budget (:func:`~rlhf_gym.agents.response_scoring.chunked_log_probs`) every block is
computed a second time in backward (activation checkpointing). On SmolLM2 (49k tokens) that was a
fifth of a PPO training pass: 10 ``log_softmax`` calls of 62 ms, 0.75 s of gather backward and
0.56 s of recomputed LM head per update of 2048 tokens.

:class:`TokenLogProb` computes, in one pass over each ``[chunk, vocab]`` block, the log-prob
``z_a - logsumexp(z)`` (and the entropy ``lse - sum p z``) and, when a gradient will be needed,
their Jacobians with respect to the hidden state, which are ``[chunk, hidden]`` vectors because
each output is a scalar per token (the idea of Liger-Kernel's fused linear cross-entropy):

- ``d log p_a / dh = W_a - p W`` (the head's row of ``a`` minus the softmax-weighted rows);
- ``d H / dh = -(p * (log p + H)) W``.

Backward is then a scale of the saved vectors by the incoming gradients: no recompute, no dense
gradient block, nothing ``[chunk, vocab]``-sized kept between forward and backward. The numbers
are the unfused path's up to float rounding (tests), with the same memory bound (at most two
blocks at a time; one on a CPU without the entropy). It applies to a plain, frozen, bias-free
``nn.Linear`` head without a logit soft cap (Llama, Qwen, Mistral, GPT-2, SmolLM2: tied or not,
but not trained); anything else takes the autograd path. The backward is not differentiable itself (``once_differentiable``: a second
derivative raises instead of silently dropping a term; TRPO scores through full logits anyway).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from rlhf_gym.agents.distributions import MASKED_LOGIT


def fusable_head(head: nn.Module, softcap: float | None) -> bool:
    """Whether :class:`TokenLogProb` can stand in for ``head`` + ``log_softmax`` + gather."""
    return (
        type(head) is nn.Linear
        and head.bias is None
        and not head.weight.requires_grad
        and not softcap
        and not head._forward_hooks
        and not head._forward_pre_hooks
    )


class TokenLogProb(torch.autograd.Function):
    """``(log p(tokens) [c], entropy [c])`` of ``hidden [c, H]`` under a frozen head ``weight [V, H]``.

    The entropy output is zeros unless ``entropy`` is set; ``allowed`` (``[c, V]`` bool or None)
    masks the logits the way sampling does. Gradients flow to ``hidden`` only.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        tokens: torch.Tensor,
        allowed: torch.Tensor | None,
        entropy: bool,
        need_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = (hidden @ weight.t()).float()  # [c, V]
        if allowed is not None:
            logits.masked_fill_(~allowed, MASKED_LOGIT)
        rows = torch.arange(len(tokens), device=tokens.device)
        # One fused kernel (torch.logsumexp is several passes on a CPU: 73 ms against 62 for a
        # [455, 49152] block). On a CPU it runs in place, into the logits block (the kernel reads
        # each row whole before writing it: the same numbers, tested): each fresh [c, V] block
        # is mapped and faulted in anew there, 65k pages for 268 MB; one block per chunk instead
        # of three: GRPO's training pass on SmolLM2 10.6-10.7 -> 9.9-10.1 s (480k -> 205k page
        # faults an update).
        in_place = logits.device.type == "cpu"
        log_probs = torch.log_softmax(logits, dim=-1, out=logits if in_place else None)  # [c, V]
        del logits
        log_prob = log_probs[rows, tokens]  # [c] (a copy)
        if not (entropy or need_grad):
            ctx.entropy = False
            return log_prob, torch.zeros_like(log_prob)
        if entropy:
            probs = log_probs.exp()  # [c, V]
            ent = -(probs * log_probs).sum(-1)  # [c]
        else:  # log p is no longer needed: p overwrites it
            probs, ent = log_probs.exp_(), torch.zeros_like(log_prob)
        ctx.entropy = entropy
        if need_grad:
            jac_ent = None
            if entropy:  # dH/dz = -p * (log p + H), reusing the log_probs block
                d_ent = log_probs.add_(ent[:, None]).mul_(probs).neg_()  # [c, V]
                jac_ent = (d_ent.to(weight.dtype) @ weight).to(hidden.dtype)  # [c, H]
            # d log p_a / dz = onehot(a) - p; a masked-out token's logit is a constant (no +1)
            hit = 1.0 if allowed is None else allowed[rows, tokens].to(probs.dtype)
            probs.neg_()[rows, tokens] += hit
            jac_lp = (probs.to(weight.dtype) @ weight).to(hidden.dtype)  # [c, H]
            ctx.save_for_backward(jac_lp, *(() if jac_ent is None else (jac_ent,)))
        return log_prob, ent

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_log_prob: torch.Tensor, grad_entropy: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        grad = grad_log_prob.to(saved[0].dtype)[:, None] * saved[0]  # [c, H]
        if ctx.entropy:
            grad = grad + grad_entropy.to(saved[1].dtype)[:, None] * saved[1]
        return grad, None, None, None, None, None


def fused_token_log_probs(
    head: nn.Linear,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    *,
    entropy: bool,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p [c], entropy [c])`` of one chunk through :class:`TokenLogProb` (float32)."""
    need_grad = torch.is_grad_enabled() and hidden.requires_grad
    return TokenLogProb.apply(hidden, head.weight, tokens, allowed, entropy, need_grad)  # type: ignore[no-any-return]
