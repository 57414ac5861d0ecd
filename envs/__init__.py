"""Gymnasium environments for RL fine-tuning of language models.

Importing this package registers ``rlhf_gym/TextGeneration-v0``.
"""

from __future__ import annotations

from rlhf_gym.envs.episode_end import end_of_response, eos_token_ids
from rlhf_gym.envs.prompts import PromptDataset, PromptRow, PromptSampler, read_records
from rlhf_gym.envs.registration import ENV_ID, register_envs
from rlhf_gym.envs.text_env import TextGenerationEnv
from rlhf_gym.envs.tokenizer import load_tokenizer
from rlhf_gym.envs.vector import SB3VecEnv, TextGenerationVectorEnv, make_vec_env

register_envs()

__all__ = [
    "ENV_ID",
    "PromptDataset",
    "PromptRow",
    "PromptSampler",
    "SB3VecEnv",
    "TextGenerationEnv",
    "TextGenerationVectorEnv",
    "end_of_response",
    "eos_token_ids",
    "load_tokenizer",
    "make_vec_env",
    "read_records",
    "register_envs",
]
