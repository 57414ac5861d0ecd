"""GRPO, RLOO and REINFORCE++: critic-free, group-relative policy optimisation on the same env.

One class, :class:`GroupRelativePO`, a stable-baselines3 ``OnPolicyAlgorithm`` (so ``learn``,
callbacks, loggers, ``save``/``load`` and the registry behave as for PPO), registered three times
with the defaults each method is known by:

=============== ================ ============== =========== ==================================
name            baseline         scale_rewards  loss_type   KL
=============== ================ ============== =========== ==================================
``grpo``        group mean       group std      ``grpo``    k3 in the loss (TRL's ``beta``)
``rloo``        leave-one-out    none           ``grpo``    k3 in the loss
``reinforce_pp``batch mean       batch std      ``bnpo``    per-token penalty on the reward
=============== ================ ============== =========== ==================================

Every option is a keyword (see :meth:`GroupRelativePO.__init__`), so Dr. GRPO is
``make_agent("grpo", ..., scale_rewards="none", loss_type="dr_grpo")``, DAPO is
``loss_type="dapo", clip_range_high=0.28`` and GSPO is ``importance_sampling_level="sequence"``.

Why two seams of SB3 are replaced here, not forked for fun: SB3's rollout buffer stores one
transition per token and its ``collect_rollouts`` treats every env step as a live transition.
A group algorithm needs whole episodes (one forward per sequence in training, minibatches of
whole episodes), the group each belongs to, and to skip the idle steps of an env in rounds
(:mod:`rlhf_gym.envs.vector`). So ``collect_rollouts`` keeps SB3's callback protocol
(``on_rollout_start``, ``on_step`` with ``update_locals``, ``on_rollout_end``), its
``num_timesteps`` (env steps, idle ones included, as the progress bar counts them) and its
episode-info buffer, and records episodes in an :class:`EpisodeBuffer`; ``train`` is the loss.

A rollout is ``n_rounds`` whole rounds: every completion in an update belongs to a complete group
of ``group_size`` answers to one prompt, all sampled by the policy of that update. With
``num_iterations > 1`` the rollout is reused with importance ratios against the log-probs the
rollout recorded (``old``); with 1 the ratio is 1 and the loss is the plain policy gradient.

Critic-free: the policy is built with ``value_head=None``: no head exists, runs or is saved.

Action masks (``use_masking=True``, the env's ``action_masks()``, e.g. banned or allowed tokens):
sampling, training and the KL reference use the same mask. A mask must stay fixed during an
episode (true of the env's token sets); one that changes mid-episode is refused, since storing a
``[tokens, vocab]`` mask per episode would cost what the chunked scoring saves.
"""

from __future__ import annotations

import difflib
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from rlhf_gym.agents import distributed
from rlhf_gym.agents import group_losses as gl
from rlhf_gym.agents.data_parallel import stop_on_non_finite
from rlhf_gym.agents.kl import make_kl_controller
from rlhf_gym.agents.loop_state import ResumableLoop
from rlhf_gym.agents.policy import LoRAPolicy, MaskableLoRAPolicy, record_model_by_path

_VALUE_OPTIONS = ("value_head", "value_trunk")


class EpisodeBuffer:
    """The finished episodes of one rollout, as sequences (not per-token transitions).

    ``add`` takes one episode; ``tensors`` stacks them: ``input_ids``/``attention_mask``
    ``[E, W]`` (prompt + response, right-padded), ``prompt_lens``/``response_lens``/``rewards``/
    ``group_ids`` ``[E]`` and the rollout's per-token ``old_log_probs`` ``[E, T]``.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.episodes: list[dict[str, Any]] = []
        self.full = False

    def __len__(self) -> int:
        return len(self.episodes)

    def add(
        self,
        terminal_obs: dict[str, np.ndarray],
        log_probs: list[float],
        reward: float,
        group_id: int,
        prompt_index: int,
        action_mask: np.ndarray | None = None,
    ) -> None:
        n_new = len(log_probs)
        total = int(np.asarray(terminal_obs["attention_mask"]).sum())
        self.episodes.append(
            {
                "input_ids": np.asarray(terminal_obs["input_ids"], dtype=np.int64),
                "prompt_len": total - n_new,
                "response_len": n_new,
                "log_probs": np.asarray(log_probs, dtype=np.float32),
                "reward": float(reward),
                "group_id": int(group_id),
                "prompt_index": int(prompt_index),
                "action_mask": action_mask,
            }
        )

    def tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        eps = self.episodes
        longest = max(e["response_len"] for e in eps)
        old = np.zeros((len(eps), longest), dtype=np.float32)
        for row, e in enumerate(eps):
            old[row, : e["response_len"]] = e["log_probs"]
        ids = np.stack([e["input_ids"] for e in eps])
        lens = np.array([e["prompt_len"] + e["response_len"] for e in eps])
        mask = (np.arange(ids.shape[1])[None, :] < lens[:, None]).astype(np.int64)

        def t(x: Any, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)

        masks = None
        if eps[0]["action_mask"] is not None:
            masks = t(np.stack([e["action_mask"] for e in eps]), torch.bool)  # [E, vocab]
        return {
            "action_masks": masks,  # type: ignore[dict-item]
            "input_ids": t(ids, torch.long),
            "attention_mask": t(mask, torch.long),
            "prompt_lens": t([e["prompt_len"] for e in eps], torch.long),
            "response_lens": t([e["response_len"] for e in eps], torch.long),
            "rewards": t([e["reward"] for e in eps], torch.float32),
            "group_ids": t([e["group_id"] for e in eps], torch.long),
            "old_log_probs": t(old, torch.float32),
        }


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.4)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown {what} {value!r}.{hint} Choose one of: {', '.join(allowed)}.")
    return value


class GroupRelativePO(ResumableLoop, OnPolicyAlgorithm):
    """Critic-free group-relative policy optimisation (GRPO, RLOO, REINFORCE++; module doc)."""

    policy_aliases: dict[str, type] = {}

    def __init__(
        self,
        policy: Any,
        env: Any,
        learning_rate: float | Schedule = 2e-4,
        *,
        n_rounds: int = 1,
        batch_size: int | None = None,
        num_iterations: int = 1,
        baseline: gl.Baseline = "group_mean",
        scale_rewards: gl.ScaleRewards = "group",
        loss_type: gl.LossType = "grpo",
        clip_range: float = 0.2,
        clip_range_high: float | None = None,
        importance_sampling_level: gl.ImportanceLevel = "token",
        kl_coef: float = 0.05,
        kl_target: float | None = None,
        kl_horizon: int = 10000,
        kl_in_loss: bool = True,
        use_masking: bool = False,
        grad_chunk_size: int | None = 8,
        ent_coef: float = 0.0,
        max_grad_norm: float = 1.0,
        vf_coef: float | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        """
        :param n_rounds: generation rounds per update (a round: every group answers one prompt).
        :param batch_size: episodes per optimizer step (whole episodes; ``None``: the rollout).
        :param num_iterations: passes over each rollout (TRL's ``num_iterations``); past the
            first, ratios against the rollout's log-probs matter and clipping acts.
        :param baseline: ``"group_mean"`` (GRPO), ``"leave_one_out"`` (RLOO) or ``"batch"``
            (REINFORCE++: per-token returns minus their batch mean).
        :param scale_rewards: divide advantages by the ``"group"`` std, the ``"batch"`` std, or
            ``"none"`` (Dr. GRPO, RLOO).
        :param loss_type: ``"grpo"``, ``"bnpo"``, ``"dapo"`` or ``"dr_grpo"``
            (:mod:`rlhf_gym.agents.group_losses`).
        :param clip_range: epsilon of the ratio clip (lower side, and upper when
            ``clip_range_high`` is None).
        :param clip_range_high: upper epsilon (DAPO's clip-higher, e.g. 0.28).
        :param importance_sampling_level: ``"token"`` ratios or ``"sequence"`` (GSPO).
        :param kl_coef: beta, the KL coefficient (initial value when adaptive); 0 disables the
            reference pass entirely unless ``kl_target`` is set.
        :param kl_target: target KL per sequence for the adaptive controller (as PPO's).
        :param kl_horizon: horizon of the adaptive controller, in sequences.
        :param kl_in_loss: ``True``: ``beta * k3`` per token in the loss (TRL); ``False``: the
            per-token penalty ``beta * (logp - ref)`` on the reward, as the SB3 algorithms here.
        :param use_masking: sample, train and score the reference under the env's
            ``action_masks()`` (the policy becomes :class:`MaskableLoRAPolicy`).
        :param grad_chunk_size: sequences per forward/backward inside a minibatch; their
            gradients accumulate before the one optimizer step, so training memory follows
            this, not ``batch_size`` (``None``: the whole minibatch at once).
        :param ent_coef: entropy bonus (computed chunk by chunk only when non-zero).
        :param max_grad_norm: gradient clipping norm.
        :param vf_coef: refused: there is no value function.
        """
        pkw = dict(policy_kwargs or {})
        given = [k for k in _VALUE_OPTIONS if pkw.get(k) is not None]
        if vf_coef is not None or given:
            what = "vf_coef" if vf_coef is not None else f"policy_kwargs[{given[0]!r}]"
            raise ValueError(
                f"{type(self).__name__} is critic-free: it builds no value head, so {what} has "
                "no effect; remove it (or pick ppo/a2c/trpo for a value function)."
            )
        pkw["value_head"] = None
        self.use_masking = bool(use_masking)
        if self.use_masking and policy is LoRAPolicy:
            policy = MaskableLoRAPolicy
        if int(n_rounds) < 1:
            raise ValueError(f"n_rounds must be >= 1, got {n_rounds}")
        if int(num_iterations) < 1:
            raise ValueError(
                f"num_iterations must be >= 1 (passes over each rollout), got {num_iterations}"
            )
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1 episodes or None, got {batch_size}")
        if grad_chunk_size is not None and int(grad_chunk_size) < 1:
            raise ValueError(f"grad_chunk_size must be >= 1 or None, got {grad_chunk_size}")
        self.grad_chunk_size = None if grad_chunk_size is None else int(grad_chunk_size)
        self.n_rounds = int(n_rounds)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.num_iterations = int(num_iterations)
        self.baseline = _choice(baseline, gl.BASELINES, "baseline")
        self.scale_rewards = _choice(scale_rewards, gl.SCALES, "scale_rewards")
        self.loss_type = _choice(loss_type, gl.LOSS_TYPES, "loss_type")
        self.importance_sampling_level = _choice(
            importance_sampling_level, ("token", "sequence"), "importance_sampling_level"
        )
        if self.baseline == "batch" and self.scale_rewards == "group":
            raise ValueError(
                "baseline='batch' whitens over the batch: use scale_rewards='batch' or 'none'"
            )
        if clip_range <= 0 or (clip_range_high is not None and clip_range_high <= 0):
            raise ValueError("clip_range and clip_range_high must be > 0")
        self.clip_range = float(clip_range)
        self.clip_range_high = None if clip_range_high is None else float(clip_range_high)
        self.kl_in_loss = bool(kl_in_loss)
        self.kl_controller = make_kl_controller(kl_coef, kl_target, kl_horizon)
        self._mid_round = False
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=1,  # unused: a rollout is n_rounds whole rounds
            gamma=1.0,
            gae_lambda=1.0,
            ent_coef=ent_coef,
            vf_coef=0.0,
            max_grad_norm=max_grad_norm,
            use_sde=False,
            sde_sample_freq=-1,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=pkw,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
            supported_action_spaces=(spaces.Discrete,),
        )
        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------ setup
    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        if self.use_masking and not issubclass(self.policy_class, MaskableLoRAPolicy):
            raise ValueError(
                f"use_masking=True needs MaskableLoRAPolicy, got {self.policy_class.__name__}"
            )
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)
        distributed.broadcast_parameters(self.policy.parameters())  # equal start on every rank
        self.rollout_buffer = EpisodeBuffer()  # type: ignore[assignment]
        self.policy_kwargs = record_model_by_path(self.policy_kwargs, self.policy)
        if self.env is not None:
            self._check_env(self.env)

    def _check_env(self, env: VecEnv) -> None:
        name = type(self).__name__
        if not getattr(env, "rounds", False):
            raise ValueError(
                f"{name} needs an env in rounds, where all answers of an update come from "
                "complete groups: rlhf_gym.envs.make_vec_env(num_envs, group_size=k) (or "
                "group_size=1, rounds=True for REINFORCE++ without groups)."
            )
        k = int(getattr(env, "group_size", 1))
        if self.baseline != "batch" and k < 2:
            raise ValueError(
                f"{name} with baseline={self.baseline!r} compares the answers of one prompt and "
                f"needs group_size >= 2, got {k}: make_vec_env(num_envs, group_size=4, ...)."
            )

    # ------------------------------------------------------------------ rollout
    def collect_rollouts(  # type: ignore[override]
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: EpisodeBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """Play ``n_rounds`` whole rounds and store their episodes (module docstring)."""
        assert self._last_obs is not None, "No previous observation was provided"
        self._check_env(env)
        if self._mid_round:  # a previous learn() stopped inside a round: start a fresh one
            self._last_obs = env.reset()  # type: ignore[assignment]
            self._mid_round = False
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        start = self.num_timesteps
        n_envs = env.num_envs
        log_probs: list[list[float]] = [[] for _ in range(n_envs)]
        finished = np.zeros(n_envs, dtype=bool)
        rounds = idle_steps = steps = 0
        masks = episode_masks = None
        if self.use_masking:
            episode_masks = get_action_masks(env).astype(bool)  # [n_envs, vocab], per episode
        callback.on_rollout_start()
        while rounds < self.n_rounds:
            with torch.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                if episode_masks is None:
                    actions, _, step_log_probs = self.policy(obs_tensor)
                else:
                    masks = get_action_masks(env).astype(bool)
                    active = np.array([len(lp) > 0 for lp in log_probs])
                    if (masks[active] != episode_masks[active]).any():
                        raise ValueError(
                            "an env's action mask changed during an episode; the group "
                            "algorithms score whole episodes under one mask per episode"
                        )
                    episode_masks[~active] = masks[~active]
                    actions, _, step_log_probs = self.policy(obs_tensor, action_masks=masks)
            actions_np = actions.cpu().numpy()
            step_lp = step_log_probs.cpu().numpy()
            new_obs, rewards, dones, infos = env.step(actions_np)
            self.num_timesteps += n_envs
            steps += n_envs
            callback.update_locals(locals())
            if not callback.on_step():
                self._mid_round = True
                self.num_timesteps = distributed.count_steps(start, self.num_timesteps)
                return False
            self._update_info_buffer(infos, dones)
            for i in range(n_envs):
                if infos[i].get("idle"):
                    idle_steps += 1
                    continue
                log_probs[i].append(float(step_lp[i]))
                if dones[i]:
                    info = infos[i]
                    rollout_buffer.add(
                        info["terminal_observation"],
                        log_probs[i],
                        float(rewards[i]),
                        int(info["group_id"]),
                        int(info["prompt_index"]),
                        None if episode_masks is None else episode_masks[i].copy(),
                    )
                    log_probs[i] = []
                    finished[i] = True
            if finished.all():  # the env started the next round in this same step
                rounds += 1
                finished[:] = False
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
        rollout_buffer.full = True
        # Ranks finish their rounds after different numbers of steps (answers end at EOS):
        # num_timesteps counts every rank's, so learn() and the callbacks agree on all of them.
        self.num_timesteps = distributed.count_steps(start, self.num_timesteps)
        self.logger.record("rollout/idle_share", idle_steps / max(steps, 1))
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    # ------------------------------------------------------------------ update
    def _advantages(
        self, batch: dict[str, torch.Tensor], mask: torch.Tensor, kl: torch.Tensor | None
    ) -> torch.Tensor:
        """``[E, T]`` advantages; ``kl`` (``[E, T]`` logp - ref) shapes rewards when not in the loss."""
        beta = 0.0 if self.kl_in_loss else float(self.kl_controller.value)
        rewards = batch["rewards"]
        # Batch statistics over every rank; None: this process's, computed as always.
        sum_fn = distributed.all_reduce_tensor if distributed.enabled() else None
        if self.baseline == "batch":
            returns = gl.token_returns(rewards, kl, mask, beta)
            return gl.batch_whiten(
                returns, mask, scale=self.scale_rewards == "batch", sum_fn=sum_fn
            )
        if kl is not None and beta:
            rewards = rewards - beta * (kl * mask).sum(-1)
        order = torch.argsort(batch["group_ids"], stable=True)
        k = int(getattr(self.env, "group_size", 1))
        grouped = rewards[order].reshape(-1, k)  # [G, k]; complete groups (checked)
        adv = torch.empty_like(rewards)
        adv[order] = gl.group_advantages(
            grouped, baseline=self.baseline, scale=self.scale_rewards, sum_fn=sum_fn
        ).flatten()
        zero_std = (grouped.std(-1) == 0).float().mean() if k > 1 else torch.tensor(0.0)
        self.logger.record("rollout/zero_std_share", float(zero_std))
        return adv[:, None] * mask

    def _check_groups(self, group_ids: torch.Tensor) -> None:
        k = int(getattr(self.env, "group_size", 1))
        _, counts = torch.unique(group_ids, return_counts=True)
        if not bool((counts == k).all()):
            raise RuntimeError(
                f"incomplete groups in a rollout (sizes {sorted(set(counts.tolist()))}, expected "
                f"{k}); the env must run in rounds"
            )

    def train(self) -> None:
        """Advantages for the rollout, then ``num_iterations`` passes of clipped updates."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        buffer: EpisodeBuffer = self.rollout_buffer  # type: ignore[assignment]
        batch = buffer.tensors(self.device)
        self._check_groups(batch["group_ids"])
        old = batch["old_log_probs"]
        mask = (
            torch.arange(old.shape[1], device=old.device)[None, :] < batch["response_lens"][:, None]
        ).float()
        beta = float(self.kl_controller.value)
        need_ref = beta > 0 or hasattr(self.kl_controller, "target")
        ref = kl = None
        if need_ref:
            ref, _ = self.policy.score_responses(
                batch["input_ids"],
                batch["attention_mask"],
                batch["prompt_lens"],
                batch["response_lens"],
                reference=True,
                action_masks=batch["action_masks"],
            )
            kl = (old - ref) * mask
            kl_sum, n_seq, n_tok = distributed.all_reduce(
                [float(kl.sum()), old.shape[0], float(mask.sum())]
            )  # global over ranks: every rank's controller takes the same step
            kl_per_seq = kl_sum / n_seq
            self.logger.record("rollout/kl", kl_per_seq)
            self.logger.record("rollout/kl_per_token", kl_sum / n_tok)
            self.kl_controller.update(kl_per_seq, int(n_seq))
        self.logger.record("train/kl_coef", beta)
        advantages = self._advantages(batch, mask, kl)
        world = distributed.world_size()
        all_tokens, all_seqs = distributed.all_reduce([float(mask.sum()), mask.shape[0]])
        tokens_per_seq = all_tokens / all_seqs  # DAPO's normaliser: the whole rollout's
        max_new = self._max_new_tokens(int(old.shape[1]))
        n = old.shape[0]
        size = self.batch_size or n
        masks = batch["action_masks"]
        losses, clip_fractions, approx_kls, ref_kls = [], [], [], []
        chunk = self.grad_chunk_size or size
        context = {"mask": mask, "old": old, "advantages": advantages, "ref": ref, "beta": beta,
                   "masks": masks, "max_new": max_new, "tokens_per_seq": tokens_per_seq}  # fmt: skip
        for _ in range(self.num_iterations):
            for idx in torch.randperm(n, device=old.device).split(size):
                # A group's answers side by side: a chunk holding several of them runs their
                # prompt once (shared_prefix). The minibatch itself stays a random draw.
                idx = idx[torch.argsort(batch["group_ids"][idx], stable=True)]
                # The minibatch's tokens over every rank, per rank: bnpo's mean over all of them
                # once the ranks' gradients are averaged (equal sequence counts on every rank).
                n_tokens = distributed.all_reduce([float(mask[idx].sum())])[0] / world
                self.policy.optimizer.zero_grad()
                sums = np.zeros(4)  # loss, approx-KL sum, clipped tokens, k3 sum
                # The minibatch's prompts run once for all its chunks, when their forward is no
                # larger than one chunk's (its activations live until the last chunk's backward).
                longest = int(batch["attention_mask"][idx].sum(-1).max())
                shared_prompts = self.policy.shared_prompts(
                    *(batch[k][idx] for k in ("input_ids", "attention_mask", "prompt_lens")),
                    max_tokens=chunk * longest,
                ) if len(idx) > chunk else nullcontext()  # fmt: skip
                with shared_prompts as shared:
                    for rows in torch.arange(len(idx), device=idx.device).split(chunk):
                        context["shared"] = None if shared is None else (shared, rows)
                        loss, stats = self._chunk_loss(
                            batch, idx[rows], len(idx), n_tokens, context
                        )
                        stop_on_non_finite(self, loss)
                        loss.backward()  # gradients accumulate over the minibatch's chunks
                        sums += [float(loss.detach()), *stats]
                context["shared"] = None  # the shared tokens' leaves and gradients go
                distributed.average_gradients(self.policy.parameters())
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
                losses.append(sums[0])
                approx_kls.append(sums[1] / max(n_tokens, 1.0))
                clip_fractions.append(sums[2] / max(n_tokens, 1.0))
                if self.kl_in_loss and ref is not None and beta > 0:
                    ref_kls.append(sums[3] / max(n_tokens, 1.0))
        self.policy.set_training_mode(False)  # weights changed: rollout caches rebuild
        self._n_updates += self.num_iterations
        self.logger.record("train/loss", float(np.mean(losses)))
        self.logger.record("train/clip_fraction", float(np.mean(clip_fractions)))
        self.logger.record("train/approx_kl", float(np.mean(approx_kls)))
        if ref_kls:
            self.logger.record("train/kl_k3", float(np.mean(ref_kls)))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("rollout/reward_mean", float(batch["rewards"].mean()))
        self.logger.record("rollout/response_tokens", float(mask.sum()))

    def _chunk_loss(
        self,
        batch: dict[str, torch.Tensor],
        idx: torch.Tensor,
        n_sequences: int,
        n_tokens: float,
        c: dict[str, Any],
    ) -> tuple[torch.Tensor, tuple[float, float, float]]:
        """The loss of rows ``idx``, one chunk of a minibatch of ``n_sequences`` sequences and
        ``n_tokens`` response tokens, normalised so the chunks' losses sum to the minibatch's;
        and the chunk's (approx-KL, clipped-token, k3) sums for logging."""
        log_prob, entropy = self.policy.score_responses(
            batch["input_ids"][idx],
            batch["attention_mask"][idx],
            batch["prompt_lens"][idx],
            batch["response_lens"][idx],
            entropy=self.ent_coef != 0.0,
            action_masks=None if c["masks"] is None else c["masks"][idx],
            shared=c.get("shared"),
        )
        width = log_prob.shape[1]  # [b, T] the chunk's longest response
        m = c["mask"][idx][:, :width]
        old = c["old"][idx][:, :width]
        per_token, clipped = gl.clipped_surrogate(
            log_prob,
            old,
            c["advantages"][idx][:, :width],
            m,
            clip_range=self.clip_range,
            clip_range_high=self.clip_range_high,
            level=self.importance_sampling_level,  # type: ignore[arg-type]
        )
        k3_sum = 0.0
        if self.kl_in_loss and c["ref"] is not None and c["beta"] > 0:
            k3 = gl.k3_kl(log_prob, c["ref"][idx][:, :width])
            per_token = per_token + c["beta"] * k3 * m
            k3_sum = float((k3.detach() * m).sum())
        if entropy is not None:
            per_token = per_token - self.ent_coef * entropy * m
        loss = gl.aggregate(
            per_token,
            m,
            self.loss_type,  # type: ignore[arg-type]
            max_new_tokens=c["max_new"],
            tokens_per_sequence=c["tokens_per_seq"],
            n_sequences=n_sequences,
            n_tokens=n_tokens,
        )
        with torch.no_grad():
            log_ratio = (log_prob - old) * m
            approx = float(((torch.exp(log_ratio) - 1) - log_ratio).sum())
        return loss, (approx, float(clipped.float().sum()), k3_sum)

    def _max_new_tokens(self, fallback: int) -> int:
        """Dr. GRPO's constant: the env's ``max_new_tokens`` (the longest response seen if unknown)."""
        try:
            return int(self.env.get_attr("max_new_tokens", [0])[0])  # type: ignore[union-attr]
        except (AttributeError, IndexError):
            return fallback

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_mid_round"]


class GRPO(GroupRelativePO):
    """GRPO (Shao et al., 2024): group-mean baseline scaled by the group std, k3 KL in the loss
    (:class:`GroupRelativePO`'s own defaults)."""


class RLOO(GroupRelativePO):
    """RLOO (Ahmadian et al., 2024): each answer's baseline is the mean of the other k-1."""

    def __init__(self, policy: Any, env: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("baseline", "leave_one_out")
        kwargs.setdefault("scale_rewards", "none")
        super().__init__(policy, env, *args, **kwargs)


class REINFORCEpp(GroupRelativePO):
    """REINFORCE++ (Hu, 2025): per-token returns with the KL penalty, whitened over the batch."""

    def __init__(self, policy: Any, env: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("baseline", "batch")
        kwargs.setdefault("scale_rewards", "batch")
        kwargs.setdefault("loss_type", "bnpo")
        kwargs.setdefault("kl_in_loss", False)
        super().__init__(policy, env, *args, **kwargs)


def class_for_baseline(baseline: str) -> type[GroupRelativePO]:
    """The registered class whose defaults match a saved agent's ``baseline``."""
    return {"group_mean": GRPO, "leave_one_out": RLOO, "batch": REINFORCEpp}.get(
        baseline, GroupRelativePO
    )
