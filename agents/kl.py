"""KL control: a per-token penalty toward the reference policy, applied before advantages.

The RLHF objective is ``E[r(x, y)] - beta * KL(pi || pi_ref)``. As in Ziegler et al. (2019) and
TRL, the KL term is paid per generated token: the reward of transition t becomes

    r_t - beta * (log pi(a_t | s_t) - log pi_ref(a_t | s_t))

where ``log pi`` is the log-prob the rollout recorded and ``pi_ref`` is the base model with the
LoRA adapter disabled (:meth:`rlhf_gym.agents.policy._LoRACore.reference_log_prob`: the same
weights, never a second copy).

The seam: stable-baselines3's ``collect_rollouts`` fills the rollout buffer, then calls
``rollout_buffer.compute_returns_and_advantage(last_values, dones)``, and only then
``callback.on_rollout_end()``. So the rollout buffers here (:class:`KLDictRolloutBuffer`,
:class:`KLMaskableDictRolloutBuffer`) shape ``self.rewards`` at the top of
``compute_returns_and_advantage`` and then run the unchanged GAE. That works for every on-policy
algorithm that uses a rollout buffer (PPO, A2C, TRPO, MaskablePPO) without touching a training
loop. The reference log-probs are computed for the whole buffer at once, one forward per
sequence (:mod:`rlhf_gym.agents.sequence_eval`), not per step.

``beta`` is fixed (:class:`FixedKLController`) or adapted toward a target KL per sequence
(:class:`AdaptiveKLController`, Ziegler et al.'s proportional controller as in TRL's
``AdaptiveKLController``). After each rollout the controller is updated with the measured KL; the
new beta applies from the next rollout. Logged through the algorithm's SB3 logger:
``rollout/kl`` (mean summed KL per sequence), ``rollout/kl_per_token`` and ``train/kl_coef``
(the beta that shaped this rollout).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer
from stable_baselines3.common.buffers import DictRolloutBuffer


class KLController(Protocol):
    """Holds the current KL coefficient ``value`` and updates it from a measured KL."""

    value: float

    def update(self, current: float, n_steps: int) -> None: ...


@dataclass
class FixedKLController:
    """A constant ``beta``."""

    value: float

    def update(self, current: float, n_steps: int) -> None:
        """Nothing to adapt."""


@dataclass
class AdaptiveKLController:
    """Ziegler et al.'s proportional controller: steer the KL per sequence toward ``target``.

    ``beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon`` where ``n_steps`` is the
    number of sequences the KL was measured on (TRL's ``AdaptiveKLController``).
    """

    value: float
    target: float
    horizon: int

    def update(self, current: float, n_steps: int) -> None:
        proportional_error = float(np.clip(current / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


def make_kl_controller(
    kl_coef: float, kl_target: float | None = None, kl_horizon: int = 10000
) -> FixedKLController | AdaptiveKLController:
    """Fixed ``kl_coef`` when ``kl_target`` is None, else adaptive starting at ``kl_coef``."""
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_target is None:
        return FixedKLController(float(kl_coef))
    if kl_target <= 0 or kl_horizon <= 0:
        raise ValueError(
            f"kl_target and kl_horizon must be > 0, got kl_target={kl_target}, kl_horizon={kl_horizon}"
        )
    return AdaptiveKLController(float(kl_coef), float(kl_target), int(kl_horizon))


def shape_rewards(
    rewards: np.ndarray, log_probs: np.ndarray, ref_log_probs: np.ndarray, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(rewards - beta * kl, kl)`` with the per-token ``kl = log_probs - ref_log_probs``."""
    kl = log_probs - ref_log_probs
    return (rewards - beta * kl).astype(rewards.dtype), kl


class KLShapingMixin:
    """Rollout-buffer mixin: apply the KL penalty to ``rewards`` before GAE.

    The buffer must be bound to its algorithm (``buffer.bind(algorithm)``; the algorithms of
    :mod:`rlhf_gym.agents.algorithms` do it in ``_setup_model``): it reads ``algorithm.policy``
    (reference log-probs), ``algorithm.kl_controller`` and ``algorithm.logger``.
    """

    # Attributes of the SB3 buffer this mixin is combined with.
    observations: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    log_probs: np.ndarray
    episode_starts: np.ndarray
    buffer_size: int
    n_envs: int
    device: torch.device

    _algorithm: Any = None
    #: Per-token KL ``log pi - log pi_ref`` of the last shaped rollout, ``[n_steps, n_envs]``.
    last_kl: np.ndarray | None = None

    def bind(self, algorithm: Any) -> None:
        self._algorithm = weakref.ref(algorithm)

    def compute_returns_and_advantage(self, last_values: torch.Tensor, dones: np.ndarray) -> None:
        self.apply_kl_penalty()
        super().compute_returns_and_advantage(last_values, dones)  # type: ignore[misc]

    def apply_kl_penalty(self) -> None:
        algorithm = self._algorithm() if self._algorithm is not None else None
        if algorithm is None:
            raise RuntimeError(
                f"{type(self).__name__} is not bound to an algorithm; it needs one to compute "
                "reference log-probs. Build agents with rlhf_gym.agents.make_agent (or the "
                "algorithm classes of rlhf_gym.agents.algorithms), or call buffer.bind(agent)."
            )
        controller = algorithm.kl_controller
        beta = float(controller.value)
        ref = self._reference_log_probs(algorithm.policy)
        self.rewards, kl = shape_rewards(self.rewards, self.log_probs, ref, beta)
        self.last_kl = kl
        n_sequences = int(self.n_envs + self.episode_starts[1:].sum())
        kl_per_sequence = float(kl.sum()) / max(n_sequences, 1)
        controller.update(kl_per_sequence, n_sequences)
        logger = getattr(algorithm, "_logger", None)
        if logger is not None:
            logger.record("rollout/kl", kl_per_sequence)
            logger.record("rollout/kl_per_token", float(kl.mean()))
            logger.record("train/kl_coef", beta)

    def _reference_log_probs(self, policy: Any) -> np.ndarray:
        n = self.buffer_size * self.n_envs
        obs = {
            key: torch.as_tensor(value.reshape(n, *value.shape[2:]), device=self.device)
            for key, value in self.observations.items()
        }
        actions = torch.as_tensor(self.actions.reshape(n), device=self.device)
        masks = getattr(self, "action_masks", None)
        masks_t = (
            None if masks is None else torch.as_tensor(masks.reshape(n, -1), device=self.device)
        )
        ref = policy.reference_log_prob(obs, actions, masks_t)
        return ref.cpu().numpy().reshape(self.buffer_size, self.n_envs).astype(np.float32)


class KLDictRolloutBuffer(KLShapingMixin, DictRolloutBuffer):
    """``DictRolloutBuffer`` with KL shaping (PPO, A2C, TRPO)."""


class KLMaskableDictRolloutBuffer(KLShapingMixin, MaskableDictRolloutBuffer):
    """``MaskableDictRolloutBuffer`` with KL shaping (MaskablePPO); the reference is masked alike."""
