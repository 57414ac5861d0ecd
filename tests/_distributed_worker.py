"""Run by ``tests/test_distributed.py`` under ``torchrun`` (2 ranks, gloo, 1 thread each).

``python -m tests._distributed_worker record OUT MODEL_DIR ALGO [ALGO ...]``: for each algorithm,
every rank builds its agent on its shard of the prompts, collects one rollout and trains on it
once; before the update each rank writes the rollout exactly as the update will see it
(``OUT/ALGO.rank<r>.json``: pre-advantage buffer for PPO/A2C, the episodes for the group
algorithms) and after it its trainable weights (``OUT/ALGO.rank<r>.safetensors``) and KL
coefficient. The test then replays both ranks' rollouts in ONE process with twice the envs
(:func:`replay`) and compares the weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from stable_baselines3.common.logger import Logger

from rlhf_gym.agents import distributed, make_agent
from rlhf_gym.envs import make_vec_env

PROMPTS = [f"movie {i} was" for i in range(16)]
N_ENVS = 2  # per rank
N_STEPS = 8  # per env, PPO/A2C
GROUP = 2
SEED = 3


def settings(algo: str, n_envs: int) -> dict[str, Any]:
    """Options that make one update a single minibatch per epoch (whatever the envs)."""
    common: dict[str, Any] = {"kl_coef": 0.1, "kl_target": 0.01, "learning_rate": 1e-3}
    if algo == "ppo":
        return {**common, "n_steps": N_STEPS, "batch_size": 10_000, "n_epochs": 2}
    if algo == "maskable_ppo":  # the global target_kl stop: all ranks stop after one epoch
        return {**common, "n_steps": N_STEPS, "batch_size": 10_000, "n_epochs": 3,
                "target_kl": 1e-9}  # fmt: skip
    if algo == "a2c":
        return {**common, "n_steps": N_STEPS, "normalize_advantage": True}
    if algo == "grpo":
        return {**common, "batch_size": None, "num_iterations": 2, "loss_type": "bnpo"}
    if algo == "reinforce_pp":
        return {**common, "batch_size": None, "num_iterations": 2}
    raise ValueError(algo)


def build(algo: str, model_dir: str, n_envs: int, shard: tuple[int, int] | None, seed: int) -> Any:
    group = {"group_size": GROUP} if algo == "grpo" else {}
    if algo == "reinforce_pp":
        group = {"rounds": True}
    extra = {"shard": shard} if shard is not None else {}
    venv = make_vec_env(
        n_envs,
        seed=seed,
        tokenizer=model_dir,
        prompts=PROMPTS,
        reward={"regex": {"pattern": "[a-z]", "mode": "count"}},
        max_prompt_tokens=8,
        max_new_tokens=4,
        **group,
        **extra,
    )
    return make_agent(
        algo,
        venv,
        model=model_dir,
        lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        seed=seed,
        device="cpu",
        **settings(algo, n_envs),
    )


def trainable(agent: Any) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone().contiguous()
        for n, p in agent.policy.named_parameters()
        if p.requires_grad
    }


def _capture(agent: Any, path: Path) -> None:
    """Write the rollout the next update sees, at the seam where it is complete."""
    buffer = agent.rollout_buffer
    if hasattr(buffer, "compute_returns_and_advantage"):  # PPO / A2C: before KL and GAE
        original = buffer.compute_returns_and_advantage

        def capture(last_values: torch.Tensor, dones: np.ndarray) -> None:
            record = {
                "input_ids": buffer.observations["input_ids"].tolist(),
                "attention_mask": buffer.observations["attention_mask"].tolist(),
                **{k: getattr(buffer, k).tolist() for k in
                   ("actions", "rewards", "episode_starts", "values", "log_probs")},
                **({"action_masks": buffer.action_masks.tolist()}
                   if hasattr(buffer, "action_masks") else {}),
                "last_values": last_values.flatten().tolist(),
                "dones": np.asarray(dones).tolist(),
            }  # fmt: skip
            path.write_text(json.dumps(record))
            original(last_values, dones)

        buffer.compute_returns_and_advantage = capture
        return
    original_train = agent.train

    def train() -> None:  # the group algorithms: the episodes, before the update
        episodes = [
            {**e, "input_ids": e["input_ids"].tolist(), "log_probs": e["log_probs"].tolist(),
             "action_mask": None}
            for e in agent.rollout_buffer.episodes
        ]  # fmt: skip
        path.write_text(json.dumps(episodes))
        original_train()

    agent.train = train


def record(out: Path, model_dir: str, algos: list[str]) -> None:
    torch.set_num_threads(1)
    info = distributed.init()
    for algo in algos:
        agent = build(algo, model_dir, N_ENVS, info.shard, info.env_seed(SEED, N_ENVS))
        agent.set_random_seed(info.agent_seed(SEED, N_ENVS))
        _capture(agent, out / f"{algo}.rank{info.rank}.json")
        steps = N_STEPS * N_ENVS if algo in ("ppo", "maskable_ppo", "a2c") else N_ENVS
        agent.learn(steps)
        save_file(trainable(agent), str(out / f"{algo}.rank{info.rank}.safetensors"))
        (out / f"{algo}.rank{info.rank}.kl").write_text(str(agent.kl_controller.value))
    distributed.shutdown()


def replay(algo: str, model_dir: str, records: list[Any]) -> tuple[dict[str, torch.Tensor], float]:
    """One process, ``2 * N_ENVS`` envs, the ranks' rollouts side by side: one update."""
    agent = build(algo, model_dir, N_ENVS * len(records), None, SEED)
    agent.set_logger(Logger(None, []))
    buffer = agent.rollout_buffer
    if algo in ("ppo", "maskable_ppo", "a2c"):
        buffer.reset()
        for key in ("input_ids", "attention_mask"):
            buffer.observations[key] = np.concatenate([np.asarray(r[key]) for r in records], 1)
        keys = ["actions", "rewards", "episode_starts", "values", "log_probs"]
        for key in keys + (["action_masks"] if "action_masks" in records[0] else []):
            dtype = getattr(buffer, key).dtype
            setattr(buffer, key, np.concatenate([np.asarray(r[key]) for r in records], 1).astype(dtype))  # fmt: skip
        buffer.full, buffer.pos = True, buffer.buffer_size
        last = torch.tensor(
            np.concatenate([r["last_values"] for r in records]), dtype=torch.float32
        )
        buffer.compute_returns_and_advantage(last, np.concatenate([r["dones"] for r in records]))
    else:
        buffer.reset()
        offset = 0
        for episodes in records:
            for e in episodes:
                e = dict(e, input_ids=np.asarray(e["input_ids"], dtype=np.int64),
                         log_probs=np.asarray(e["log_probs"], dtype=np.float32))  # fmt: skip
                e["group_id"] += offset
                buffer.episodes.append(e)
            offset += 1 + max(e["group_id"] for e in episodes)
        buffer.full = True
    agent.train()
    return trainable(agent), float(agent.kl_controller.value)


if __name__ == "__main__":
    if sys.argv[1] != "record":
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
    record(Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
