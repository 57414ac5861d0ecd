"""The state of stable-baselines3's training loop between two rollouts, as JSON.

An exact resume needs more than weights: the observations the next rollout starts from (the
envs' episodes in flight), which envs just started an episode, the episode-info window the
``rollout/ep_*`` logs average over, and the update count. SB3 keeps these in private attributes
of ``OnPolicyAlgorithm``; this mixin (inherited by every algorithm of
:mod:`rlhf_gym.agents.algorithms` and :mod:`rlhf_gym.agents.group_algorithms`) is the one place
that reads and writes them, so checkpointing code handles a plain dict.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np


class ResumableLoop:
    """``loop_state()`` / ``load_loop_state()`` for an SB3 on-policy algorithm."""

    _last_obs: Any
    _last_episode_starts: Any
    _n_updates: int
    _stats_window_size: int
    ep_info_buffer: Any
    ep_success_buffer: Any

    def loop_state(self) -> dict[str, Any]:
        """JSON values: episode starts, the episode-info window and the update count."""
        starts = getattr(self, "_last_episode_starts", None)
        return {
            "last_episode_starts": None if starts is None else np.asarray(starts).tolist(),
            "ep_info_buffer": [
                {k: float(v) for k, v in info.items()} for info in self.ep_info_buffer or []
            ],
            "n_updates": int(getattr(self, "_n_updates", 0)),
        }

    def load_loop_state(self, state: dict[str, Any], last_obs: Any) -> None:
        """Continue from ``state`` with ``last_obs`` (the restored envs' observations), so
        ``learn(reset_num_timesteps=False)`` resumes the same rollout stream instead of
        resetting every env onto new prompts."""
        self._last_obs = last_obs
        if state["last_episode_starts"] is not None:
            self._last_episode_starts = np.asarray(state["last_episode_starts"], dtype=bool)
        self.ep_info_buffer = deque(state["ep_info_buffer"], maxlen=self._stats_window_size)
        self.ep_success_buffer = deque(maxlen=self._stats_window_size)
        self._n_updates = int(state["n_updates"])
