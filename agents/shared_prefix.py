"""Prompts that begin with the same tokens run those tokens through the model once.

Chat templates put the same turn before every user message: SmolLM2-135M-Instruct's default
system turn and the user header are the first 25 tokens of every prompt (of about 32 on the
real-model benchmark), Qwen's default system prompt is longer still. Every pass of a batch
of such sequences (the rollout's prefill, the KL reference pass, the training forward, response
scoring) would otherwise recompute those tokens' keys and values once per row.

Here the common prefix of a batch (:func:`shared_prefix_length`) is run once as a batch of one
(:func:`prefix_cache`), its keys/values are expanded to every row (a view, copied once into each
row's cache) and only the rest of each sequence goes through the model, attending over the
prefix through the cache. The hidden states of the remaining positions are those of the full
forward up to float rounding (different matmul shapes), and autograd flows through the
expanded prefix, so a training pass gets the same gradients (the prefix's share summed over
rows, as in the full forward). What it saves is ``(rows - 1) x prefix`` token forwards: a
quarter of the trunk's work on the real-model benchmark, and as much of a training pass's
activation memory.

It applies only where it is exact: the prefix stops before the first position whose output is
read (``limit``), batches of one and prefixes under :data:`MIN_SHARED_TOKENS` tokens run as
before, and callers skip it under gradient checkpointing (the recomputed layer would append to
the cache twice). A cache built without a config holds plain ``DynamicLayer`` s for every
attention layer, sliding-window ones included (the model's masks apply the window; checked by hand,
not in the tests, on tiny Mistral and Gemma 3 configs); a model whose cache holds anything else
(recurrent or hybrid layers) runs without sharing.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

#: Below this many common tokens the extra batch-of-one forward is not worth its dispatch cost.
MIN_SHARED_TOKENS = 8


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


def prefix_cache(model: Any, prefix_ids: torch.Tensor, rows: int) -> DynamicCache | None:
    """Run ``prefix_ids`` (``[1, P]``) once and return its cache expanded to ``rows`` rows.

    Gradients flow through it when enabled. None when the model's cache cannot be expanded
    (see :func:`plain_layers`); the caller then runs the full sequences.
    """
    width = prefix_ids.shape[1]
    out = model(
        input_ids=prefix_ids,
        attention_mask=torch.ones_like(prefix_ids),
        position_ids=torch.arange(width, device=prefix_ids.device)[None, :],
        use_cache=True,
        **{cache_keyword(model): DynamicCache()},
        **no_logits(model, prefix_ids.device),
    )
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    past = plain_layers(cache)
    return None if past is None else expanded_cache(past, rows)


def trunk_hidden(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    limit: int = 0,
) -> tuple[torch.Tensor, int]:
    """The last layer's hidden states (the LM head's input) of left-aligned sequences, no logits.

    :param input_ids: ``[B, W]`` right-padded sequences, positions ``0..W-1``.
    :param attention_mask: ``[B, W]``.
    :param limit: share at most this many leading tokens (the first position whose output the
        caller reads, which must also be within every row); 0 runs the plain full forward.
    :return: ``(hidden [B, W - offset, hidden], offset)``: column ``c`` of ``hidden`` is position
        ``offset + c``; the ``offset`` shared positions have no outputs.
    """
    rows, width = input_ids.shape
    prefix = shared_prefix_length(input_ids, limit) if limit > 0 else 0
    cache = prefix_cache(model, input_ids[:1, :prefix], rows) if prefix else None
    if cache is None:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=torch.arange(width, device=input_ids.device).expand(rows, width),
            use_cache=False,
            output_hidden_states=True,
            **no_logits(model, input_ids.device),
        )
        return out.hidden_states[-1], 0  # [B, W, hidden]
    position_ids = torch.arange(prefix, width, device=input_ids.device).expand(rows, -1)
    out = model(
        input_ids=input_ids[:, prefix:],
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        output_hidden_states=True,
        **{cache_keyword(model): cache},
        **no_logits(model, input_ids.device),
    )
    return out.hidden_states[-1], prefix  # [B, W - prefix, hidden]
