"""Where does the time go? Sample a benchmark worker with py-spy and bucket the samples.

    .venv/bin/python benchmarks/hotspots.py e2e        # PPO updates (rollout + training)
    .venv/bin/python benchmarks/hotspots.py rollout    # collect_rollouts vs model.generate
    .venv/bin/python benchmarks/hotspots.py trl        # TRL's GRPOTrainer, same buckets

py-spy (a sampling profiler: it does not slow the Python code it measures, unlike cProfile,
which inflates exactly the Python bookkeeping we are looking for) comes from the benchmark's
own environment (``benchmarks/setup_trl.sh`` installs it next to TRL). The raw stacks are kept
in ``benchmarks/profiles/<mode>.txt`` (collapsed-stack format: open them with speedscope or
flamegraph.pl); the bucket table is printed and written to ``benchmarks/profiles/<mode>.md``.

Buckets: each sample (a Python stack) goes to the first rule whose frame names it contains. The
rules separate the model's own forward/backward from what surrounds it: KV-cache bookkeeping,
prefix grouping, observation conversion, distributions, env steps, SB3 buffers, optimizer.
Only samples inside ``learn`` (e2e), ``collect_rollouts`` / ``generate`` (rollout) or TRL's
training loop (trl) count, so imports and model loading are left out.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
from pathlib import Path

from common import BENCH_DIR, worker_env

PY_SPY = BENCH_DIR / ".venv-trl" / "bin" / "py-spy"
OUT_DIR = BENCH_DIR / "profiles"

#: (bucket, frames that must ALL be in the stack; "a|b" = either). First match wins, so
#: specific rules come first.
RULES: list[tuple[str, tuple[str, ...]]] = [
    # KL reference pass (inside collect_rollouts, via compute_returns_and_advantage).
    ("kl-ref: group_by_prefix (Python loop)", ("apply_kl_penalty", "group_by_prefix")),
    ("kl-ref: LM forward (adapter off)", ("apply_kl_penalty", "GPT2LMHeadModel.forward")),
    ("kl-ref: other (obs copies, gather)", ("apply_kl_penalty",)),
    ("GAE", ("compute_returns_and_advantage",)),
    # Rollout sampling loop.
    (
        "rollout: KV write inside the model (BufferLayer.update)",
        ("collect_rollouts", "_lm_call", "BufferLayer.update"),
    ),
    (
        "rollout: LM forward, one token per env",
        ("collect_rollouts", "_lm_call", "GPT2LMHeadModel.forward"),
    ),
    ("rollout: _lm_call glue (cache handle, outputs)", ("collect_rollouts", "_lm_call")),
    (
        "rollout: LM forward, prefill / fallback",
        ("collect_rollouts", "_last_outputs", "GPT2LMHeadModel.forward"),
    ),
    (
        "rollout: KV-cache bookkeeping (validate, gather, merge)",
        ("collect_rollouts", "RolloutKVCache.step"),
    ),
    ("rollout: trainable-parameter fingerprint", ("collect_rollouts", "_fingerprint")),
    ("rollout: obs float->long conversion", ("collect_rollouts", "_obs_tokens")),
    ("rollout: value head", ("collect_rollouts", "predict_values")),
    ("rollout: distribution, sampling, log-prob", ("collect_rollouts", "LoRAPolicy.forward")),
    ("rollout: env step (SB3 VecEnv)", ("collect_rollouts", "VecEnv.step")),
    ("rollout: SB3 buffer add", ("collect_rollouts", "RolloutBuffer.add")),
    ("rollout: obs_as_tensor", ("collect_rollouts", "obs_as_tensor")),
    ("rollout: other SB3 loop", ("collect_rollouts",)),
    # Training (PPO.train).
    ("train: buffer get / minibatch copies", ("PPO.train", "RolloutBuffer.get")),
    ("train: group_by_prefix (Python loop)", ("PPO.train", "group_by_prefix")),
    ("train: LM forward (with grad)", ("PPO.train", "GPT2LMHeadModel.forward")),
    ("train: backward", ("PPO.train", "backward")),
    ("train: optimizer step", ("PPO.train", "Optimizer.profile_hook_step")),
    ("train: optimizer step", ("PPO.train", "Adam.step")),
    ("train: gradient clipping", ("PPO.train", "clip_grad_norm_")),
    ("train: distribution, entropy, loss", ("PPO.train", "evaluate_actions")),
    ("train: other", ("PPO.train",)),
    # model.generate (rollout mode only).
    ("generate: LM forward", ("generate", "GPT2LMHeadModel.forward")),
    ("generate: sampling, logits processors, bookkeeping", ("generate",)),
]

#: The same split for TRL's GRPOTrainer (``hotspots.py trl``), to compare bucket by bucket.
TRL_RULES: list[tuple[str, tuple[str, ...]]] = [
    (
        "trl generate: LM forward",
        ("GenerationMixin.generate", "GPT2LMHeadModel.forward|PeftModelForCausalLM.forward"),
    ),
    ("trl generate: sampling, logits processors, bookkeeping", ("GenerationMixin.generate",)),
    (
        "trl ref log-probs: LM forward (adapter off)",
        ("_generate_and_score_completions", "PeftModelForCausalLM.forward"),
    ),
    ("trl scoring, padding, advantages", ("_generate_and_score_completions",)),
    # TRL 1.x swaps the LM head for a fused, chunked log-prob kernel (never full logits).
    (
        "trl loss: LM forward (with grad, fused chunked LM head)",
        ("compute_loss", "PeftModelForCausalLM.forward"),
    ),
    ("trl loss: log-softmax, entropy, loss", ("compute_loss",)),
    ("trl backward", ("training_step", "backward")),
    ("trl optimizer step", ("Optimizer.profile_hook_step",)),
    ("trl optimizer step", ("Adam.step",)),
    ("trl optimizer step", ("AdamW.step",)),
    ("trl other (Trainer loop)", ("_inner_training_loop",)),
]

SCOPES = {
    "e2e": ("OnPolicyAlgorithm.learn",),
    "rollout": ("collect_rollouts", "generate"),
    "trl": ("_inner_training_loop",),
}


def _names(stack: str) -> list[str]:
    # "func (path/file.py:123)" -> "func"
    return [re.sub(r" \(.*\)$", "", frame) for frame in stack.split(";")]


def summarize(raw: Path, mode: str) -> list[tuple[str, int, float]]:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, n_str = line.rsplit(" ", 1)
        names = _names(stack)
        joined = ";".join(names)
        if not any(scope in joined for scope in SCOPES[mode]):
            continue
        n = int(n_str)
        total += n
        for bucket, needles in TRL_RULES if mode == "trl" else RULES:
            if all(
                any(alt in name for alt in needle.split("|") for name in names)
                for needle in needles
            ):
                counts[bucket] += n
                break
        else:
            counts["other"] += n
    return [(b, c, c / total if total else 0.0) for b, c in counts.most_common()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=tuple(SCOPES))
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--raw", type=Path, default=None, help="summarize an existing raw file")
    parser.add_argument("worker_args", nargs="*", help="extra bench_ours.py arguments (after --)")
    args = parser.parse_args(argv)
    OUT_DIR.mkdir(exist_ok=True)
    raw = args.raw or OUT_DIR / f"{args.mode}.txt"
    if args.raw is None:
        if not PY_SPY.exists():
            raise SystemExit(f"{PY_SPY} not found: run `bash benchmarks/setup_trl.sh` first")
        defaults = {
            "e2e": ["--updates", "4"],
            "rollout": ["--repeats", "3"],
            "trl": ["--steps", "4"],
        }
        if args.mode == "trl":
            worker = [str(PY_SPY.parent / "python"), str(BENCH_DIR / "bench_trl.py")]
        else:
            worker = [sys.executable, str(BENCH_DIR / "bench_ours.py"), args.mode]
        cmd = [
            str(PY_SPY), "record", "--rate", str(args.rate), "--format", "raw", "-o", str(raw),
            "--", *worker, *(args.worker_args or defaults[args.mode]),
        ]  # fmt: skip
        proc = subprocess.run(
            cmd, cwd=BENCH_DIR.parent, env=worker_env(), capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SystemExit(f"py-spy failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        result = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON")]
        if result:
            print(result[-1])
    rows = summarize(raw, args.mode)
    lines = [
        f"py-spy profile of `{'bench_trl.py' if args.mode == 'trl' else 'bench_ours.py ' + args.mode}` ({os.path.basename(raw)}), "
        f"{sum(c for _, c, _ in rows)} samples in scope",
        "",
        "| bucket | samples | share |",
        "|---|---:|---:|",
    ]
    lines += [f"| {b} | {c} | {share:.1%} |" for b, c, share in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    raw.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
