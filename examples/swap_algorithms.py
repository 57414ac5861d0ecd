"""Swap RL algorithms by name: one env, four algorithms, the same code.

Run: python examples/swap_algorithms.py [--steps 4096]
Each algorithm trains a fresh LoRA adapter on the embedded default task (review prompts, a
small GPT-2, a reward model that prefers positive reviews); the table shows the held-out
reward of the base model and of each trained policy.
"""

import argparse

from rich.console import Console
from rich.table import Table

from rlhf_gym.agents import make_agent
from rlhf_gym.agents.evaluation import evaluate_model
from rlhf_gym.envs import TextGenerationEnv, default_task, make_vec_env

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=4096, help="environment steps per algorithm")
parser.add_argument("--eval-episodes", type=int, default=64)
args = parser.parse_args()

eval_env = TextGenerationEnv(split="eval")  # held-out prompts of the default task
rows = list(eval_env.dataset)[: args.eval_episodes]


def held_out_reward(model, use_adapter):
    stats = evaluate_model(
        model,
        eval_env.tokenizer,
        rows,
        eval_env.reward_fn,
        max_new_tokens=eval_env.max_new_tokens,
        use_adapter=use_adapter,
    )
    return stats.reward_mean, stats.kl


table = Table(title=f"held-out mean reward, {args.steps} steps each")
for column in ["algorithm", "before (base)", "after", "KL to reference"]:
    table.add_column(column, justify="right")
for name in ["ppo", "a2c", "trpo", "maskable_ppo"]:
    env = make_vec_env(16, seed=0)  # the same env for every algorithm
    agent = make_agent(name, env, model=default_task.policy_path(), lora={"r": 8}, kl_coef=0.3)
    before, _ = held_out_reward(agent.policy.model, use_adapter=False)
    agent.learn(args.steps)
    after, kl = held_out_reward(agent.policy.model, use_adapter=True)
    table.add_row(name, f"{before:+.2f}", f"{after:+.2f}", f"{kl:.2f}")
Console().print(table)
