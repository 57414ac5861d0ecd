"""Groups in the env layer and the group-relative algorithms (GRPO, RLOO, REINFORCE++)."""

from __future__ import annotations

import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

import rlhf_gym.envs  # noqa: F401
from rlhf_gym.agents import GRPO, RLOO, REINFORCEpp, load_agent, make_agent
from rlhf_gym.agents.response_scoring import score_responses
from rlhf_gym.envs import ENV_ID, TextGenerationVectorEnv, make_vec_env
from tests.test_agents import LEARNING_KWARGS, MARGIN, mean_terminal_reward
from tests.test_agents_support import PROMPTS, make_env, target_fraction

GROUP_KWARGS = dict(lora={"r": 4}, kl_coef=0.05, learning_rate=1e-3, device="cpu", seed=0)


def vec_env(tokenizer_dir: Path, n: int = 8, k: int = 4, **kw):
    return TextGenerationVectorEnv(
        n,
        group_size=k,
        tokenizer=str(tokenizer_dir),
        prompts=PROMPTS,
        reward=target_fraction,
        max_prompt_tokens=16,
        max_new_tokens=4,
        **kw,
    )


# ---------------------------------------------------------------------------- env: rounds


def test_groups_answer_one_prompt_and_finished_members_idle(tiny_tokenizer_dir, tiny_tokenizer):
    venv = vec_env(tiny_tokenizer_dir, n=4, k=2)
    _, info = venv.reset(seed=0)
    prompts = info["prompt_index"]
    assert prompts[0] == prompts[1] and prompts[2] == prompts[3] and prompts[0] != prompts[2]
    assert info["group_id"].tolist() == [0, 0, 1, 1]
    eos, e = tiny_tokenizer.eos_token_id, tiny_tokenizer("e")["input_ids"][0]
    obs, _, term, trunc, info = venv.step(np.array([eos, e, e, e]))
    assert term.tolist() == [True, False, False, False]
    assert info["final_info"]["group_id"][0] == 0
    assert info["final_info"]["prompt_index"][0] == prompts[0]
    length = int(obs["attention_mask"][0].sum())
    # Env 0 idles: its action is ignored, it is not done again, its obs grows by a pad token.
    obs, rewards, term, trunc, info = venv.step(np.array([e, e, e, e]))
    assert info["idle"].tolist() == [True, False, False, False]
    assert rewards[0] == 0.0 and not (term[0] or trunc[0])
    assert int(obs["attention_mask"][0].sum()) == length + 1
    assert obs["input_ids"][0, length] == tiny_tokenizer.pad_token_id
    venv.step(np.array([e, e, e, e]))
    # Step 4: envs 1-3 hit max_new_tokens; the next round starts in the same step.
    obs, _, term, trunc, info = venv.step(np.array([e, e, e, e]))
    assert trunc.tolist() == [False, True, True, True]
    assert info["group_id"].tolist() == [2, 2, 3, 3]
    assert not venv.idle.any()
    lengths = obs["attention_mask"].sum(1)
    assert lengths[0] == lengths[1] and lengths[2] == lengths[3]  # fresh prompts, no response


def test_rounds_are_seeded_and_serve_each_prompt_once_per_epoch(tiny_tokenizer_dir):
    def first_prompts(seed: int) -> list[int]:
        venv = vec_env(tiny_tokenizer_dir, n=5, k=1, rounds=True)
        _, info = venv.reset(seed=seed)
        return info["prompt_index"].tolist()

    assert first_prompts(3) == first_prompts(3)
    assert sorted(first_prompts(3)) == list(range(len(PROMPTS)))  # one epoch, no repeats


def test_group_size_errors(tiny_tokenizer_dir):
    with pytest.raises(
        ValueError, match=r"group_size=3 does not divide num_envs=8.*num_envs=6 or 9"
    ):
        vec_env(tiny_tokenizer_dir, n=8, k=3)
    with pytest.raises(ValueError, match="needs rounds=True"):
        vec_env(tiny_tokenizer_dir, n=8, k=2, rounds=False)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        vec_env(tiny_tokenizer_dir, n=8, k=0)


def test_gym_make_vec_takes_group_size(tiny_tokenizer_dir):
    venv = gym.make_vec(
        ENV_ID,
        num_envs=4,
        vectorization_mode="vector_entry_point",
        group_size=2,
        tokenizer=str(tiny_tokenizer_dir),
        prompts=PROMPTS,
        reward="length",
        max_prompt_tokens=16,
        max_new_tokens=3,
    )
    _, info = venv.reset(seed=0)
    assert venv.unwrapped.group_size == 2
    assert info["group_id"].tolist() == [0, 0, 1, 1]


# ---------------------------------------------------------------------------- response scoring


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_score_responses_matches_a_full_forward_and_chunks_change_nothing(arch: str) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2))
    else:
        cfg = LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            eos_token_id=0,
            bos_token_id=0,
        )
        model = LlamaForCausalLM(cfg)
    model.eval()
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    prompt_lens, response_lens = torch.tensor([3, 2]), torch.tensor([4, 3])
    expected = torch.zeros(2, 4)
    for b in range(2):
        n = int(mask[b].sum())
        logp = torch.log_softmax(model(input_ids=ids[b : b + 1, :n]).logits[0].float(), -1)
        for j in range(int(response_lens[b])):
            pos = int(prompt_lens[b]) + j
            expected[b, j] = logp[pos - 1, ids[b, pos]]
    whole, _ = score_responses(model, ids, mask, prompt_lens, response_lens, budget_mb=64)
    torch.testing.assert_close(whole, expected, atol=1e-5, rtol=1e-5)
    # A budget of one token per chunk: the same values and the same gradients.
    grads = []
    for budget in (64, 1e-6):
        model.zero_grad()
        lp, ent = score_responses(
            model, ids, mask, prompt_lens, response_lens, budget_mb=budget, entropy=True
        )
        (lp.sum() + ent.sum()).backward()  # type: ignore[union-attr]
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
        torch.testing.assert_close(lp, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------- algorithms


class RolloutProbe(BaseCallback):
    """Records, per rollout, the episodes the update will use and the env state at its start."""

    def __init__(self) -> None:
        super().__init__()
        self.starts_fresh: list[bool] = []
        self.rollouts: list[list[dict]] = []
        self.fingerprints: list[tuple] = []

    def _on_rollout_start(self) -> None:
        env = self.model.get_env()
        self.starts_fresh.append(all(len(r) == 0 for r in env.get_attr("response_ids")))
        self.fingerprints.append(self._weights())

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.rollouts.append(list(self.model.rollout_buffer.episodes))
        assert self._weights() == self.fingerprints[-1]  # sampled by one policy

    def _weights(self) -> tuple:
        return tuple(float(p.detach().sum()) for p in self.model.policy.parameters())


def test_every_update_uses_complete_groups_sampled_by_its_policy(tiny_tokenizer_dir, tiny_lm_dir):
    env = make_env(tiny_tokenizer_dir, num_envs=8, group_size=4, max_new_tokens=5)
    agent = make_agent("grpo", env, model=str(tiny_lm_dir), n_rounds=2, **GROUP_KWARGS)
    probe = RolloutProbe()
    agent.learn(400, callback=probe)
    assert len(probe.rollouts) >= 3 and all(probe.starts_fresh)
    for episodes in probe.rollouts:
        assert len(episodes) == 2 * 8  # n_rounds x num_envs: nothing dropped, nothing stale
        groups: dict[int, list[dict]] = {}
        for ep in episodes:
            groups.setdefault(ep["group_id"], []).append(ep)
            assert len(ep["log_probs"]) == ep["response_len"] >= 1
        assert all(len(g) == 4 for g in groups.values())
        assert all(len({ep["prompt_index"] for ep in g}) == 1 for g in groups.values())


def test_group_algorithms_are_critic_free(tiny_tokenizer_dir, tiny_lm_dir, tmp_path):
    env = make_env(tiny_tokenizer_dir, num_envs=4, group_size=2)
    agent = make_agent("grpo", env, model=str(tiny_lm_dir), **GROUP_KWARGS)
    assert agent.policy.value_head is None
    assert not any("value_head" in k for k in agent.policy.state_dict())
    names = [n for n, _ in agent.policy.named_parameters()]
    assert names and all("lora_" in n for n in names)
    agent.policy.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "value_head.safetensors").exists()


def test_seeded_runs_are_identical_and_save_load_round_trips(
    tiny_tokenizer_dir, tiny_lm_dir, tmp_path
):
    def run():
        env = make_env(tiny_tokenizer_dir, num_envs=4, group_size=2)
        agent = make_agent("rloo", env, model=str(tiny_lm_dir), **GROUP_KWARGS)
        agent.learn(96)
        return agent, env

    a, env = run()
    b, _ = run()
    for (na, pa), (_, pb) in zip(
        a.policy.state_dict().items(), b.policy.state_dict().items(), strict=True
    ):
        assert torch.equal(pa, pb), na
    a.save(tmp_path / "agent.zip")
    loaded = load_agent(tmp_path / "agent.zip", env, trust_pickle=True)
    assert type(loaded) is RLOO and loaded.baseline == "leave_one_out"
    for key, value in a.policy.state_dict().items():
        assert torch.equal(value, loaded.policy.state_dict()[key])


def constant_reward(prompts, completions, **kwargs):
    return [1.0] * len(prompts)


def test_all_equal_rewards_give_no_policy_gradient(tiny_tokenizer_dir, tiny_lm_dir):
    """Zero std in every group: advantages are 0; with beta 0 the adapter does not move."""
    env = make_vec_env(
        4,
        seed=0,
        group_size=2,
        tokenizer=str(tiny_tokenizer_dir),
        prompts=PROMPTS,
        reward=constant_reward,
        max_prompt_tokens=16,
        max_new_tokens=3,
    )
    agent = make_agent("grpo", env, model=str(tiny_lm_dir), **{**GROUP_KWARGS, "kl_coef": 0.0})
    before = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    agent.learn(48)
    assert agent.logger.name_to_value["rollout/zero_std_share"] == 1.0
    for key, value in agent.policy.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_kl_is_measured_against_the_base_model(tiny_tokenizer_dir, tiny_lm_dir):
    """rollout/kl = mean over episodes of sum_t (log pi_old - log pi_ref), pi_ref the base."""
    env = make_env(tiny_tokenizer_dir, num_envs=4, group_size=2, max_new_tokens=4)
    agent = make_agent("grpo", env, model=str(tiny_lm_dir), **GROUP_KWARGS)
    agent.learn(64)  # the adapter is no longer zero: the KL is not trivially 0
    probe = RolloutProbe()
    agent.learn(16, callback=probe, reset_num_timesteps=False)
    episodes = probe.rollouts[-1]
    policy = agent.policy
    total = 0.0
    for ep in episodes:
        n = ep["prompt_len"] + ep["response_len"]
        ids = torch.as_tensor(ep["input_ids"][:n])[None]
        with torch.no_grad(), policy.model.disable_adapter():
            ref = torch.log_softmax(policy.model(input_ids=ids).logits[0].float(), -1)
        for j, old in enumerate(ep["log_probs"]):
            pos = ep["prompt_len"] + j
            total += old - float(ref[pos - 1, ids[0, pos]])
    expected = total / len(episodes)
    logged = agent.logger.name_to_value["rollout/kl"]
    assert logged == pytest.approx(expected, abs=1e-4)
    assert abs(expected) > 1e-3


def test_bad_configurations_fail_with_a_clear_message(tiny_tokenizer_dir, tiny_lm_dir):
    single = make_env(tiny_tokenizer_dir, num_envs=4)
    with pytest.raises(ValueError, match=r"needs an env in rounds.*group_size=k"):
        make_agent("grpo", single, model=str(tiny_lm_dir), **GROUP_KWARGS)
    ones = make_env(tiny_tokenizer_dir, num_envs=4, rounds=True)
    with pytest.raises(ValueError, match=r"needs group_size >= 2, got 1"):
        make_agent("rloo", ones, model=str(tiny_lm_dir), **GROUP_KWARGS)
    make_agent("reinforce_pp", ones, model=str(tiny_lm_dir), **GROUP_KWARGS)  # no groups needed
    grouped = make_env(tiny_tokenizer_dir, num_envs=4, group_size=2)
    with pytest.raises(ValueError, match=r"would learn from the idle steps.*grpo, rloo"):
        make_agent("ppo", grouped, model=str(tiny_lm_dir), **GROUP_KWARGS)
    with pytest.raises(ValueError, match=r"unknown loss_type 'dapoo'.*Did you mean 'dapo'"):
        make_agent("grpo", grouped, model=str(tiny_lm_dir), loss_type="dapoo", **GROUP_KWARGS)
    with pytest.raises(ValueError, match="num_iterations must be >= 1"):
        make_agent("grpo", grouped, model=str(tiny_lm_dir), num_iterations=0, **GROUP_KWARGS)
    with pytest.raises(ValueError, match=r"critic-free.*policy_kwargs\['value_head'\]"):
        make_agent(
            "grpo",
            grouped,
            model=str(tiny_lm_dir),
            policy_kwargs={"value_head": "mlp"},
            **GROUP_KWARGS,
        )
    with pytest.raises(ValueError, match="critic-free.*vf_coef"):
        make_agent("grpo", grouped, model=str(tiny_lm_dir), vf_coef=0.5, **GROUP_KWARGS)


@pytest.mark.parametrize(
    "options",
    [
        {"loss_type": "dapo", "clip_range_high": 0.28},
        {"loss_type": "dr_grpo", "scale_rewards": "none"},
        {"importance_sampling_level": "sequence", "kl_in_loss": False, "kl_target": 1.0},
        {"ent_coef": 0.01, "loss_type": "bnpo", "scale_rewards": "batch"},
    ],
)
def test_loss_variants_run(tiny_tokenizer_dir, tiny_lm_dir, options):
    env = make_env(tiny_tokenizer_dir, num_envs=4, group_size=2)
    agent = make_agent("grpo", env, model=str(tiny_lm_dir), **{**GROUP_KWARGS, **options})
    agent.learn(64)
    assert np.isfinite(agent.logger.name_to_value["train/loss"])


# ---------------------------------------------------------------------------- learning

#: The same task and arguments as the SB3 algorithms' learning test (tests/test_agents.py).
GROUP_TIMESTEPS = 4096


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "cls"), [("grpo", GRPO), ("rloo", RLOO), ("reinforce_pp", REINFORCEpp)]
)
def test_each_group_algorithm_raises_the_reward(name, cls, tiny_tokenizer_dir, learnable_lm_dir):
    torch.manual_seed(0)
    k = 1 if name == "reinforce_pp" else 4
    env = make_env(tiny_tokenizer_dir, num_envs=8, group_size=k, rounds=True)
    agent = make_agent(name, env, model=str(learnable_lm_dir), **LEARNING_KWARGS)
    assert type(agent) is cls
    before = mean_terminal_reward(agent, make_env(tiny_tokenizer_dir, num_envs=4, seed=123))
    start = time.perf_counter()
    agent.learn(GROUP_TIMESTEPS)
    seconds = time.perf_counter() - start
    after = mean_terminal_reward(agent, make_env(tiny_tokenizer_dir, num_envs=4, seed=123))
    print(f"{name}: mean terminal reward {before:.3f} -> {after:.3f} in {seconds:.1f}s")
    assert after >= before + MARGIN, (before, after)


def test_action_masks_apply_to_sampling_training_and_the_reference(tiny_tokenizer_dir, tiny_lm_dir):
    from rlhf_gym.agents import MaskableLoRAPolicy

    banned = list(range(1, 200))
    env = make_env(tiny_tokenizer_dir, num_envs=4, group_size=2, banned_tokens=banned)
    kwargs = {**GROUP_KWARGS, "num_iterations": 1, "batch_size": None}
    agent = make_agent("grpo", env, model=str(tiny_lm_dir), use_masking=True, **kwargs)
    assert isinstance(agent.policy, MaskableLoRAPolicy)
    probe = RolloutProbe()
    agent.learn(48, callback=probe)
    for ep in probe.rollouts[0]:
        response = ep["input_ids"][ep["prompt_len"] : ep["prompt_len"] + ep["response_len"]]
        assert not set(response.tolist()) & set(banned)
    # The first pass scores the rollout's own policy under the same mask: ratio 1 everywhere
    # (without the mask in training, the log-probs would differ by the banned tokens' mass).
    assert agent.logger.name_to_value["train/approx_kl"] < 1e-6


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_gradient_accumulation_over_chunks_equals_the_whole_minibatch(
    tiny_tokenizer_dir, tiny_lm_dir, loss_type
):
    """Training memory follows grad_chunk_size; the update does not depend on it."""
    states = []
    for chunk in (None, 3):
        env = make_env(tiny_tokenizer_dir, num_envs=8, group_size=4)
        agent = make_agent("grpo", env, model=str(tiny_lm_dir), loss_type=loss_type,
                           grad_chunk_size=chunk, batch_size=None, num_iterations=2,
                           **GROUP_KWARGS)  # fmt: skip
        agent.learn(64)
        states.append(agent.policy.state_dict())
    for key, value in states[0].items():
        torch.testing.assert_close(value, states[1][key], atol=1e-6, rtol=1e-5)
