"""Learning on the default task at an equal number of generated tokens: ours against TRL's GRPO.

    .venv/bin/python benchmarks/learning.py [--timesteps 24576] [--seeds 0 1]   # ~3 min on 2 cores

Issue 11's comparison: our GRPO and PPO against TRL's ``GRPOTrainer`` on the same policy, reward
model, prompts and LoRA, each learning from the same number of generated (completion) tokens,
every adapter scored the same way by ``rlhf-gym evaluate`` on the 128 held-out prompts: reward,
the independent lexicon measure, KL to the base, perplexity under the base, distinct-2.

1. ``rlhf-gym train --algo grpo --total-timesteps T`` (default settings). Its env steps include
   the idle steps of rounds, so the tokens it generated (``rollout/response_tokens`` summed over
   ``progress.csv``) set the budget G of everyone else.
2. ``rlhf-gym train --algo ppo --total-timesteps G`` (PPO's env steps are generated tokens; its
   rollouts of 1,024 tokens may overshoot G by less than one rollout).
3. TRL (``learn_trl.py``) until G tokens: the issue's two settings (lr 2e-4, 4 iterations, beta
   0.1 and beta 0) and ours (lr 1e-3, beta 0.5, 4 iterations in minibatches of 8).

Training time is the learner's own wall time, model loading and the before/after evaluations
excluded: ours ``learn_seconds`` from ``summary.json`` (``agent.learn()``, timed to the
millisecond; SB3's ``time/time_elapsed``, used before, is whole seconds logged before each
update, so it left out the last update and up to a second more), TRL's ``trainer.train()``. Writes ``benchmarks/learning.md``. Not run by CI.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BIN = Path(sys.executable).parent
TRL_PYTHON = BENCH_DIR / ".venv-trl" / "bin" / "python"
MARKER = "BENCH_JSON:"
#: TRL settings: (label, beta, learning rate, iterations, completions per step, steps/generation)
TRL_RUNS = [
    ("TRL GRPO, lr 2e-4, 4 iterations, beta 0.1", 0.1, 2e-4, 4, 32, 1),
    ("TRL GRPO, lr 2e-4, 4 iterations, beta 0", 0.0, 2e-4, 4, 32, 1),
    ("TRL GRPO, our settings (lr 1e-3, beta 0.5, 4 x 4 steps of 8)", 0.5, 1e-3, 4, 8, 4),
]


def run(cmd: list[str]) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def train_ours(algo: str, timesteps: int, out: Path, seed: int) -> dict[str, Any]:
    run([str(BIN / "rlhf-gym"), "train", "--algo", algo, "--total-timesteps", str(timesteps),
         "--seed", str(seed),
         "--output-dir", str(out), "--no-progress-bar", "--eval-every", "0",
         "--checkpoint-every", "0"])  # fmt: skip
    rows = list(csv.DictReader((out / "progress.csv").open()))
    tokens = sum(float(r.get("rollout/response_tokens") or 0) for r in rows)
    if not tokens:  # PPO: every env step is a generated token
        tokens = float(rows[-1]["time/total_timesteps"])
    return {
        "adapter": out / "adapter",
        "generated_tokens": int(tokens),
        "train_s": float(json.loads((out / "summary.json").read_text())["learn_seconds"]),
    }


def train_trl(spec: tuple[Any, ...], tokens: int, out: Path, seed: int) -> dict[str, Any]:
    from rlhf_gym.envs import default_task

    _, beta, lr, iterations, batch, spg = spec
    stdout = run([str(TRL_PYTHON), str(BENCH_DIR / "learn_trl.py"),
                  "--policy", str(default_task.policy_path()),
                  "--reward-model", str(default_task.reward_model_path()),
                  "--prompts", str(default_task.prompts_path("train")),
                  "--tokens", str(tokens), "--output-dir", str(out), "--beta", str(beta),
                  "--lr", str(lr), "--iterations", str(iterations), "--batch-size", str(batch),
                  "--steps-per-generation", str(spg), "--seed", str(seed)])  # fmt: skip
    result = json.loads(stdout.split(MARKER, 1)[1].splitlines()[0])
    return {"adapter": out, **result}


def evaluate(adapter: Path, out: Path) -> dict[str, Any]:
    run([str(BIN / "rlhf-gym"), "evaluate", "--adapter", str(adapter), "--output", str(out)])
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=24576, help="our GRPO's env steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    if not TRL_PYTHON.exists():
        raise SystemExit(f"{TRL_PYTHON} not found: run `bash benchmarks/setup_trl.sh` first")
    work = Path(tempfile.mkdtemp(prefix="rlhf-gym-learning-"))
    results: list[tuple[str, dict[str, Any]]] = []
    budgets = []
    for seed in args.seeds:
        tag = f"seed {seed}: "
        grpo = train_ours("grpo", args.timesteps, work / f"grpo{seed}", seed)
        budget = grpo["generated_tokens"]
        budgets.append(budget)
        results.append((tag + "ours: GRPO (default settings)", grpo))
        ppo = train_ours("ppo", budget, work / f"ppo{seed}", seed)
        results.append((tag + "ours: PPO (default settings)", ppo))
        for i, spec in enumerate(TRL_RUNS):
            results.append((tag + spec[0], train_trl(spec, budget, work / f"trl{seed}-{i}", seed)))
    rows = []
    base: dict[str, Any] | None = None
    for label, r in results:
        report = evaluate(r["adapter"], work / f"eval-{len(rows)}.json")
        base = base or report["base"]
        a = report["adapter"]
        ppl = a["base_ppl"] / report["base"]["base_ppl"]
        rows.append(
            [label, f"{r['generated_tokens']:,}", f"{r['train_s']:.1f}", f"{a['reward_mean']:.2f}",
             f"{a['metrics']['lexicon_sentiment']:.3f}", f"{a['kl']:.2f}", f"{ppl:.2f}x",
             f"{a['distinct_2'] / report['base']['distinct_2']:.2f}x",
             "yes" if ppl <= 1.5 else "no"]
        )  # fmt: skip
    assert base is not None
    header = ["", "generated tokens", "train s", "held-out reward", "lexicon", "KL",
              "perplexity vs base", "distinct-2 vs base", "within 1.5x perplexity"]  # fmt: skip
    base_row = ["base policy", "", "", f"{base['reward_mean']:.2f}",
                f"{base['metrics']['lexicon_sentiment']:.3f}", "0.00", "1.00x", "1.00x", ""]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in [base_row, *rows]]
    text = "\n".join(lines) + "\n"
    print(text)
    (BENCH_DIR / "learning.md").write_text(
        f"Learning on the default task at {', '.join(f'{b:,}' for b in budgets)} generated tokens "
        f"(seeds {', '.join(map(str, args.seeds))}; `benchmarks/learning.py --timesteps "
        f"{args.timesteps}`).\n\n" + text
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
