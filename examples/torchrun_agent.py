"""Your own training script on several processes, GPUs or machines, with torchrun.

Run: torchrun --nproc-per-node 2 examples/torchrun_agent.py [--algo grpo] [--steps 512]
(or plain ``python examples/torchrun_agent.py``: one process, the same code).

One call, ``distributed.init()``, joins the process group torchrun set up (gloo on CPUs, NCCL
with one GPU per rank) and says where this process sits. Give the env its shard of the prompts
and its seeds from it; ``make_agent`` needs nothing more: the agent sees the process group,
starts every rank from rank 0's weights and averages gradients across ranks. Rank 0 reports.
"""

import argparse

from rlhf_gym.agents import distributed, make_agent
from rlhf_gym.agents.evaluation import evaluate_model
from rlhf_gym.envs import TextGenerationEnv, default_task, make_vec_env

parser = argparse.ArgumentParser()
parser.add_argument("--algo", default="grpo", help="any name from `rlhf-gym algos` but trpo")
parser.add_argument("--steps", type=int, default=512, help="env steps of all ranks together")
parser.add_argument("--num-envs", type=int, default=8, help="envs per rank")
args = parser.parse_args()

info = distributed.init()  # one rank when not launched by torchrun
groups = {"grpo": {"group_size": 4}, "rloo": {"group_size": 4}, "reinforce_pp": {"rounds": True}}
env = make_vec_env(
    args.num_envs,
    seed=info.env_seed(0, args.num_envs),  # env i of rank r: seed r * num_envs + i
    shard=info.shard,  # (rank, world_size): each rank answers its own prompts
    **groups.get(args.algo, {}),
)
agent = make_agent(
    args.algo, env, model=default_task.policy_path(), seed=info.agent_seed(0, args.num_envs)
)
agent.learn(args.steps)  # num_timesteps counts the steps of all ranks

if info.is_main:
    eval_env = TextGenerationEnv(split="eval")
    rows = list(eval_env.dataset)[:32]
    stats = evaluate_model(
        agent.policy.model, eval_env.tokenizer, rows, eval_env.reward_fn, max_new_tokens=16
    )
    print(f"{info.world_size} rank(s), {args.algo}: held-out reward {stats.reward_mean:+.3f}")
distributed.shutdown()
