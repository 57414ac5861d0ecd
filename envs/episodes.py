"""The task a run trains on, built once, and its episodes as one batch of ``[N, L]`` arrays.

:class:`Task` is everything the episodes of a run share: the tokenizer, the compiled prompts
(split and shard applied), the reward (with any reward model it loads), the token limits, the
end-of-response rule and the action mask. Building it is the expensive part of making an env
(a tokenizer and maybe a reward model load), so it is built once per env or vector env and shared
by every episode.

:class:`EpisodeBatch` holds N episodes of one task as arrays: token ids and attention mask
``[N, L]`` (``L = max_prompt_tokens + max_new_tokens``, prompt then response then pad), prompt
and response lengths ``[N]``, and why each ended. Its public operations are the whole episode
mechanics: :meth:`~EpisodeBatch.start` a row on a prompt, :meth:`~EpisodeBatch.advance` rows by
one token each (vectorised; :meth:`~EpisodeBatch.advance_one` for one row; the end-of-response
rule of :mod:`rlhf_gym.envs.episode_end`), the
keyword arguments of ONE reward call for any set of finished rows
(:meth:`~EpisodeBatch.reward_kwargs`), a finished row's :meth:`~EpisodeBatch.final_info`, and
:meth:`~EpisodeBatch.state_dict` / :meth:`~EpisodeBatch.load_state_dict` of a row. The single
env (:class:`~rlhf_gym.envs.TextGenerationEnv`) is a batch of one; the vector env steps one
batch of N, and its sub-envs are views of their rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.error import InvalidAction, ResetNeeded
from transformers import PreTrainedTokenizerBase

from rlhf_gym.envs.episode_end import eos_token_ids as eos_token_ids_of
from rlhf_gym.envs.episode_end import stop_string_cut
from rlhf_gym.envs.prompts import (
    PromptDataset,
    PromptRow,
    Sampling,
    Split,
    Truncation,
    resolve_split,
    reward_kwargs,
)
from rlhf_gym.envs.reward_bounds import DEFAULT_REWARD_BOUND, RewardBound
from rlhf_gym.envs.tokenizer import load_tokenizer
from rlhf_gym.rewards import CompositeReward, RewardOutput, resolve_reward

Obs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Task:
    """What every episode of a run shares (module docstring); :meth:`build` makes one from the
    env's arguments."""

    tokenizer: PreTrainedTokenizerBase
    dataset: PromptDataset
    reward_fn: CompositeReward
    reward_bound: RewardBound
    max_prompt_tokens: int
    max_new_tokens: int
    vocab_size: int
    pad_token_id: int
    #: Every id that ends a response (see :mod:`rlhf_gym.envs.episode_end`).
    eos_token_ids: frozenset[int]
    stop_on_eos: bool
    stop_strings: tuple[str, ...]
    #: ``[vocab]`` bool, the tokens the agent may emit (``action_masks()``).
    action_mask: np.ndarray
    sampling: Sampling = "epoch"

    @property
    def seq_len(self) -> int:
        return self.max_prompt_tokens + self.max_new_tokens

    @classmethod
    def build(
        cls,
        tokenizer: str | Path | PreTrainedTokenizerBase | None = None,
        prompts: Any = None,
        reward: Any = None,
        *,
        max_prompt_tokens: int | None = None,
        max_new_tokens: int | None = None,
        prompt_column: str = "prompt",
        messages_column: str = "messages",
        chat_template: bool | None = None,
        system_prompt: str | None = None,
        truncation: Truncation = "left",
        split: Split = "train",
        eval_fraction: float = 0.0,
        split_seed: int = 0,
        shard: tuple[int, int] | None = None,
        sampling: Sampling = "epoch",
        stop_on_eos: bool = True,
        eos_token_ids: Sequence[int] | None = None,
        stop_strings: Sequence[str] | None = None,
        vocab_size: int | None = None,
        banned_tokens: Sequence[int | str] | None = None,
        allowed_tokens: Sequence[int | str] | None = None,
        trust_remote_code: bool = False,
        trust_reward_factories: bool = False,
        reward_bound: float | None = DEFAULT_REWARD_BOUND,
        reward_clip: bool = False,
    ) -> Task:
        """The arguments of :class:`~rlhf_gym.envs.TextGenerationEnv` (its docstring explains
        each); unset ones come from the embedded default task."""
        tokenizer, prompts, reward, max_prompt_tokens, max_new_tokens, split = _fill_defaults(
            tokenizer, prompts, reward, max_prompt_tokens, max_new_tokens, split
        )
        if max_prompt_tokens < 1 or max_new_tokens < 1:
            raise ValueError(
                f"max_prompt_tokens and max_new_tokens must be >= 1, got {max_prompt_tokens} and {max_new_tokens}"
            )
        tok = load_tokenizer(
            tokenizer, trust_remote_code=trust_remote_code, require_eos=stop_on_eos
        )
        eos_ids = eos_token_ids_of(tok, tokenizer, eos_token_ids)
        pad_id = int(tok.pad_token_id)
        stops = tuple(stop_strings or ())
        if any(not s for s in stops):
            raise ValueError("stop_strings must be non-empty strings")
        vocab = int(vocab_size) if vocab_size is not None else len(tok)
        if vocab <= max(pad_id, *eos_ids, 0):
            raise ValueError(
                f"vocab_size={vocab} does not cover the pad/EOS ids of the tokenizer "
                f"({pad_id}/{sorted(eos_ids)})"
            )
        compiled = PromptDataset.from_source(
            prompts,
            tok,
            max_prompt_tokens=int(max_prompt_tokens),
            prompt_column=prompt_column,
            messages_column=messages_column,
            chat_template=chat_template,
            truncation=truncation,
            system_prompt=system_prompt,
        )
        longest = max(len(row.input_ids) for row in compiled)
        if longest > max_prompt_tokens:
            raise ValueError(
                f"the given PromptDataset holds prompts of {longest} tokens, more than "
                f"max_prompt_tokens={max_prompt_tokens}; compile it with the same limit"
            )
        dataset = resolve_split(compiled, split, eval_fraction, split_seed)
        if shard is not None:
            dataset = dataset.shard(*shard)
        mask = _action_mask(tok, vocab, eos_ids, stop_on_eos, banned_tokens, allowed_tokens)
        return cls(
            tokenizer=tok,
            dataset=dataset,
            reward_fn=resolve_reward(reward, trust_import_factories=trust_reward_factories),
            reward_bound=RewardBound(reward_bound, reward_clip),
            max_prompt_tokens=int(max_prompt_tokens),
            max_new_tokens=int(max_new_tokens),
            vocab_size=vocab,
            pad_token_id=pad_id,
            eos_token_ids=eos_ids,
            stop_on_eos=bool(stop_on_eos),
            stop_strings=stops,
            action_mask=mask,
            sampling=sampling,
        )


class EpisodeBatch:
    """N episodes of one :class:`Task` as ``[N, L]`` arrays (module docstring)."""

    def __init__(self, task: Task, n: int) -> None:
        self.task = task
        self.n = int(n)
        L = task.seq_len
        self.ids = np.full((n, L), task.pad_token_id, dtype=np.int64)  # [N, L]
        self.mask = np.zeros((n, L), dtype=np.int64)  # [N, L]
        self.prompt_len = np.zeros(n, dtype=np.int64)  # [N]
        self.n_new = np.zeros(n, dtype=np.int64)  # [N] response tokens so far
        self.done = np.ones(n, dtype=bool)  # [N] ended (or never started)
        self.rows: list[PromptRow | None] = [None] * n
        self.finish_reason: list[str | None] = [None] * n
        #: The response cut before a stop string (rows that ended on one), else "".
        self.stop_text: list[str] = [""] * n
        self._eos = np.array(sorted(task.eos_token_ids), dtype=np.int64)

    # ------------------------------------------------------------------ episode mechanics
    def start(self, i: int, row: PromptRow) -> None:
        """Row ``i`` starts a new episode on ``row``'s prompt."""
        n_prompt = len(row.input_ids)
        self.rows[i] = row
        self.prompt_len[i] = n_prompt
        self.ids[i].fill(self.task.pad_token_id)
        self.mask[i].fill(0)
        self.ids[i, :n_prompt] = row.input_ids
        self.mask[i, :n_prompt] = 1
        self.n_new[i] = 0
        self.done[i] = False
        self.finish_reason[i] = None
        self.stop_text[i] = ""

    def check_tokens(self, actions: Any) -> np.ndarray:
        """``actions`` as an int64 array of token ids, or :class:`InvalidAction` naming the
        first one that is not an integer in ``[0, vocab)``."""
        arr = np.asarray(actions)
        vocab = self.task.vocab_size
        if np.issubdtype(arr.dtype, np.integer) and arr.ndim == 1:
            if arr.size == 0 or (arr.min() >= 0 and arr.max() < vocab):
                return arr.astype(np.int64, copy=False)
        return np.array([check_token(a, vocab) for a in arr], dtype=np.int64)

    def advance(self, rows: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append ``tokens[k]`` to row ``rows[k]``; return ``(terminated, truncated)`` per row
        of ``rows``. Does not score: finished rows are scored together (:meth:`reward_kwargs`).
        """
        if self.done[rows].any():
            raise ResetNeeded("step() was called after the episode ended; call reset() first")
        pos = self.prompt_len[rows] + self.n_new[rows]
        self.ids[rows, pos] = tokens
        self.mask[rows, pos] = 1
        self.n_new[rows] += 1
        task = self.task
        terminated = np.zeros(len(rows), dtype=bool)
        if task.stop_on_eos:
            terminated = np.isin(tokens, self._eos)
        for k in np.flatnonzero(terminated):
            self.finish_reason[int(rows[k])] = "eos"
        if task.stop_strings:
            for k in np.flatnonzero(~terminated):
                if self._hit_stop_string(int(rows[k])):
                    terminated[k] = True
                    self.finish_reason[int(rows[k])] = "stop"
        truncated = ~terminated & (self.n_new[rows] >= task.max_new_tokens)
        for k in np.flatnonzero(truncated):
            self.finish_reason[int(rows[k])] = "length"
        self.done[rows] = terminated | truncated
        return terminated, truncated

    def advance_one(self, i: int, token: int) -> tuple[bool, bool]:
        """:meth:`advance` of one row (the single env's step): the same rule with scalar work,
        no array temporaries."""
        if self.done[i]:
            raise ResetNeeded("step() was called after the episode ended; call reset() first")
        task = self.task
        pos = int(self.prompt_len[i] + self.n_new[i])
        self.ids[i, pos] = token
        self.mask[i, pos] = 1
        n_new = int(self.n_new[i]) + 1
        self.n_new[i] = n_new
        terminated = truncated = False
        if task.stop_on_eos and token in task.eos_token_ids:
            terminated, self.finish_reason[i] = True, "eos"
        elif task.stop_strings and self._hit_stop_string(i):
            terminated, self.finish_reason[i] = True, "stop"
        if not terminated and n_new >= task.max_new_tokens:
            truncated, self.finish_reason[i] = True, "length"
        self.done[i] = terminated or truncated
        return terminated, truncated

    def _hit_stop_string(self, i: int) -> bool:
        text = self.task.tokenizer.decode(self.response_ids(i), skip_special_tokens=True)
        cut = stop_string_cut(text, self.task.stop_strings)
        if cut < 0:
            return False
        self.stop_text[i] = text[:cut]
        return True

    # ------------------------------------------------------------------ reading rows
    def response_ids(self, i: int) -> np.ndarray:
        """``[n_new]`` row ``i``'s response so far (a view)."""
        start = int(self.prompt_len[i])
        return self.ids[i, start : start + int(self.n_new[i])]

    def response_text(self, i: int) -> str:
        if self.finish_reason[i] == "stop":
            return self.stop_text[i]
        return self.task.tokenizer.decode(self.response_ids(i), skip_special_tokens=True)

    def observation(self, i: int) -> Obs:
        """A copy of row ``i``'s observation (``[L]`` arrays)."""
        return {"input_ids": self.ids[i].copy(), "attention_mask": self.mask[i].copy()}

    def observations(self) -> Obs:
        """A copy of every row's observation (``[N, L]`` arrays)."""
        return {"input_ids": self.ids.copy(), "attention_mask": self.mask.copy()}

    def reward_kwargs(self, rows: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Keyword arguments of ONE reward call (TRL's contract) for the finished ``rows``."""
        prompts = [self.rows[int(i)] for i in rows]
        assert all(p is not None for p in prompts)
        return reward_kwargs(
            prompts,  # type: ignore[arg-type]
            [self.response_text(int(i)) for i in rows],
            [self.response_ids(int(i)).tolist() for i in rows],
            self.task.dataset.extra_columns,
        )

    def final_info(self, i: int, output: RewardOutput, k: int) -> dict[str, Any]:
        """Row ``i``'s finished episode as ``info``: prompt, response, its reward components
        (row ``k`` of the reward call ``output``), finish reason, prompt index, length, extras."""
        row = self.rows[i]
        assert row is not None
        return {
            "prompt": row.text,
            "response": self.response_text(i),
            "reward_components": {name: values[k] for name, values in output.components.items()},
            "finish_reason": self.finish_reason[i],
            "prompt_index": row.index,
            "num_tokens": int(self.n_new[i]),
            "extras": dict(row.extras),
        }

    # ------------------------------------------------------------------ state
    def state_dict(self, i: int) -> dict[str, Any]:
        """Row ``i``'s episode in flight, as JSON values."""
        row = self.rows[i]
        return {
            "prompt_index": None if row is None else int(row.index),
            "response": self.response_ids(i).tolist(),
            "done": bool(self.done[i]),
            "finish_reason": self.finish_reason[i],
            "response_text": self.stop_text[i],
        }

    def load_state_dict(self, i: int, state: dict[str, Any]) -> None:
        """Restore row ``i`` from :meth:`state_dict`."""
        if state["prompt_index"] is None:
            self.rows[i], self.done[i] = None, True
            return
        index = int(state["prompt_index"])  # the row's own index (rows of a split keep theirs)
        self.start(i, next(row for row in self.task.dataset if row.index == index))
        response = [int(t) for t in state["response"]]
        start = int(self.prompt_len[i])
        self.ids[i, start : start + len(response)] = response
        self.mask[i, start : start + len(response)] = 1
        self.n_new[i] = len(response)
        self.done[i] = bool(state["done"])
        self.finish_reason[i] = state["finish_reason"]
        self.stop_text[i] = state["response_text"]


def check_token(action: Any, vocab_size: int) -> int:
    """One action as a token id in ``[0, vocab_size)``, or :class:`InvalidAction` saying why."""
    try:
        arr = np.asarray(action)
        if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError
        token = int(arr.reshape(()))
    except (TypeError, ValueError):
        raise InvalidAction(
            f"action must be one integer token id in [0, {vocab_size}), got {action!r}"
        ) from None
    if not 0 <= token < vocab_size:
        raise InvalidAction(f"action {token} is outside the action space Discrete({vocab_size})")
    return token


def _action_mask(
    tokenizer: PreTrainedTokenizerBase,
    vocab_size: int,
    eos_ids: frozenset[int],
    stop_on_eos: bool,
    banned: Sequence[int | str] | None,
    allowed: Sequence[int | str] | None,
) -> np.ndarray:
    if allowed is not None:
        mask = np.zeros(vocab_size, dtype=bool)
        mask[_token_ids(tokenizer, vocab_size, allowed, "allowed_tokens")] = True
        if stop_on_eos:
            mask[sorted(eos_ids)] = True  # episodes must still be able to end
    else:
        mask = np.ones(vocab_size, dtype=bool)
    if banned is not None:
        mask[_token_ids(tokenizer, vocab_size, banned, "banned_tokens")] = False
    if not mask.any():
        raise ValueError("banned_tokens/allowed_tokens leave no token the agent may emit")
    return mask


def _token_ids(
    tokenizer: PreTrainedTokenizerBase, vocab_size: int, tokens: Sequence[int | str], arg: str
) -> list[int]:
    ids = []
    for tok in tokens:
        tid = tokenizer.convert_tokens_to_ids(tok) if isinstance(tok, str) else int(tok)
        if (
            tid is None
            or not 0 <= tid < vocab_size
            or (isinstance(tok, str) and tid == tokenizer.unk_token_id)
        ):
            raise ValueError(f"{arg}: {tok!r} is not a token of this tokenizer/action space")
        ids.append(tid)
    return ids


def _fill_defaults(
    tokenizer: Any,
    prompts: Any,
    reward: Any,
    max_prompt_tokens: int | None,
    max_new_tokens: int | None,
    split: Split,
) -> tuple[Any, Any, Any, int, int, Split]:
    """Fill unset arguments from the embedded default task, loaded only when needed.

    The default prompts come as two files, so asking for the default ``split="eval"`` serves the
    whole eval file rather than splitting the train file.
    """
    if all(x is not None for x in (tokenizer, prompts, reward, max_prompt_tokens, max_new_tokens)):
        return tokenizer, prompts, reward, int(max_prompt_tokens), int(max_new_tokens), split  # type: ignore[arg-type]
    from rlhf_gym.envs import default_task

    defaults = default_task.DEFAULTS
    if tokenizer is None:
        tokenizer = str(default_task.tokenizer_path())
    if prompts is None:
        prompts = str(default_task.prompts_path("eval" if split == "eval" else "train"))
        split = "all"
    if reward is None:
        reward = {"reward_model": {"weight": 1.0, "path": str(default_task.reward_model_path())}}
    return (
        tokenizer,
        prompts,
        reward,
        int(max_prompt_tokens if max_prompt_tokens is not None else defaults.max_prompt_tokens),
        int(max_new_tokens if max_new_tokens is not None else defaults.max_new_tokens),
        split,
    )
