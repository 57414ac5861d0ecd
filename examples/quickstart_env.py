"""Quick start: the embedded default task as a Gymnasium env, stepped by a random agent.

Run: python examples/quickstart_env.py
"""

import gymnasium as gym

import rlhf_gym.envs  # noqa: F401  (registers rlhf_gym/TextGeneration-v0)

# No arguments: the embedded default task (review prompts, a small GPT-2, a reward model).
env = gym.make("rlhf_gym/TextGeneration-v0", render_mode="ansi")
obs, info = env.reset(seed=0)
print("observation:", {k: v.shape for k, v in obs.items()}, "action space:", env.action_space)

done = False
while not done:
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    done = terminated or truncated
print(env.render())
print(f"finish: {info['finish_reason']}, reward: {reward:.3f}")

# The vector form scores every episode that ends in the same step with one reward-model call.
venv = gym.make_vec("rlhf_gym/TextGeneration-v0", num_envs=4)
obs, info = venv.reset(seed=0)
for _ in range(env.unwrapped.max_new_tokens):
    obs, rewards, terminated, truncated, info = venv.step(venv.action_space.sample())
print("vector env rewards at the last step:", rewards.round(3))
