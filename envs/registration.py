"""Registers ``rlhf_gym/TextGeneration-v0`` with Gymnasium when ``rlhf_gym.envs`` is imported.

Gymnasium 1.x reads no entry points, so registration happens on import: users write
``import rlhf_gym.envs`` or ``gym.make("rlhf_gym.envs:rlhf_gym/TextGeneration-v0")``.
No ``max_episode_steps``: the env truncates at ``max_new_tokens`` itself, since it must know the
last step to score it.
"""

from __future__ import annotations

import gymnasium as gym

ENV_ID = "rlhf_gym/TextGeneration-v0"


def register_envs() -> None:
    if ENV_ID in gym.registry:
        return
    gym.register(
        id=ENV_ID,
        entry_point="rlhf_gym.envs.text_env:TextGenerationEnv",
        vector_entry_point="rlhf_gym.envs.vector:TextGenerationVectorEnv",
    )
