"""LoRA agents for RL fine-tuning of language models with stable-baselines3.

Build one with :func:`make_agent` (any registered algorithm, by name) or use the policies
directly: ``PPO(LoRAPolicy, env, policy_kwargs={"model": "path/or/hub-id"})``.
"""

from __future__ import annotations

from rlhf_gym.agents.algorithms import (
    A2C,
    PPO,
    TRPO,
    AlgorithmSpec,
    KLControlMixin,
    MaskablePPO,
    get_algorithm,
    list_algorithms,
    load_agent,
    make_agent,
    register_algorithm,
)
from rlhf_gym.agents.export import export_adapter, export_merged
from rlhf_gym.agents.group_algorithms import GRPO, RLOO, GroupRelativePO, REINFORCEpp
from rlhf_gym.agents.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLDictRolloutBuffer,
    KLMaskableDictRolloutBuffer,
    KLShapingMixin,
    make_kl_controller,
    shape_rewards,
)
from rlhf_gym.agents.kv_cache import RolloutKVCache
from rlhf_gym.agents.lora import DEFAULT_LORA, linear_module_names, load_causal_lm
from rlhf_gym.agents.policy import LoRAPolicy, MaskableLoRAPolicy
from rlhf_gym.agents.saving import save_agent

__all__ = [
    "A2C",
    "DEFAULT_LORA",
    "GRPO",
    "PPO",
    "REINFORCEpp",
    "RLOO",
    "TRPO",
    "GroupRelativePO",
    "AdaptiveKLController",
    "AlgorithmSpec",
    "FixedKLController",
    "KLControlMixin",
    "KLDictRolloutBuffer",
    "KLMaskableDictRolloutBuffer",
    "KLShapingMixin",
    "LoRAPolicy",
    "MaskableLoRAPolicy",
    "MaskablePPO",
    "RolloutKVCache",
    "export_adapter",
    "export_merged",
    "get_algorithm",
    "linear_module_names",
    "list_algorithms",
    "load_agent",
    "load_causal_lm",
    "make_agent",
    "make_kl_controller",
    "register_algorithm",
    "save_agent",
    "shape_rewards",
]
