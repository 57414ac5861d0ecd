"""A per-env key/value cache for rollouts: one new token per env per step.

During ``collect_rollouts`` stable-baselines3 calls ``policy(obs)`` once per step with the
observations of all envs. Each env's observation is the previous one plus the token just
sampled, so re-running the model on the whole context would cost O(L) tokens per env per step;
with this cache it costs one.

Layout (shapes ``[B, heads, T, head_dim]`` per layer, B = number of envs): every row keeps its
valid tokens RIGHT-aligned, the holes to their left are masked out of attention, and each fed
token gets an explicit ``position_id`` (its index in its own sequence). That lets rows of
different lengths share one batched forward, and a row whose env has just reset can be
re-prefilled on its own and written back into the right-aligned region (the cache grows or is
trimmed to the longest row).

Validation, not trust: before feeding, each row's cached tokens are compared with the new
observation. A row is *extended* when the observation is the cached tokens plus exactly one
token, *reused* when it equals them (e.g. ``predict_values`` on the obs just fed), and
*re-prefilled* otherwise (env reset, a different env, an evaluation loop in between). So the
cache is an optimisation only; the outputs never depend on it. Weight changes are caught by a
fingerprint of the trainable parameters that the caller passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import NamedTuple

import torch

#: Past key/values of every layer, each ``(keys, values)`` of shape ``[B, heads, T, head_dim]``.
PastKV = list[tuple[torch.Tensor, torch.Tensor]]


class LMCallResult(NamedTuple):
    """What the model call returns for the LAST fed position of each row."""

    logits: torch.Tensor  # [n, vocab]
    hidden: torch.Tensor  # [n, hidden]
    past: PastKV  # the input past extended by the fed tokens


#: ``call(input_ids [n, t], attention_mask [n, T_past + t], position_ids [n, t], past | None)``.
LMCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "PastKV | None"], LMCallResult]


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


class RolloutKVCache:
    """Batch KV cache keyed on the batch row (= env index) of successive rollout calls."""

    def __init__(self) -> None:
        self.clear()
        self.tokens_fed_total = 0

    def clear(self) -> None:
        """Forget everything (called when the weights change or the batch changes shape)."""
        self.past: PastKV | None = None
        self.ids: torch.Tensor | None = None  # [B, L] the obs tokens the cache holds (right-padded)
        self.lengths: torch.Tensor | None = None  # [B] number of cached tokens per row
        self.last_logits: torch.Tensor | None = None  # [B, vocab] output at each row's last token
        self.last_hidden: torch.Tensor | None = None  # [B, hidden]
        self.fingerprint: Hashable | None = None
        self.tokens_fed_last = 0

    @property
    def width(self) -> int:
        return 0 if self.past is None else int(self.past[0][0].shape[-2])

    def step(
        self,
        call: LMCall,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        fingerprint: Hashable,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and hidden state at each row's last valid token, feeding as few tokens as possible.

        ``input_ids``/``attention_mask``: ``[B, L]`` right-padded env observations (the mask is 1
        exactly on the first ``n_b`` positions of row b).
        """
        batch, obs_len = input_ids.shape
        lengths = attention_mask.sum(-1)
        if int(lengths.min()) < 1:
            raise ValueError("Every observation must hold at least one token (the prompt).")
        if (
            self.past is None
            or self.ids is None
            or self.ids.shape != input_ids.shape
            or fingerprint != self.fingerprint
        ):
            self.clear()
            self.fingerprint = fingerprint
            prefill = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
            extend = torch.zeros_like(prefill)
        else:
            assert self.lengths is not None
            positions = torch.arange(obs_len, device=input_ids.device)
            in_cache = positions[None, :] < self.lengths[:, None]
            prefix_ok = ((self.ids == input_ids) | ~in_cache).all(-1)
            extend = prefix_ok & (lengths == self.lengths + 1)
            same = prefix_ok & (lengths == self.lengths)
            prefill = ~(extend | same)

        rows_e = extend.nonzero().flatten()
        rows_p = prefill.nonzero().flatten()
        fed = 0
        parts: list[tuple[torch.Tensor, LMCallResult]] = []

        if len(rows_e) > 0:
            assert self.past is not None and self.lengths is not None
            old_len = self.lengths[rows_e]
            width = self.width
            cols = torch.arange(width + 1, device=input_ids.device)
            mask = (cols[None, :] >= width - old_len[:, None]).long()  # right-aligned + new token
            new_tok = input_ids[rows_e, old_len].unsqueeze(1)
            # Indexing copies the whole cache; when every row extends, pass it as it is.
            past = (
                self.past
                if len(rows_e) == batch
                else [(k[rows_e], v[rows_e]) for k, v in self.past]
            )
            parts.append((rows_e, call(new_tok, mask, old_len.unsqueeze(1), past)))
            fed += len(rows_e)

        if len(rows_p) > 0:
            lens = lengths[rows_p]
            width_p = int(lens.max())
            cols = torch.arange(width_p, device=input_ids.device)
            mask = (cols[None, :] >= width_p - lens[:, None]).long()
            # Right-align each row's tokens: column c holds token c - (width_p - len).
            src = (cols[None, :] - (width_p - lens[:, None])).clamp(min=0)
            ids = torch.gather(input_ids[rows_p, :width_p], 1, src) * mask
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            parts.append((rows_p, call(ids, mask, position_ids, None)))
            fed += int(lens.sum())

        self._merge(parts, batch, input_ids, lengths)
        self.tokens_fed_last = fed
        self.tokens_fed_total += fed
        assert self.last_logits is not None and self.last_hidden is not None
        return self.last_logits, self.last_hidden

    def _merge(
        self,
        parts: list[tuple[torch.Tensor, LMCallResult]],
        batch: int,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
    ) -> None:
        """Write each part's rows back, keeping every row right-aligned; trim unused columns."""
        if not parts:  # every row already cached: nothing fed
            assert self.past is not None and self.last_logits is not None
            past, logits, hidden = self.past, self.last_logits, self.last_hidden
        elif len(parts) == 1 and len(parts[0][0]) == batch:
            rows, result = parts[0]
            past, logits, hidden = result.past, result.logits, result.hidden
        else:
            widths = [int(res.past[0][0].shape[-2]) for _, res in parts]
            if self.past is not None:
                widths.append(self.width)
            width = max(widths)
            template = parts[0][1]
            if self.past is not None:
                past = [(_left_pad(k, width, 2), _left_pad(v, width, 2)) for k, v in self.past]
                assert self.last_logits is not None and self.last_hidden is not None
                logits, hidden = self.last_logits.clone(), self.last_hidden.clone()
            else:
                past = [
                    (
                        k.new_zeros((batch, *k.shape[1:2], width, k.shape[-1])),
                        v.new_zeros((batch, *v.shape[1:2], width, v.shape[-1])),
                    )
                    for k, v in template.past
                ]
                logits = template.logits.new_zeros((batch, template.logits.shape[-1]))
                hidden = template.hidden.new_zeros((batch, template.hidden.shape[-1]))
            past = [(k.clone(), v.clone()) for k, v in past]
            for rows, result in parts:
                for (k, v), (k_new, v_new) in zip(past, result.past, strict=True):
                    k[rows] = _left_pad(k_new, width, 2)
                    v[rows] = _left_pad(v_new, width, 2)
                logits[rows] = result.logits
                hidden[rows] = result.hidden
        keep = int(lengths.max())
        if past[0][0].shape[-2] > keep:
            past = [(k[..., -keep:, :], v[..., -keep:, :]) for k, v in past]
        self.past = past
        self.last_logits, self.last_hidden = logits, hidden
        self.ids = input_ids.clone()
        self.lengths = lengths.clone()
