"""Log-probs of whole responses: one forward per sequence, the vocabulary projection in chunks.

The group algorithms (:mod:`rlhf_gym.agents.group_algorithms`) keep episodes, not transitions:
each is the final sequence ``prompt + response``. Scoring one costs one forward of the model's
trunk; the next-token log-prob of response token ``j`` is read at position ``prompt_len + j - 1``.

Memory follows a budget, not the vocabulary: the trunk is asked for no logits at all
(``logits_to_keep`` an empty index tensor: transformers projects ``hidden[:, []]``; even
``logits_to_keep=1`` would cost ``[batch, vocab]``) and the LM head is applied to the hidden states of the scored tokens in
chunks of at most ``max(1, budget // (vocab * 12 bytes))`` tokens (a float32 ``[chunk, vocab]``
block plus the softmax temporaries). With gradients each chunk runs under activation
checkpointing, so autograd keeps only the chunk's ``[chunk, hidden]`` input and recomputes the
``[chunk, vocab]`` block in backward: peak memory is one block, not ``[tokens, vocab]``. When
every token fits in one block the chunk runs without checkpointing (nothing to save). A frozen
plain ``nn.Linear`` head (the usual case) skips both: :mod:`rlhf_gym.agents.fused_log_probs`
computes each block's log-probs and their gradients in one pass.

The last hidden state the model reports is the LM head's input (checked for GPT-2 and Llama in
the tests); models that post-process logits with a soft cap (Gemma 2/3's
``final_logit_softcapping``) get the same cap applied here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rlhf_gym.agents.distributions import MASKED_LOGIT
from rlhf_gym.agents.fused_log_probs import fusable_head, fused_token_log_probs
from rlhf_gym.agents.shared_prefix import SharedTokens, trunk_hidden

#: Bytes per vocabulary entry of a scored token: float32 logits, exp and one temporary.
_BYTES_PER_LOGIT = 12


def lm_head(model: Any) -> tuple[nn.Module, float | None]:
    """The model's LM head and the soft cap its forward applies to logits (Gemma 2/3), if any:
    what turns the last hidden state into the logits the model would have returned."""
    config = model.config.get_text_config() if hasattr(model, "config") else None
    return model.get_output_embeddings(), getattr(config, "final_logit_softcapping", None)


def project(head: nn.Module, hidden: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """``[n, vocab]`` float32 logits of ``[n, hidden]`` states: the LM head, then the soft cap."""
    logits = head(hidden).float()
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def tokens_per_chunk(vocab: int, budget_mb: float) -> int:
    """How many tokens one ``[chunk, vocab]`` block may hold under ``budget_mb`` MiB."""
    return max(1, int(budget_mb * 2**20) // (vocab * _BYTES_PER_LOGIT))


def _score_chunk(
    head: nn.Module,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    softcap: float | None,
    entropy: bool,
    allowed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = project(head, hidden, softcap)  # [c, vocab]
    if allowed is not None:  # [c, vocab] bool: sb3-contrib's masked logit for the others
        logits = logits.masked_fill(~allowed, MASKED_LOGIT)
    log_probs = torch.log_softmax(logits, dim=-1)  # [c, vocab]: one fused pass on a CPU
    log_prob = log_probs.gather(-1, tokens[:, None]).squeeze(-1)  # [c]
    if not entropy:
        return log_prob, torch.zeros_like(log_prob)
    return log_prob, -(log_probs.exp() * log_probs).sum(-1)


def chunked_log_probs(
    head: nn.Module,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    *,
    chunk: int,
    entropy: bool = False,
    softcap: float | None = None,
    masks: torch.Tensor | None = None,
    mask_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(tokens)`` (and the entropy) from the LM head applied to ``hidden`` chunk by chunk.

    :param head: the LM's output embedding module (``model.get_output_embeddings()``).
    :param hidden: ``[T, hidden]`` the LM head's inputs at the positions that predict ``tokens``.
    :param tokens: ``[T]`` the tokens whose log-probs are wanted.
    :param chunk: tokens per ``[chunk, vocab]`` block (see :func:`tokens_per_chunk`).
    :param masks: ``[B, vocab]`` allowed tokens per sequence, ``mask_rows`` ``[T]`` the sequence
        of each token (the ``[chunk, vocab]`` mask is built per chunk, never for all tokens).
    :return: ``([T] log-probs, [T] entropies or None)`` in float32.
    """
    n = hidden.shape[0]
    if n == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if entropy else None)
    fused = fusable_head(head, softcap)
    recompute = torch.is_grad_enabled() and n > chunk
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    for start in range(0, n, chunk):
        h, t = hidden[start : start + chunk], tokens[start : start + chunk]
        allowed = None
        if masks is not None and mask_rows is not None:
            allowed = masks[mask_rows[start : start + chunk]]
        if fused:  # one pass per block, nothing recomputed (rlhf_gym.agents.fused_log_probs)
            out = fused_token_log_probs(head, h, t, entropy=entropy, allowed=allowed)  # type: ignore[arg-type]
        elif recompute:
            out = checkpoint(
                _score_chunk, head, h, t, softcap, entropy, allowed, use_reentrant=False
            )
        else:
            out = _score_chunk(head, h, t, softcap, entropy, allowed)
        parts.append(out)  # type: ignore[arg-type]
    log_prob = torch.cat([p[0] for p in parts])
    return log_prob, (torch.cat([p[1] for p in parts]) if entropy else None)


def response_positions(
    prompt_lens: torch.Tensor, response_lens: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions [B, T], valid [B, T])``: where response token j of row b sits, T = longest.

    ``positions[b, j] = prompt_lens[b] + j`` (clamped into ``[0, width)`` where not valid).
    """
    longest = int(response_lens.max()) if response_lens.numel() else 0
    j = torch.arange(longest, device=prompt_lens.device)
    positions = prompt_lens[:, None] + j[None, :]  # [B, T]
    valid = j[None, :] < response_lens[:, None]  # [B, T]
    return positions.clamp(max=width - 1), valid


def score_responses(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_lens: torch.Tensor,
    response_lens: torch.Tensor,
    *,
    budget_mb: float,
    entropy: bool = False,
    action_masks: torch.Tensor | None = None,
    share_prefix: bool = False,
    shared: tuple[SharedTokens, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of each row's response under ``model``, one forward for the batch.

    :param input_ids: ``[B, W]`` right-padded ``prompt + response`` sequences.
    :param attention_mask: ``[B, W]`` 1 on the real tokens.
    :param prompt_lens: ``[B]`` prompt tokens per row (a response starts there).
    :param response_lens: ``[B]`` response tokens per row (at least 1).
    :param budget_mb: memory budget of one ``[chunk, vocab]`` block.
    :param action_masks: ``[B, vocab]`` bool tokens each row may emit (masked as in sampling).
    :param share_prefix: run the rows' common leading tokens once, and a prompt's tokens
        once per group of rows that repeat it (:mod:`rlhf_gym.agents.shared_prefix`; they
        stop before each row's first scored position).
    :param shared: ``(tokens, rows)``: shared tokens already run for a larger batch, these
        rows' indices in it (the minibatch of a chunk; ``share_prefix`` is then not used).
    :return: ``([B, T] log-probs, [B, T] entropies or None)``, ``T`` the longest response,
        zero where ``j >= response_lens[b]``.
    """
    batch, width = input_ids.shape
    # The first scored position is prompt_len - 1: shared tokens must end before it.
    limits = prompt_lens - 1 if share_prefix and batch > 1 else None
    shared_tokens, shared_rows = (None, None) if shared is None else shared
    hidden, offsets = trunk_hidden(
        model, input_ids, attention_mask, limits=limits, shared=shared_tokens, rows=shared_rows
    )
    # hidden: [B, C, hidden], row b's LM head input at positions offsets[b]..
    positions, valid = response_positions(prompt_lens, response_lens, width)
    rows = torch.arange(batch, device=input_ids.device)[:, None].expand_as(positions)
    # The token at position p is predicted by the hidden state at p - 1.
    h = hidden[rows[valid], positions[valid] - 1 - offsets[rows[valid]]]  # [N, hidden]
    tokens = input_ids[rows[valid], positions[valid]]  # [N]
    head, softcap = lm_head(model)
    vocab = int(head.weight.shape[0])
    log_prob, ent = chunked_log_probs(
        head,
        h,
        tokens,
        chunk=tokens_per_chunk(vocab, budget_mb),
        entropy=entropy,
        softcap=softcap,
        masks=action_masks,
        mask_rows=rows[valid],
    )
    out_lp = torch.zeros(positions.shape, dtype=torch.float32, device=input_ids.device)
    out_lp = out_lp.masked_scatter(valid, log_prob)
    if ent is None:
        return out_lp, None
    out_ent = torch.zeros_like(out_lp).masked_scatter(valid, ent)
    return out_lp, out_ent
