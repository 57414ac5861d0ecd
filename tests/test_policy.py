"""LoRAPolicy: construction, what is trainable and saved, reference model, export, bad input."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from stable_baselines3 import PPO as SB3PPO
from transformers import AutoModelForCausalLM

from rlhf_gym.agents import LoRAPolicy, MaskableLoRAPolicy, load_agent, make_agent
from tests import _tiny
from tests.test_agents_support import make_env, to_tensor_obs

RANDOM_LORA = {"init_lora_weights": False}  # non-zero adapter, so pi differs from pi_ref


def build_policy(env, model, **kwargs) -> LoRAPolicy:
    kwargs.setdefault("lora", RANDOM_LORA)
    return LoRAPolicy(
        env.observation_space, env.action_space, lambda _: 1e-3, model=model, **kwargs
    )


@pytest.fixture()
def env(tiny_tokenizer_dir: Path):
    return make_env(tiny_tokenizer_dir, num_envs=2)


def test_only_trainable_weights_are_parameters_optimized_and_saved(env, tiny_lm_dir: Path) -> None:
    policy = build_policy(env, str(tiny_lm_dir))
    names = [n for n, _ in policy.named_parameters()]
    assert names and all(("lora_" in n) or n.startswith("value_head.") for n in names)
    assert set(policy.state_dict()) == set(names)
    optimized = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in policy.parameters()}
    frozen = [p for p in policy.model.parameters() if not p.requires_grad]
    assert sum(p.numel() for p in frozen) > 10 * sum(p.numel() for p in policy.parameters())


def test_device_is_sb3s_first_parameter_device_and_follows_moves(env, tiny_lm_dir: Path) -> None:
    """The cached answer equals stable-baselines3's definition, also after ``.to()``."""
    from stable_baselines3.common.policies import BaseModel

    policy = build_policy(env, str(tiny_lm_dir))
    assert policy.device == BaseModel.device.fget(policy) == torch.device("cpu")
    policy.to("meta")  # a move target on every build, GPU or not
    assert policy.device == BaseModel.device.fget(policy) == torch.device("meta")
    assert all(p.device.type == "meta" for p in policy._watched)


def test_dropout_is_off_and_model_stays_in_eval(env, tiny_lm_dir: Path) -> None:
    model = _tiny.build_lm(300, resid_pdrop=0.3, attn_pdrop=0.3, embd_pdrop=0.3)
    policy = build_policy(env, model)
    policy.set_training_mode(True)
    drops = [m for m in policy.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.0 for m in drops)
    assert model.config.resid_pdrop == 0.0 and not policy.model.training
    obs = to_tensor_obs(env.reset())
    a = policy.evaluate_actions(obs, torch.zeros(2))[1]
    b = policy.evaluate_actions(obs, torch.zeros(2))[1]
    assert torch.equal(a, b)


def test_action_logits_are_the_lm_next_token_logits(env, tiny_lm_dir: Path) -> None:
    policy = build_policy(env, str(tiny_lm_dir))
    obs = env.reset()
    dist = policy.get_distribution(to_tensor_obs(obs))
    for row in range(2):
        n = int(obs["attention_mask"][row].sum())
        ids = torch.as_tensor(obs["input_ids"][row, :n]).unsqueeze(0)
        with torch.no_grad():
            expected = torch.log_softmax(policy.model(input_ids=ids).logits[0, -1], -1)
        torch.testing.assert_close(dist.distribution.logits[row], expected, atol=1e-5, rtol=0)


def test_save_load_zip_holds_adapter_only_and_restores_logits(
    env, tiny_lm_dir: Path, tmp_path: Path
) -> None:
    agent = make_agent(
        "ppo", env, model=str(tiny_lm_dir), lora=RANDOM_LORA, n_steps=8, device="cpu"
    )
    agent.learn(16)  # move the adapter and value head away from their initial values
    path = tmp_path / "agent.zip"
    agent.save(path)
    with zipfile.ZipFile(path) as zf:
        policy_bytes = zf.getinfo("policy.pth").file_size
    base_bytes = os.path.getsize(tiny_lm_dir / "model.safetensors")
    adapter_bytes = sum(p.numel() * p.element_size() for p in agent.policy.parameters())
    assert policy_bytes < adapter_bytes + 20_000 < base_bytes
    assert os.path.getsize(path) < base_bytes

    loaded = SB3PPO.load(path, device="cpu")
    assert isinstance(loaded.policy, LoRAPolicy)
    obs = to_tensor_obs(env.reset())
    with torch.no_grad():
        a = agent.policy.evaluate_actions(obs, torch.ones(2))
        b = loaded.policy.evaluate_actions(obs, torch.ones(2))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def test_instance_without_path_saves_none_and_load_needs_model(
    env, tiny_lm_dir: Path, tmp_path: Path
) -> None:
    model = _tiny.build_lm(300)  # in memory only: no directory to record
    agent = make_agent("a2c", env, model=model, lora=RANDOM_LORA, n_steps=4, device="cpu")
    assert agent.policy_kwargs["model"] is None
    agent.save(tmp_path / "a.zip")
    with pytest.raises(ValueError, match="load_agent"):
        SB3PPO.load(tmp_path / "a.zip", device="cpu")
    loaded = load_agent(
        tmp_path / "a.zip", model=_tiny.build_lm(300), device="cpu", trust_pickle=True
    )
    obs = to_tensor_obs(env.reset())
    with torch.no_grad():
        torch.testing.assert_close(
            agent.policy.get_distribution(obs).distribution.logits,
            loaded.policy.get_distribution(obs).distribution.logits,
        )


def test_reference_is_the_base_model_with_no_second_copy(env, tiny_lm_dir: Path) -> None:
    policy = build_policy(env, str(tiny_lm_dir))
    all_params = list(policy.model.parameters()) + list(policy.value_head.parameters())
    storages = {p.untyped_storage().data_ptr() for p in all_params}
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    base_storages = {p.untyped_storage().data_ptr() for p in base.parameters()}
    # One storage per base tensor + the LoRA/value-head tensors; no copy of the base anywhere.
    assert len(storages) == len(base_storages) + len(list(policy.parameters()))
    assert sum(p.numel() for p in all_params) == sum(p.numel() for p in base.parameters()) + sum(
        p.numel() for p in policy.parameters()
    )

    obs = env.reset()
    actions = torch.tensor([5, 17])
    ref = policy.reference_log_prob(to_tensor_obs(obs), actions)
    current = policy.evaluate_actions(to_tensor_obs(obs), actions)[1]
    assert (ref - current).abs().max() > 1e-3  # the adapter matters...
    for row in range(2):  # ...and the reference is exactly the base checkpoint
        n = int(obs["attention_mask"][row].sum())
        ids = torch.as_tensor(obs["input_ids"][row, :n]).unsqueeze(0)
        with torch.no_grad():
            expected = torch.log_softmax(base(input_ids=ids).logits[0, -1], -1)[actions[row]]
        torch.testing.assert_close(ref[row], expected, atol=1e-5, rtol=0)
    assert {p.untyped_storage().data_ptr() for p in all_params} == storages


def test_export_adapter_and_merged_round_trip(env, tiny_lm_dir: Path, tmp_path: Path) -> None:
    policy = build_policy(env, str(tiny_lm_dir))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected = policy.model(input_ids=ids).logits

    adapter_dir = policy.save_pretrained(tmp_path / "adapter")
    assert (Path(adapter_dir) / "adapter_model.safetensors").exists()
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_lm_dir), adapter_dir
    )
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, expected, atol=1e-5, rtol=0)

    merged_dir = policy.save_pretrained(tmp_path / "merged", merged=True)
    assert (Path(merged_dir) / "tokenizer.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
        # the live policy still has its adapter (the merge happened on a copy)
        torch.testing.assert_close(policy.model(input_ids=ids).logits, expected, atol=0, rtol=0)


def test_maskable_policy_applies_env_masks(tiny_tokenizer_dir: Path, tiny_lm_dir: Path) -> None:
    env = make_env(tiny_tokenizer_dir, num_envs=2, allowed_tokens=[3, 4, 5])
    policy = MaskableLoRAPolicy(
        env.observation_space, env.action_space, lambda _: 1e-3, model=str(tiny_lm_dir)
    )
    obs = to_tensor_obs(env.reset())
    masks = env.action_masks()
    with torch.no_grad():
        actions, _, _ = policy(obs, action_masks=masks)
        _, logp, _ = policy.evaluate_actions(
            obs, torch.tensor([9, 4]), action_masks=torch.as_tensor(masks)
        )
    assert set(actions.tolist()) <= {0, 3, 4, 5}  # the env always allows EOS (id 0) too
    assert logp[0] < -1e6 and logp[1] > -20


# ---------------------------------------------------------------------------- bad input


def test_not_a_causal_lm_is_refused(env, tiny_rm_dir: Path) -> None:
    with pytest.raises(
        ValueError, match="GPT2ForSequenceClassification.*not a causal language model"
    ):
        build_policy(env, str(tiny_rm_dir))
    with pytest.raises(ValueError, match="not a causal language model"):
        build_policy(env, _tiny.build_rm(300))


def test_vocabulary_must_match_the_action_space(
    tiny_tokenizer_dir: Path, tiny_lm_dir: Path
) -> None:
    env = make_env(tiny_tokenizer_dir, num_envs=1, vocab_size=320)
    with pytest.raises(ValueError, match=r"300 next-token logits.*Discrete\(320\).*vocab_size=300"):
        build_policy(env, str(tiny_lm_dir))


def test_unknown_lora_targets_list_the_model_modules(env, tiny_lm_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"q_proj.*linear module names.*'c_attn'.*'c_fc'"):
        build_policy(env, str(tiny_lm_dir), lora={"target_modules": ["q_proj"]})


def test_wrong_observation_space_is_explained(tiny_lm_dir: Path) -> None:
    from gymnasium import spaces

    with pytest.raises(ValueError, match="input_ids"):
        LoRAPolicy(
            spaces.Box(0, 1, (4,)), spaces.Discrete(300), lambda _: 1e-3, model=str(tiny_lm_dir)
        )


def test_gradient_checkpointing_recomputes_layers_with_the_same_gradients(
    tiny_tokenizer_dir, tiny_lm_dir
):
    from rlhf_gym.agents import make_agent
    from tests.test_agents_support import make_env, to_tensor_obs

    grads, calls = [], []
    for checkpointing in (False, True):
        env = make_env(tiny_tokenizer_dir, num_envs=2)
        agent = make_agent(
            "ppo", env, model=str(tiny_lm_dir), lora={"r": 4}, device="cpu", seed=0,
            policy_kwargs={"gradient_checkpointing": checkpointing},
        )  # fmt: skip
        policy = agent.policy
        obs = env.reset()
        actions = torch.tensor([3, 5])
        layer = policy.model.get_base_model().transformer.h[0].attn  # inside the checkpoint
        count = [0]
        mode = policy.model.training
        hook = layer.register_forward_hook(lambda *a, c=count: c.__setitem__(0, c[0] + 1))
        _, log_prob, _ = policy.evaluate_actions(to_tensor_obs(obs), actions)
        log_prob.sum().backward()
        hook.remove()
        calls.append(count[0])
        grads.append(
            torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
        )
        assert policy.model.training == mode  # the pass restores the module's mode
    assert calls == [1, 2]  # the checkpointed layer ran again in backward
    torch.testing.assert_close(grads[0], grads[1])
