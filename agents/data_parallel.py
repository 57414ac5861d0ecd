"""The update of PPO, MaskablePPO and A2C when several ranks train one policy, or in chunks.

One process runs stable-baselines3's own ``train()``, unless ``grad_chunk_size`` asks for
gradient accumulation (then this update, with one rank). With more ranks that loop would average
nothing and decide alone: its losses are means over the local minibatch, its advantage
normalisation and its ``target_kl`` early stop see local numbers, and it clips the local
gradient. :meth:`ActorCriticDataParallel.train_data_parallel` is the same update written for ranks
(:mod:`rlhf_gym.agents.distributed`):

- each rank's loss is its *sum* over its minibatch divided by the global minibatch size (times
  the world size, undone by gradient averaging), so the averaged gradient is the gradient of the
  one-process mean even when minibatches of whole episodes differ in size across ranks;
- advantages are normalised with the global mean and (unbiased) std of the minibatch, as SB3
  does with the local ones;
- the approximate KL of the ``target_kl`` early stop is the global mean, so all ranks stop at the
  same minibatch (a local decision would leave one rank waiting in a collective forever);
- gradients are averaged before clipping; logged losses and explained variance are global.

With one minibatch per epoch (``batch_size`` at least the rollout) the result equals SB3's
update of one process holding every rank's rollout (``tests/test_distributed.py``). TRPO is not
here: its line search evaluates the loss at trial steps, which would need a collective per
trial; it refuses to run on more than one rank (:mod:`rlhf_gym.agents.algorithms`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from rlhf_gym.agents import distributed
from rlhf_gym.agents.sequence_eval import group_by_prefix


class ActorCriticDataParallel:
    """Mixin of PPO, MaskablePPO and A2C (``_a2c_update = True``): their update across ranks."""

    _a2c_update = False
    #: Whole sequences per forward/backward inside a minibatch (gradient accumulation), or None.
    grad_chunk_size: int | None = None

    def __init__(self, *args: Any, grad_chunk_size: int | None = None, **kwargs: Any) -> None:
        """:param grad_chunk_size: score and backpropagate a minibatch this many whole sequences
        at a time, accumulating the gradient of the same minibatch loss (TRL's gradient
        accumulation, GRPO's option of the same name): peak memory follows the chunk, not the
        minibatch. ``None`` (default): the whole minibatch at once, stable-baselines3's own
        ``train()`` in one process. With chunks the ``target_kl`` stop is decided after the
        minibatch's backward instead of before it (the same outcome: no step is taken)."""
        if grad_chunk_size is not None and int(grad_chunk_size) < 1:
            raise ValueError(f"grad_chunk_size must be >= 1 or None, got {grad_chunk_size}")
        self.grad_chunk_size = None if grad_chunk_size is None else int(grad_chunk_size)
        super().__init__(*args, **kwargs)

    # The SB3 on-policy algorithm this is mixed into provides these.
    policy: Any
    rollout_buffer: Any
    action_space: Any
    logger: Any
    _n_updates: int

    def train_data_parallel(self) -> None:
        """One update of PPO (clipped surrogate, epochs of minibatches) or of A2C (one step on
        the whole rollout, plain policy gradient), across ranks (module docstring)."""
        self._actor_critic_update(a2c=self._a2c_update)

    def _actor_critic_update(self, *, a2c: bool) -> None:
        policy = self.policy
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        world = distributed.world_size()
        clip_range = None if a2c else float(self.clip_range(self._current_progress_remaining))
        clip_range_vf = None
        if not a2c and self.clip_range_vf is not None:
            clip_range_vf = float(self.clip_range_vf(self._current_progress_remaining))
        n_epochs = 1 if a2c else int(self.n_epochs)
        batch_size = None if a2c else self.batch_size
        # Global sums of [samples, policy loss, value loss, entropy loss, clipped] for the logs.
        log_sums = np.zeros(5)
        approx_kl = 0.0
        approx_kls: list[float] = []
        stopped = False
        for epoch in range(n_epochs):
            approx_kls = []  # SB3 logs the mean over the last epoch's minibatches
            for data in self.rollout_buffer.get(batch_size):
                chunked = getattr(self, "grad_chunk_size", None) is not None
                chunks = self._grad_chunks(data) if chunked else [None]
                n, adv_sum, adv_sq = distributed.all_reduce(
                    [len(data.advantages), float(data.advantages.sum()),
                     float((data.advantages**2).sum())]
                )  # fmt: skip
                norm = None
                if self.normalize_advantage and n > 1:
                    mean = adv_sum / n
                    norm = (mean, max((adv_sq - n * mean * mean) / (n - 1), 0.0) ** 0.5)
                policy.optimizer.zero_grad()
                sums = np.zeros(6)  # [samples, policy, value, entropy losses, clipped, kl]
                loss_sum: torch.Tensor | None = None  # the chunks' losses, for one finite check
                stop = False
                for rows in chunks:
                    part = data if rows is None else _rows(data, rows)
                    loss, parts = self._minibatch_loss(part, norm, clip_range, clip_range_vf, a2c)
                    sums += parts
                    if not chunked:  # SB3's order: the target_kl stop before the backward
                        approx_kl = distributed.all_reduce([sums[5]])[0] / n
                        stop = self._kl_stop(approx_kl, a2c, epoch)
                        if stop:
                            break
                        stop_on_non_finite(self, loss)
                    (loss * (world / n)).backward()  # averaged over ranks: the minibatch mean
                    loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
                if chunked:  # decided once every chunk is scored (their number varies by rank)
                    assert loss_sum is not None
                    stop_on_non_finite(self, loss_sum)
                    approx_kl = distributed.all_reduce([sums[5]])[0] / n
                    stop = self._kl_stop(approx_kl, a2c, epoch)
                approx_kls.append(approx_kl)
                log_sums += sums[:5]  # SB3 logs the stopped minibatch's losses too
                if stop:
                    policy.optimizer.zero_grad()
                    stopped = True
                    break
                distributed.average_gradients(policy.parameters())
                torch.nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
                policy.optimizer.step()
            self._n_updates += 1
            if stopped:
                break
        sums = distributed.all_reduce(list(log_sums))
        self._record_train_logs(sums, float(np.mean(approx_kls)), clip_range, clip_range_vf, a2c)

    def _minibatch_loss(
        self,
        data: Any,
        norm: tuple[float, float] | None,
        clip_range: float | None,
        clip_range_vf: float | None,
        a2c: bool,
    ) -> tuple[torch.Tensor, list[float]]:
        """The minibatch's loss SUM over ``data`` (a whole minibatch or a chunk of it) and its
        parts ``[samples, policy, value, entropy losses, clipped, kl sum]`` for the logs."""
        actions = data.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        masks = getattr(data, "action_masks", None)
        extra = {} if masks is None else {"action_masks": masks}
        values, log_prob, entropy = self.policy.evaluate_actions(
            data.observations, actions, **extra
        )
        values = values.flatten()  # [b]
        advantages = data.advantages  # [b]
        if norm is not None:
            advantages = (advantages - norm[0]) / (norm[1] + 1e-8)
        with torch.no_grad():
            log_ratio = log_prob - data.old_log_prob
            kl_sum = float(((torch.exp(log_ratio) - 1) - log_ratio).sum())
        if a2c:
            policy_loss = -(advantages * log_prob).sum()
            clipped = 0.0
        else:
            assert clip_range is not None
            ratio = torch.exp(log_prob - data.old_log_prob)
            surrogate = torch.min(
                advantages * ratio,
                advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range),
            )
            policy_loss = -surrogate.sum()
            clipped = float(((ratio - 1).abs() > clip_range).float().sum())
        values_pred = values
        if clip_range_vf is not None:
            values_pred = data.old_values + torch.clamp(
                values - data.old_values, -clip_range_vf, clip_range_vf
            )
        value_loss = ((data.returns - values_pred) ** 2).sum()
        entropy_loss = -(entropy.sum() if entropy is not None else -log_prob.sum())
        total = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        parts = [
            float(len(advantages)),
            float(policy_loss.detach()),
            float(value_loss.detach()),
            float(entropy_loss.detach()),
            clipped,
            kl_sum,
        ]
        return total, parts

    def _kl_stop(self, approx_kl: float, a2c: bool, epoch: int) -> bool:
        """SB3's ``target_kl`` early stop, on the global approximate KL."""
        if a2c or self.target_kl is None or approx_kl <= 1.5 * self.target_kl:
            return False
        if self.verbose >= 1:
            print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl:.2f}")
        return True

    def _grad_chunks(self, data: Any) -> list[torch.Tensor | None]:
        """Row indices of the minibatch's chunks of ``grad_chunk_size`` whole sequences, or
        ``[None]`` (one forward and backward for the whole minibatch).

        A chunk holds every transition of the sequences it holds (grouped by
        :func:`~rlhf_gym.agents.sequence_eval.group_by_prefix`, the policy's own rule), so each
        sequence is still one forward and nothing is computed twice."""
        size = getattr(self, "grad_chunk_size", None)
        if size is None:
            return [None]
        obs = data.observations
        groups = group_by_prefix(obs["input_ids"].long(), obs["attention_mask"].long())
        n_groups = len(groups.representatives)
        if n_groups <= size:
            return [None]
        return [
            ((groups.group >= start) & (groups.group < start + size)).nonzero().flatten()
            for start in range(0, n_groups, size)
        ]

    def _record_train_logs(
        self,
        sums: list[float],
        approx_kl: float,
        clip_range: float | None,
        clip_range_vf: float | None,
        a2c: bool,
    ) -> None:
        """SB3's ``train/`` keys, from global sums (losses are means per sample here, where SB3
        averages per-minibatch means: equal when minibatches are equal)."""
        n = max(sums[0], 1.0)
        logger = self.logger
        buffer = self.rollout_buffer
        logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        logger.record(
            "train/explained_variance", _explained_variance(buffer.values, buffer.returns)
        )
        logger.record("train/entropy_loss", sums[3] / n)
        logger.record("train/value_loss", sums[2] / n)
        if a2c:
            logger.record("train/policy_loss", sums[1] / n)
            return
        logger.record("train/policy_gradient_loss", sums[1] / n)
        logger.record("train/approx_kl", approx_kl)
        logger.record("train/clip_fraction", sums[4] / n)
        logger.record(
            "train/loss", (sums[1] + self.ent_coef * sums[3] + self.vf_coef * sums[2]) / n
        )
        logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            logger.record("train/clip_range_vf", clip_range_vf)


def _rows(data: Any, rows: torch.Tensor) -> Any:
    """The samples ``rows`` of an SB3 minibatch (a NamedTuple of tensors, dict observations)."""
    fields = {}
    for name, value in data._asdict().items():
        if isinstance(value, dict):
            fields[name] = {k: v[rows] for k, v in value.items()}
        else:
            fields[name] = value[rows]
    return type(data)(**fields)


def stop_on_non_finite(algo: Any, loss: torch.Tensor) -> None:
    """Raise before the optimizer step when ``loss`` is inf/NaN on any rank, on every rank
    together (a rank raising alone would leave the others waiting in a collective)."""
    if not distributed.all_finite(float(loss.detach())):
        raise FloatingPointError(
            f"{type(algo).__name__}: the loss became {float(loss.detach())} at step "
            f"{algo.num_timesteps} on this or another rank, before the optimizer step (no "
            "weight changed; resume from the last checkpoint). Usual causes: rewards far larger "
            "than a few units (set a reward_bound / reward_clip) or a learning rate too high."
        )


def _explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """``1 - Var(returns - values) / Var(returns)`` over every rank's rollout (SB3's formula)."""
    y, d = returns.reshape(-1).astype(np.float64), (returns - values).reshape(-1)
    n, sy, syy, sd, sdd = distributed.all_reduce(
        [y.size, y.sum(), (y * y).sum(), d.sum(), (d.astype(np.float64) ** 2).sum()]
    )
    var_y = syy / n - (sy / n) ** 2
    var_d = sdd / n - (sd / n) ** 2
    return float("nan") if var_y == 0 else float(1 - var_d / var_y)
