"""Prompts that begin with the same tokens run those tokens through the model once.

Chat templates put the same turn before every user message: SmolLM2-135M-Instruct's default
system turn and the user header are the first 25 tokens of every prompt (of about 32 on the
real-model benchmark), Qwen's default system prompt is longer still. Every pass of a batch
of such sequences (the rollout's prefill, the KL reference pass, the training forward, response
scoring) would otherwise recompute those tokens' keys and values once per row.

Here the common prefix of a batch (:func:`shared_prefix_length`) is run once as a batch of one
(:func:`prefix_past`), its keys/values are expanded to every row (a view, copied once into each
row's cache) and only the rest of each sequence goes through the model, attending over the
prefix through the cache. The hidden states of the remaining positions are those of the full
forward up to float rounding (different matmul shapes), and autograd flows through the
expanded prefix, so a training pass gets the same gradients (the prefix's share summed over
rows, as in the full forward). What it saves is ``(rows - 1) x prefix`` token forwards: a
quarter of the trunk's work on the real-model benchmark, and as much of a training pass's
activation memory.

Rows that repeat a whole prompt (a GRPO group's answers, a prompt drawn twice) share more: the
rest of each group's prompt runs once per group (:func:`prompt_groups`, :func:`share_tokens`)
when that removes at least 1/:data:`MIN_GROUP_SAVING` of the tokens fed; with prompts of a few
hundred tokens and groups of 8 that is most of a pass. A minibatch scored in chunks runs its
shared tokens once for all its chunks (:meth:`SharedTokens.detached` collects each chunk's
gradients, :meth:`SharedTokens.backward` sends them through the shared forward once).

It applies only where it is exact: shared tokens stop before each row's first position whose
output is read (``limits``), batches of one and prefixes under :data:`MIN_SHARED_TOKENS` tokens run as
before, and callers skip it under gradient checkpointing (the recomputed layer would append to
the cache twice). A cache built without a config holds plain ``DynamicLayer`` s for every
attention layer, sliding-window ones included: the model's masks apply the window, counted in
cache columns, so groups (whose rows have masked padding between shared and own tokens) are
used only where a row's columns fit in the window (:func:`attention_window`; tested on a
windowed Mistral). A model whose cache holds anything else (recurrent or hybrid layers) runs
without sharing.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

#: Below this many common tokens the extra batch-of-one forward is not worth its dispatch cost.
MIN_SHARED_TOKENS = 8

#: Prompt groups run once when that feeds at least 1/this of a pass's tokens fewer (the
#: groups' forward is one more model call, and small batches run the matmuls less efficiently).
MIN_GROUP_SAVING = 16


def shared_prefix_length(input_ids: torch.Tensor, limit: int) -> int:
    """The number of leading tokens every row of ``input_ids`` has in common, at most ``limit``.

    :param input_ids: ``[B, W]`` left-aligned sequences (the compared columns must be real
        tokens in every row: ``limit`` must not exceed the shortest row's length).
    :param limit: the first position whose output the caller reads (it must stay out of the
        prefix, which returns no outputs).
    :return: the prefix length, or 0 when there is nothing worth sharing (one row, or fewer
        than :data:`MIN_SHARED_TOKENS` tokens in common).
    """
    rows, width = input_ids.shape
    limit = min(int(limit), width)
    if rows < 2 or limit < MIN_SHARED_TOKENS:
        return 0
    agree = (input_ids[:, :limit] == input_ids[:1, :limit]).all(0)  # [limit]
    common = int(agree.long().cumprod(0).sum())
    return common if common >= MIN_SHARED_TOKENS else 0


def no_logits(model: Any, device: torch.device) -> dict[str, Any]:
    """Forward kwargs that ask ``model`` for no logits, when its forward takes ``logits_to_keep``
    (an empty index tensor: transformers projects ``hidden[:, []]``; even ``logits_to_keep=1``
    would cost ``[batch, vocab]``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return {}
    return {"logits_to_keep": torch.empty(0, dtype=torch.long, device=device)}


def cache_keyword(model: Any) -> str:
    """The name under which ``model``'s forward takes a KV cache (``past_key_values`` or ``cache``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def expanded_cache(past: list[tuple[torch.Tensor, torch.Tensor]], rows: int) -> DynamicCache:
    """A ``DynamicCache`` holding one prefix's ``[1, heads, P, head_dim]`` keys/values for ``rows``."""
    return DynamicCache(
        ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in past]
    )


def plain_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The ``(keys, values)`` of each layer of ``cache``, or None unless every layer is a plain
    ``DynamicLayer`` (only then does a cache expanded along the batch mean the same thing)."""
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def prefix_past(
    model: Any, prefix_ids: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Run ``prefix_ids`` (``[1, P]``) once: its ``[1, kv_heads, P, head_dim]`` keys/values per
    layer, with gradients when enabled. None when the model's cache cannot be expanded (see
    :func:`plain_layers`); the caller then runs the full sequences."""
    positions = torch.arange(prefix_ids.shape[1], device=prefix_ids.device)[None, :]
    mask = torch.ones_like(prefix_ids)
    return _output_past(_forward(model, prefix_ids, mask, positions, DynamicCache(), hidden=False))


@dataclass(frozen=True)
class PromptGroups:
    """Rows that begin with the same tokens up to their first read position: a GRPO group's
    answers to one prompt, or a prompt drawn twice.

    ``group [B]`` is each row's group, ``first [G]`` one row of each group and ``lengths [G]``
    the tokens its rows share (each row's limit: no row's output is read inside them).
    """

    group: torch.Tensor
    first: torch.Tensor
    lengths: torch.Tensor


def prompt_groups(input_ids: torch.Tensor, limits: torch.Tensor) -> PromptGroups:
    """Group the rows of ``input_ids`` (``[B, W]``) whose first ``limits[b]`` tokens are equal
    (equal limits included)."""
    rows = input_ids.shape[0]
    width = int(limits.max())
    cols = torch.arange(width, device=input_ids.device)
    kept = torch.where(cols[None, :] < limits[:, None], input_ids[:, :width], -1)  # [B, width]
    keys = torch.cat((limits[:, None], kept), dim=1)
    _, group = torch.unique(keys, dim=0, return_inverse=True)  # [B]
    n_groups = int(group.max()) + 1
    first = torch.full((n_groups,), rows, dtype=torch.long, device=input_ids.device)
    first = first.scatter_reduce(0, group, torch.arange(rows, device=input_ids.device), "amin")
    return PromptGroups(group=group, first=first, lengths=limits[first])


def _forward(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: DynamicCache | None,
    *,
    hidden: bool,
) -> Any:
    """One trunk forward of ``ids`` after ``cache`` (None: from position 0, no cache kept)."""
    kwargs: dict[str, Any] = {} if cache is None else {cache_keyword(model): cache}
    return model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=cache is not None,
        output_hidden_states=hidden,
        **kwargs,
        **no_logits(model, ids.device),
    )


def _output_past(out: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The keys/values of a forward's returned cache, or None (see :func:`plain_layers`)."""
    return plain_layers(getattr(out, "cache", None) or getattr(out, "past_key_values", None))


@dataclass(frozen=True)
class SharedTokens:
    """The keys/values of the tokens rows share before their first read position, computed
    once (:func:`share_tokens`) for every forward of those rows (:func:`trunk_hidden`).

    ``past`` holds ``[G, kv_heads, P, head_dim]`` per layer for ``G`` groups (one when only
    the common prefix is shared), ``mask [G, P]`` which of the ``P`` columns are real tokens
    of each group, ``group [B]`` each row's group and ``starts [B]`` its first own position.
    """

    past: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor
    group: torch.Tensor
    starts: torch.Tensor

    def detached(self) -> SharedTokens:
        """Leaf copies that collect the gradients of the forwards that use them, so several
        chunks of rows (each its own backward) share one forward of the shared tokens; hand
        them to :meth:`backward` after the last chunk."""
        leaves = [
            (k.detach().requires_grad_(k.requires_grad), v.detach().requires_grad_(v.requires_grad))
            for k, v in self.past
        ]
        return replace(self, past=leaves)

    def backward(self, leaves: SharedTokens) -> None:
        """Backpropagate the gradients ``leaves`` (from :meth:`detached`) collected through the
        forward that computed these keys/values: the shared tokens' share of the parameters'
        gradients, summed over every row as in the full forward."""
        pairs = [
            (tensor, leaf.grad)
            for kv, leaf_kv in zip(self.past, leaves.past, strict=True)
            for tensor, leaf in zip(kv, leaf_kv, strict=True)
            if tensor.requires_grad and leaf.grad is not None
        ]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])


def attention_window(model: Any) -> int | None:
    """The model's sliding (or chunked) attention span in key columns, if it has one."""
    config = model.config.get_text_config() if hasattr(model, "config") else None
    spans = [getattr(config, name, None) for name in ("sliding_window", "attention_chunk_size")]
    return min((int(s) for s in spans if s), default=None)


def share_tokens(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    limits: torch.Tensor,
    *,
    max_tokens: int | None = None,
) -> SharedTokens | None:
    """Run once the tokens the rows of ``input_ids`` share before ``limits`` (``[B]``, each
    row's first read position, within the row): the batch's common prefix as a batch of one,
    then, where rows repeat a prompt (:func:`prompt_groups`) and that removes at least
    1/:data:`MIN_GROUP_SAVING` of the tokens fed, the rest of each group's tokens once per
    group. None when nothing is worth sharing, the shared forward would feed more than
    ``max_tokens`` tokens, or the model's cache cannot be expanded.

    Groups are not used when a row's cached and own columns could exceed the model's sliding
    window: transformers measures the window in cache columns, and the padding between a
    shorter group's tokens and a row's own tokens would push keys out of it.
    """
    rows, width = input_ids.shape
    if rows < 2:
        return None
    device = input_ids.device
    limits = limits.to(device=device, dtype=torch.long).clamp(0, width)
    common = shared_prefix_length(input_ids, int(limits.min()))
    groups = prompt_groups(input_ids, limits)
    n_groups = len(groups.first)
    seg = int(groups.lengths.max()) - common
    lengths = attention_mask.sum(-1)
    fed_alone = rows * (int(lengths.max()) - common)  # what the common prefix alone leaves
    own = int((lengths - limits).max())  # the longest row's own tokens
    fed_grouped = n_groups * seg + rows * own
    window = attention_window(model)
    grouped = not (
        n_groups == rows
        or seg <= 0
        or (fed_alone - fed_grouped) * MIN_GROUP_SAVING < fed_alone
        or (window is not None and common + seg + own > window)
    )
    shared_fed = common + (n_groups * seg if grouped else 0)
    if (max_tokens is not None and shared_fed > max_tokens) or not (grouped or common):
        return None
    past = prefix_past(model, input_ids[:1, :common]) if common else []
    if past is None:
        return None
    if not grouped:
        ones = torch.ones(1, common, dtype=attention_mask.dtype, device=device)
        zeros = torch.zeros(rows, dtype=torch.long, device=device)
        return SharedTokens(past, ones, zeros, zeros + common)
    # Each group's tokens after the common prefix, right-padded: [G, seg].
    cols = torch.arange(seg, device=device)
    valid = (cols[None, :] < (groups.lengths - common)[:, None]).to(attention_mask.dtype)
    mask = torch.cat(
        (torch.ones(n_groups, common, dtype=attention_mask.dtype, device=device), valid), dim=1
    )  # [G, common + seg]
    cache = expanded_cache(past, n_groups) if common else DynamicCache()
    out = _forward(
        model,
        input_ids[groups.first, common : common + seg],
        mask,
        (common + cols).expand(n_groups, -1),
        cache,
        hidden=False,
    )
    past = _output_past(out)
    return None if past is None else SharedTokens(past, mask, groups.group, limits)


def trunk_hidden(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    limits: torch.Tensor | None = None,
    shared: SharedTokens | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer's hidden states (the LM head's input) of left-aligned sequences, no logits.

    Tokens the rows share before their first read position run once (:func:`share_tokens`);
    each row then runs only its own tokens, attending over its group's cached keys/values (the
    padding between a shorter group's tokens and the row's own is masked out).

    :param input_ids: ``[B, W]`` right-padded sequences, positions ``0..W-1``.
    :param attention_mask: ``[B, W]``.
    :param limits: ``[B]`` the first position whose output the caller reads in each row (each
        within the row); None, and no ``shared``, runs the plain full forward.
    :param shared: shared tokens already run for a larger batch (a minibatch scored in
        chunks), ``rows`` ``[B]`` the indices of these rows in it.
    :return: ``(hidden [B, C, hidden], offsets [B])``: column ``c`` of row ``b`` of ``hidden``
        is position ``offsets[b] + c`` (columns past the row's width are padding).
    """
    batch, width = input_ids.shape
    device = input_ids.device
    if shared is None and limits is not None:
        shared = share_tokens(model, input_ids, attention_mask, limits)
        rows = None
    if shared is None:
        positions = torch.arange(width, device=device).expand(batch, width)
        out = _forward(model, input_ids, attention_mask, positions, None, hidden=True)
        return out.hidden_states[-1], torch.zeros(batch, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device) if rows is None else rows.to(device)
    group, starts = shared.group[rows], shared.starts[rows]
    # Each layer's rows made as the cache copies them in (a generator: one layer's at a time).
    if len(shared.mask) == 1:  # the common prefix alone: a view per row
        past = ((k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in shared.past)
    else:
        past = ((k[group], v[group]) for k, v in shared.past)
    # Each row's own tokens from its start to its end, left-aligned: [B, R].
    own_lengths = attention_mask.sum(-1) - starts
    positions = starts[:, None] + torch.arange(int(own_lengths.max()), device=device)
    inside = positions < width
    positions = positions.clamp(max=width - 1)
    own = attention_mask.gather(1, positions) * inside
    mask = torch.cat((shared.mask[group].to(attention_mask.dtype), own), dim=1)
    out = _forward(
        model,
        input_ids.gather(1, positions),
        mask,
        positions,
        DynamicCache(ddp_cache_data=past),
        hidden=True,
    )
    return out.hidden_states[-1], starts  # [B, R, hidden]
