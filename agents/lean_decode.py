"""A rollout decode step of a Llama-family model in a few tensor ops per layer.

A decode step feeds ONE token per row against the rollout's key/value buffers
(:mod:`rlhf_gym.agents.kv_cache`). Through transformers, each of its decoder layers costs dozens
of small operations and Python calls besides the matmuls: output capture and kwargs plumbing,
a 4D mask built from the 2D one, ``repeat_kv``-style attention, two ``rotate_half`` passes, six
ops per RMSNorm. On the 2-core CPU with SmolLM2-135M (30 layers, batch 32) that was 40 of a
step's 100 ms; on a GPU such host work is the whole step (issue 14, item 5).

:class:`LeanDecoder` runs the same function straight from the model's own modules:

- the projections are the model's modules, called as they are (so LoRA layers, merged rollout
  weights, biases and peft's own paths behave exactly as in a full forward);
- the rotary cos/sin come from the model's ``rotary_emb`` (every RoPE variant it implements),
  once per step; q and k rotate together, ``rotate_half(x) * sin`` as ``roll(x) * sin'`` with
  the sign folded into ``sin'`` (the same products);
- the new keys/values are written into the buffers in place, and attention runs per key/value
  head with the query heads of its group as rows, one ``scaled_dot_product_attention`` on views
  of the buffers (its kernels keep half-precision scores in float32, as transformers' call does)
  with the padding mask built once per step (no 4D mask per layer, no repeated keys);
- RMSNorm is transformers' formula (float32 statistics, the weight applied in the input dtype).

It applies where the structure is known, and otherwise the engine keeps transformers' forward
(:meth:`LeanDecoder.for_model` returns None): model types ``llama``, ``mistral``, ``qwen2`` and
``qwen3`` (q/k norms) with SiLU MLPs, full attention on every layer (Mistral's sliding window
only while a step attends over fewer columns than it spans), the
default RMSNorm, no forward hooks on the layers, and eval mode. The outputs equal transformers'
up to float rounding (tests: logits, hidden states and cache contents on tiny models of each
type, with and without LoRA). Policy option ``lean_decode`` (on under ``fast_paths``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

#: transformers model types whose decoder layers this module reproduces.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' ``LlamaRMSNorm.forward``: statistics in float32, weight in the input dtype."""
    dtype = x.dtype
    xf = x.float()
    scale = xf.pow(2).mean(-1, keepdim=True).add_(norm.variance_epsilon).rsqrt_()
    return norm.weight * (xf * scale).to(dtype)


def _no_hooks(module: nn.Module) -> bool:
    return not (module._forward_hooks or module._forward_pre_hooks)


class LeanDecoder:
    """One decode step of ``base`` (a transformers ``*ForCausalLM``) against rollout buffers."""

    def __init__(self, base: nn.Module) -> None:
        self.base = base
        self.trunk = base.model
        config = base.config
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(config.num_key_value_heads)
        attn = self.trunk.layers[0].self_attn
        self.head_dim = int(attn.head_dim)
        self.scaling = float(attn.scaling)
        #: Mistral's sliding window: a step attending over more columns takes the model's path.
        window = getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
        self.window: int | None = int(window) if window else None

    @classmethod
    def for_model(cls, base: nn.Module) -> LeanDecoder | None:
        """A decoder for ``base`` when its architecture is one this module reproduces, else None."""
        config = getattr(base, "config", None)
        trunk = getattr(base, "model", None)
        if config is None or trunk is None or not hasattr(trunk, "layers"):
            return None
        if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
            return None
        if getattr(config, "hidden_act", None) != "silu":
            return None
        if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
            return None
        if getattr(config, "pretraining_tp", 1) != 1:
            return None
        modules = [trunk, *trunk.layers, trunk.norm]
        for layer in trunk.layers:
            modules += [layer.self_attn, layer.mlp, layer.input_layernorm]
            modules += [layer.post_attention_layernorm, layer.mlp.act_fn]
        norms = [trunk.norm] + [
            n
            for layer in trunk.layers
            for n in (layer.input_layernorm, layer.post_attention_layernorm)
        ]
        if not all(_no_hooks(m) for m in modules):
            return None
        if not all(
            type(n).__name__.endswith("RMSNorm") and hasattr(n, "variance_epsilon") for n in norms
        ):
            return None
        return cls(base)

    def usable(self, width: int) -> bool:
        """Whether a step attending over ``width`` columns (the new one included) is this
        module's to run: eval mode (dropout off, as rollouts decode) and within a sliding
        window if the model has one."""
        return not self.base.training and (self.window is None or width <= self.window)

    @torch.no_grad()
    def step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        layers: Sequence[Any],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [n, vocab] float32, hidden [n, hidden] float32)`` after one token per row.

        :param input_ids: ``[n, 1]`` the new tokens.
        :param attention_mask: ``[n, W + 1]``: the ``W`` cached columns and the new one.
        :param position_ids: ``[n, 1]``.
        :param layers: the rollout's :class:`~rlhf_gym.agents.kv_cache.BufferLayer` per model
            layer; the new keys/values go to column ``span.end`` (the caller advances the span).
        """
        n = input_ids.shape[0]
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        group = heads // kv_heads
        span = layers[0].span
        start, end = span.start, span.end
        h = self.trunk.embed_tokens(input_ids)  # [n, 1, H]
        cos, sin = self.trunk.rotary_emb(h, position_ids)  # [n, 1, D] each
        half = dim // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # rotate_half's sign
        h = h[:, 0]  # [n, H]
        # Padding holes (left of each right-aligned row) are masked out; one [n, 1, 1, W + 1] mask
        # shared by every layer and head.
        keep = attention_mask[:, None, None, :].bool()
        for layer, cache in zip(self.trunk.layers, layers, strict=True):
            attn = layer.self_attn
            x = _rms_norm(layer.input_layernorm, h)  # [n, H]
            q = attn.q_proj(x).view(n, heads, dim)
            k = attn.k_proj(x).view(n, kv_heads, dim)
            v = attn.v_proj(x).view(n, kv_heads, dim)
            if hasattr(attn, "q_norm"):  # qwen3
                q, k = attn.q_norm(q), attn.k_norm(k)
            qk = torch.cat((q, k), dim=1)  # [n, heads + kv_heads, D]
            qk = qk * cos + qk.roll(half, dims=-1) * sin
            cache.key_buffer[:, :, end] = qk[:, heads:]
            cache.value_buffer[:, :, end] = v
            keys = cache.key_buffer[:, :, start : end + 1]  # [n, kv_heads, W + 1, D]
            values = cache.value_buffer[:, :, start : end + 1]
            # Query head j attends with key/value head j // group (grouped-query attention): the
            # group's queries are the rows of one [group, D] query block per key/value head.
            q = qk[:, :heads].view(n, kv_heads, group, dim)
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=keep, scale=self.scaling
            )
            h = h + attn.o_proj(out.reshape(n, heads * dim))
            x = _rms_norm(layer.post_attention_layernorm, h)
            mlp = layer.mlp
            h = h + mlp.down_proj(F.silu(mlp.gate_proj(x)).mul_(mlp.up_proj(x)))
        hidden = _rms_norm(self.trunk.norm, h)  # [n, H]
        logits = self.base.lm_head(hidden)  # [n, vocab]
        return logits.float(), hidden.float()
