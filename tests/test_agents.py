"""Algorithm registry, make_agent, and learning on a fixed-seed toy task for every algorithm."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import stable_baselines3 as sb3
import torch

from rlhf_gym.agents import (
    PPO,
    LoRAPolicy,
    MaskableLoRAPolicy,
    get_algorithm,
    list_algorithms,
    make_agent,
    register_algorithm,
)
from tests.test_agents_support import make_env


def test_list_algorithms_has_the_four_builtins() -> None:
    assert {"ppo", "a2c", "trpo", "maskable_ppo"} <= set(list_algorithms())
    assert get_algorithm("Maskable-PPO").policy is MaskableLoRAPolicy


def test_unknown_algorithm_suggests_close_names() -> None:
    with pytest.raises(ValueError, match=r"Unknown algorithm 'ppo2'.*Did you mean 'ppo'"):
        get_algorithm("ppo2")
    with pytest.raises(
        ValueError, match="Available: a2c, grpo, maskable_ppo, ppo, reinforce_pp, rloo, trpo"
    ):
        make_agent("sac", None, model="unused")  # type: ignore[arg-type]


def test_make_agent_defaults_and_overrides(tiny_tokenizer_dir: Path, tiny_lm_dir: Path) -> None:
    env = make_env(tiny_tokenizer_dir, num_envs=2)
    agent = make_agent(
        "ppo", env, model=str(tiny_lm_dir), n_steps=8, learning_rate=1e-3, device="cpu"
    )
    assert isinstance(agent, sb3.PPO) and isinstance(agent.policy, LoRAPolicy)
    assert agent.gamma == 1.0 and agent.ent_coef == 0.0 and agent.n_steps == 8
    assert agent.learning_rate == 1e-3 and agent.kl_controller.value == 0.05
    a2c = make_agent("a2c", env, model=str(tiny_lm_dir), device="cpu")
    assert isinstance(a2c.policy.optimizer, torch.optim.Adam)  # not A2C's RMSprop default
    by_class = make_agent(sb3.PPO, env, model=str(tiny_lm_dir), device="cpu")
    assert isinstance(by_class, PPO)  # the stock class maps to its KL-enabled twin
    # Fused attention by default; TRPO needs a double backward, which only eager attention has.
    assert agent.policy.attn_implementation == "sdpa"
    assert agent.policy.model.config._attn_implementation == "sdpa"
    trpo = make_agent("trpo", env, model=str(tiny_lm_dir), device="cpu")
    assert trpo.policy.attn_implementation == "eager"


@pytest.mark.parametrize("ent_coef", [0.0, 0.01])
def test_entropy_is_computed_in_training_only_when_it_is_in_the_loss(
    tiny_tokenizer_dir: Path, tiny_lm_dir: Path, ent_coef: float
) -> None:
    env = make_env(tiny_tokenizer_dir, num_envs=2)
    agent = make_agent(
        "ppo", env, model=str(tiny_lm_dir), n_steps=4, batch_size=8, ent_coef=ent_coef, device="cpu"
    )
    seen: list[bool] = []
    evaluate = agent.policy.evaluate_actions

    def spy(*args, **kwargs):
        out = evaluate(*args, **kwargs)
        seen.append(out[2] is None)
        return out

    agent.policy.evaluate_actions = spy
    agent.learn(8)
    assert seen and all(none is (ent_coef == 0.0) for none in seen)
    assert agent.policy.compute_entropy  # outside training, evaluate_actions gives the entropy
    # Both paths give the same values and log-probs (the entropy-free one skips the distribution).
    data = next(agent.rollout_buffer.get(8))
    with torch.no_grad():
        full = evaluate(data.observations, data.actions)
        agent.policy.compute_entropy = False
        lean = evaluate(data.observations, data.actions)
    torch.testing.assert_close(lean[0], full[0])
    torch.testing.assert_close(lean[1], full[1], atol=1e-6, rtol=0)


def test_register_algorithm_adds_kl_control(tiny_tokenizer_dir: Path, tiny_lm_dir: Path) -> None:
    @register_algorithm("my_ppo", defaults={"n_steps": 4})
    class MyPPO(sb3.PPO):
        pass

    try:
        env = make_env(tiny_tokenizer_dir, num_envs=2)
        agent = make_agent("my_ppo", env, model=str(tiny_lm_dir), kl_coef=0.3, device="cpu")
        assert isinstance(agent, MyPPO) and agent.n_steps == 4
        assert agent.kl_controller.value == 0.3
        agent.learn(8)
        assert agent.rollout_buffer.last_kl is not None
    finally:
        from rlhf_gym.agents import algorithms

        algorithms._REGISTRY.pop("my_ppo")


# ---------------------------------------------------------------------------- learning

#: The same arguments for every algorithm: only the name changes (rollout sizes: registry defaults).
LEARNING_KWARGS = dict(
    lora={"r": 8, "lora_alpha": 32, "target_modules": ["c_attn", "c_proj", "c_fc"]},
    learning_rate=3e-3,
    kl_coef=0.01,
    device="cpu",
    seed=0,
)
TIMESTEPS = {"ppo": 4096, "maskable_ppo": 4096, "a2c": 4096, "trpo": 4096}
#: Absolute rise of the mean terminal reward (fraction of target tokens; ~0.09 at the start).
MARGIN = 0.1


def mean_terminal_reward(agent, env, episodes: int = 96) -> float:
    obs = env.reset()
    rewards: list[float] = []
    while len(rewards) < episodes:
        masks = env.action_masks() if isinstance(agent.policy, MaskableLoRAPolicy) else None
        kwargs = {"action_masks": masks} if masks is not None else {}
        actions, _ = agent.predict(obs, deterministic=False, **kwargs)
        obs, reward, dones, _ = env.step(actions)
        rewards += [float(r) for r, d in zip(reward, dones, strict=True) if d]
    return float(np.mean(rewards))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "ppo",
        "a2c",
        "maskable_ppo",
        "trpo",
    ],
)
def test_each_algorithm_raises_the_reward(
    name: str, tiny_tokenizer_dir: Path, learnable_lm_dir: Path
) -> None:
    torch.manual_seed(0)
    env = make_env(tiny_tokenizer_dir, num_envs=4)
    agent = make_agent(name, env, model=str(learnable_lm_dir), **LEARNING_KWARGS)
    before = mean_terminal_reward(agent, make_env(tiny_tokenizer_dir, num_envs=4, seed=123))
    start = time.perf_counter()
    agent.learn(TIMESTEPS[name])
    seconds = time.perf_counter() - start
    after = mean_terminal_reward(agent, make_env(tiny_tokenizer_dir, num_envs=4, seed=123))
    print(f"{name}: mean terminal reward {before:.3f} -> {after:.3f} in {seconds:.1f}s")
    assert after >= before + MARGIN, (before, after)
