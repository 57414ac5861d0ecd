"""Held-out evaluation of a policy, with the base model (adapter disabled) side by side.

Evaluation samples completions with ``model.generate`` (temperature 1, no top-k/top-p: the same
distribution the env's episodes are drawn from), ends them where the env would (EOS, stop
strings, ``max_new_tokens``), scores them with the env's reward spec, and measures what a reward
alone would hide:

* ``kl``: mean over samples of ``sum_t log pi(y_t) - log pi_ref(y_t)``, an unbiased estimate of
  ``KL(pi || pi_ref)`` per sequence, ``pi_ref`` being the same model with the adapter disabled;
* ``base_ppl``: perplexity of the samples under the base model (fluency as the base judges it);
* ``distinct_1`` / ``distinct_2``: unique n-grams over all n-grams of the samples (diversity);
* ``mean_length``: response tokens per sample;
* ``positive_share``: share of samples whose total reward exceeds ``positive_threshold``;
* any ``metrics``: extra reward specs scored but never trained on (an independent check).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from rlhf_gym.envs.episode_end import end_of_response
from rlhf_gym.envs.prompts import PromptRow, reward_kwargs
from rlhf_gym.rewards import CompositeReward, resolve_reward


@dataclass
class Samples:
    """Completions of a list of prompt rows, with their token ids."""

    rows: list[PromptRow]
    completion_ids: list[list[int]]
    completions: list[str]


@dataclass
class EvalStats:
    """Summary statistics of one model's completions on the held-out prompts."""

    reward_mean: float
    reward_std: float
    positive_share: float
    kl: float
    base_ppl: float
    distinct_1: float
    distinct_2: float
    mean_length: float
    n: int
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def as_row(self) -> dict[str, float]:
        row = {k: v for k, v in asdict(self).items() if k not in ("metrics", "samples")}
        row.update({f"metric/{k}": v for k, v in self.metrics.items()})
        return row


@contextlib.contextmanager
def adapter_disabled(model: torch.nn.Module, disabled: bool = True) -> Iterator[None]:
    """Run ``model`` as its base (peft adapter off) inside the block; a no-op for plain models."""
    if disabled and hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield
    else:
        yield


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[PromptRow],
    *,
    max_new_tokens: int,
    stop_strings: Sequence[str] = (),
    stop_on_eos: bool = True,
    eos_token_ids: Iterable[int] | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> Samples:
    """Sample one completion per row at temperature 1, ended as the env would end it.

    The env's rule (:func:`rlhf_gym.envs.episode_end.end_of_response`): the first of the EOS ids
    (kept) or the first stop string (the ids up to the token that completed it; the text cut
    before it), else ``max_new_tokens``. ``eos_token_ids``: the env's ``eos_token_ids``
    (default: the tokenizer's EOS).
    """
    device = next(model.parameters()).device
    pad = int(
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    eos_ids: frozenset[int] = frozenset()
    if stop_on_eos:
        eos_ids = frozenset(eos_token_ids or ()) or frozenset({int(tokenizer.eos_token_id)})
    generator_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(seed)  # seeds the CUDA generators too: they are restored below as well
    out_ids: list[list[int]] = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(r.input_ids) for r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, r in enumerate(chunk):  # left-pad: generation appends on the right
                ids[i, width - len(r.input_ids) :] = torch.as_tensor(r.input_ids)
                mask[i, width - len(r.input_ids) :] = 1
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=sorted(eos_ids) or None,
                pad_token_id=pad,
            )
            out_ids += gen[:, width:].tolist()
    finally:
        torch.set_rng_state(generator_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    ended = [
        end_of_response(
            ids,
            eos_ids=eos_ids,
            stop_strings=stop_strings,
            max_new_tokens=max_new_tokens,
            decode=decode,
        )
        for ids in out_ids
    ]
    return Samples(list(rows), [e[0] for e in ended], [e[1] for e in ended])


@torch.no_grad()
def completion_logprobs(
    model: torch.nn.Module, samples: Samples, *, batch_size: int = 64, budget_mb: float = 256.0
) -> list[np.ndarray]:
    """Per-token log-probabilities of each completion given its prompt (one forward per sequence).

    The vocabulary projection runs in chunks of tokens under ``budget_mb``
    (:func:`~rlhf_gym.agents.response_scoring.score_responses`), never as a whole
    ``[tokens, vocab]`` float32 tensor.
    """
    from rlhf_gym.agents.response_scoring import score_responses

    device = next(model.parameters()).device
    result: list[np.ndarray] = []
    pairs = list(zip(samples.rows, samples.completion_ids, strict=True))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        seqs = [list(r.input_ids) + c for r, c in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # right-pad: causal attention never looks at the pads
            ids[i, : len(s)] = torch.as_tensor(s)
            mask[i, : len(s)] = 1
        prompt_lens = torch.tensor([len(r.input_ids) for r, _ in chunk])
        response_lens = torch.tensor([len(c) for _, c in chunk])
        logp, _ = score_responses(
            model,
            ids.to(device),
            mask.to(device),
            prompt_lens.to(device),
            response_lens.to(device),
            budget_mb=budget_mb,
            share_prefix=True,
        )
        for i, (_, c) in enumerate(chunk):
            result.append(logp[i, : len(c)].cpu().numpy())
    return result


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams over all word n-grams across ``texts`` (0 when there are none)."""
    grams = [
        tuple(words[i : i + n])
        for words in (t.split() for t in texts)
        for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 0.0


def evaluate_model(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[PromptRow],
    reward: Any,
    *,
    max_new_tokens: int,
    use_adapter: bool = True,
    stop_strings: Sequence[str] = (),
    eos_token_ids: Iterable[int] | None = None,
    stop_on_eos: bool = True,
    positive_threshold: float = 0.0,
    metrics: Mapping[str, Any] | None = None,
    seed: int = 0,
    n_samples_kept: int = 4,
) -> EvalStats:
    """Sample from ``model`` (or its base when ``use_adapter=False``) on ``rows`` and summarise.

    Pass the env's ``stop_strings``, ``eos_token_ids`` and ``stop_on_eos`` so evaluated episodes
    end by the env's own rule.
    """
    reward_fn: CompositeReward = resolve_reward(reward)
    was_training = model.training
    model.eval()
    with adapter_disabled(model, not use_adapter):
        samples = sample(
            model,
            tokenizer,
            rows,
            max_new_tokens=max_new_tokens,
            stop_strings=stop_strings,
            stop_on_eos=stop_on_eos,
            eos_token_ids=eos_token_ids,
            seed=seed,
        )
        logp = completion_logprobs(model, samples)
    if use_adapter:
        with adapter_disabled(model, True):
            logp_ref = completion_logprobs(model, samples)
    else:  # sampled from the base itself: the reference log-probs are the ones just computed
        logp_ref = logp
    model.train(was_training)

    kwargs = reward_kwargs(samples.rows, samples.completions, samples.completion_ids)
    total = reward_fn(**kwargs).total
    extra = {
        name: float(np.mean(resolve_reward(spec)(**kwargs).total))
        for name, spec in (metrics or {}).items()
    }
    n_tokens = sum(len(c) for c in samples.completion_ids)
    kl = [float((a - b).sum()) for a, b in zip(logp, logp_ref, strict=True)]
    ref_nll = -sum(float(b.sum()) for b in logp_ref) / max(n_tokens, 1)
    kept = [
        {"prompt": r.shown, "completion": c, "reward": float(t), "chat": r.chat}
        for r, c, t in zip(samples.rows[:n_samples_kept], samples.completions, total, strict=False)
    ]
    return EvalStats(
        reward_mean=float(np.mean(total)),
        reward_std=float(np.std(total)),
        positive_share=float(np.mean(total > positive_threshold)),
        kl=float(np.mean(kl)),
        base_ppl=float(math.exp(ref_nll)),
        distinct_1=distinct_n(samples.completions, 1),
        distinct_2=distinct_n(samples.completions, 2),
        mean_length=n_tokens / len(samples.completion_ids),
        n=len(samples.completion_ids),
        metrics=extra,
        samples=kept,
    )
