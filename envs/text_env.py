"""The text-generation environment: one prompt per episode, one token per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any, SupportsInt

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from transformers import PreTrainedTokenizerBase

from rlhf_gym.envs.episodes import EpisodeBatch, Obs, Task, check_token
from rlhf_gym.envs.prompts import PromptRow, PromptSampler
from rlhf_gym.rewards import RewardOutput

__all__ = ["Obs", "TextGenerationEnv"]


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
    * ``task``: a :class:`~rlhf_gym.envs.episodes.Task` already built (the arguments above are
      then not used); ``episodes``, ``index``: run as row ``index`` of a shared
      :class:`~rlhf_gym.envs.episodes.EpisodeBatch` (the vector env's sub-envs). Alone, the env
      is a batch of one.

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
        render_mode: str | None = None,
        task: Task | None = None,
        episodes: EpisodeBatch | None = None,
        index: int = 0,
        **options: Any,
    ) -> None:
        """``options``: the task's keyword arguments, listed above under Arguments and typed in
        :meth:`rlhf_gym.envs.episodes.Task.build`, which checks them (a misspelt one is an
        error naming it)."""
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        if task is None:
            task = Task.build(tokenizer, prompts, reward, **options)
        elif options or tokenizer is not None or prompts is not None or reward is not None:
            raise TypeError(
                "TextGenerationEnv(task=...) takes the task as built; pass its options to "
                "Task.build instead"
            )
        self.task = task
        if episodes is None:
            episodes, index = EpisodeBatch(task, 1), 0
        #: The batch this env's episode lives in, at row ``index`` (a batch of one when alone).
        self.episodes, self.index = episodes, int(index)
        # The task's parts under the names env users know.
        self.tokenizer = task.tokenizer
        self.dataset = task.dataset
        self.reward_fn = task.reward_fn
        self.reward_bound = task.reward_bound
        self.max_prompt_tokens = task.max_prompt_tokens
        self.max_new_tokens = task.max_new_tokens
        self.seq_len = task.seq_len
        self.eos_token_id: int | None = task.tokenizer.eos_token_id
        self.eos_token_ids: frozenset[int] = task.eos_token_ids
        self.pad_token_id: int = task.pad_token_id
        self.stop_on_eos = task.stop_on_eos
        self.stop_strings = task.stop_strings
        self.vocab_size = task.vocab_size

        self.action_space = spaces.Discrete(self.vocab_size)
        token_box = spaces.Box(0, self.vocab_size - 1, shape=(self.seq_len,), dtype=np.int64)
        mask_box = spaces.Box(0, 1, shape=(self.seq_len,), dtype=np.int64)
        self.observation_space = spaces.Dict({"input_ids": token_box, "attention_mask": mask_box})
        self._sampler = PromptSampler(len(self.dataset), task.sampling)
        self._rows = np.array([self.index])  # [1]: this env's row, for the batch's operations

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
        self.episodes.start(self.index, self.dataset[index])
        return self.observation(), {"prompt_index": index}

    def step(
        self, action: SupportsInt | np.ndarray
    ) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        terminated, truncated = self.advance(action)
        if not (terminated or truncated):
            return self.observation(), 0.0, False, False, {}
        batch = self.episodes.reward_kwargs(self._rows)
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
            **self.episodes.state_dict(self.index),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the same prompt stream and the same episode in flight."""
        self.np_random.bit_generator.state = state["rng"]
        self._sampler.load_state_dict(state["sampler"])
        self.episodes.load_state_dict(self.index, state)

    def draw_prompt_index(self) -> int:
        """Draw the next prompt index from this env's seeded sampler without starting an episode.

        The vector env in rounds uses its first env's sampler for every group, so that the groups
        of a round answer different prompts (each once per epoch with ``sampling="epoch"``).
        """
        return self._sampler.draw(self.np_random)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        row = self.row
        prompt = row.text if row is not None else ""
        return f"{prompt}\u2502{self.response_text}"

    def action_masks(self) -> np.ndarray:
        """Allowed next tokens, a boolean vector of length ``vocab`` (for sb3-contrib MaskablePPO)."""
        return self.task.action_mask.copy()

    # ----------------------------------------------------------------------------------------
    # The episode: row ``index`` of :attr:`episodes` (see :mod:`rlhf_gym.envs.episodes`).

    def advance(self, action: SupportsInt | np.ndarray) -> tuple[bool, bool]:
        """Append one token; return (terminated, truncated). Does not score (``step`` does)."""
        return self.episodes.advance_one(self.index, check_token(action, self.vocab_size))

    def final_info(self, output: RewardOutput, i: int) -> dict[str, Any]:
        """The finished episode's ``info``, its reward components row ``i`` of ``output``."""
        return self.episodes.final_info(self.index, output, i)

    @property
    def response_ids(self) -> np.ndarray:
        return self.episodes.response_ids(self.index)

    @property
    def response_text(self) -> str:
        return self.episodes.response_text(self.index)

    def observation(self) -> Obs:
        """A copy of the current observation (``reset``/``step`` return the same)."""
        return self.episodes.observation(self.index)

    @property
    def token_ids(self) -> np.ndarray:
        """``[L]`` the episode's tokens (prompt, response, pad), read-only; no copy."""
        view = self.episodes.ids[self.index].view()
        view.flags.writeable = False
        return view

    @property
    def attention_mask(self) -> np.ndarray:
        """``[L]`` 1 on the prompt and response tokens, read-only; no copy."""
        view = self.episodes.mask[self.index].view()
        view.flags.writeable = False
        return view

    @property
    def prompt_length(self) -> int:
        """Tokens of the current prompt."""
        return int(self.episodes.prompt_len[self.index])

    @property
    def num_new_tokens(self) -> int:
        """Response tokens generated so far in this episode."""
        return int(self.episodes.n_new[self.index])

    @property
    def row(self) -> PromptRow | None:
        """The prompt row of the current episode (``None`` before the first reset)."""
        return self.episodes.rows[self.index]

    # Read-only names of the per-env attributes the episode had before it moved into a batch,
    # for code written against them (the package itself uses ``row`` / ``prompt_length``).
    _row = row

    @property
    def _prompt_len(self) -> int:
        return self.prompt_length
