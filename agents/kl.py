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

from rlhf_gym.agents import distributed


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
    """Rollout-buffer mixin: apply the KL penalty to ``rewards`` before GAE, and hand out
    minibatches of whole episodes.

    Minibatches (:meth:`get`): stable-baselines3 draws ``batch_size`` random transitions, so a
    minibatch of 64 token-transitions holds ~64 different episodes and each needs a forward of
    its whole sequence; the policy's one-forward-per-sequence sharing
    (:mod:`rlhf_gym.agents.sequence_eval`) only pays off when a minibatch holds whole episodes.
    Here the rollout is cut into episode segments (one env's consecutive steps of one episode;
    an episode cut by the rollout's start or end is a segment too), the segments are shuffled
    each epoch with NumPy's global RNG (as SB3 shuffles transitions) and packed in that order
    into minibatches of at most ``batch_size`` transitions (a segment longer than
    ``batch_size`` is a minibatch of its own; a last remainder under half a batch joins the
    minibatch before it). An epoch then costs one forward per episode,
    whatever the minibatch size. Kept from SB3: shuffling every epoch, advantage normalisation
    per minibatch (PPO does it), ``target_kl`` early stop. Changed, deliberately: minibatch
    sizes vary a little (whole episodes), and a minibatch's transitions come from few episodes.

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
    #: Per-transition arrays SB3 flattens to ``[n_envs * n_steps, ...]`` before sampling.
    _flattened: tuple[str, ...] = ("actions", "values", "log_probs", "advantages", "returns")
    generator_ready: bool
    swap_and_flatten: Any
    _get_samples: Any
    full: bool
    #: Per-token KL ``log pi - log pi_ref`` of the last shaped rollout, ``[n_steps, n_envs]``.
    last_kl: np.ndarray | None = None

    def bind(self, algorithm: Any) -> None:
        self._algorithm = weakref.ref(algorithm)

    def episode_minibatches(self, batch_size: int | None) -> list[np.ndarray]:
        """Flat transition indices of each minibatch: shuffled whole episode segments.

        Index ``env * n_steps + step`` is where SB3's ``swap_and_flatten`` puts a transition.
        """
        n = self.buffer_size * self.n_envs
        if batch_size is None or batch_size >= n:
            return [np.random.permutation(n)]
        starts = self.episode_starts.astype(bool).copy()  # [n_steps, n_envs]
        starts[0] = True
        segments: list[np.ndarray] = []
        for env in range(self.n_envs):
            bounds = [*np.flatnonzero(starts[:, env]), self.buffer_size]
            base = env * self.buffer_size
            pairs = zip(bounds[:-1], bounds[1:], strict=True)
            segments += [base + np.arange(a, b) for a, b in pairs]
        batches: list[np.ndarray] = []
        current: list[np.ndarray] = []
        size = 0
        for k in np.random.permutation(len(segments)):
            seg = segments[k]
            if current and size + len(seg) > batch_size:
                batches.append(np.concatenate(current))
                current, size = [], 0
            current.append(seg)
            size += len(seg)
        if current:
            batches.append(np.concatenate(current))
        if len(batches) > 1 and 2 * len(batches[-1]) < batch_size:
            # A remainder under half a batch joins the previous minibatch: a minibatch of one
            # transition has no advantage std (sb3-contrib's MaskablePPO would divide by NaN).
            batches[-2:] = [np.concatenate(batches[-2:])]
        return _same_count_on_every_rank(batches)

    def get(self, batch_size: int | None = None) -> Any:
        """SB3's ``get`` with minibatches of whole episodes (see the class docstring)."""
        assert self.full, "the rollout buffer is not full"
        batches = self.episode_minibatches(batch_size)
        if not self.generator_ready:
            for key, obs in self.observations.items():
                self.observations[key] = self.swap_and_flatten(obs)
            for name in self._flattened:
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            self.generator_ready = True
        for indices in batches:
            yield self._get_samples(indices)

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
        local_sequences = int(self.n_envs + self.episode_starts[1:].sum())
        # Global over ranks (the identity with one): every rank's controller takes one step.
        kl_sum, n_sequences, n_tokens = distributed.all_reduce(
            [float(kl.sum()), local_sequences, kl.size]
        )
        kl_per_sequence = kl_sum / max(n_sequences, 1)
        controller.update(kl_per_sequence, int(n_sequences))
        logger = getattr(algorithm, "_logger", None)
        if logger is not None:
            logger.record("rollout/kl", kl_per_sequence)
            logger.record("rollout/kl_per_token", kl_sum / max(n_tokens, 1))
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


def _same_count_on_every_rank(batches: list[np.ndarray]) -> list[np.ndarray]:
    """Split the largest minibatches until this rank has as many as the rank with the most.

    Ranks pack episodes of different lengths, so their minibatch counts can differ; every
    minibatch is an optimizer step with a gradient collective, so the counts must match or a
    rank would wait forever. One rank (the usual case) returns ``batches`` unchanged.
    """
    target = int(distributed.all_reduce([len(batches)], op="max")[0])
    while len(batches) < target:
        k = max(range(len(batches)), key=lambda i: len(batches[i]))
        batches[k : k + 1] = np.array_split(batches[k], 2)
    return batches


class KLDictRolloutBuffer(KLShapingMixin, DictRolloutBuffer):
    """``DictRolloutBuffer`` with KL shaping (PPO, A2C, TRPO)."""


class KLMaskableDictRolloutBuffer(KLShapingMixin, MaskableDictRolloutBuffer):
    """``MaskableDictRolloutBuffer`` with KL shaping (MaskablePPO); the reference is masked alike."""

    _flattened = (*KLShapingMixin._flattened, "action_masks")
