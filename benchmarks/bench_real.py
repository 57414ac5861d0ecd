"""Worker: a real pretrained model (SmolLM2-135M-Instruct), ours or TRL, one configuration.

    .venv/bin/python benchmarks/bench_real.py ours-ppo1|ours-ppo1-plain|ours-ppo1-hf-decode|ours-ppo1-chunk8|ours-ppo4|ours-grpo|generate --model DIR
    benchmarks/.venv-trl/bin/python benchmarks/bench_real.py trl --model DIR

Run by ``real_model.py`` (one process per configuration, so peak RSS is per configuration).
The work of one update is the same for everyone: 32 chat prompts rendered with the model's
template, 32 completions of exactly 64 tokens (no EOS stop: TRL gets ``min_new_tokens``), LoRA
r=8 / alpha 16 on ``q_proj``/``v_proj``, KL beta 0.04, learning rate 1e-5, float32, the
benchmark's ``e`` reward. Ours: PPO with the whole rollout as one minibatch and one epoch
(``ours-ppo1``; ``ours-ppo1-plain`` the same with ``share_prefix=False``, which runs the chat
template's common system turn once per row again; ``ours-ppo1-hf-decode`` the same with
transformers' own decode step, ``lean_decode=False``; ``ours-ppo1-chunk8`` the same minibatch
backpropagated 8 sequences at a time, ``grad_chunk_size=8``), PPO with 4 epochs of minibatches of 256 transitions (``ours-ppo4``), GRPO
with 8 prompts x 4 answers, beta in the loss (``ours-grpo``). TRL: ``GRPOTrainer``, 8 prompts x 4
generations, one optimizer step. ``generate``: ``model.generate`` on our policy's peft model
(the rollout target). This file imports ``rlhf_gym`` only in our modes.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common import TRL_QUIET, e_fraction, emit, median, set_threads, synchronize

PROMPTS = 32
NEW_TOKENS = 64
BETA = 0.04
LR = 1e-5
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def chat_rows() -> list[dict[str, Any]]:
    topics = ["the moon", "volcanoes", "bread", "the ocean", "bees", "rainbows", "trains",
              "chess", "coffee", "snow", "bicycles", "clouds", "libraries", "owls", "tea",
              "maps"]  # fmt: skip
    forms = ["Tell me about {}.", "What is interesting about {}?"]
    return [{"messages": [{"role": "user", "content": f.format(t)}]} for t in topics for f in forms]


def ours(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    from rlhf_gym.agents import make_agent
    from rlhf_gym.envs import make_vec_env

    group = 4 if args.mode == "ours-grpo" else 1
    venv = make_vec_env(
        PROMPTS, seed=0, group_size=group, tokenizer=args.model, prompts=chat_rows(),
        reward=e_fraction, max_prompt_tokens=64, max_new_tokens=NEW_TOKENS, stop_on_eos=False,
    )  # fmt: skip
    if args.mode == "ours-grpo":
        algo: dict[str, Any] = {"num_iterations": 1, "batch_size": None}
    else:
        ppo4 = args.mode == "ours-ppo4"
        algo = {"n_steps": NEW_TOKENS, "n_epochs": 4 if ppo4 else 1, "gamma": 1.0,
                "batch_size": 256 if ppo4 else PROMPTS * NEW_TOKENS}  # fmt: skip
        if args.mode == "ours-ppo1-chunk8":
            algo["grad_chunk_size"] = 8
    name = "grpo" if args.mode == "ours-grpo" else "ppo"
    policy_kwargs = {"share_prefix": args.mode != "ours-ppo1-plain",
                     "lean_decode": args.mode != "ours-ppo1-hf-decode"}  # fmt: skip
    agent = make_agent(name, venv, model=args.model, lora=LORA, kl_coef=BETA, seed=0,
                       device="cpu", learning_rate=LR, policy_kwargs=policy_kwargs, **algo)  # fmt: skip
    starts: list[float] = []
    ends: list[float] = []

    class Marks(BaseCallback):
        def _on_rollout_start(self) -> None:
            starts.append(time.perf_counter())

        def _on_rollout_end(self) -> None:
            ends.append(time.perf_counter())

        def _on_step(self) -> bool:
            return True

    torch.manual_seed(0)
    n = args.warmup + args.updates
    agent.learn(n * PROMPTS * NEW_TOKENS, callback=Marks())
    done = time.perf_counter()
    bounds = [*starts, done]
    updates = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)][args.warmup :]
    rollouts = [e - s for s, e in zip(starts, ends, strict=True)][args.warmup :]
    return {"update_s": median(updates), "rollout_s": median(rollouts), "update_all_s": updates}


def generate(args: argparse.Namespace) -> dict[str, Any]:
    """``model.generate`` on the peft model of our policy: the same batch, 64 sampled tokens."""
    import torch

    from rlhf_gym.agents import LoRAPolicy
    from rlhf_gym.envs import TextGenerationEnv

    env = TextGenerationEnv(tokenizer=args.model, prompts=chat_rows(), reward=e_fraction,
                            max_prompt_tokens=64, max_new_tokens=NEW_TOKENS, stop_on_eos=False)  # fmt: skip
    policy = LoRAPolicy(env.observation_space, env.action_space, lambda _: LR, model=args.model,
                        lora=LORA)  # fmt: skip
    rows = list(env.dataset)
    width = max(len(r.input_ids) for r in rows)
    pad = env.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r.input_ids) :] = torch.as_tensor(r.input_ids)
        mask[i, width - len(r.input_ids) :] = 1
    times = []
    for _ in range(args.warmup + args.updates):
        start = time.perf_counter()
        with torch.no_grad():
            policy.model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                  temperature=1.0, top_k=0, top_p=1.0, pad_token_id=pad,
                                  max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)  # fmt: skip
        times.append(time.perf_counter() - start)
    return {"generate_s": median(times[args.warmup :])}


def trl(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    import datasets
    import trl as trl_lib
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dataset = datasets.Dataset.from_list([{"prompt": r["messages"]} for r in chat_rows()])
    begin: list[float] = []
    end: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            synchronize("cpu")
            begin.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            end.append(time.perf_counter())

    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return e_fraction(prompts, texts)

    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=PROMPTS, gradient_accumulation_steps=1,
            num_generations=4, num_iterations=1, max_steps=args.warmup + args.updates,
            learning_rate=LR, beta=BETA, max_completion_length=NEW_TOKENS, temperature=1.0,
            top_k=0, top_p=1.0, generation_kwargs={"min_new_tokens": NEW_TOKENS}, use_cpu=True,
            bf16=False, seed=0, **TRL_QUIET,
        )  # fmt: skip
        trainer = GRPOTrainer(model=args.model, reward_funcs=reward, args=config,
                              train_dataset=dataset, processing_class=tokenizer,
                              peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
                              callbacks=[Timer()])  # fmt: skip
        trainer.train()
    steps = [e - b for b, e in zip(begin, end, strict=True)][args.warmup :]
    return {"update_s": median(steps), "update_all_s": steps, "trl_version": trl_lib.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "mode",
        choices=(
            "ours-ppo1",
            "ours-ppo1-plain",
            "ours-ppo1-hf-decode",
            "ours-ppo1-chunk8",
            "ours-ppo4",
            "ours-grpo",
            "generate",
            "trl",
        ),  # fmt: skip
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    set_threads()
    fn = {"generate": generate, "trl": trl}.get(args.mode, ours)
    result = fn(args)
    tokens = PROMPTS * NEW_TOKENS
    if "update_s" in result:
        result["tokens_per_s"] = tokens / result["update_s"]
    emit({"mode": args.mode, "tokens_per_update": tokens, **result})
    return 0


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    raise SystemExit(main())
