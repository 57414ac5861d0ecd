"""The LM engine: every forward of the policy's language model, behind one small typed API.

The SB3 policies (:mod:`rlhf_gym.agents.policy`) turn observations into tensors, add the value
head and hand actions to SB3; everything that runs the causal LM is here:

- :meth:`LMEngine.decode`: the next-token logits and last hidden state of a batch of sequences
  that grew by one token since the last call (a rollout step), through the per-batch KV cache
  (:mod:`rlhf_gym.agents.kv_cache`) and merged adapter weights
  (:class:`~rlhf_gym.agents.fused.RolloutMerge`); no gradients;
- :meth:`LMEngine.last_token_outputs`, :meth:`LMEngine.score_actions`: the outputs at each
  sequence's last token, one forward per shared prefix
  (:mod:`rlhf_gym.agents.sequence_eval`), with or without gradients (training passes);
- :meth:`LMEngine.score_responses`: per-token log-probs of whole responses (group algorithms);
- :meth:`LMEngine.reference`: a context in which every call scores under the base model (the
  adapter disabled: the KL reference, no second copy of the weights);
- :meth:`LMEngine.invalidate`: the trainable weights changed (an update, a load): caches and
  merged copies are dropped. The engine also notices in-place writes by itself, through a
  fingerprint of the trainable tensors checked on every decode step.

Same-function fast paths, all behind ``fast_paths`` (one switch, on by default; off gives
peft's and transformers' plain forwards, for checking a result or a new architecture): the KV
cache, merged rollout weights, the shared prompt prefix, the lean decode step of Llama-family
models (:mod:`rlhf_gym.agents.lean_decode`), and, applied when the policy builds the model, the
fused LoRA forward and fused activations (:mod:`rlhf_gym.agents.fused`). ``use_kv_cache``,
``merge_for_rollout``, ``share_prefix`` and ``lean_decode`` turn single ones off.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import Cache

from rlhf_gym.agents.fused import RolloutMerge
from rlhf_gym.agents.kv_cache import BufferCache, LMCallResult, RolloutKVCache, decode_attention
from rlhf_gym.agents.lean_decode import LeanDecoder
from rlhf_gym.agents.response_scoring import (
    chunked_log_probs,
    lm_head,
    project,
    tokens_per_chunk,
)
from rlhf_gym.agents.response_scoring import score_responses as _score_responses
from rlhf_gym.agents.sequence_eval import group_by_prefix
from rlhf_gym.agents.shared_prefix import (
    SharedTokens,
    attention_window,
    no_logits,
    plain_layers,
    share_tokens,
    trunk_hidden,
)

#: LM heads of at least this many weights get the prefill's last states gathered before them.
_GATHER_HEAD_AT = 1 << 22


class CacheUnsupported(RuntimeError):
    """The model's cache is not a plain DynamicCache; the rollout cache cannot re-layout it."""


class LMEngine:
    """Runs a peft-wrapped causal LM for a policy (module docstring).

    :param model: the LoRA-adapted model (``peft.PeftModel``); the engine never copies it.
    :param fast_paths: the same-function fast paths (KV cache, merged rollout weights); off:
        plain full forwards.
    :param use_kv_cache, merge_for_rollout, share_prefix, lean_decode: each fast path alone.
    :param eval_chunk_size: sequences per forward in scoring passes.
    :param logit_memory_mb: budget of one ``[tokens, vocab]`` float32 block of logits.
    :param gradient_checkpointing: the model checkpoints its layers in gradient passes.
    """

    def __init__(
        self,
        model: PeftModel,
        *,
        fast_paths: bool = True,
        use_kv_cache: bool = True,
        merge_for_rollout: bool = True,
        share_prefix: bool = True,
        lean_decode: bool = True,
        eval_chunk_size: int = 64,
        logit_memory_mb: float = 256.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        if logit_memory_mb <= 0:
            raise ValueError(f"logit_memory_mb must be > 0, got {logit_memory_mb}")
        self.model = model
        self.fast_paths = bool(fast_paths)
        self.use_kv_cache = bool(use_kv_cache)
        self.merge_for_rollout = bool(merge_for_rollout)
        self.share_prefix = bool(share_prefix)
        self._window = attention_window(model)
        self.lean_decode = bool(lean_decode)
        self.eval_chunk_size = int(eval_chunk_size)
        self.logit_memory_mb = float(logit_memory_mb)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        forward_params = inspect.signature(model.get_base_model().forward).parameters
        self._cache_kw = "cache" if "cache" in forward_params else "past_key_values"
        self._has_logits_to_keep = "logits_to_keep" in forward_params
        head_weight = getattr(model.get_output_embeddings(), "weight", None)
        #: Prefills project their gathered last states themselves (see :meth:`_lm_call`).
        self._gather_prefill_head = (
            self._has_logits_to_keep
            and head_weight is not None
            and head_weight.numel() >= _GATHER_HEAD_AT
        )
        self._kv_caches: dict[int, RolloutKVCache] = {}
        self._rollout_merge = RolloutMerge(model)
        #: The decode step without transformers' per-layer machinery, where the architecture
        #: is one it reproduces (:mod:`rlhf_gym.agents.lean_decode`); None: the model's forward.
        self._lean = LeanDecoder.for_model(model.get_base_model())
        self._version = 0
        self._trainable: list[nn.Parameter] = self._trainable_parameters()

    # ------------------------------------------------------------------ weights
    def _trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def invalidate(self) -> None:
        """The trainable weights changed or moved: drop KV caches and merged copies."""
        self._version += 1
        self._kv_caches.clear()
        self._rollout_merge.clear()
        self._trainable = self._trainable_parameters()

    def _fingerprint(self) -> Hashable:
        """Changes whenever a trainable tensor is written or replaced (checked on every step).

        The parameter list is collected once (walking the whole model each step cost 1% of a
        rollout) and again whenever :meth:`invalidate` runs.
        """
        return (self._version, tuple((p.data_ptr(), p._version) for p in self._trainable))

    def kv_cache(self, batch_size: int) -> RolloutKVCache | None:
        """The rollout cache of batches of ``batch_size`` sequences (for tests/benchmarks)."""
        return self._kv_caches.get(batch_size)

    @contextmanager
    def reference(self) -> Iterator[None]:
        """Inside the block every call runs the base model: the adapter is disabled."""
        with self.model.disable_adapter():
            yield

    # ------------------------------------------------------------------ rollout decoding
    def decode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, use_cache: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [N, vocab], hidden [N, hidden])`` at each row's last valid token, no grad.

        :param input_ids: ``[N, L]`` the sequences so far (left-aligned, padded right).
        :param attention_mask: ``[N, L]``.
        :param use_cache: step the batch's KV cache (a rollout step: each row grew by at most
            one token since the last call); False: full forwards (e.g. ``get_distribution``).
        """
        with torch.no_grad():
            if not (self.fast_paths and self.merge_for_rollout):
                return self._decode(input_ids, attention_mask, use_cache)
            fingerprint = self._fingerprint()
            self._rollout_merge.refresh(fingerprint)
            with self._rollout_merge.active():
                return self._decode(input_ids, attention_mask, use_cache, fingerprint)

    def _decode(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        use_cache: bool,
        fingerprint: Hashable | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if use_cache and self.fast_paths and self.use_kv_cache:
            cache = self._kv_caches.setdefault(ids.shape[0], RolloutKVCache())
            cache.share_prefix = self.share_prefix
            cache.window = self._window
            key = self._fingerprint() if fingerprint is None else fingerprint
            try:
                return cache.step(self._lm_call, ids, mask, key)
            except CacheUnsupported as exc:
                warnings.warn(
                    f"{type(self.model.get_base_model()).__name__} returned a {exc} cache that the "
                    "rollout KV cache cannot re-layout; falling back to full forwards "
                    "(use_kv_cache=False).",
                    stacklevel=3,
                )
                self.use_kv_cache = False
                self._kv_caches.clear()
        return self.last_token_outputs(ids, mask)

    def _lean_for(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Cache | None
    ) -> LeanDecoder | None:
        """The lean decoder when this call is one of its steps: one token per row into the
        rollout buffers, the option on, and a width it can run; else None."""
        lean = self._lean
        if lean is None or not (self.fast_paths and self.lean_decode):
            return None
        if not isinstance(cache, BufferCache) or input_ids.shape[1] != 1:
            return None
        return lean if lean.usable(attention_mask.shape[1]) else None

    def _lm_call(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache | None,
    ) -> LMCallResult:
        """One incremental forward for the KV cache: outputs at each row's last fed token.

        With ``cache=None`` it starts a fresh ``DynamicCache``, with a plain one it extends it,
        and returns its keys/values; with a :class:`~rlhf_gym.agents.kv_cache.BufferCache` the
        model writes into it in place; a one-token step on a supported architecture runs
        through :class:`~rlhf_gym.agents.lean_decode.LeanDecoder` (the same function).
        """
        lean = self._lean_for(input_ids, attention_mask, cache)
        if lean is not None:
            assert isinstance(cache, BufferCache)
            with decode_attention(input_ids.device):  # its attention is sdpa too
                logits, hidden = lean.step(input_ids, attention_mask, position_ids, cache.layers)
            return LMCallResult(logits, hidden, None)
        kwargs: dict[str, Any] = {self._cache_kw: cache if cache is not None else DynamicCache()}
        # Several tokens (a prefill) and a large head: no logits from the model, the LM head runs
        # below on the last states gathered into one [N, hidden] matrix. transformers would
        # project hidden[:, -1:], a strided [N, 1, hidden] view that matmul turns into N products
        # that each read the whole head: 104 of a 620 ms SmolLM2 prefill of 32 chat prompts. A
        # small head (under _GATHER_HEAD_AT weights) keeps transformers' own logits.
        head_here = self._gather_prefill_head and input_ids.shape[1] > 1
        if self._has_logits_to_keep:
            kwargs.update(
                no_logits(self.model, input_ids.device) if head_here else {"logits_to_keep": 1}
            )
        with decode_attention(input_ids.device):
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                output_hidden_states=True,
                **kwargs,
            )
        last = out.hidden_states[-1][:, -1]  # [N, hidden]: the LM head's input
        if head_here:
            head, softcap = lm_head(self.model)
            logits = project(head, last.contiguous(), softcap)  # [N, vocab]
        else:
            logits = out.logits[:, -1].float()  # [N, vocab]
        hidden = last.float()
        if isinstance(cache, BufferCache):
            return LMCallResult(logits, hidden, None)
        new_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        past = plain_layers(new_cache)
        if past is None:
            raise CacheUnsupported(type(new_cache).__name__)
        return LMCallResult(logits, hidden, past)

    # ------------------------------------------------------------------ scoring passes
    def last_token_outputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [N, vocab], hidden [N, hidden])`` at each row's last valid token, one
        forward per prefix group, with gradients when enabled (whole ``[N, vocab]`` logits:
        scoring actions goes through :meth:`score_actions` instead)."""
        hidden, order = self.hidden_at_last(input_ids, attention_mask)
        inverse = torch.argsort(order)
        head, softcap = lm_head(self.model)
        return project(head, hidden, softcap)[inverse], hidden.float()[inverse]

    def hidden_at_last(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden [N, hidden], order [N])``: the LM head's input at each row's last token,
        ``hidden[j]`` belonging to row ``order[j]``; one forward per prefix group
        (:func:`~rlhf_gym.agents.sequence_eval.group_by_prefix`), no logits asked of the model."""
        groups = group_by_prefix(input_ids, attention_mask)
        n_groups = len(groups.representatives)
        order_parts: list[torch.Tensor] = []
        hidden_parts: list[torch.Tensor] = []
        for start in range(0, n_groups, self.eval_chunk_size):
            stop = min(n_groups, start + self.eval_chunk_size)
            rows = groups.representatives[start:stop]
            members = ((groups.group >= start) & (groups.group < stop)).nonzero().flatten()
            local = groups.group[members] - start
            pos = groups.lengths[members] - 1
            width = int(groups.lengths[rows].max())
            ids = input_ids[rows, :width]  # [g, width]
            limits = None
            if self._share_prefix():  # each representative's first read position
                limits = torch.full_like(groups.lengths[rows], width)
                limits = limits.scatter_reduce(0, local, pos, "amin")
            with self._training_forward():
                hidden, offsets = trunk_hidden(
                    self.model, ids, attention_mask[rows, :width], limits=limits
                )  # [g, C, hidden], row r's column c at position offsets[r] + c
            order_parts.append(members)
            hidden_parts.append(hidden[local, pos - offsets[local]])  # [n, hidden]
        return torch.cat(hidden_parts), torch.cat(order_parts)

    def score_actions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        actions: torch.Tensor,
        action_masks: torch.Tensor | None,
        *,
        entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """``(log_prob [N], entropy [N] or None, hidden [N, hidden], order [N])`` of ``actions``
        after each row, in group order (row ``order[j]`` is result ``j``).

        One forward per sequence (:meth:`hidden_at_last`), then the vocabulary projection in
        chunks under ``logit_memory_mb``: no pass materialises ``[N, vocab]`` float32 logits,
        and duplicate rows (a prompt drawn twice) share a forward.

        :param action_masks: ``[N, vocab]`` allowed tokens per row (input order), or None.
        """
        hidden, order = self.hidden_at_last(input_ids, attention_mask)
        masks = None if action_masks is None else action_masks.to(hidden.device)[order]
        actions = actions.to(hidden.device).long().flatten()[order]
        head, softcap = lm_head(self.model)
        log_prob, ent = chunked_log_probs(
            head,
            hidden,
            actions,
            chunk=tokens_per_chunk(int(head.weight.shape[0]), self.logit_memory_mb),
            entropy=entropy,
            softcap=softcap,
            masks=None if masks is None else masks.bool(),
            mask_rows=None if masks is None else torch.arange(len(actions), device=hidden.device),
        )
        return log_prob, ent, hidden.float(), order

    def score_responses(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_lens: torch.Tensor,
        response_lens: torch.Tensor,
        *,
        entropy: bool = False,
        action_masks: torch.Tensor | None = None,
        shared: tuple[SharedTokens, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs ``[B, T]`` (and entropies) of whole responses, T the longest.

        Sequences go through the model ``eval_chunk_size`` at a time; within a forward the
        vocabulary projection stays under ``logit_memory_mb``
        (:func:`~rlhf_gym.agents.response_scoring.score_responses`).

        :param input_ids: ``[B, W]`` right-padded ``prompt + response`` ids.
        :param attention_mask: ``[B, W]``.
        :param prompt_lens: ``[B]``; :param response_lens: ``[B]`` (each at least 1).
        :param action_masks: ``[B, vocab]`` bool, the tokens each row may emit, or None.
        :param shared: ``(tokens, rows)``: the rows' shared prompt tokens already run for
        their minibatch (:meth:`shared_prompts`), ``rows [B]`` these rows' indices in it.
        """
        longest = int(response_lens.max())
        parts: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        with self._training_forward():
            for start in range(0, input_ids.shape[0], self.eval_chunk_size):
                rows = slice(start, start + self.eval_chunk_size)
                width = int((prompt_lens[rows] + response_lens[rows]).max())
                lp, ent = _score_responses(
                    self.model,
                    input_ids[rows, :width],
                    attention_mask[rows, :width],
                    prompt_lens[rows],
                    response_lens[rows],
                    budget_mb=self.logit_memory_mb,
                    entropy=entropy,
                    action_masks=None if action_masks is None else action_masks[rows],
                    share_prefix=self._share_prefix(),
                    shared=None if shared is None else (shared[0], shared[1][rows]),
                )
                pad = longest - lp.shape[1]
                parts.append(
                    (
                        torch.nn.functional.pad(lp, (0, pad)),
                        None if ent is None else torch.nn.functional.pad(ent, (0, pad)),
                    )
                )
        log_prob = torch.cat([p[0] for p in parts])
        if not entropy:
            return log_prob, None
        return log_prob, torch.cat([p[1] for p in parts])  # type: ignore[misc]

    @contextmanager
    def shared_prompts(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_lens: torch.Tensor,
        max_tokens: int | None = None,
    ) -> Iterator[SharedTokens | None]:
        """Run a minibatch's shared prompt tokens once for the chunks scored inside the block
        (pass ``shared=(tokens, rows)`` to :meth:`score_responses`), instead of once per chunk.

        With gradients, the chunks' backward passes collect the shared tokens' gradients and
        the block's end sends them through the shared forward (the full forward's gradients
        up to float rounding). None when nothing is worth sharing (then each chunk shares its
        own rows' tokens as before).

        :param input_ids: ``[B, W]`` the minibatch's right-padded ``prompt + response`` ids.
        :param prompt_lens: ``[B]``; the shared tokens stop before ``prompt_lens - 1``.
        :param max_tokens: share nothing when the shared forward would feed more tokens (its
            activations stay alive for every chunk: one chunk's tokens keeps the memory a
            chunked backward promises).
        """
        if not self._share_prefix():
            yield None
            return
        with self._training_forward():
            tokens = share_tokens(
                self.model, input_ids, attention_mask, prompt_lens - 1, max_tokens=max_tokens
            )
        if tokens is None or not torch.is_grad_enabled():
            yield tokens
            return
        leaves = tokens.detached()
        yield leaves
        tokens.backward(leaves)

    def _share_prefix(self) -> bool:
        """Whether a scoring pass runs its rows' common leading tokens once
        (:mod:`~rlhf_gym.agents.shared_prefix`); not under gradient checkpointing, whose
        recomputed layers would append to the shared cache a second time."""
        if not (self.fast_paths and self.share_prefix):
            return False
        return not (self.gradient_checkpointing and torch.is_grad_enabled())

    @contextmanager
    def _training_forward(self) -> Iterator[None]:
        """Layers checkpoint only in train mode (transformers' rule); the LM otherwise stays in
        eval mode (dropout is off either way), so a gradient pass switches it for its duration."""
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            yield
            return
        previous = self.model.training
        self.model.train(True)
        try:
            yield
        finally:
            self.model.train(previous)
