"""Worker: TRL's GRPOTrainer on the benchmark task (runs in ``benchmarks/.venv-trl``).

    benchmarks/.venv-trl/bin/python benchmarks/bench_trl.py [--steps 5] [--warmup 1]

TRL lives in the benchmark's own virtual environment (``benchmarks/setup_trl.sh``) so it never
becomes a dependency of rlhf_gym; this file imports neither ``rlhf_gym`` nor anything outside
that environment and :mod:`common`.

Configuration, chosen to match our PPO run update for update:

- 8 prompts x 4 generations = 32 completions per optimizer step: ``per_device_train_batch_size=32``
  (TRL counts completions), ``num_generations=4``, ``gradient_accumulation_steps=1`` (so
  ``generation_batch_size=32``, ``steps_per_generation=1``), ``num_iterations=1``: one generation
  round, one epoch, one optimizer step per update.
- ``beta=0.04`` (KL to the reference: the same model with the LoRA adapter disabled, as ours),
  ``learning_rate=1e-4``, LoRA r=8 / alpha=16 / dropout 0 on c_attn, c_proj, c_fc via
  ``peft_config``.
- Sampling: ``temperature=1.0``, ``top_k=0``, ``top_p=1.0``, ``max_completion_length=48`` and
  ``generation_kwargs={"min_new_tokens": 48}``: transformers' ``MinNewTokensLogitsProcessor``
  masks EOS until 48 tokens exist, and ``max_new_tokens`` stops there, so every completion is
  exactly 48 tokens (checked on every reward call: ``completion_ids`` lengths).
- Equal footing with ours: fp32 (``bf16=False``; TRL's CPU default would autocast to bf16) and
  no gradient checkpointing (TRL's default trades speed for memory; ours does not checkpoint).
  The model is given as a path, so TRL loads it itself (float32, transformers' default
  attention). ``use_cpu=True``, no logging backends, no checkpoints.
- ``--device cuda --dtype bfloat16`` (the GPU variant): ``use_cpu=False``, ``bf16=True`` and
  ``model_init_kwargs={"dtype": "bfloat16"}``, so TRL loads bf16 base weights as ours does; peft
  keeps the adapters float32 in both.

Timing: a ``TrainerCallback`` stamps ``on_step_begin``/``on_step_end``; TRL generates inside the
training step, so a step is generation + scoring + reference log-probs + forward/backward +
optimizer step. The median of the steps after ``--warmup`` is reported.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common import (
    TASK,
    TRL_QUIET,
    add_backend_args,
    e_fraction,
    emit,
    load_prompts,
    median,
    set_threads,
    synchronize,
    task_paths,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=TASK.new_tokens)
    parser.add_argument("--output-dir", default=None)
    add_backend_args(parser)
    args = parser.parse_args(argv)
    set_threads()

    import tempfile

    import datasets
    import peft
    import torch
    import transformers
    import trl
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    paths = task_paths()
    tokenizer = AutoTokenizer.from_pretrained(paths.tokenizer)
    dataset = datasets.Dataset.from_dict({"prompt": load_prompts(paths)})
    completion_lengths: list[int] = []

    def reward_e_fraction(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        completion_lengths.extend(len(ids) for ids in kwargs["completion_ids"])
        return e_fraction(prompts, completions)

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.begin: list[float] = []
            self.end: list[float] = []

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            synchronize(args.device)
            self.begin.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            synchronize(args.device)
            self.end.append(time.perf_counter())

    n_steps = args.warmup + args.steps
    per_step = TASK.completions_per_update
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=args.output_dir or tmp,
            per_device_train_batch_size=per_step,
            gradient_accumulation_steps=1,
            num_generations=TASK.trl_num_generations,
            num_iterations=1,
            max_steps=n_steps,
            learning_rate=TASK.learning_rate,
            beta=TASK.beta,
            max_completion_length=args.new_tokens,
            temperature=TASK.temperature,
            top_k=0,
            top_p=1.0,
            generation_kwargs={"min_new_tokens": args.new_tokens},
            use_cpu=args.device == "cpu",
            bf16=args.dtype == "bfloat16",
            model_init_kwargs={"dtype": args.dtype},
            seed=TASK.seed,
            **TRL_QUIET,
        )
        timer = StepTimer()
        trainer = GRPOTrainer(
            model=str(paths.model(TASK.n_positions)),
            reward_funcs=reward_e_fraction,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(task_type="CAUSAL_LM", **TASK.lora_dict()),
            callbacks=[timer],
        )
        attn = trainer.model.config._attn_implementation
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start

    steps = [e - b for b, e in zip(timer.begin, timer.end, strict=True)]
    measured = steps[args.warmup :]
    step_s = median(measured)
    tokens = per_step * args.new_tokens
    lengths = sorted(set(completion_lengths))
    if lengths != [args.new_tokens]:
        raise SystemExit(f"TRL completions were not all {args.new_tokens} tokens: {lengths}")
    emit(
        {
            "mode": "trl",
            "device": args.device,
            "dtype": args.dtype,
            "trl_version": trl.__version__,
            "transformers_version": transformers.__version__,
            "peft_version": peft.__version__,
            "torch_version": torch.__version__,
            "attn_implementation": attn,
            "completions_per_step": per_step,
            "new_tokens": args.new_tokens,
            "steps": len(steps),
            "warmup": args.warmup,
            "step_s": step_s,
            "step_all_s": steps,
            "tokens_per_step": tokens,
            "tokens_per_s": tokens / step_s,
            "total_s": total,
            "completion_lengths": lengths,
        }
    )
    return 0


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    raise SystemExit(main())
