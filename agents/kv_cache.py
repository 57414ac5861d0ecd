"""A per-env key/value cache for rollouts: one new token per env per step, written in place.

During ``collect_rollouts`` stable-baselines3 calls ``policy(obs)`` once per step with the
observations of all envs. Each env's observation is the previous one plus the token just
sampled, so re-running the model on the whole context would cost O(L) tokens per env per step;
with this cache it costs one.

Layout: every layer's keys and values live in ONE preallocated buffer ``[B, heads, capacity,
head_dim]`` for the whole rollout. The model sees the columns ``[start, end)`` as its past (a
view, no copy) and writes the new token's keys/values in place at column ``end``
(:class:`BufferLayer`, a transformers ``DynamicLayer`` whose ``update`` does not concatenate).
transformers' own ``DynamicCache`` concatenates on every step, copying the whole cache (it was
27% of a decode step's time on the benchmark task, and what made cost per token grow with
length); here a step copies nothing, and the buffer grows by doubling, so copies are amortised.

Every row keeps its valid tokens RIGHT-aligned in ``[start, end)``, the holes to their left are
masked out of attention, and each fed token gets an explicit ``position_id`` (its index in its
own sequence). That lets rows of different lengths share one batched forward. A row whose env
has just reset is re-prefilled on its own and its keys/values are written into its right-aligned
region. In a step where some rows extend and others reset, the extend forward still runs on the
whole batch (a reset row gets a placeholder token whose outputs and column are overwritten by
its re-prefill): one token of waste per reset row instead of gathering and scattering the cache.

Validation, not trust: before feeding, each row's cached tokens are compared with the new
observation. A row is *extended* when the observation is the cached tokens plus exactly one
token, *reused* when it equals them (e.g. ``predict_values`` on the obs just fed), and
*re-prefilled* otherwise (env reset, a different env, an evaluation loop in between). So the
cache is an optimisation only; the outputs never depend on it. Weight changes are caught by a
fingerprint of the trainable parameters that the caller passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from rlhf_gym.agents.shared_prefix import expanded_cache, prompt_groups, shared_prefix_length


class _Span:
    """The columns ``[start, end)`` of the buffers that hold the cached tokens (shared by layers)."""

    __slots__ = ("start", "end")

    def __init__(self) -> None:
        self.start = 0
        self.end = 0


class BufferLayer(DynamicLayer):
    """A ``DynamicLayer`` over a preallocated buffer: ``update`` writes in place, returns views.

    The layer does not advance the span itself (every layer writes the same columns in one
    forward); :class:`RolloutKVCache` does once the forward is done.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, span: _Span) -> None:
        super().__init__()
        self.key_buffer, self.value_buffer, self.span = keys, values, span
        self.device = keys.device
        self.is_initialized = True
        self._refresh()

    def _refresh(self) -> None:
        start, end = self.span.start, self.span.end
        self.keys = self.key_buffer[:, :, start:end]
        self.values = self.value_buffer[:, :, start:end]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.span.start, self.span.end
        stop = end + key_states.shape[-2]
        self.key_buffer[:, :, end:stop] = key_states
        self.value_buffer[:, :, end:stop] = value_states
        return self.key_buffer[:, :, start:stop], self.value_buffer[:, :, start:stop]

    def get_seq_length(self) -> int:
        return self.span.end - self.span.start


class BufferCache(DynamicCache):
    """A ``DynamicCache`` whose layers are :class:`BufferLayer` (what the model is handed)."""

    def __init__(self, layers: list[BufferLayer]) -> None:
        Cache.__init__(self, layers=list(layers))


def _columns(like: torch.Tensor, capacity: int) -> torch.Tensor:
    """A zeroed ``[B, heads, capacity, head_dim]`` buffer matching ``like``'s other dimensions."""
    return like.new_zeros((*like.shape[:2], capacity, like.shape[-1]))


class LMCallResult(NamedTuple):
    """What the model call returns for the LAST fed position of each row."""

    logits: torch.Tensor  # [n, vocab]
    hidden: torch.Tensor  # [n, hidden]
    past: list[tuple[torch.Tensor, torch.Tensor]] | None  # keys/values per layer (fresh cache)


#: ``call(input_ids [n, t], attention_mask [n, T_past + t], position_ids [n, t], cache | None)``.
#: With ``cache=None`` the call starts a fresh cache, with a plain ``DynamicCache`` (a shared
#: prefix) it extends that one, and either way returns the whole cache's keys/values in
#: ``past``; with a :class:`BufferCache` the model writes into it and ``past`` may be None.
LMCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "Cache | None"], LMCallResult]


def decode_attention(device: torch.device | str) -> AbstractContextManager[Any]:
    """The attention kernels for incremental decoding on ``device``: all but cuDNN's on CUDA.

    A rollout's key/value length grows by one token every step, and PyTorch's cuDNN attention
    kernel (its first choice on Hopper GPUs) builds an execution graph for every new shape. On an
    H200 with the benchmark task in bf16 that build was 11 ms of host time per attention call:
    51-80 ms per decode step, against 7-11 ms with the memory-efficient kernel, in steps of one
    512-token rollout interleaved between the two (``benchmarks/probe_decode.py``). Its graph
    cache did not rescue it: a 512-token rollout measured after a warm-up ran at 0.21x
    ``generate``. The flash, memory-efficient and math kernels need no per-shape build. Training
    and evaluation forwards keep PyTorch's choice (their shapes repeat). A no-op off CUDA.
    """
    if torch.device(device).type != "cuda":
        return nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no cuDNN attention kernel to avoid
        return nullcontext()
    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


class RolloutKVCache:
    """Batch KV cache keyed on the batch row (= env index) of successive rollout calls."""

    #: Extra columns allocated past the current need, so short rollouts never reallocate.
    MIN_HEADROOM = 64

    def __init__(self, *, share_prefix: bool = True) -> None:
        #: Prefill the rows' common leading tokens once (:func:`_prefill_shared`).
        self.share_prefix = share_prefix
        #: The model's sliding window in key columns, if any: a prefill whose shared prefix and
        #: right-aligned rest could span more columns than it is fed whole (the holes between
        #: the two would push keys out of transformers' column-counted window).
        self.window: int | None = None
        self.span = _Span()
        #: One per model layer, each holding that layer's key and value buffers.
        self.layers: list[BufferLayer] = []
        self.clear()
        self.tokens_fed_total = 0
        #: Times the cached columns were copied to a new place (compaction or growth): rare.
        self.relayouts = 0

    def clear(self) -> None:
        """Forget the cached tokens (weights changed, batch changed shape). Buffers are kept."""
        self.ids: torch.Tensor | None = None  # [B, L] the obs tokens the cache holds (right-padded)
        self.lengths: torch.Tensor | None = None  # [B] number of cached tokens per row
        self.last_logits: torch.Tensor | None = None  # [B, vocab] output at each row's last token
        self.last_hidden: torch.Tensor | None = None  # [B, hidden]
        self.fingerprint: Hashable | None = None
        self.tokens_fed_last = 0
        self.span.start = self.span.end = 0

    @property
    def width(self) -> int:
        """Number of cache columns the model attends over (the longest cached row)."""
        return self.span.end - self.span.start

    @property
    def capacity(self) -> int:
        return 0 if not self.layers else int(self.layers[0].key_buffer.shape[-2])

    # ------------------------------------------------------------------ buffer management
    def _allocate(
        self, past: list[tuple[torch.Tensor, torch.Tensor]], batch: int, width: int
    ) -> None:
        """(Re)allocate buffers for ``batch`` rows and at least ``width`` columns, if needed."""
        k0 = past[0][0]
        if (
            len(self.layers) == len(past)
            and self.capacity >= width + 1
            and self.layers[0].key_buffer.shape[:2] == (batch, k0.shape[1])
            and self.layers[0].key_buffer.shape[-1] == k0.shape[-1]
            and self.layers[0].key_buffer.dtype == k0.dtype
            and self.layers[0].key_buffer.device == k0.device
        ):
            return
        capacity = max(2 * width, width + self.MIN_HEADROOM)
        self._set_buffers([(_columns(k, capacity), _columns(v, capacity)) for k, v in past])

    def _set_buffers(self, buffers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.layers = [BufferLayer(k, v, self.span) for k, v in buffers]

    def _make_room(self, left: int, right: int) -> None:
        """Ensure ``left`` free columns before ``start`` and ``right`` after ``end``."""
        start, end = self.span.start, self.span.end
        if start >= left and self.capacity - end >= right:
            return
        width = end - start
        capacity = self.capacity
        if 2 * (left + width + right) > capacity:  # keep compactions rare: grow when half full
            capacity = max(2 * capacity, left + width + right + self.MIN_HEADROOM)
        self.relayouts += 1
        buffers = []
        for layer in self.layers:
            moved = []
            for old in (layer.key_buffer, layer.value_buffer):
                new = _columns(old, capacity)
                new[:, :, left : left + width] = old[:, :, start:end]
                moved.append(new)
            buffers.append((moved[0], moved[1]))
        self.span.start, self.span.end = left, left + width
        self._set_buffers(buffers)

    def _cache(self) -> BufferCache:
        for layer in self.layers:
            layer._refresh()
        return BufferCache(self.layers)

    # ------------------------------------------------------------------ the step
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
        fresh = self.ids is None or self.ids.shape != input_ids.shape
        if fresh or fingerprint != self.fingerprint:
            shortest, longest = torch.stack([lengths.min(), lengths.max()]).tolist()
            if shortest < 1:
                raise ValueError("Every observation must hold at least one token (the prompt).")
            self.clear()
            self.fingerprint = fingerprint
            prefill = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
            extend = torch.zeros_like(prefill)
            extended, n_prefill = False, batch
        else:
            assert self.lengths is not None
            positions = torch.arange(obs_len, device=input_ids.device)
            in_cache = positions[None, :] < self.lengths[:, None]
            prefix_ok = ((self.ids == input_ids) | ~in_cache).all(-1)
            extend = prefix_ok & (lengths == self.lengths + 1)
            same = prefix_ok & (lengths == self.lengths)
            # Every decision this step needs, read from the device in ONE transfer (one host
            # sync per decode step, not one per question: on a GPU each sync stalls the queue).
            stats = torch.stack([lengths.min(), lengths.max(), extend.sum(), same.sum()])
            shortest, longest, n_extend, n_same = stats.tolist()
            if shortest < 1:
                raise ValueError("Every observation must hold at least one token (the prompt).")
            extended = n_extend > 0
            # A reused row cannot sit out a batched extend (its column would move): re-prefill it.
            prefill = ~extend if extended else ~same
            n_prefill = batch - (n_extend if extended else n_same)
        fed = 0
        if extended:
            fed += self._extend(call, input_ids, extend)
        if n_prefill > 0:
            rows_p = prefill.nonzero().flatten()
            fed += self._prefill(call, input_ids, lengths, rows_p, batch, fresh_outputs=extended)
        keep = longest
        if self.width > keep:  # the longest rows were reset: stop attending over their columns
            self.span.start = self.span.end - keep
        self.ids = input_ids.clone()
        self.lengths = lengths.clone()
        self.tokens_fed_last = fed
        self.tokens_fed_total += fed
        assert self.last_logits is not None and self.last_hidden is not None
        return self.last_logits, self.last_hidden

    def _extend(self, call: LMCall, input_ids: torch.Tensor, extend: torch.Tensor) -> int:
        """One token for every row at column ``end`` (placeholders for rows that do not extend)."""
        assert self.lengths is not None
        self._make_room(0, 1)
        old_len = self.lengths
        width = self.width
        cols = torch.arange(width + 1, device=input_ids.device)
        mask = (cols[None, :] >= width - old_len[:, None]).long()  # right-aligned + new token
        index = old_len.clamp(max=input_ids.shape[1] - 1).unsqueeze(1)
        new_tok = torch.gather(input_ids, 1, index) * extend.unsqueeze(1)
        position_ids = (old_len * extend).unsqueeze(1)  # placeholders: token 0 at position 0
        result = call(new_tok, mask, position_ids, self._cache())
        self.span.end += 1
        self.last_logits, self.last_hidden = result.logits, result.hidden
        return int(input_ids.shape[0])

    def _prefill(
        self,
        call: LMCall,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
        rows: torch.Tensor,
        batch: int,
        *,
        fresh_outputs: bool,
    ) -> int:
        """Feed ``rows`` whole, right-aligned, then write their keys/values into the buffers.

        With ``share_prefix`` rows that repeat a prompt (a GRPO group) are fed once and copied,
        and the rows' common leading tokens are fed once (:func:`_prefill_shared`); the
        buffers end up the same up to float rounding.
        """
        width_p = int(lengths[rows].max())
        copies = None
        if self.share_prefix:  # rows that repeat a prompt (a GRPO group) are fed once
            groups = prompt_groups(input_ids[rows, :width_p], lengths[rows])
            copies = groups if len(groups.first) < len(rows) else None
        fed_rows = rows if copies is None else rows[copies.first]
        lens = lengths[fed_rows]
        prefix = 0
        if self.share_prefix and (self.window is None or width_p <= self.window):
            # the last token of every row must stay out of the prefix
            prefix = shared_prefix_length(input_ids[fed_rows, :width_p], int(lens.min()) - 1)
        result = _prefill_shared(call, input_ids[fed_rows], lens, prefix) if prefix else None
        fed = int(lens.sum()) if result is None else prefix + int((lens - prefix).sum())
        if result is None:
            cols = torch.arange(width_p, device=input_ids.device)
            mask = (cols[None, :] >= width_p - lens[:, None]).long()
            # Right-align each row's tokens: column c holds token c - (width_p - len).
            src = (cols[None, :] - (width_p - lens[:, None])).clamp(min=0)
            ids = torch.gather(input_ids[fed_rows, :width_p], 1, src) * mask
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            result = call(ids, mask, position_ids, None)
        assert result.past is not None
        if copies is not None:  # every row gets its prompt's outputs and keys/values
            index = copies.group
            past = [(k[index], v[index]) for k, v in result.past]
            result = LMCallResult(result.logits[index], result.hidden[index], past)
        whole_batch = len(rows) == batch
        if whole_batch:
            self._allocate(result.past, batch, width_p)
            self.span.start, self.span.end = 0, width_p
            self.last_logits, self.last_hidden = result.logits, result.hidden
        else:
            assert self.last_logits is not None and self.last_hidden is not None
            self._make_room(max(0, width_p - self.width), 0)
            self.span.start = min(self.span.start, self.span.end - width_p)
            if not fresh_outputs:  # never write into the outputs an earlier call returned
                self.last_logits = self.last_logits.clone()
                self.last_hidden = self.last_hidden.clone()
            self.last_logits[rows] = result.logits
            self.last_hidden[rows] = result.hidden
        start, end = self.span.end - width_p, self.span.end
        target = slice(None) if whole_batch else rows
        for (k_new, v_new), layer in zip(result.past, self.layers, strict=True):
            layer.key_buffer[target, :, start:end] = k_new
            layer.value_buffer[target, :, start:end] = v_new
        return fed


def _prefill_shared(
    call: LMCall, input_ids: torch.Tensor, lens: torch.Tensor, prefix: int
) -> LMCallResult | None:
    """A prefill that feeds the ``prefix`` tokens every row begins with once.

    The prefix runs as a batch of one; each row's remaining tokens are fed right-aligned after
    it (holes between the two masked out, explicit positions), so the model returns keys/values
    laid out ``[prefix | holes | rest]``. One gather per layer moves each row's prefix next to its
    rest, giving the layout of the plain prefill: every row's tokens right-aligned in
    ``[0, max(lens))``. Outputs at each row's last token come from the second call. None when
    the model's cache cannot be shared (the caller then prefills as usual).

    :param input_ids: ``[n, L]`` left-aligned rows whose first ``prefix`` tokens agree.
    :param lens: ``[n]`` valid tokens per row, each more than ``prefix``.
    """
    device = input_ids.device
    n = input_ids.shape[0]
    first = call(
        input_ids[:1, :prefix],
        torch.ones(1, prefix, dtype=torch.long, device=device),
        torch.arange(prefix, device=device)[None, :],
        None,
    )
    if first.past is None:
        return None
    rest = lens - prefix  # [n] tokens after the prefix, each >= 1
    width_r = int(rest.max())
    cols = torch.arange(width_r, device=device)
    hole = width_r - rest  # [n] masked columns before each row's rest
    mask_r = (cols[None, :] >= hole[:, None]).long()  # [n, width_r]
    src = (cols[None, :] - hole[:, None] + prefix).clamp(min=prefix)
    ids = torch.gather(input_ids, 1, src.clamp(max=input_ids.shape[1] - 1)) * mask_r
    position_ids = prefix + (mask_r.cumsum(-1) - 1).clamp(min=0)  # [n, width_r]
    mask = torch.cat([mask_r.new_ones(n, prefix), mask_r], dim=1)  # [n, prefix + width_r]
    result = call(ids, mask, position_ids, expanded_cache(first.past, n))
    if result.past is None:
        return None
    # Target column c of row b (width prefix + width_r, holes first): the prefix occupies
    # [hole_b, hole_b + prefix) and comes from source column c - hole_b; the rest stays in place;
    # the holes read any column (they are masked out of every later step).
    out_cols = torch.arange(prefix + width_r, device=device)
    offset = out_cols[None, :] - hole[:, None]  # [n, width]
    in_prefix = (offset >= 0) & (offset < prefix)
    index = torch.where(in_prefix, offset, out_cols[None, :])  # [n, width]
    past = []
    for k, v in result.past:
        idx = index[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        past.append((torch.gather(k, 2, idx), torch.gather(v, 2, idx)))
    return LMCallResult(result.logits, result.hidden, past)
