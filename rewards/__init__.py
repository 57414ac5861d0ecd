"""Rewards for RL fine-tuning of language models: contract, registry, built-ins, reward models.

A reward is TRL-compatible: ``fn(prompts, completions, **kwargs) -> list[float | None]``, called
by keyword, where ``kwargs`` holds the dataset row's extra columns and the token ids
(``prompt_ids``, ``completion_ids``). Rewards are looked up by name (built-ins, your
``@register_reward`` functions, installed plugins of the ``rlhf_gym.rewards`` entry-point group)
or by ``"module:attr"`` path, and mixed with :func:`resolve_reward`::

    from rlhf_gym.rewards import resolve_reward

    reward = resolve_reward({"reward_model": {"weight": 1.0, "path": "out/rm"}, "length": -0.01})
    out = reward(prompts=["Hi"], completions=[" there"], completion_ids=[[42]])
    out.total, out.components  # array([...]), {"reward_model": [...], "length": [1.0]}

Built-ins: ``length``, ``keyword``, ``regex``, ``exact_match`` and ``reward_model``. Importing this
package does not import torch or transformers; ``reward_model`` and :func:`train_reward_model`
do, when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlhf_gym.rewards.composite import CompositeReward, RewardOutput, resolve_reward
from rlhf_gym.rewards.contract import Reward, RewardFn
from rlhf_gym.rewards.errors import RewardError, UnknownRewardError
from rlhf_gym.rewards.registry import get_reward, list_rewards, register_reward

if TYPE_CHECKING:
    from rlhf_gym.rewards.reward_model import RewardModel, format_for_reward_model
    from rlhf_gym.rewards.reward_model_training import RewardModelReport, train_reward_model

__all__ = [
    "CompositeReward",
    "Reward",
    "RewardError",
    "RewardFn",
    "RewardModel",
    "RewardModelReport",
    "RewardOutput",
    "UnknownRewardError",
    "format_for_reward_model",
    "get_reward",
    "list_rewards",
    "register_reward",
    "resolve_reward",
    "train_reward_model",
]

# Names whose modules import torch/transformers, loaded on first attribute access (PEP 562).
_LAZY = {
    "RewardModel": "rlhf_gym.rewards.reward_model",
    "format_for_reward_model": "rlhf_gym.rewards.reward_model",
    "RewardModelReport": "rlhf_gym.rewards.reward_model_training",
    "train_reward_model": "rlhf_gym.rewards.reward_model_training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
