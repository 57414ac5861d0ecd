"""Worker: measure rlhf_gym on the benchmark task (run by ``run.py`` in a fresh subprocess).

    .venv/bin/python benchmarks/bench_ours.py env      [--num-envs 32] [--episodes N]
    .venv/bin/python benchmarks/bench_ours.py rollout  [--num-envs 32] [--new-tokens 48] [--repeats 5]
    .venv/bin/python benchmarks/bench_ours.py e2e      [--num-envs 32] [--new-tokens 48] [--updates 5]

Each mode prints one ``BENCH_JSON:`` line (see :mod:`common`). One configuration per process, so
the reported peak RSS (``ru_maxrss``) belongs to that configuration alone.

- ``env``: microseconds per step of ``TextGenerationEnv``, of the Gymnasium
  ``TextGenerationVectorEnv`` and of the SB3 ``VecEnv`` (:func:`rlhf_gym.envs.make_vec_env`),
  driven by a no-op policy (pre-drawn random tokens), rewards and resets included.
- ``rollout``: ``PPO.collect_rollouts`` with ``LoRAPolicy`` and the SB3 vector env (one full
  episode per env: ``n_steps = new_tokens``), interleaved repeat by repeat with
  ``model.generate`` on the very same peft model (LoRA active, same attention implementation),
  same batch, prompt length, number of new tokens and sampling (temperature 1, no top-k/top-p).
  Interleaving makes both see the same background load. The rollout time is split into policy
  forwards, env steps, the KL reference pass and the rest (SB3 buffer/bookkeeping).
- ``e2e``: ``PPO.learn`` for warm-up + measured updates; each update is one rollout of
  ``num_envs`` completions plus one epoch with one optimizer step. Reports the median update.
- under ``torchrun`` (``e2e``/``grpo``, the ``ranks`` section of ``run.py``): every rank runs
  ``--num-envs`` envs on its shard of the prompts with ``--threads`` threads; rank 0 reports
  the tokens of all ranks per update.
- ``grpo``: the same measurement for our GRPO at TRL's configuration: ``num_envs / 4`` prompts x
  4 answers (one round), KL ``beta`` in the loss (k3), one pass, one optimizer step per update;
  every answer runs to ``new_tokens`` (no EOS stop, as TRL's ``min_new_tokens``), so no env idles.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from common import (
    NUM_THREADS,
    TASK,
    Stopwatch,
    add_backend_args,
    current_rss_mb,
    e_fraction,
    emit,
    load_prompts,
    median,
    set_threads,
    synchronize,
    task_paths,
)


def env_kwargs(new_tokens: int) -> dict[str, Any]:
    paths = task_paths()
    return dict(
        tokenizer=str(paths.tokenizer),
        prompts=load_prompts(paths),
        reward=e_fraction,
        max_prompt_tokens=TASK.prompt_tokens,
        max_new_tokens=new_tokens,
        stop_on_eos=False,
    )


def model_dir(n_positions: int) -> str:
    return str(task_paths().model(n_positions))


def _make(args: argparse.Namespace, name: str, group_size: int, **algo_kwargs: Any) -> Any:
    """An agent on the benchmark task; what differs between ours is the name and its options."""
    from rlhf_gym.agents import distributed, make_agent
    from rlhf_gym.envs import make_vec_env

    info = distributed.info()  # one rank unless run under torchrun (the ``ranks`` section)
    venv = make_vec_env(
        args.num_envs,
        seed=info.env_seed(TASK.seed, args.num_envs),
        group_size=group_size,
        **env_kwargs(args.new_tokens),
        shard=info.shard,
    )
    policy_kwargs: dict[str, Any] = {"dtype": args.dtype}
    if args.attn:
        policy_kwargs["attn_implementation"] = args.attn
    return make_agent(
        name,
        venv,
        model=model_dir(args.n_positions),
        lora=TASK.lora_dict(),
        kl_coef=TASK.beta,
        seed=info.agent_seed(TASK.seed, args.num_envs),
        device=args.device,
        learning_rate=TASK.learning_rate,
        policy_kwargs=policy_kwargs,
        **algo_kwargs,
    )


def make_ppo(args: argparse.Namespace) -> Any:
    """The benchmark's PPO: one episode per env per update, one epoch, one optimizer step."""
    return _make(
        args,
        "ppo",
        1,
        n_steps=args.new_tokens,
        batch_size=args.batch_size or args.num_envs * args.new_tokens,
        n_epochs=args.n_epochs,
        gamma=1.0,
    )


def make_grpo(args: argparse.Namespace) -> Any:
    """Our GRPO at TRL's benchmark configuration (see the module docstring)."""
    return _make(args, "grpo", 4, num_iterations=1, batch_size=None)


# ------------------------------------------------------------------------------------------ env


def bench_env(args: argparse.Namespace) -> dict[str, Any]:
    from rlhf_gym.envs import TextGenerationEnv, TextGenerationVectorEnv, make_vec_env

    kwargs = env_kwargs(args.new_tokens)
    rng = np.random.default_rng(0)
    vocab = TASK.vocab_size
    n_steps = args.episodes * args.new_tokens

    # Single env: reset + max_new_tokens steps per episode (the last one computes the reward).
    env = TextGenerationEnv(**kwargs)
    actions = rng.integers(0, vocab, size=n_steps)
    env.reset(seed=0)

    def run_single(acts: np.ndarray) -> float:
        start = time.perf_counter()
        for a in acts:
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset()
        return time.perf_counter() - start

    run_single(actions[: 2 * args.new_tokens])  # warm-up
    single = [run_single(actions) / n_steps * 1e6 for _ in range(args.repeats)]

    batch_actions = rng.integers(0, vocab, size=(n_steps // 4, args.num_envs))

    venv = TextGenerationVectorEnv(args.num_envs, **kwargs)
    venv.reset(seed=0)

    def run_gym(acts: np.ndarray) -> float:
        start = time.perf_counter()
        for a in acts:
            venv.step(a)
        return time.perf_counter() - start

    run_gym(batch_actions[: args.new_tokens])
    gym_vec = [run_gym(batch_actions) / len(batch_actions) * 1e6 for _ in range(args.repeats)]

    sb3 = make_vec_env(args.num_envs, seed=0, **kwargs)
    sb3.reset()

    def run_sb3(acts: np.ndarray) -> float:
        start = time.perf_counter()
        for a in acts:
            sb3.step(a)
        return time.perf_counter() - start

    run_sb3(batch_actions[: args.new_tokens])
    sb3_vec = [run_sb3(batch_actions) / len(batch_actions) * 1e6 for _ in range(args.repeats)]
    return {
        "mode": "env",
        "num_envs": args.num_envs,
        "new_tokens": args.new_tokens,
        "env_us_per_step": median(single),
        "gym_vec_us_per_step": median(gym_vec),
        "sb3_vec_us_per_step": median(sb3_vec),
        "gym_vec_us_per_env_step": median(gym_vec) / args.num_envs,
        "sb3_vec_us_per_env_step": median(sb3_vec) / args.num_envs,
    }


# -------------------------------------------------------------------------------------- rollout


def _generate_inputs(num_envs: int, device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(task_paths().tokenizer)
    prompts = load_prompts(task_paths())[:num_envs]
    enc = tokenizer(prompts, return_tensors="pt")
    assert enc["input_ids"].shape == (num_envs, TASK.prompt_tokens)
    ids = enc["input_ids"].to(device)
    return ids, torch.ones_like(ids)


def _plain_peft_twin(policy: Any, n_positions: int, device: str) -> Any:
    """The policy's model as a user would build it with peft alone: same weights and adapter,
    same attention, but peft's own LoRA forward and the config's activation (none of
    rlhf_gym's fused rewrites). ``generate`` on it is the stock Hugging Face stack."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        model_dir(n_positions), attn_implementation=policy.attn_implementation, dtype=policy.dtype
    ).eval()
    twin = get_peft_model(base, policy.lora_config)
    set_peft_model_state_dict(twin, get_peft_model_state_dict(policy.model))
    return twin.to(device).eval()


def _generate_once(model: Any, input_ids: Any, mask: Any, new_tokens: int, pad_id: int) -> float:
    """``model.generate`` with the task's sampling; exactly ``new_tokens`` tokens per row."""
    import torch

    device = str(input_ids.device)
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            do_sample=True,
            temperature=TASK.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # no early EOS, like stop_on_eos=False in the env
            pad_token_id=pad_id,
            use_cache=True,
        )
    synchronize(device)
    elapsed = time.perf_counter() - start
    assert out.shape == (input_ids.shape[0], TASK.prompt_tokens + new_tokens), out.shape
    return elapsed


def bench_rollout(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    agent = make_ppo(args)
    _, callback = agent._setup_learn(10**9, callback=None)
    watch = Stopwatch()
    watch.wrap(agent.policy, "forward", "policy_forward")
    watch.wrap(agent.policy, "predict_values", "last_values")
    watch.wrap(agent.env, "step_wait", "env_step")
    watch.wrap(agent.rollout_buffer, "apply_kl_penalty", "kl_reference")
    tokens = args.num_envs * args.new_tokens

    def rollout() -> float:
        synchronize(args.device)
        start = time.perf_counter()
        agent.collect_rollouts(agent.env, callback, agent.rollout_buffer, agent.n_steps)
        synchronize(args.device)
        return time.perf_counter() - start

    peft_model = agent.policy.model
    pad_id = int(agent.env.envs[0].pad_token_id)
    input_ids, mask = _generate_inputs(args.num_envs, args.device)
    plain_peft = _plain_peft_twin(agent.policy, args.n_positions, args.device)

    def generate() -> float:
        return _generate_once(peft_model, input_ids, mask, args.new_tokens, pad_id)

    def generate_plain() -> float:
        return _generate_once(plain_peft, input_ids, mask, args.new_tokens, pad_id)

    for _ in range(args.warmup):
        rollout()
        generate()
        generate_plain()
    ours, gen, gen_plain, parts = [], [], [], []
    for _ in range(args.repeats):
        watch.reset()
        ours.append(rollout())
        part = watch.snapshot()
        part["sb3_other"] = ours[-1] - sum(part.values())  # buffer adds, obs_as_tensor, loop
        parts.append(part)
        gen.append(generate())
        gen_plain.append(generate_plain())
    ours_s, gen_s = median(ours), median(gen)
    sampling = [o - p.get("kl_reference", 0.0) for o, p in zip(ours, parts, strict=True)]
    keys = ("policy_forward", "last_values", "env_step", "kl_reference", "sb3_other")
    breakdown = {key: median([p.get(key, 0.0) for p in parts]) for key in keys}
    result: dict[str, Any] = {
        "mode": "rollout",
        "num_envs": args.num_envs,
        "new_tokens": args.new_tokens,
        "n_positions": args.n_positions,
        "tokens_per_rollout": tokens,
        "ours_s": ours_s,
        "ours_all_s": ours,
        "generate_s": gen_s,
        "generate_all_s": gen,
        "ours_tokens_per_s": tokens / ours_s,
        "generate_tokens_per_s": tokens / gen_s,
        # Median of the ratios of adjacent (ours, generate) pairs: robust to load that drifts
        # between repeats, which a ratio of medians is not.
        "ratio": median([g / o for o, g in zip(ours, gen, strict=True)]),
        "ratio_of_medians": gen_s / ours_s,
        "generate_plain_s": median(gen_plain),
        "generate_plain_tokens_per_s": tokens / median(gen_plain),
        "ratio_plain": median([g / o for o, g in zip(ours, gen_plain, strict=True)]),
        "breakdown_s": breakdown,
        "rollout_step_us": ours_s / args.new_tokens * 1e6,
        "sampling_only_s": median(sampling),
    }
    result["ratio_sampling_only"] = median([g / s for s, g in zip(sampling, gen, strict=True)])
    if args.floor:
        # The lowest bar: generate on a plain base model (no LoRA layers, default attention).
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(
            model_dir(args.n_positions), dtype=agent.policy.dtype
        ).to(args.device)
        base.eval()
        attn = base.config._attn_implementation
        _generate_once(base, input_ids, mask, args.new_tokens, pad_id)  # warm-up
        floor = [_generate_once(base, input_ids, mask, args.new_tokens, pad_id) for _ in ours]
        result["generate_base_s"] = median(floor)
        result["generate_base_attn"] = attn
        result["generate_base_tokens_per_s"] = tokens / median(floor)
    return result


# ------------------------------------------------------------------------------------------ e2e


def bench_e2e(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    from rlhf_gym.agents import distributed

    class Marks(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.starts: list[float] = []
            self.ends: list[float] = []

            self.rss_mb: list[float] = []

        def _on_rollout_start(self) -> None:
            synchronize(args.device)  # the last update's optimizer step belongs to it
            self.starts.append(time.perf_counter())
            self.rss_mb.append(current_rss_mb())

        def _on_rollout_end(self) -> None:
            self.ends.append(time.perf_counter())

        def _on_step(self) -> bool:
            return True

    torch.manual_seed(0)
    agent = make_grpo(args) if args.mode == "grpo" else make_ppo(args)
    watch = Stopwatch()
    watch.wrap(agent, "train", "train")
    if args.mode == "e2e":
        watch.wrap(agent.rollout_buffer, "apply_kl_penalty", "kl_reference")
    marks = Marks()
    world = distributed.world_size()
    tokens = args.num_envs * args.new_tokens * world  # every rank's (num_envs is per rank)
    n_updates = args.warmup + args.updates
    start = time.perf_counter()
    agent.learn(total_timesteps=n_updates * tokens, callback=marks)
    synchronize(args.device)
    end = time.perf_counter()
    bounds = [*marks.starts, end]
    update_s = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    rollout_s = [e - s for s, e in zip(marks.starts, marks.ends, strict=True)]
    measured = update_s[args.warmup :]
    per_update = median(measured)
    ep_rewards = [info["r"] for info in agent.ep_info_buffer]
    return {
        "mode": args.mode,
        "batch_size": args.batch_size,
        "n_epochs": args.n_epochs,
        "num_envs": args.num_envs,
        "ranks": world,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "n_positions": args.n_positions,
        "updates": len(update_s),
        "warmup": args.warmup,
        "tokens_per_update": tokens,
        "update_s": per_update,
        "update_all_s": update_s,
        "rollout_s": median(rollout_s[args.warmup :]),
        "train_s": watch.totals.get("train", 0.0) / max(1, watch.calls.get("train", 1)),
        "kl_reference_s": watch.totals.get("kl_reference", 0.0)
        / max(1, watch.calls.get("kl_reference", 1)),
        "tokens_per_s": tokens / per_update,
        "total_s": end - start,
        "mean_episode_reward_last": float(np.mean(ep_rewards)) if ep_rewards else None,
        # Resident memory at the start of each update: a steady climb would mean a leak.
        "rss_mb_per_update": marks.rss_mb + [current_rss_mb()],
    }


def bench_idle(args: argparse.Namespace) -> dict[str, Any]:
    """Idle share of group rounds on the default task (answers end at EOS, lengths vary).

    The benchmark task runs every answer to ``new_tokens`` (no idling by construction); this
    samples ``--rounds`` rounds with the default task's base policy and reward model, groups
    of 4 over 32 envs as in ``rlhf-gym train --algo grpo``, and counts the steps envs idled.
    """
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    from rlhf_gym.agents import make_agent
    from rlhf_gym.envs import default_task, make_vec_env

    shares: list[float] = []

    class Shares(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            shares.append(float(self.logger.name_to_value["rollout/idle_share"]))

    torch.manual_seed(0)
    venv = make_vec_env(32, seed=0, group_size=4)
    # A learning rate of 0 keeps the base policy: the rounds measure its answer lengths.
    agent = make_agent(
        "grpo", venv, model=str(default_task.policy_path()), kl_coef=0.0, learning_rate=0.0
    )
    max_new = int(venv.get_attr("max_new_tokens")[0])
    agent.learn(args.rounds * 32 * max_new, callback=Shares())
    return {
        "mode": "idle",
        "num_envs": 32,
        "group_size": 4,
        "rounds": len(shares),
        "idle_share": float(np.mean(shares)),
        "idle_share_per_round": shares,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("env", "rollout", "e2e", "grpo", "idle"))
    parser.add_argument("--num-envs", type=int, default=TASK.completions_per_update)
    parser.add_argument("--new-tokens", type=int, default=TASK.new_tokens)
    parser.add_argument("--n-positions", type=int, default=TASK.n_positions)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--updates", type=int, default=5, help="e2e: measured updates")
    parser.add_argument("--episodes", type=int, default=64, help="env: episodes per repeat")
    parser.add_argument("--rounds", type=int, default=16, help="idle: rounds sampled")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="e2e: PPO minibatch (default: the rollout)"
    )
    parser.add_argument("--n-epochs", type=int, default=1, help="e2e: PPO epochs")
    parser.add_argument(
        "--attn", default=None, help="policy attn_implementation (default: the library's)"
    )
    parser.add_argument(
        "--floor", action="store_true", help="rollout: also time a plain base model"
    )
    parser.add_argument(
        "--threads", type=int, default=NUM_THREADS, help="intra-op threads (per rank)"
    )
    add_backend_args(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    from rlhf_gym.agents import distributed

    info = distributed.init()  # e2e/grpo under torchrun: each rank its num_envs, one result
    modes = {"env": bench_env, "rollout": bench_rollout, "e2e": bench_e2e, "grpo": bench_e2e}
    fn = {**modes, "idle": bench_idle}[args.mode]
    result = fn(args)
    if info.is_main:
        emit({**result, "device": args.device, "dtype": args.dtype})
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    raise SystemExit(main())
