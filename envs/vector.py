"""Vectorized text generation: many episodes, one reward call per step.

Scoring is the expensive part of an episode's end when the reward is a model. Stepping N
independent envs would call it once per finished episode; this vector env advances every episode,
gathers all that finished in this step, and scores them in ONE reward call (one reward-model
forward of the whole batch), then resets them.

Two faces over the same engine:

* :class:`TextGenerationVectorEnv`, a ``gymnasium.vector.VectorEnv`` (what ``gym.make_vec``
  returns). It autoresets in the same step (``AutoresetMode.SAME_STEP``): a finished episode's
  last observation is in ``info["final_obs"]`` and its info in ``info["final_info"]``.
* :class:`SB3VecEnv`, a stable-baselines3 ``VecEnv`` (what :func:`make_vec_env` returns), with
  ``terminal_observation`` and an ``episode`` entry in each finished env's info, as SB3's
  ``VecMonitor`` would add.

Decision: ``SB3VecEnv`` reports ``TimeLimit.truncated=False`` when a response hits
``max_new_tokens``. The score given at that step is the whole return of the episode (nothing
follows a finished response), so SB3 must not bootstrap a value after it.

Groups and rounds (``group_size=k``, for GRPO, RLOO and the like): envs ``[g*k, (g+1)*k)`` form
group ``g`` and answer the same prompt. The env then runs in *rounds*: at the start of a round
each group draws one prompt from its leader's (seeded) sampler and hands it to its k members; a
member whose answer ends (EOS, stop string, ``max_new_tokens``) is scored as usual and then
*idles* until every env of the round has finished; then the next round starts, in the step in
which the last env finished. Why rounds rather than handing a prompt to the next k resets
wherever they happen: a group-relative update may only use complete groups sampled by the
policy of that update. With rounds, a rollout made of whole rounds never leaves a group
half-answered: nothing is thrown away and nothing stale is reused. The price is the idle steps,
the same padding that batched ``model.generate`` pays after a row's EOS; it is reported as
``rollout/idle_share`` by the group algorithms and measured in ``benchmarks/``.

An idle env ignores its action, gets reward 0 and is not done; its observation is its finished
sequence followed by one pad token per idle step (``attention_mask`` 1 there), so a KV-cached
policy extends every row by one token per step instead of re-reading idle rows. ``idle`` (the
envs whose action this step ignored) is in the step's info. ``group_size=1, rounds=True`` gives
rounds of independent prompts (REINFORCE++). Stable-baselines3's own algorithms step every env
as a live episode, so they refuse an env in rounds; with ``group_size=1`` (the default) the env
behaves as it always has.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from rlhf_gym.envs.episodes import EpisodeBatch, Task
from rlhf_gym.envs.text_env import Obs, TextGenerationEnv


class TextGenerationVectorEnv(VectorEnv):
    """``num_envs`` text-generation episodes stepped together; see the module docstring.

    Takes the keyword arguments of :class:`TextGenerationEnv`. The tokenizer, the compiled prompt
    set and the reward (and any reward model it loads) are built once and shared. Sub-env ``i`` is
    seeded with ``seed + i``.

    :param num_envs: episodes stepped together.
    :param group_size: envs that answer each prompt (k); must divide ``num_envs``. ``k > 1``
        turns rounds on (see the module docstring).
    :param rounds: run in rounds (default: ``group_size > 1``); ``rounds=False`` with groups is
        refused, since groups only stay intact in rounds.
    """

    metadata = {"render_modes": ["ansi"], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        *,
        group_size: int = 1,
        rounds: bool | None = None,
        **env_kwargs: Any,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.group_size, self.rounds = _check_groups(num_envs, group_size, rounds)
        render_mode = env_kwargs.pop("render_mode", None)
        #: The task, built once, and every env's episode as one [num_envs, L] batch: sub-env i
        #: is a view of row i (its own prompt RNG and sampler).
        self.task = Task.build(**env_kwargs)
        self.episodes = EpisodeBatch(self.task, num_envs)
        self.envs: list[TextGenerationEnv] = [
            TextGenerationEnv(
                task=self.task, episodes=self.episodes, index=i, render_mode=render_mode
            )
            for i in range(num_envs)
        ]
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.reward_fn = self.task.reward_fn
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.envs[0].observation_space, num_envs)
        self.action_space = batch_space(self.envs[0].action_space, num_envs)
        self.reward_calls = 0  # number of reward calls made, for tests and benchmarks
        self._episode_start = np.zeros(num_envs)
        self._idle = np.zeros(num_envs, dtype=bool)  # finished, waiting for the round to end
        self._idle_steps = np.zeros(num_envs, dtype=np.int64)  # pad tokens shown after the end
        self._group_ids = np.zeros(num_envs, dtype=np.int64)
        self._next_group_id = 0

    @property
    def num_groups(self) -> int:
        return self.num_envs // self.group_size

    @property
    def idle(self) -> np.ndarray:
        """Envs that have finished their answer and wait for the round to end (rounds only)."""
        return self._idle.copy()

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[Obs, dict[str, Any]]:
        seeds = _seeds(seed, self.num_envs)
        if seed is not None:
            self._next_group_id = 0
        if self.rounds:
            infos = self._start_round(seeds, options)
        else:
            infos = {}
            for i, (env, s) in enumerate(zip(self.envs, seeds, strict=True)):
                _, info = env.reset(seed=s, options=options)
                infos = self._add_info(infos, info, i)
        self._episode_start[:] = time.perf_counter()
        return self._stack(), infos

    def _start_round(
        self, seeds: Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Draw one prompt per group from the first env's sampler; a group's k envs answer it.

        One sampler for all groups (not one per leader) keeps a round's prompts distinct and
        serves each prompt once per epoch across the whole vector env.
        """
        k = self.group_size
        if seeds is not None and any(s is not None for s in seeds):
            for env, s in zip(self.envs, seeds, strict=True):
                env.reset(seed=s, options={"prompt_index": 0})  # seed only; restarted below
        if options and "prompt_index" in options:
            indices = [int(options["prompt_index"])] * self.num_groups
        else:
            indices = [self.envs[0].draw_prompt_index() for _ in range(self.num_groups)]
        infos: dict[str, Any] = {}
        for g, index in enumerate(indices):
            for i in range(g * k, (g + 1) * k):
                self.envs[i].reset(options={"prompt_index": index})
                infos = self._add_info(
                    infos, {"prompt_index": index, "group_id": self._next_group_id}, i
                )
            self._group_ids[g * k : (g + 1) * k] = self._next_group_id
            self._next_group_id += 1
        self._idle[:] = False
        self._idle_steps[:] = 0
        return infos

    def step(
        self, actions: np.ndarray
    ) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = np.asarray(actions)
        if actions.shape[:1] != (self.num_envs,):
            raise ValueError(
                f"expected {self.num_envs} actions, got an array of shape {actions.shape}"
            )
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        idle = self._idle.copy()
        self._idle_steps[idle] += 1
        live = np.flatnonzero(~idle)
        tokens = self.episodes.check_tokens(actions[live])
        terminated[live], truncated[live] = self.episodes.advance(live, tokens)
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        infos: dict[str, Any] = {"idle": idle} if self.rounds else {}
        done = np.flatnonzero(terminated | truncated)
        if len(done):
            batch = self.episodes.reward_kwargs(done)
            output = self.reward_fn(**batch)
            self.reward_calls += 1
            output.total[:] = self.task.reward_bound(output.total, batch["prompts"])
            rewards[done] = output.total
            now = time.perf_counter()
            for k, i in enumerate(done):
                env = self.envs[i]
                final_info = self.episodes.final_info(int(i), output, k)
                final_info["episode"] = {
                    "r": float(output.total[k]),
                    "l": int(self.episodes.n_new[i]),
                    "t": now - self._episode_start[i],
                }
                if self.rounds:
                    final_info["group_id"] = int(self._group_ids[i])
                infos = self._add_info(
                    infos,
                    {"final_obs": self.episodes.observation(int(i)), "final_info": final_info},
                    int(i),
                )
                if self.rounds:
                    self._idle[i] = True
                    continue
                _, reset_info = env.reset()
                infos = self._add_info(infos, reset_info, int(i))
                self._episode_start[i] = now
            if self.rounds and self._idle.all():
                infos.update(self._start_round())  # the next round starts in this step
                self._episode_start[:] = now
        return self._stack(), rewards, terminated, truncated, infos

    def state_dict(self) -> dict[str, Any]:
        """Every sub-env's :meth:`TextGenerationEnv.state_dict` plus the rounds' bookkeeping."""
        return {
            "envs": [env.state_dict() for env in self.envs],
            "idle": self._idle.tolist(),
            "idle_steps": self._idle_steps.tolist(),
            "group_ids": self._group_ids.tolist(),
            "next_group_id": int(self._next_group_id),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["envs"]) != self.num_envs:
            raise ValueError(
                f"the state was saved with {len(state['envs'])} envs but this vector env has "
                f"{self.num_envs}; resume with the same --num-envs"
            )
        for env, env_state in zip(self.envs, state["envs"], strict=True):
            env.load_state_dict(env_state)
        self._idle[:] = state["idle"]
        self._idle_steps[:] = state["idle_steps"]
        self._group_ids[:] = state["group_ids"]
        self._next_group_id = int(state["next_group_id"])

    def observations(self) -> Obs:
        """The current stacked observations (what the last ``reset``/``step`` returned)."""
        return self._stack()

    def action_masks(self) -> np.ndarray:
        """Stacked action masks, shape ``(num_envs, vocab)``."""
        return np.stack([env.action_masks() for env in self.envs])

    def render(self) -> tuple[Any, ...] | None:
        return tuple(env.render() for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()

    def _stack(self) -> Obs:
        obs = self.episodes.observations()  # [N, L] copies
        for i in np.flatnonzero(self._idle_steps):
            # An idle env shows its finished sequence plus one pad token per idle step.
            end = int(self.episodes.prompt_len[i] + self.episodes.n_new[i])
            tail = slice(end, end + int(self._idle_steps[i]))
            obs["input_ids"][i, tail] = self.task.pad_token_id
            obs["attention_mask"][i, tail] = 1
        return obs


class SB3VecEnv(VecEnv):
    """A stable-baselines3 ``VecEnv`` over :class:`TextGenerationVectorEnv`; see the module docstring."""

    def __init__(self, vector_env: TextGenerationVectorEnv) -> None:
        self.vector_env = vector_env
        super().__init__(
            vector_env.num_envs, vector_env.single_observation_space, vector_env.single_action_space
        )
        self.render_mode = vector_env.render_mode
        self._actions: np.ndarray | None = None

    @property
    def envs(self) -> list[TextGenerationEnv]:
        return self.vector_env.envs

    @property
    def group_size(self) -> int:
        """Envs answering each prompt (see the module docstring on groups and rounds)."""
        return self.vector_env.group_size

    @property
    def rounds(self) -> bool:
        """Whether the env runs in rounds (finished envs idle until every env has finished)."""
        return self.vector_env.rounds

    def reset(self) -> Obs:
        """SB3's reset: the seeds and options set with ``seed()``/``set_options()`` apply once.

        Options the same for every env (``set_options({"prompt_index": 3})``) go to the vector
        env's reset; per-env options reset each env with its own after the vector reset (not in
        rounds, where a group's envs must share their prompt).
        """
        seeds = list(self._seeds)
        options = list(self._options)
        shared = options[0] if all(o == options[0] for o in options) else None
        obs, _ = self.vector_env.reset(
            seed=seeds if any(s is not None for s in seeds) else None, options=shared or None
        )
        if shared is None:
            if self.vector_env.rounds:
                raise ValueError(
                    "per-env reset options cannot apply to an env in rounds (a group's envs "
                    "share their prompt); set the same options for every env"
                )
            for env, opts in zip(self.envs, options, strict=True):
                if opts:
                    env.reset(options=opts)
            obs = self.vector_env.observations()
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> tuple[Obs, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        assert self._actions is not None, "step_async() must be called before step_wait()"
        obs, rewards, terminated, truncated, vinfos = self.vector_env.step(self._actions)
        self._actions = None
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            info = _row(vinfos["final_info"], int(i))
            info["terminal_observation"] = vinfos["final_obs"][i]
            info["TimeLimit.truncated"] = False
            infos[i] = info
        if "idle" in vinfos:
            for i in np.flatnonzero(vinfos["idle"]):
                infos[i]["idle"] = True
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.vector_env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.envs[i], attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            setattr(self.envs[i], attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        return [
            getattr(self.envs[i], method_name)(*method_args, **method_kwargs)
            for i in self._get_indices(indices)
        ]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in self.envs]

    def action_masks(self) -> np.ndarray:
        return self.vector_env.action_masks()


def _row(batched: dict[str, Any], i: int) -> dict[str, Any]:
    """Undo Gymnasium's info batching for env ``i`` (nested dicts and ``_key`` masks)."""
    out: dict[str, Any] = {}
    for key, value in batched.items():
        if key.startswith("_"):
            continue
        present = batched.get(f"_{key}")
        if present is not None and not present[i]:
            continue
        out[key] = _row(value, i) if isinstance(value, dict) else _item(value[i])
    return out


def _item(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _seeds(seed: int | Sequence[int | None] | None, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(n)]
    seeds = list(seed)
    if len(seeds) != n:
        raise ValueError(f"expected {n} seeds, got {len(seeds)}")
    return seeds


def _check_groups(num_envs: int, group_size: int, rounds: bool | None) -> tuple[int, bool]:
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise TypeError(f"group_size must be an int >= 1, got {group_size!r}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if num_envs % group_size:
        lower = num_envs - num_envs % group_size
        raise ValueError(
            f"group_size={group_size} does not divide num_envs={num_envs}: each group of "
            f"{group_size} envs answers one prompt; use num_envs={lower or group_size} or "
            f"{lower + group_size}, or a group_size that divides {num_envs}"
        )
    if rounds is False and group_size > 1:
        raise ValueError(
            f"group_size={group_size} needs rounds=True (the default for groups): only in rounds "
            "do the k answers of a prompt stay together"
        )
    return int(group_size), bool(group_size > 1 if rounds is None else rounds)


def make_vec_env(
    num_envs: int = 1,
    *,
    seed: int | None = None,
    group_size: int = 1,
    rounds: bool | None = None,
    **env_kwargs: Any,
) -> SB3VecEnv:
    """A stable-baselines3 ``VecEnv`` of ``num_envs`` text-generation episodes (batched scoring).

    ``env_kwargs`` are those of :class:`TextGenerationEnv`. ``seed`` seeds sub-env ``i`` with
    ``seed + i`` at the first reset. ``group_size=k`` makes every drawn prompt be answered by k
    envs, in rounds (see the module docstring); ``rounds=True`` alone gives rounds of k=1.
    """
    venv = SB3VecEnv(
        TextGenerationVectorEnv(num_envs, group_size=group_size, rounds=rounds, **env_kwargs)
    )
    if seed is not None:
        venv.seed(seed)
    return venv
