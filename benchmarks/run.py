"""Benchmark rlhf_gym against ``model.generate`` and TRL's GRPOTrainer; print one table.

    .venv/bin/python benchmarks/run.py            # full run (about 7 min on 2 idle cores)
    .venv/bin/python benchmarks/run.py --quick    # smoke version, small sizes, a minute or two
    make bench                                    # the same as the first line

Every measured configuration runs in its own subprocess (``bench_ours.py`` with this Python,
``bench_trl.py`` with ``benchmarks/.venv-trl/bin/python``), so imports, caches and peak RSS of
one configuration never leak into another, and both contestants are measured in this one run.
This process imports no torch: it only builds the task (a subprocess too), starts workers,
collects their JSON, prints the table and writes ``benchmarks/results.json`` and
``benchmarks/results.md``.

See ``benchmarks/README.md`` for what each number means and the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import BENCH_DIR, NUM_THREADS, RESULT_MARKER, TASK, median, task_dict, worker_env

TRL_PYTHON = BENCH_DIR / ".venv-trl" / "bin" / "python"
SECTIONS = ("env", "rollout", "e2e", "grpo", "trl", "idle", "minibatch", "scaling", "ranks")
#: PPO minibatch sizes compared at 4 epochs (None: the whole rollout as one minibatch).
MINIBATCHES: tuple[int | None, ...] = (64, 256, None)


@dataclass(frozen=True)
class Backend:
    """Where every worker runs the task: the issue's float32 CPU task, or a variant of it
    (``--device cuda --dtype bfloat16``), passed identically to ours and TRL."""

    device: str = "cpu"
    dtype: str = "float32"
    trl_python: Path = TRL_PYTHON

    @property
    def args(self) -> list[str]:
        return ["--device", self.device, "--dtype", self.dtype]

    @property
    def is_default(self) -> bool:
        return (self.device, self.dtype) == ("cpu", "float32")

    @property
    def label(self) -> str:
        return f"{self.device}, {self.dtype}"


#: Set once by :func:`main` from the command line.
BACKEND = Backend()
#: Every worker's result is appended here as it arrives, so that a run cut short (a time limit
#: on a lent GPU, a closed terminal) keeps what it measured; removed when the run completes.
PROGRESS: Path | None = None
#: ``--resume``: results of an interrupted run by worker command line, reused instead of rerun.
RESUMED: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class Plan:
    """How much to measure. ``quick`` is a smoke test, not a measurement."""

    env_episodes: int
    env_repeats: int
    rollout_repeats: int
    e2e_updates: int
    trl_steps: int
    #: Alternating rounds of (ours end-to-end, TRL), each a fresh process.
    rounds: int
    warmup: int
    batches: tuple[int, ...]
    lengths: tuple[int, ...]
    scaling_e2e: bool
    #: Tokens measured per scaling point (repeats shrink for big points, never below 1).
    scaling_tokens: int
    #: Rounds of the default task sampled to measure the idle share of group rounds.
    idle_rounds: int


FULL = Plan(
    env_episodes=64,
    env_repeats=5,
    rollout_repeats=5,
    e2e_updates=5,
    trl_steps=5,
    rounds=2,
    warmup=1,
    batches=(8, 32, 128),
    lengths=(32, 128, 512),
    scaling_e2e=True,
    scaling_tokens=3 * 32 * 128,
    idle_rounds=16,
)
QUICK = Plan(
    env_episodes=4,
    env_repeats=1,
    rollout_repeats=1,
    e2e_updates=1,
    trl_steps=1,
    rounds=1,
    warmup=1,
    batches=(8, 32),
    lengths=(16, 32),
    scaling_e2e=False,
    scaling_tokens=1,
    idle_rounds=2,
)


# ---------------------------------------------------------------------------------- workers


def run_worker(
    python: Path | str, script: str, args: list[str], timeout: float, ranks: int = 1
) -> dict[str, Any]:
    """Run one worker (``ranks > 1``: under torchrun, rank 0 reports); return its JSON result,
    or ``{"error": ...}`` with the stderr tail."""
    launcher = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone",
                                      f"--nproc-per-node={ranks}"]  # fmt: skip
    cmd = [str(python), *launcher, str(BENCH_DIR / script), *args]
    label = " ".join([*(["torchrun", f"x{ranks}"] if ranks > 1 else []), script, *args])
    if label in RESUMED:
        print(f"  reusing {label} (--resume)", file=sys.stderr, flush=True)
        return RESUMED.pop(label)
    print(f"  running {label} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=BENCH_DIR.parent,
            env=worker_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "cmd": label}
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        return {"error": f"exit code {proc.returncode}", "stderr_tail": tail, "cmd": label}
    result = json.loads(lines[-1][len(RESULT_MARKER) :])
    result["worker_wall_s"] = wall
    result["cmd"] = label
    if PROGRESS is not None:
        with PROGRESS.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return result


def ours(mode: str, *args: str | int, timeout: float = 3600, ranks: int = 1) -> dict[str, Any]:
    argv = [mode, *map(str, args), *BACKEND.args]
    return run_worker(sys.executable, "bench_ours.py", argv, timeout, ranks)


def trl_available() -> bool:
    return BACKEND.trl_python.exists()


def build_task() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "build_task.py")],
        cwd=BENCH_DIR.parent,
        env=worker_env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"building the benchmark task failed:\n{proc.stderr[-3000:]}")


# ------------------------------------------------------------------------------- measuring


def measure(plan: Plan, sections: set[str]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    w = str(plan.warmup)
    if "env" in sections:
        res["env"] = ours(
            "env", "--episodes", plan.env_episodes, "--repeats", plan.env_repeats, "--warmup", w
        )
    if "rollout" in sections or "env" in sections:
        res["rollout"] = ours(
            "rollout", "--repeats", plan.rollout_repeats, "--warmup", w, "--floor"
        )
    # Ours and TRL alternate (ours, TRL, ours, TRL...): on a shared machine the background load
    # drifts, and alternation gives both contestants the same share of it.
    e2e_rounds: list[dict[str, Any]] = []
    grpo_rounds: list[dict[str, Any]] = []
    trl_rounds: list[dict[str, Any]] = []
    for _ in range(plan.rounds):
        if "e2e" in sections:
            e2e_rounds.append(ours("e2e", "--updates", plan.e2e_updates, "--warmup", w))
        if "grpo" in sections:
            grpo_rounds.append(ours("grpo", "--updates", plan.e2e_updates, "--warmup", w))
        if "trl" in sections:
            if not trl_available():
                trl_rounds.append(
                    {
                        "error": f"{BACKEND.trl_python} not found: run "
                        "`bash benchmarks/setup_trl.sh` first"
                    }
                )
                continue
            trl_rounds.append(
                run_worker(
                    BACKEND.trl_python,
                    "bench_trl.py",
                    ["--steps", str(plan.trl_steps), "--warmup", w, *BACKEND.args],
                    timeout=3600,
                )
            )
    if e2e_rounds:
        res["e2e"] = merge_rounds(e2e_rounds, "update_all_s", "tokens_per_update", "update_s")
    if grpo_rounds:
        res["grpo"] = merge_rounds(grpo_rounds, "update_all_s", "tokens_per_update", "update_s")
    if trl_rounds:
        res["trl"] = merge_rounds(trl_rounds, "step_all_s", "tokens_per_step", "step_s")
    if "idle" in sections:
        res["idle"] = ours("idle", "--rounds", plan.idle_rounds)
    if "minibatch" in sections:
        res["minibatch"] = [
            {
                "batch_size": size,
                **ours(
                    "e2e",
                    "--n-epochs",
                    4,
                    "--updates",
                    plan.e2e_updates,
                    "--warmup",
                    w,
                    *(["--batch-size", size] if size else []),
                ),
            }  # fmt: skip
            for size in MINIBATCHES
        ]
    if "scaling" in sections:
        res["scaling"] = measure_scaling(plan, res)
    if "ranks" in sections:
        res["ranks"] = measure_ranks(plan)
    return res


def measure_ranks(plan: Plan) -> list[dict[str, Any]]:
    """Data parallelism on the same cores: one process with 2 threads and 32 envs against
    torchrun with 2 ranks of 1 thread and 16 envs each (the same 32 completions per update),
    PPO and GRPO, alternating so both see the same background load."""
    w = str(plan.warmup)
    points: list[dict[str, Any]] = []
    for mode in ("e2e", "grpo"):
        pair: dict[str, Any] = {"mode": mode}
        for _ in range(plan.rounds):
            common = ("--updates", plan.e2e_updates, "--warmup", w)
            one = ours(mode, *common, "--num-envs", 32, "--threads", 2)
            two = ours(mode, *common, "--num-envs", 16, "--threads", 1, ranks=2)
            pair.setdefault("one", []).append(one)
            pair.setdefault("two", []).append(two)
        for key in ("one", "two"):
            pair[key] = merge_rounds(pair[key], "update_all_s", "tokens_per_update", "update_s")
        points.append(pair)
    return points


def merge_rounds(
    rounds: list[dict[str, Any]], all_key: str, tokens_key: str, median_key: str
) -> dict[str, Any]:
    """One result from several rounds of a worker: median over every measured update of every
    round, peak RSS the highest of the rounds (each round is its own process)."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[0]
    merged = dict(ok[0])
    measured = [t for r in ok for t in r[all_key][r["warmup"] :]]
    merged[median_key] = median(measured)
    merged["tokens_per_s"] = merged[tokens_key] / merged[median_key]
    merged["measured_s"] = measured
    merged["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    if all("peak_gpu_mb" in r for r in ok):
        merged["peak_gpu_mb"] = max(r["peak_gpu_mb"] for r in ok)
    for key in ("rollout_s", "train_s", "kl_reference_s"):
        if key in merged:
            merged[key] = median([r[key] for r in ok])
    merged["rounds"] = rounds
    return merged


def measure_scaling(plan: Plan, res: dict[str, Any]) -> list[dict[str, Any]]:
    points: list[tuple[str, int, int, int]] = []
    for b in plan.batches:
        points.append(("batch", b, TASK.new_tokens, TASK.n_positions))
    for length in plan.lengths:
        points.append(("length", TASK.completions_per_update, length, TASK.n_positions_long))
    out = []
    for axis, b, length, npos in points:
        tokens = b * length
        repeats = max(1, min(plan.rollout_repeats, round(plan.scaling_tokens / tokens)))
        updates = max(1, min(plan.e2e_updates, round(plan.scaling_tokens / tokens)))
        main_point = (b, length, npos) == (
            TASK.completions_per_update,
            TASK.new_tokens,
            TASK.n_positions,
        )
        common = ["--num-envs", b, "--new-tokens", length, "--n-positions", npos]
        common += ["--warmup", plan.warmup]
        if main_point and "error" not in res.get("rollout", {"error": 1}):
            rollout = res["rollout"]
        else:
            rollout = ours("rollout", *common, "--repeats", repeats)
        e2e: dict[str, Any] | None = None
        if plan.scaling_e2e:
            if main_point and "error" not in res.get("e2e", {"error": 1}):
                e2e = res["e2e"]
            else:
                e2e = ours("e2e", *common, "--updates", updates)
        out.append(
            {
                "axis": axis,
                "num_envs": b,
                "new_tokens": length,
                "n_positions": npos,
                "rollout": rollout,
                "e2e": e2e,
            }  # fmt: skip
        )
    return out


# --------------------------------------------------------------------------------- summary


def _ok(r: dict[str, Any] | None) -> bool:
    return bool(r) and "error" not in r  # type: ignore[operator]


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    """Derived figures and the issue's targets, each met / not met / not measured."""
    s: dict[str, Any] = {}
    env, rollout, e2e, trl = (res.get(k) for k in ("env", "rollout", "e2e", "trl"))
    if _ok(env) and _ok(rollout):
        s["env_share_of_rollout_step"] = env["sb3_vec_us_per_step"] / rollout["rollout_step_us"]
    if _ok(rollout):
        s["rollout_vs_generate"] = rollout["ratio"]
        s["rollout_vs_generate_sampling_only"] = rollout["ratio_sampling_only"]
    grpo, idle = res.get("grpo"), res.get("idle")
    if _ok(grpo) and _ok(trl):
        s["grpo_vs_trl"] = grpo["tokens_per_s"] / trl["tokens_per_s"]
        s["grpo_rss_vs_trl"] = grpo["peak_rss_mb"] / trl["peak_rss_mb"]
    if _ok(idle):
        s["idle_share"] = idle["idle_share"]
    if _ok(e2e) and _ok(trl):
        s["e2e_vs_trl"] = e2e["tokens_per_s"] / trl["tokens_per_s"]
        s["rss_vs_trl"] = e2e["peak_rss_mb"] / trl["peak_rss_mb"]
        if "peak_gpu_mb" in e2e and "peak_gpu_mb" in trl:
            s["gpu_memory_vs_trl"] = e2e["peak_gpu_mb"] / trl["peak_gpu_mb"]
    targets = [
        # Three decimals: a ratio that rounds to the threshold must not read as meeting it.
        ("rollout >= 1.0x generate", s.get("rollout_vs_generate"), lambda v: v >= 1.0, "{:.3f}x"),
        ("end-to-end >= 1.5x TRL GRPO", s.get("e2e_vs_trl"), lambda v: v >= 1.5, "{:.2f}x"),
        ("peak RSS <= TRL's", s.get("rss_vs_trl"), lambda v: v <= 1.0, "{:.2f}x TRL"),
        ("our GRPO >= 1.5x TRL GRPO", s.get("grpo_vs_trl"), lambda v: v >= 1.5, "{:.2f}x"),
        ("our GRPO peak RSS <= TRL's", s.get("grpo_rss_vs_trl"), lambda v: v <= 1.0, "{:.2f}x TRL"),
        (
            "env overhead < 5% of a rollout step",
            s.get("env_share_of_rollout_step"),
            lambda v: v < 0.05,
            "{:.1%}",
        ),
    ]
    s["targets"] = [
        {
            "target": name,
            "value": value,
            "shown": "n/a" if value is None else fmt.format(value),
            "met": None if value is None else bool(check(value)),
        }
        for name, value, check, fmt in targets
    ]
    return s


def _fmt(value: Any, spec: str = "{:,.0f}") -> str:
    if value is None:
        return "n/a"
    try:
        return spec.format(value)
    except (TypeError, ValueError):
        return str(value)


def _e2e_row(label: str, r: dict[str, Any], gpu: bool) -> list[str]:
    """One row of table c/d for an update-timing worker of ours."""
    return [
        label,
        _fmt(r["tokens_per_s"]),
        _fmt(r["update_s"], "{:.2f}"),
        _fmt(r["rollout_s"], "{:.2f}"),
        _fmt(r["train_s"], "{:.2f}"),
        _fmt(r["peak_rss_mb"]),
        *([_fmt(r.get("peak_gpu_mb"))] if gpu else []),
    ]


def tables(
    res: dict[str, Any], summary: dict[str, Any]
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table; shared by the terminal and the markdown output."""
    out: list[tuple[str, list[str], list[list[str]]]] = []
    env, rollout, e2e, trl = (res.get(k) for k in ("env", "rollout", "e2e", "trl"))
    b, n = TASK.completions_per_update, TASK.new_tokens

    rows: list[list[str]] = []
    if _ok(env):
        rows += [
            ["TextGenerationEnv (1 env)", _fmt(env["env_us_per_step"], "{:.1f}"), _fmt(env["env_us_per_step"], "{:.1f}")],
            [f"TextGenerationVectorEnv ({b} envs)", _fmt(env["gym_vec_us_per_step"], "{:.0f}"), _fmt(env["gym_vec_us_per_env_step"], "{:.1f}")],
            [f"SB3 VecEnv, make_vec_env ({b} envs)", _fmt(env["sb3_vec_us_per_step"], "{:.0f}"), _fmt(env["sb3_vec_us_per_env_step"], "{:.1f}")],
        ]  # fmt: skip
        if _ok(rollout):
            rows.append(
                [
                    f"rollout step ({b} envs, policy + env), for scale",
                    _fmt(rollout["rollout_step_us"], "{:,.0f}"),
                    _fmt(rollout["rollout_step_us"] / b, "{:,.0f}"),
                ]  # fmt: skip
            )
    elif env:
        rows.append(["env benchmark failed", env.get("error", ""), ""])
    if rows:
        out.append(("a. Env overhead (no-op policy, rewards and resets included)",
                    ["", "us / step", "us / env-step"], rows))  # fmt: skip

    rows = []
    if _ok(rollout):
        bd = rollout["breakdown_s"]
        rows += [
            [f"ours: PPO.collect_rollouts, LoRAPolicy + SB3 VecEnv ({b} x {n} tokens)",
             _fmt(rollout["ours_tokens_per_s"]), _fmt(rollout["ours_s"], "{:.2f}")],
            ["  sampling loop only (policy forwards, env steps, buffer adds)",
             _fmt(b * n / rollout["sampling_only_s"]), _fmt(rollout["sampling_only_s"], "{:.2f}")],
            ["  KL reference pass at the rollout's end (apply_kl_penalty)", "",
             _fmt(bd["kl_reference"], "{:.2f}")],
            ["model.generate, the same model object (LoRA on, same attention, rlhf_gym's fused "
             "LoRA/GELU)", _fmt(rollout["generate_tokens_per_s"]), _fmt(rollout["generate_s"], "{:.2f}")],
        ]  # fmt: skip
        extra_generates = {
            "generate_plain": "model.generate, the same weights as a plain peft model (peft's LoRA forward)",
            "generate_base": "model.generate, plain base model (no LoRA, {attn}), for scale",
        }  # fmt: skip
        for key, label in extra_generates.items():
            if f"{key}_tokens_per_s" in rollout:
                rows.append([label.format(attn=rollout.get("generate_base_attn")),
                             _fmt(rollout[f"{key}_tokens_per_s"]), _fmt(rollout[f"{key}_s"], "{:.2f}")])  # fmt: skip
        rows += [
            ["ratio ours / generate, whole rollout (target >= 1.0x)",
             _fmt(rollout["ratio"], "{:.2f}x"), ""],
            ["ratio ours / generate, sampling loop only", _fmt(rollout["ratio_sampling_only"], "{:.2f}x"), ""],
        ]  # fmt: skip
        if "ratio_plain" in rollout:
            rows.append(["ratio ours / generate on the plain peft model, whole rollout",
                         _fmt(rollout["ratio_plain"], "{:.2f}x"), ""])  # fmt: skip
    elif rollout:
        rows.append(["rollout benchmark failed", rollout.get("error", ""), ""])
    if rows:
        out.append(("b. Rollout throughput (median of interleaved repeats; ratios: median of pairs)",
                    ["", "tokens/s", "s / rollout"], rows))  # fmt: skip

    rows = []
    # Peak accelerator memory (torch's allocator) beside the host's RSS, on a GPU backend.
    gpu = any(_ok(r) and "peak_gpu_mb" in r for r in (e2e, trl))
    if _ok(e2e):
        rows.append(_e2e_row(f"ours: PPO + LoRAPolicy ({b} completions/update)", e2e, gpu))
    elif e2e:
        rows.append(["ours failed", e2e.get("error", ""), "", "", "", "", *([""] if gpu else [])])
    grpo = res.get("grpo")
    if _ok(grpo):
        label = f"ours: GRPO, critic-free ({b // 4} prompts x 4, beta 0.04 in the loss)"
        rows.append(_e2e_row(label, grpo, gpu))
    elif grpo:
        rows.append(
            ["our GRPO failed", grpo.get("error", ""), "", "", "", "", *([""] if gpu else [])]
        )
    if _ok(trl):
        rows.append(
            [
                f"TRL {trl['trl_version']} GRPOTrainer (8 prompts x 4, beta 0.04)",
                _fmt(trl["tokens_per_s"]),
                _fmt(trl["step_s"], "{:.2f}"),
                "-",
                "-",
                _fmt(trl["peak_rss_mb"]),
                *([_fmt(trl.get("peak_gpu_mb"))] if gpu else []),
            ]  # fmt: skip
        )
    elif trl:
        rows.append(
            ["TRL not measured", trl.get("error", ""), "", "", "", "", *([""] if gpu else [])]
        )
    if "e2e_vs_trl" in summary:
        rows.append(["ratio ours / TRL (targets: >= 1.5x speed, <= 1.0x RSS)",
                     _fmt(summary["e2e_vs_trl"], "{:.2f}x"), "", "", "",
                     _fmt(summary["rss_vs_trl"], "{:.2f}x"),
                     *([_fmt(summary.get("gpu_memory_vs_trl"), "{:.2f}x")] if gpu else [])])  # fmt: skip
    if "grpo_vs_trl" in summary:
        rows.append(["ratio our GRPO / TRL GRPO (targets: >= 1.5x speed, <= 1.0x RSS)",
                     _fmt(summary["grpo_vs_trl"], "{:.2f}x"), "", "", "",
                     _fmt(summary["grpo_rss_vs_trl"], "{:.2f}x"), *([""] if gpu else [])])  # fmt: skip
    idle = res.get("idle")
    if _ok(idle):
        rows.append([f"groups in rounds: idle env steps on the default task (EOS on, {idle['num_envs']} "
                     f"envs, groups of {idle['group_size']}, base policy, {idle['rounds']} rounds)",
                     _fmt(idle["idle_share"], "{:.1%}"), "", "", "", "", *([""] if gpu else [])])  # fmt: skip
    if rows:
        out.append(("c/d. End-to-end updates (rollout + training), median update",
                    ["", "tokens/s", "s / update", "rollout s", "train s", "peak RSS MiB",
                     *(["peak GPU MiB"] if gpu else [])],
                    rows))  # fmt: skip

    minibatch = res.get("minibatch")
    if minibatch:
        rows = []
        whole = next((r for r in minibatch if r["batch_size"] is None and _ok(r)), None)
        for r in minibatch:
            label = f"minibatch {r['batch_size']}" if r["batch_size"] else "whole rollout"
            if not _ok(r):
                rows.append([label, "failed", "", ""])
                continue
            ratio = r["train_s"] / whole["train_s"] if whole else None
            rows.append([f"PPO, 4 epochs, {label} ({b} x {n} tokens)",
                         _fmt(r["train_s"], "{:.2f}"), _fmt(ratio, "{:.2f}x"),
                         _fmt(r["tokens_per_s"])])  # fmt: skip
        out.append(("f. Training cost by minibatch size (whole-episode minibatches)",
                    ["", "train s / update", "vs whole rollout", "end-to-end tok/s"], rows))  # fmt: skip

    scaling = res.get("scaling")
    if scaling:
        rows = []
        base: dict[str, float] = {}
        for p in scaling:
            r, e = p["rollout"], p["e2e"]
            label = f"batch {p['num_envs']} x {p['new_tokens']} tokens"
            if p["n_positions"] != TASK.n_positions:
                label += f" (npos {p['n_positions']})"
            if not _ok(r):
                rows.append([label, "failed", "", "", "", ""])
                continue
            # Seconds per generated token: constant when total cost is linear in length.
            cost = {
                "ours": r["ours_s"] / r["tokens_per_rollout"],
                "gen": r["generate_s"] / r["tokens_per_rollout"],
            }
            if _ok(e):
                cost["e2e"] = e["update_s"] / e["tokens_per_update"]
            growth = ""
            if p["axis"] == "length":
                if not base:
                    base.update(cost)
                growth = " / ".join(
                    _fmt(cost[k] / base[k], "{:.2f}x") if k in cost and k in base else "n/a"
                    for k in ("ours", "gen", "e2e")
                )
            rows.append(
                [
                    label,
                    _fmt(r["ours_tokens_per_s"]),
                    _fmt(r["generate_tokens_per_s"]),
                    _fmt(r["ratio"], "{:.2f}x"),
                    _fmt(e["tokens_per_s"]) if _ok(e) else "n/a",
                    growth,
                ]  # fmt: skip
            )
        out.append(
            (
                "e. Scaling: tokens/s by batch and by response length",
                [
                    "",
                    "rollout tok/s",
                    "generate tok/s",
                    "rollout / generate",
                    "end-to-end tok/s",
                    "cost per token vs shortest: rollout / generate / e2e",
                ],
                rows,
            )  # fmt: skip
        )

    ranks = res.get("ranks")
    if ranks:
        rows = []
        for p in ranks:
            one, two = p["one"], p["two"]
            name = "PPO" if p["mode"] == "e2e" else "GRPO"
            if not (_ok(one) and _ok(two)):
                rows.append([name, "failed", "", ""])
                continue
            rows.append([f"{name}, 32 completions x {one['new_tokens']} tokens per update",
                         _fmt(one["tokens_per_s"]), _fmt(two["tokens_per_s"]),
                         _fmt(two["tokens_per_s"] / one["tokens_per_s"], "{:.2f}x")])  # fmt: skip
        out.append(("g. Data parallelism on the same 2 cores (torchrun, gloo)",
                    ["", "1 process x 2 threads tok/s", "2 ranks x 1 thread tok/s",
                     "2 ranks / 1 process"], rows))  # fmt: skip

    rows = [
        [t["target"], t["shown"], {True: "met", False: "NOT met", None: "not measured"}[t["met"]]]
        for t in summary["targets"]
    ]
    where = (
        "2-core CPU"
        if BACKEND.is_default
        else f"set for the 2-core CPU; checked here on {BACKEND.label} for comparison"
    )
    out.append((f"Targets ({where})", ["target", "measured", "status"], rows))
    return out


def print_tables(all_tables: list[tuple[str, list[str], list[list[str]]]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text fallback
        for title, header, rows in all_tables:
            print(f"\n{title}")
            for row in [header, *rows]:
                print("  " + " | ".join(row))
        return
    console = Console(width=max(150, Console().width))
    for title, header, rows in all_tables:
        table = Table(title=title, title_justify="left")
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def markdown(all_tables: list[tuple[str, list[str], list[list[str]]]], meta: dict[str, Any]) -> str:
    lines = [
        f"Run of {meta['date']} on {meta['cpu']} ({meta['cores']} cores), torch threads "
        f"{NUM_THREADS}, load average before/after {meta['load_before']} / {meta['load_after']}, "
        f"{'quick (smoke) run' if meta['quick'] else 'full run'}.",
        "",
    ]
    if meta.get("accelerator"):
        lines[0] = lines[0].removesuffix(".") + (
            f"; models on {meta['accelerator']} in {meta['backend']['dtype']} "
            f"(torch {meta.get('accelerator_torch', '?')})."
        )
    if meta.get("resumed"):
        lines[0] += (
            f" {meta['resumed']} worker results were reused from the progress file of an "
            "interrupted run (`--resume`): the CPU named here only assembled the tables; each "
            "result names the device that measured it (`device_name` in the JSON)."
        )
    for title, header, rows in all_tables:
        lines += [f"**{title}**", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def _results(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Every worker result in ``res``, scaling points included."""
    found = [v for v in res.values() if isinstance(v, dict)]
    for point in res.get("scaling", []):
        found += [v for v in (point["rollout"], point["e2e"]) if isinstance(v, dict)]
    for point in res.get("ranks", []):
        found += [point["one"], point["two"]]
    return found


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def render(path: Path) -> int:
    """Tables of a finished run, recomputed from its JSON (after a change to their layout)."""
    global BACKEND
    saved = json.loads(path.read_text())
    backend = saved["meta"].get("backend", {})
    BACKEND = Backend(backend.get("device", "cpu"), backend.get("dtype", "float32"))
    summary = summarize(saved["results"])
    all_tables = tables(saved["results"], summary)
    print_tables(all_tables)
    saved["summary"] = summary
    path.write_text(json.dumps(saved, indent=1))
    path.with_suffix(".md").write_text(markdown(all_tables, saved["meta"]) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rlhf_gym benchmarks: one table, one run.")
    parser.add_argument("--quick", action="store_true", help="smoke run with tiny sizes")
    parser.add_argument(
        "--omp-passive",
        action="store_true",
        help="OMP_WAIT_POLICY=PASSIVE for every worker (for a machine busy with other jobs)",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument("--output", type=Path, default=None, help="results JSON path")
    parser.add_argument(
        "--device", default="cpu", help="where ours and TRL run the models: cpu (default) or cuda"
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="base weights' dtype for both contestants (default: float32, the issue's task)",
    )
    parser.add_argument(
        "--trl-python",
        type=Path,
        default=TRL_PYTHON,
        help="the Python that has TRL installed (default: benchmarks/.venv-trl)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the results an interrupted run with the same --output left in its "
        "progress file (*.progress.jsonl) and run only the missing workers",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="measure nothing: print the tables of an earlier run's results JSON and rewrite "
        "its .md",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(args.render)
    global BACKEND
    BACKEND = Backend(args.device, args.dtype, args.trl_python)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    plan = QUICK if args.quick else FULL
    stem = "results" if BACKEND.is_default else f"results-{BACKEND.device}-{BACKEND.dtype}"
    output = args.output or (BENCH_DIR / f"{stem}{'-quick' if args.quick else ''}.json")

    meta = {
        **machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "quick": args.quick,
        "load_before": _load(),
        "threads": NUM_THREADS,
        "omp_wait_policy": worker_env().get("OMP_WAIT_POLICY", "unset (OpenMP default)"),
        "task": task_dict(),
        "backend": {"device": BACKEND.device, "dtype": BACKEND.dtype},
        "plan": plan.__dict__,
    }
    global PROGRESS
    PROGRESS = output.with_suffix(".progress.jsonl")
    if args.resume and PROGRESS.exists():
        for line in PROGRESS.read_text().splitlines():
            result = json.loads(line)
            RESUMED[result["cmd"]] = result
        meta["resumed"] = len(RESUMED)
        print(f"--resume: {len(RESUMED)} results from {PROGRESS}", file=sys.stderr)
    else:
        PROGRESS.write_text("")
    print("building the benchmark task (cached after the first run) ...", file=sys.stderr)
    build_task()
    start = time.perf_counter()
    res = measure(plan, sections)
    meta["load_after"] = _load()
    meta["wall_s"] = time.perf_counter() - start
    named = [r for r in _results(res) if "device_name" in r]
    if named:
        meta["accelerator"] = named[0]["device_name"]
        meta["accelerator_torch"] = named[0].get("torch_version")
    summary = summarize(res)
    all_tables = tables(res, summary)
    print_tables(all_tables)
    output.write_text(json.dumps({"meta": meta, "summary": summary, "results": res}, indent=1))
    md = output.with_suffix(".md")
    md.write_text(markdown(all_tables, meta) + "\n")
    PROGRESS.unlink(missing_ok=True)
    print(f"\nwrote {output} and {md} ({meta['wall_s']:.0f} s)", file=sys.stderr)
    failed = [k for k, v in res.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed and not args.quick and failed != ["trl"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
