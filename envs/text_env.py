"""The text-generation environment: one prompt per episode, one token per step."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, SupportsInt

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import InvalidAction, ResetNeeded
from transformers import PreTrainedTokenizerBase

from rlhf_gym.envs.episode_end import eos_token_ids as eos_token_ids_of
from rlhf_gym.envs.episode_end import stop_string_cut
from rlhf_gym.envs.prompts import (
    PromptDataset,
    PromptRow,
    PromptSampler,
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


class TextGenerationEnv(gym.Env[Obs, np.int64]):
    """Generate a response to a prompt token by token; a reward arrives when the response ends.

    ## Description

    The RL phase of RLHF as a Gymnasium environment. Each episode samples a prompt ``x`` from a
    compiled prompt dataset; the agent writes a response ``y`` one token per step; when the
    response ends, the reward spec scores ``r(x, y)``. An agent that maximises return with a KL
    penalty to its starting model is doing RLHF (see ``rlhf_gym.agents``).

    ## Action Space

    ``Discrete(vocab)``: the id of the next token. ``vocab`` is ``len(tokenizer)`` unless
    ``vocab_size`` is given (a model's embedding matrix is often padded beyond the tokenizer).
    :meth:`action_masks` gives the allowed tokens for ``MaskablePPO``.

    ## Observation Space

    ``Dict(input_ids=Box(0, vocab-1, (L,), int64), attention_mask=Box(0, 1, (L,), int64))`` with
    ``L = max_prompt_tokens + max_new_tokens``: the prompt's tokens, then the response so far, then
    pad tokens. The sequence is right-padded and ``attention_mask`` is 1 exactly on real tokens.
    (Not ``Text``, which agents cannot batch, and not ``MultiDiscrete``, which stable-baselines3
    would one-hot encode into ``L * vocab`` floats.)

    ## Rewards

    0 on every step but the last. On the last step, the weighted total of the reward spec on
    ``(prompt text, response text)``; the per-component scores are in ``info``. A component that
    returns ``None`` for a sample ("does not apply") adds 0.

    ## Starting State

    ``reset`` draws a prompt: shuffled epochs over the dataset (``sampling="epoch"``, each prompt
    once per epoch) or uniform draws. ``reset(seed=s)`` fixes the whole prompt order.

    ## Episode End

    * Termination: the agent emits an EOS token (``stop_on_eos=True``) or the decoded response
      contains one of ``stop_strings`` (the response text is cut before it).
    * Truncation: the response reaches ``max_new_tokens``. The env truncates by itself rather than
      relying on a ``TimeLimit`` wrapper, because it must know the last step to score it.

    The final ``info`` holds ``prompt``, ``response``, ``reward_components``, ``finish_reason``
    (``"eos"``, ``"stop"`` or ``"length"``), ``prompt_index``, ``num_tokens`` and ``extras`` (the
    dataset row's other columns).

    ## Arguments

    * ``tokenizer``: a tokenizer instance, a local directory or a hub id. Default: the embedded
      default task's tokenizer.
    * ``prompts``: a path (.jsonl/.json/.csv/.parquet/.txt), a list of strings or dicts, a
      ``datasets.Dataset`` or a :class:`PromptDataset`. Default: the default task's prompts.
    * ``reward``: a reward spec (name, ``"module:attr"``, callable, ``Reward`` instance or a
      weighted dict such as ``{"reward_model": 1.0, "length": -0.01}``). Default: the default
      task's reward model.
    * ``max_prompt_tokens``, ``max_new_tokens``: the two halves of ``L``.
    * ``prompt_column``, ``messages_column``, ``chat_template``: which column holds the prompt and
      how chat messages are rendered (see :mod:`rlhf_gym.envs.prompts`).
    * ``system_prompt``: a system turn put first in every templated prompt that lacks one
      (plain prompts are then rendered as a user turn).
    * ``truncation``: ``"left"`` (keep a long prompt's last tokens) or ``"error"``.
    * ``split``, ``eval_fraction``, ``split_seed``: hold out ``eval_fraction`` of the prompts by a
      seeded permutation and serve the ``"train"`` or ``"eval"`` part (or ``"all"``).
    * ``shard``: ``(rank, world_size)`` of a data-parallel run: serve only rows ``rank``,
      ``rank + world_size``, ... of the split, so ranks answer disjoint prompts
      (:meth:`PromptDataset.shard`; ``rlhf_gym.agents.distributed.init()`` gives the pair).
    * ``sampling``: ``"epoch"`` or ``"uniform"``.
    * ``stop_on_eos``, ``stop_strings``: termination conditions.
    * ``reward_bound``, ``reward_clip``: a score beyond ``+-reward_bound`` (default 1e4) stops
      the run with a clear message, or is clipped to it with ``reward_clip=True``; ``None``
      turns the check off (see :mod:`rlhf_gym.envs.reward_bounds`).
    * ``trust_reward_factories``: let a ``"module:attr"`` reward path name any callable to be
      called with the spec's parameters (off: only reward functions and ``Reward`` subclasses;
      see :mod:`rlhf_gym.rewards.registry`).
    * ``eos_token_ids``: more ids that end a response. The tokenizer's EOS and, when the
      tokenizer is loaded from a directory with ``generation_config.json``, every id its
      ``eos_token_id`` lists are always included (instruct models end turns with e.g.
      ``<|im_end|>``; see :mod:`rlhf_gym.envs.episode_end`).
    * ``vocab_size``: size of the action space when it differs from ``len(tokenizer)``.
    * ``banned_tokens``, ``allowed_tokens``: ids or token strings for :meth:`action_masks`.
    * ``trust_remote_code``: passed to ``from_pretrained`` (off by default).
    * ``render_mode``: ``None`` or ``"ansi"``.

    ## Version History

    * v0: initial version.

    ## Example

        >>> import gymnasium as gym
        >>> import rlhf_gym.envs
        >>> env = gym.make("rlhf_gym/TextGeneration-v0")  # the embedded default task
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
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
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        tokenizer, prompts, reward, max_prompt_tokens, max_new_tokens, split = _fill_defaults(
            tokenizer, prompts, reward, max_prompt_tokens, max_new_tokens, split
        )
        if max_prompt_tokens < 1 or max_new_tokens < 1:
            raise ValueError(
                f"max_prompt_tokens and max_new_tokens must be >= 1, got {max_prompt_tokens} and {max_new_tokens}"
            )
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.max_new_tokens = int(max_new_tokens)
        self.seq_len = self.max_prompt_tokens + self.max_new_tokens

        self.tokenizer = load_tokenizer(
            tokenizer, trust_remote_code=trust_remote_code, require_eos=stop_on_eos
        )
        self.eos_token_id: int | None = self.tokenizer.eos_token_id
        #: Every id that ends a response (see :mod:`rlhf_gym.envs.episode_end`).
        self.eos_token_ids: frozenset[int] = eos_token_ids_of(
            self.tokenizer, tokenizer, eos_token_ids
        )
        self.pad_token_id: int = int(self.tokenizer.pad_token_id)
        self.stop_on_eos = stop_on_eos
        self.stop_strings = tuple(stop_strings or ())
        if any(not s for s in self.stop_strings):
            raise ValueError("stop_strings must be non-empty strings")

        self.vocab_size = int(vocab_size) if vocab_size is not None else len(self.tokenizer)
        if self.vocab_size <= max(self.pad_token_id, *self.eos_token_ids, 0):
            raise ValueError(
                f"vocab_size={self.vocab_size} does not cover the pad/EOS ids of the tokenizer "
                f"({self.pad_token_id}/{sorted(self.eos_token_ids)})"
            )

        compiled = PromptDataset.from_source(
            prompts,
            self.tokenizer,
            max_prompt_tokens=self.max_prompt_tokens,
            prompt_column=prompt_column,
            messages_column=messages_column,
            chat_template=chat_template,
            truncation=truncation,
            system_prompt=system_prompt,
        )
        longest = max(len(row.input_ids) for row in compiled)
        if longest > self.max_prompt_tokens:
            raise ValueError(
                f"the given PromptDataset holds prompts of {longest} tokens, more than "
                f"max_prompt_tokens={self.max_prompt_tokens}; compile it with the same limit"
            )
        self.dataset = resolve_split(compiled, split, eval_fraction, split_seed)
        if shard is not None:
            self.dataset = self.dataset.shard(*shard)
        self.reward_fn: CompositeReward = resolve_reward(
            reward, trust_import_factories=trust_reward_factories
        )
        self.reward_bound = RewardBound(reward_bound, reward_clip)

        self.action_space = spaces.Discrete(self.vocab_size)
        token_box = spaces.Box(0, self.vocab_size - 1, shape=(self.seq_len,), dtype=np.int64)
        mask_box = spaces.Box(0, 1, shape=(self.seq_len,), dtype=np.int64)
        self.observation_space = spaces.Dict({"input_ids": token_box, "attention_mask": mask_box})
        self._action_mask = self._build_action_mask(banned_tokens, allowed_tokens)

        self._sampler = PromptSampler(len(self.dataset), sampling)
        self._ids = np.full(self.seq_len, self.pad_token_id, dtype=np.int64)
        self._mask = np.zeros(self.seq_len, dtype=np.int64)
        self._row: PromptRow | None = None
        self._prompt_len = 0
        self._n_new = 0
        self._done = True
        self._finish_reason: str | None = None
        self._response_text = ""

    # ----------------------------------------------------------------------------------------
    # Gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        """Start an episode on a new prompt; ``options={"prompt_index": i}`` picks one."""
        super().reset(seed=seed)
        if seed is not None:
            self._sampler.restart()
        if options and "prompt_index" in options:
            index = int(options["prompt_index"])
            if not 0 <= index < len(self.dataset):
                raise IndexError(
                    f"prompt_index {index} is out of range for {len(self.dataset)} prompts"
                )
        else:
            index = self._sampler.draw(self.np_random)
        self._start(self.dataset[index])
        return self.observation(), {"prompt_index": index}

    def step(
        self, action: SupportsInt | np.ndarray
    ) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        terminated, truncated = self.advance(action)
        if not (terminated or truncated):
            return self.observation(), 0.0, False, False, {}
        batch = self.reward_kwargs([self])
        output = self.reward_fn(**batch)
        return (
            self.observation(),
            float(self.reward_bound(output.total, batch["prompts"])[0]),
            terminated,
            truncated,
            self.final_info(output, 0),
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue this env exactly, as JSON values: the
        prompt RNG, the sampler's epoch and position, and the episode in flight."""
        return {
            "rng": self.np_random.bit_generator.state,
            "sampler": self._sampler.state_dict(),
            "prompt_index": None if self._row is None else int(self._row.index),
            "response": self.response_ids.tolist(),
            "done": bool(self._done),
            "finish_reason": self._finish_reason,
            "response_text": self._response_text,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the same prompt stream and the same episode in flight."""
        self.np_random.bit_generator.state = state["rng"]
        self._sampler.load_state_dict(state["sampler"])
        if state["prompt_index"] is None:
            self._row, self._done = None, True
            return
        index = int(state["prompt_index"])  # the row's own index (rows of a split keep theirs)
        self._start(next(row for row in self.dataset if row.index == index))
        response = [int(t) for t in state["response"]]
        start = self._prompt_len
        self._ids[start : start + len(response)] = response
        self._mask[start : start + len(response)] = 1
        self._n_new = len(response)
        self._done = bool(state["done"])
        self._finish_reason = state["finish_reason"]
        self._response_text = state["response_text"]

    def draw_prompt_index(self) -> int:
        """Draw the next prompt index from this env's seeded sampler without starting an episode.

        The vector env in rounds uses its first env's sampler for every group, so that the groups
        of a round answer different prompts (each once per epoch with ``sampling="epoch"``).
        """
        return self._sampler.draw(self.np_random)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        prompt = self._row.text if self._row is not None else ""
        return f"{prompt}\u2502{self.response_text}"

    def action_masks(self) -> np.ndarray:
        """Allowed next tokens, a boolean vector of length ``vocab`` (for sb3-contrib MaskablePPO)."""
        return self._action_mask.copy()

    # ----------------------------------------------------------------------------------------
    # Episode mechanics, split into advance / score / finish so the vector env can score many
    # finished episodes with one reward call.

    @property
    def response_ids(self) -> np.ndarray:
        return self._ids[self._prompt_len : self._prompt_len + self._n_new]

    @property
    def response_text(self) -> str:
        if self._finish_reason == "stop":
            return self._response_text
        return self.tokenizer.decode(self.response_ids, skip_special_tokens=True)

    def _start(self, row: PromptRow) -> None:
        self._row = row
        self._prompt_len = len(row.input_ids)
        self._ids.fill(self.pad_token_id)
        self._mask.fill(0)
        self._ids[: self._prompt_len] = row.input_ids
        self._mask[: self._prompt_len] = 1
        self._n_new = 0
        self._done = False
        self._finish_reason = None
        self._response_text = ""

    def advance(self, action: SupportsInt | np.ndarray) -> tuple[bool, bool]:
        """Append one token; return (terminated, truncated). Does not score: the vector env
        scores every episode that ended in a step with one reward call (:meth:`reward_kwargs`)."""
        if self._done:
            raise ResetNeeded("step() was called after the episode ended; call reset() first")
        token = self._check_action(action)
        pos = self._prompt_len + self._n_new
        self._ids[pos] = token
        self._mask[pos] = 1
        self._n_new += 1
        terminated = False
        if self.stop_on_eos and token in self.eos_token_ids:
            terminated, self._finish_reason = True, "eos"
        elif self.stop_strings and self._hit_stop_string():
            terminated, self._finish_reason = True, "stop"
        truncated = not terminated and self._n_new >= self.max_new_tokens
        if truncated:
            self._finish_reason = "length"
        self._done = terminated or truncated
        return terminated, truncated

    def _check_action(self, action: SupportsInt | np.ndarray) -> int:
        try:
            arr = np.asarray(action)
            if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer):
                raise TypeError
            token = int(arr.reshape(()))
        except (TypeError, ValueError):
            raise InvalidAction(
                f"action must be one integer token id in [0, {self.vocab_size}), got {action!r}"
            ) from None
        if not 0 <= token < self.vocab_size:
            raise InvalidAction(
                f"action {token} is outside the action space Discrete({self.vocab_size})"
            )
        return token

    def _hit_stop_string(self) -> bool:
        text = self.tokenizer.decode(self.response_ids, skip_special_tokens=True)
        cut = stop_string_cut(text, self.stop_strings)
        if cut < 0:
            return False
        self._response_text = text[:cut]
        return True

    @staticmethod
    def reward_kwargs(envs: Sequence[TextGenerationEnv]) -> dict[str, Any]:
        """Keyword arguments of one reward call for the finished episodes of ``envs``."""
        rows = [env._row for env in envs]
        assert all(row is not None for row in rows)
        return reward_kwargs(
            rows,  # type: ignore[arg-type]
            [env.response_text for env in envs],
            [env.response_ids.tolist() for env in envs],
            envs[0].dataset.extra_columns,
        )

    def final_info(self, output: RewardOutput, i: int) -> dict[str, Any]:
        """The finished episode's ``info``: its prompt, response, reward components (row ``i``
        of ``output``, the reward call it was scored in), finish reason and prompt index."""
        assert self._row is not None
        return {
            "prompt": self._row.text,
            "response": self.response_text,
            "reward_components": {name: values[i] for name, values in output.components.items()},
            "finish_reason": self._finish_reason,
            "prompt_index": self._row.index,
            "num_tokens": self._n_new,
            "extras": dict(self._row.extras),
        }

    def observation(self) -> Obs:
        """A copy of the current observation (``reset``/``step`` return the same)."""
        return {"input_ids": self._ids.copy(), "attention_mask": self._mask.copy()}

    @property
    def token_ids(self) -> np.ndarray:
        """``[L]`` the episode's tokens (prompt, response, pad), read-only; no copy."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    @property
    def attention_mask(self) -> np.ndarray:
        """``[L]`` 1 on the prompt and response tokens, read-only; no copy."""
        view = self._mask.view()
        view.flags.writeable = False
        return view

    @property
    def prompt_length(self) -> int:
        """Tokens of the current prompt."""
        return self._prompt_len

    @property
    def num_new_tokens(self) -> int:
        """Response tokens generated so far in this episode."""
        return self._n_new

    @property
    def row(self) -> PromptRow | None:
        """The prompt row of the current episode (``None`` before the first reset)."""
        return self._row

    def _build_action_mask(
        self, banned: Sequence[int | str] | None, allowed: Sequence[int | str] | None
    ) -> np.ndarray:
        if allowed is not None:
            mask = np.zeros(self.vocab_size, dtype=bool)
            mask[self._token_ids(allowed, "allowed_tokens")] = True
            if self.stop_on_eos:
                mask[sorted(self.eos_token_ids)] = True  # episodes must still be able to end
        else:
            mask = np.ones(self.vocab_size, dtype=bool)
        if banned is not None:
            mask[self._token_ids(banned, "banned_tokens")] = False
        if not mask.any():
            raise ValueError("banned_tokens/allowed_tokens leave no token the agent may emit")
        return mask

    def _token_ids(self, tokens: Sequence[int | str], arg: str) -> list[int]:
        ids = []
        for tok in tokens:
            tid = self.tokenizer.convert_tokens_to_ids(tok) if isinstance(tok, str) else int(tok)
            if (
                tid is None
                or not 0 <= tid < self.vocab_size
                or (isinstance(tok, str) and tid == self.tokenizer.unk_token_id)
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
