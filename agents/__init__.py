"""LoRA agents for RL fine-tuning of language models with stable-baselines3.

Build one with :func:`make_agent` (any registered algorithm, by name) or use the policies
directly: ``PPO(LoRAPolicy, env, policy_kwargs={"model": "path/or/hub-id"})``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the submodule that defines it. Imported on first use (PEP 562), so
#: ``import rlhf_gym.agents`` and ``rlhf-gym rewards`` cost no torch, peft or SB3 import.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ["A2C", "PPO", "TRPO", "AlgorithmSpec", "KLControlMixin", "MaskablePPO",
         "get_algorithm", "list_algorithms", "load_agent", "make_agent", "register_algorithm"],
        "algorithms",
    ),
    **dict.fromkeys(["export_adapter", "export_merged"], "export"),
    **dict.fromkeys(["GRPO", "RLOO", "GroupRelativePO", "REINFORCEpp"], "group_algorithms"),
    **dict.fromkeys(
        ["AdaptiveKLController", "FixedKLController", "KLDictRolloutBuffer",
         "KLMaskableDictRolloutBuffer", "KLShapingMixin", "make_kl_controller", "shape_rewards"],
        "kl",
    ),
    "RolloutKVCache": "kv_cache",
    **dict.fromkeys(["DEFAULT_LORA", "linear_module_names", "load_causal_lm"], "lora"),
    **dict.fromkeys(["LoRAPolicy", "MaskableLoRAPolicy"], "policy"),
    "save_agent": "saving",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
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
