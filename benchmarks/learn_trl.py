"""Worker: TRL's GRPOTrainer learning the default task (runs in ``benchmarks/.venv-trl``).

    benchmarks/.venv-trl/bin/python benchmarks/learn_trl.py --policy DIR --reward-model DIR \
        --prompts prompts_train.jsonl --tokens 10700 --output-dir OUT [--beta 0.1] [--lr 2e-4]

The default task's policy, reward model and training prompts, the same LoRA as ``rlhf-gym
train`` (r=8, alpha 16, dropout 0, peft's targets for GPT-2: ``c_attn``), 32 completions per
generation in groups of 4 (``--batch-size`` per optimizer step, ``--steps-per-generation``
steps per generation), answers of at most 24 tokens ending at EOS, temperature 1. The
reward reads exactly what ``rlhf_gym``'s ``reward_model`` reads (``prompt + completion +
eos``, its raw logit), written out here because this environment does not install rlhf_gym.
Training stops once ``--tokens`` completion tokens were generated, so both libraries learn
from the same number of tokens. The adapter is saved to ``OUTPUT_DIR`` for ``rlhf-gym
evaluate`` to score on the held-out prompts. Prints one ``BENCH_JSON:`` line.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from common import TRL_QUIET, emit, set_threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--reward-model", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--tokens", type=int, required=True, help="completion tokens to learn from")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="completions per step")
    parser.add_argument(
        "--steps-per-generation", type=int, default=1, help="optimizer steps per 32 completions"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    set_threads()

    import datasets
    import torch
    import trl
    from peft import LoraConfig
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    rows = [json.loads(line) for line in open(args.prompts, encoding="utf-8") if line.strip()]
    dataset = datasets.Dataset.from_dict({"prompt": [r["prompt"] for r in rows]})
    rm_tok = AutoTokenizer.from_pretrained(args.reward_model)
    rm = AutoModelForSequenceClassification.from_pretrained(args.reward_model).eval()
    generated = [0]

    def reward_model(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        generated[0] += sum(len(ids) for ids in kwargs["completion_ids"])
        texts = [
            p + c + (rm_tok.eos_token if not c.endswith(rm_tok.eos_token) else "")
            for p, c in zip(prompts, completions, strict=True)
        ]
        enc = rm_tok(texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            return rm(**enc).logits[:, 0].float().tolist()

    class TokenBudget(TrainerCallback):
        def on_step_end(self, _args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if generated[0] >= args.tokens:
                control.should_training_stop = True
            return control

    if rm_tok.pad_token is None:
        rm_tok.pad_token = rm_tok.eos_token
    rm_tok.padding_side = "right"
    config = GRPOConfig(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        steps_per_generation=args.steps_per_generation,
        gradient_accumulation_steps=1,
        num_generations=4,
        num_iterations=args.iterations,
        max_steps=10_000,
        learning_rate=args.lr,
        beta=args.beta,
        max_completion_length=24,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        use_cpu=True,
        bf16=False,
        seed=args.seed,
        **TRL_QUIET,
    )
    trainer = GRPOTrainer(
        model=args.policy,
        reward_funcs=reward_model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["c_attn"]
        ),
        callbacks=[TokenBudget()],
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(args.output_dir)
    emit(
        {
            "mode": "learn_trl",
            "trl_version": trl.__version__,
            "train_s": seconds,
            "generated_tokens": generated[0],
            "steps": int(trainer.state.global_step),
            "beta": args.beta,
            "learning_rate": args.lr,
            "num_iterations": args.iterations,
            "batch_size": args.batch_size,
            "steps_per_generation": args.steps_per_generation,
        }
    )
    return 0


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    raise SystemExit(main())
