"""Quick start: a custom reward plugin, a prompt file, and an env any agent can train against.

Run: python examples/custom_reward.py
Swap the tokenizer for your own model's (a local directory or a hub id) and the prompt file for
your own; everything else stays.
"""

import json
import tempfile
from pathlib import Path

import gymnasium as gym

import rlhf_gym.envs  # noqa: F401  (registers rlhf_gym/TextGeneration-v0)
from rlhf_gym.envs import default_task
from rlhf_gym.rewards import register_reward


@register_reward("politeness")
def politeness(prompts, completions, **kwargs):
    """1.0 when the completion says please. The same signature as a TRL reward function."""
    return [float("please" in c) for c in completions]


# A prompt file: one JSON object a line; columns other than "prompt" reach the reward as kwargs.
prompts = Path(tempfile.mkdtemp()) / "prompts.jsonl"
prompts.write_text(
    "\n".join(json.dumps({"prompt": p}) for p in ["Review of the tent:", "My new kettle is"])
)

env = gym.make(
    "rlhf_gym/TextGeneration-v0",
    tokenizer=default_task.tokenizer_path(),  # or "path/or/hub-id"
    prompts=str(prompts),
    reward={"politeness": 1.0, "length": -0.01},  # a weighted mix of registered rewards
    max_new_tokens=48,
)

obs, info = env.reset(seed=0)
done = False
while not done:  # a random agent; any Gymnasium or stable-baselines3 agent plugs in here
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    done = terminated or truncated
print(f"prompt:     {info['prompt']!r}")
print(f"response:   {info['response'][:60]!r}...")
print(f"reward:     {reward:.3f}  components: {info['reward_components']}")
