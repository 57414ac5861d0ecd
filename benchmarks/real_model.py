"""Real-model benchmark: SmolLM2-135M-Instruct, ours against TRL's GRPOTrainer and generate.

    .venv/bin/python benchmarks/real_model.py [--updates 2]     # about 10 min on 2 CPU cores

Its own command, not part of ``make bench`` or CI: it downloads the model once (about 100 MB,
``../shared/models/get_smollm2.sh`` into ``benchmarks/.cache/smollm2``, run with the TRL
environment's Python so the project's ``.venv`` gets no extra package) and every update costs
tens of seconds on a CPU. Each configuration runs in its own process (``bench_real.py``; see its
docstring for the exact work: 32 chat prompts, 32 completions x 64 tokens per update, LoRA r=8
on q_proj/v_proj, KL beta 0.04). Prints a table and writes ``benchmarks/results-real.md``.
Targets on the 2-core CPU: at least 2x TRL's tokens/s, at most 0.6x its peak RSS, rollout at
least 1.0x ``generate``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import BENCH_DIR, RESULT_MARKER

MODEL_DIR = BENCH_DIR / ".cache" / "smollm2"
GET_MODEL = BENCH_DIR.parent.parent / "shared" / "models" / "get_smollm2.sh"
TRL_PYTHON = BENCH_DIR / ".venv-trl" / "bin" / "python"
LABELS = {
    "ours-ppo1": "ours: PPO, whole rollout as one minibatch, 1 epoch",
    "ours-ppo1-plain": "the same without share_prefix (the system turn once per row)",
    "ours-ppo1-hf-decode": "the same with transformers' decode step (lean_decode=False)",
    "ours-ppo1-chunk8": "the same backpropagated 8 sequences at a time (grad_chunk_size=8)",
    "ours-ppo4": "ours: PPO, 4 epochs of minibatches of 256",
    "ours-grpo": "ours: GRPO, 8 prompts x 4, beta in the loss",
    "trl": "TRL GRPOTrainer, 8 prompts x 4, beta 0.04",
}


def worker(python: Path | str, mode: str, updates: int) -> dict[str, Any]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [str(python), str(BENCH_DIR / "bench_real.py"), mode, "--model", str(MODEL_DIR),
           "--updates", str(updates)]  # fmt: skip
    print(f"  running {' '.join(cmd[1:])} ...", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=BENCH_DIR.parent)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        return {"error": proc.stderr[-2000:]}
    return json.loads(lines[-1][len(RESULT_MARKER) :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=2, help="measured updates per config")
    args = parser.parse_args(argv)
    if not TRL_PYTHON.exists():
        raise SystemExit(f"{TRL_PYTHON} not found: run `bash benchmarks/setup_trl.sh` first")
    if not (MODEL_DIR / "model.safetensors").exists():
        subprocess.run(["bash", str(GET_MODEL), str(MODEL_DIR), str(TRL_PYTHON)], check=True)
    res: dict[str, dict[str, Any]] = {}
    modes = ("ours-ppo1", "trl", "ours-grpo", "ours-ppo4", "ours-ppo1-plain", "ours-ppo1-chunk8",
             "ours-ppo1-hf-decode", "generate")  # fmt: skip
    for mode in modes:
        python = TRL_PYTHON if mode == "trl" else sys.executable
        res[mode] = worker(python, mode, args.updates)
    trl = res["trl"]
    lines = ["| | tokens/s | s / update | peak RSS MiB | vs TRL: speed | vs TRL: RSS |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for mode, label in LABELS.items():
        r = res[mode]
        if "error" in r:
            lines.append(f"| {label} | failed | | | | |")
            continue
        speed = r["tokens_per_s"] / trl["tokens_per_s"] if "error" not in trl else float("nan")
        rss = r["peak_rss_mb"] / trl["peak_rss_mb"] if "error" not in trl else float("nan")
        lines.append(f"| {label} | {r['tokens_per_s']:,.0f} | {r['update_s']:.1f} | "
                     f"{r['peak_rss_mb']:,.0f} | {speed:.2f}x | {rss:.2f}x |")  # fmt: skip
    gen, ppo = res["generate"], res["ours-ppo1"]
    if "error" not in gen and "error" not in ppo:
        lines.append(f"| model.generate, the same peft model, 32 x 64 tokens | "
                     f"{2048 / gen['generate_s']:,.0f} | {gen['generate_s']:.1f} | "
                     f"{gen['peak_rss_mb']:,.0f} | | |")  # fmt: skip
        lines.append(f"| rollout of ours-ppo1 (KL reference pass included) / generate | "
                     f"{gen['generate_s'] / ppo['rollout_s']:.2f}x | {ppo['rollout_s']:.1f} | | | |")  # fmt: skip
        for mode, label in (
            ("ours-ppo1-plain", "without share_prefix"),
            ("ours-ppo1-hf-decode", "with transformers' decode step"),
        ):
            other = res[mode]
            if "error" not in other:
                lines.append(f"| the same {label} / generate | {gen['generate_s'] / other['rollout_s']:.2f}x"
                             f" | {other['rollout_s']:.1f} | | | |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    errors = {m: r["error"][-500:] for m, r in res.items() if "error" in r}
    if errors:
        print(json.dumps(errors, indent=2))
    (BENCH_DIR / "results-real.md").write_text(
        "SmolLM2-135M-Instruct on the CPU (`benchmarks/real_model.py`), median of "
        f"{args.updates} updates after 1 warm-up, each configuration its own process.\n\n" + text
    )
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
