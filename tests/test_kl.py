"""KL control: controllers, reward shaping before GAE, for every registered algorithm.

In the spirit of stable-baselines3's tests/test_gae.py: a callback inspects the rollout buffer
after ``compute_returns_and_advantage`` and checks it against a hand calculation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from rlhf_gym.agents import (
    AdaptiveKLController,
    FixedKLController,
    list_algorithms,
    make_agent,
    make_kl_controller,
    shape_rewards,
)
from tests.test_agents_support import full_forward, make_env

RANDOM_LORA = {"init_lora_weights": False}


def test_shape_rewards_hand_numbers() -> None:
    rewards = np.array([[0.0], [0.0], [1.0]], dtype=np.float32)
    log_probs = np.array([[-1.0], [-2.0], [-0.5]], dtype=np.float32)
    ref = np.array([[-1.5], [-2.0], [-1.0]], dtype=np.float32)
    shaped, kl = shape_rewards(rewards, log_probs, ref, beta=0.1)
    np.testing.assert_allclose(kl, [[0.5], [0.0], [0.5]])
    np.testing.assert_allclose(shaped, [[-0.05], [0.0], [0.95]], atol=1e-7)
    assert shaped.dtype == np.float32


def test_adaptive_controller_follows_ziegler_update() -> None:
    ctl = make_kl_controller(0.1, kl_target=6.0, kl_horizon=10000)
    assert isinstance(ctl, AdaptiveKLController)
    ctl.update(current=9.0, n_steps=100)  # error clipped to +0.2 -> beta * (1 + 0.2 * 100 / 10000)
    assert ctl.value == pytest.approx(0.1 * 1.002)
    ctl.update(current=5.4, n_steps=1000)  # error -0.1 -> beta * (1 - 0.1 * 0.1)
    assert ctl.value == pytest.approx(0.1 * 1.002 * 0.99)
    fixed = make_kl_controller(0.2)
    fixed.update(100.0, 10)
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.2
    with pytest.raises(ValueError):
        make_kl_controller(-1.0)


class CheckShaping(BaseCallback):
    """Records raw env rewards per step; after GAE, checks the buffer by hand."""

    def __init__(self, beta: float, check_gae: bool) -> None:
        super().__init__()
        self.beta, self.check_gae = beta, check_gae
        self.raw: list[np.ndarray] = []
        self.checked = 0

    def _on_rollout_start(self) -> None:
        self.raw = []

    def _on_step(self) -> bool:
        self.raw.append(np.array(self.locals["rewards"], dtype=np.float32))
        return True

    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        policy = self.model.policy
        raw = np.stack(self.raw)
        n_steps, n_envs = raw.shape
        ref = np.zeros_like(raw)
        for t in range(n_steps):
            for e in range(n_envs):
                ids = buf.observations["input_ids"][t, e]
                n = int(buf.observations["attention_mask"][t, e].sum())
                logp, _ = full_forward(policy, torch.as_tensor(ids[:n]), adapter=False)
                ref[t, e] = float(logp[int(buf.actions[t, e, 0])])
        kl = buf.log_probs - ref
        assert np.abs(kl).max() > 1e-3  # the adapter is not zero: the penalty is not vacuous
        np.testing.assert_allclose(buf.rewards, raw - self.beta * kl, atol=1e-5, rtol=0)
        n_sequences = n_envs + int(buf.episode_starts[1:].sum())
        logged = self.model.logger.name_to_value
        assert logged["rollout/kl"] == pytest.approx(kl.sum() / n_sequences, abs=1e-4)
        assert logged["train/kl_coef"] == pytest.approx(self.beta)
        if self.check_gae:  # advantages come from the SHAPED rewards
            gamma, lam = self.model.gamma, self.model.gae_lambda
            last_values = self.locals["values"].flatten().numpy()
            dones = self.locals["dones"].astype(np.float32)
            adv = np.zeros_like(raw)
            last = np.zeros(n_envs, dtype=np.float32)
            for t in reversed(range(n_steps)):
                if t == n_steps - 1:
                    non_terminal, next_values = 1.0 - dones, last_values
                else:
                    non_terminal, next_values = 1.0 - buf.episode_starts[t + 1], buf.values[t + 1]
                delta = buf.rewards[t] + gamma * next_values * non_terminal - buf.values[t]
                last = delta + gamma * lam * non_terminal * last
                adv[t] = last
            np.testing.assert_allclose(buf.advantages, adv, atol=1e-5, rtol=0)
            np.testing.assert_allclose(buf.returns, adv + buf.values, atol=1e-5, rtol=0)
        self.checked += 1


def test_shaped_rewards_and_advantages_match_hand_calculation(
    tiny_tokenizer_dir: Path, tiny_lm_dir: Path
) -> None:
    env = make_env(tiny_tokenizer_dir, num_envs=2, max_new_tokens=3)
    agent = make_agent(
        "ppo", env, model=str(tiny_lm_dir), lora=RANDOM_LORA, kl_coef=0.1,
        n_steps=7, batch_size=14, n_epochs=1, gae_lambda=0.9, device="cpu",
    )  # fmt: skip
    callback = CheckShaping(beta=0.1, check_gae=True)
    agent.learn(28, callback=callback)
    assert callback.checked == 2


@pytest.mark.parametrize("name", ["a2c", "trpo", "maskable_ppo"])
def test_every_registered_algorithm_shapes_rewards(
    name: str, tiny_tokenizer_dir: Path, tiny_lm_dir: Path
) -> None:
    assert name in list_algorithms()
    env = make_env(tiny_tokenizer_dir, num_envs=2, max_new_tokens=3)
    agent = make_agent(
        name, env, model=str(tiny_lm_dir), lora=RANDOM_LORA, kl_coef=0.2, n_steps=5, device="cpu"
    )
    callback = CheckShaping(beta=0.2, check_gae=False)
    agent.learn(10, callback=callback)
    assert callback.checked == 1


def test_adaptive_beta_moves_and_is_saved(
    tiny_tokenizer_dir: Path, tiny_lm_dir: Path, tmp_path: Path
) -> None:
    env = make_env(tiny_tokenizer_dir, num_envs=2, max_new_tokens=3)
    agent = make_agent(
        "a2c", env, model=str(tiny_lm_dir), lora=RANDOM_LORA, kl_coef=0.1, kl_target=1e-3,
        kl_horizon=10, n_steps=5, device="cpu",
    )  # fmt: skip
    agent.learn(10)
    # the random adapter is far from the base: KL >> target, beta grows by the clipped 20% rate
    n_sequences = 2 + int(agent.rollout_buffer.episode_starts[1:].sum())
    assert agent.kl_controller.value == pytest.approx(0.1 * (1 + 0.2 * n_sequences / 10))
    agent.save(tmp_path / "a2c.zip")
    from rlhf_gym.agents import A2C

    loaded = A2C.load(tmp_path / "a2c.zip", env=env, device="cpu")
    assert loaded.kl_controller == agent.kl_controller
    assert loaded.rollout_buffer._algorithm() is loaded


@pytest.mark.parametrize("n_steps, skipped", [(6, True), (4, False)])
def test_unused_final_bootstrap_is_skipped_and_changes_nothing(
    n_steps: int, skipped: bool, tiny_tokenizer_dir: Path, tiny_lm_dir: Path
) -> None:
    """Episodes of exactly 3 tokens: after 6 steps every env has just finished, so SB3's final
    ``predict_values`` (multiplied by zero in GAE) runs no forward; after 4 steps the envs are
    mid-episode and it must run. Advantages and returns equal stock SB3's either way."""
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    results = []
    for ours in (True, False):
        env = make_env(tiny_tokenizer_dir, num_envs=2, max_new_tokens=3, stop_on_eos=False)
        agent = make_agent(
            "ppo", env, model=str(tiny_lm_dir), lora=RANDOM_LORA, kl_coef=0.1, seed=0,
            n_steps=n_steps, batch_size=2 * n_steps, device="cpu",
        )  # fmt: skip
        _, callback = agent._setup_learn(2 * n_steps, callback=None)
        policy, forwards = agent.policy, []
        original = policy._last_outputs

        def counted(obs, *, use_cache, original=original, forwards=forwards):
            forwards.append(1)
            return original(obs, use_cache=use_cache)

        policy._last_outputs = counted
        collect = (
            agent.collect_rollouts if ours else OnPolicyAlgorithm.collect_rollouts.__get__(agent)
        )
        assert collect(agent.env, callback, agent.rollout_buffer, n_steps)
        buf = agent.rollout_buffer
        results.append(
            (len(forwards), buf.log_probs.copy(), buf.advantages.copy(), buf.returns.copy())
        )
        assert policy.bootstrap_unused is None  # only set while collecting
    (ours_forwards, *ours), (stock_forwards, *stock) = results
    assert stock_forwards == n_steps + 1
    assert ours_forwards == (n_steps if skipped else n_steps + 1)
    for got, want in zip(ours, stock, strict=True):
        np.testing.assert_array_equal(got, want)
