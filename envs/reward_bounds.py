"""Outlier rewards are never silent: a bound on the size of a reward, enforced or clipped.

A reward of 1e6 now and then (a bug in a checker, an unnormalised reward model) does not fail
anything by itself: PPO's value loss turns inf, its updates shrink to nothing and learning
stalls with no message. The env therefore checks every score against ``reward_bound``: beyond
it the run stops with a line naming the value, the prompt and the two ways out (a larger bound,
or ``reward_clip=True`` to clip to ``[-bound, bound]``, warned once). The default bound, 1e4, is
far beyond any reward scale RLHF runs use (reward models give a few units; rule rewards 0-1).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

#: Default ``reward_bound`` of :class:`~rlhf_gym.envs.TextGenerationEnv`.
DEFAULT_REWARD_BOUND = 1e4


class RewardBound:
    """Checks (or clips) a batch of total rewards; ``bound=None`` turns the check off."""

    def __init__(self, bound: float | None = DEFAULT_REWARD_BOUND, clip: bool = False) -> None:
        if bound is not None and not bound > 0:
            raise ValueError(f"reward_bound must be > 0 or None, got {bound!r}")
        if clip and bound is None:
            raise ValueError("reward_clip=True needs a reward_bound to clip to")
        self.bound = None if bound is None else float(bound)
        self.clip = bool(clip)
        self._warned = False

    def __call__(self, total: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """``total`` ``[n]`` checked against the bound: clipped, or a ``ValueError`` raised."""
        if self.bound is None:
            return total
        outside = np.flatnonzero(np.abs(total) > self.bound)
        if len(outside) == 0:
            return total
        i = int(outside[0])
        if not self.clip:
            raise ValueError(
                f"reward {total[i]:.4g} for prompt {prompts[i][:60]!r} is outside reward_bound="
                f"{self.bound:g} ({len(outside)} of {len(total)} in this batch). An outlier like "
                "this silently stalls learning. Fix: check the reward function, or raise "
                "reward_bound (--reward-bound), or clip with reward_clip=True (--reward-clip)."
            )
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"reward {total[i]:.4g} clipped to +-{self.bound:g} (reward_clip=True); "
                "shown once per env",
                UserWarning,
                stacklevel=3,
            )
        return np.clip(total, -self.bound, self.bound)
