"""Probe: where a long rollout's decode step goes on a CUDA device (per-step cost vs width).

    python benchmarks/probe_decode.py [--device cuda] [--dtype bfloat16] [--new-tokens 512]

One ``collect_rollouts`` of the benchmark task's PPO; consecutive policy calls cycle through
variants (the default scaled-dot-product-attention choice, the memory-efficient kernel, the
math kernel, and contiguous key/value copies), each timed with the device synchronised, then
binned by cache width. A few steps near the end run under ``torch.profiler``; its top ops are
printed. Diagnostic only: it answers "which op grows with length", it is not a benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from contextlib import nullcontext

import torch
from bench_ours import make_ppo
from common import TASK, add_backend_args, set_threads, synchronize


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-envs", type=int, default=TASK.completions_per_update)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--n-positions", type=int, default=TASK.n_positions_long)
    parser.add_argument("--attn", default=None)
    add_backend_args(parser)
    args = parser.parse_args()
    set_threads()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from rlhf_gym.agents import kv_cache

    agent = make_ppo(args)
    _, callback = agent._setup_learn(10**9, callback=None)
    policy = agent.policy
    inner = policy.forward
    original_update = kv_cache.BufferLayer.update

    def contiguous_update(self, k, v, *a, **kw):  # type: ignore[no-untyped-def]
        keys, values = original_update(self, k, v, *a, **kw)
        return keys.contiguous(), values.contiguous()

    variants = {
        "default": nullcontext,
        "efficient": lambda: sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]),
        "math": lambda: sdpa_kernel([SDPBackend.MATH]),
        "contiguous_kv": nullcontext,
    }
    names = list(variants)
    timings: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
    step = [0]
    profile_at = range(args.new_tokens - 12, args.new_tokens - 8)
    prof = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU]
        + ([torch.profiler.ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    )

    def timed(*a, **kw):  # type: ignore[no-untyped-def]
        i = step[0]
        step[0] += 1
        if i in profile_at:
            if i == profile_at[0]:
                prof.__enter__()
            out = inner(*a, **kw)
            synchronize(args.device)
            if i == profile_at[-1]:
                prof.__exit__(None, None, None)
            return out
        name = names[i % len(names)]
        kv_cache.BufferLayer.update = (
            contiguous_update if name == "contiguous_kv" else original_update
        )
        cache = policy.kv_cache(args.num_envs)
        width = cache.width if cache is not None else 0
        synchronize(args.device)
        start = time.perf_counter()
        with variants[name]():
            out = inner(*a, **kw)
        synchronize(args.device)
        timings[name].append((width, time.perf_counter() - start))
        return out

    policy.forward = timed
    start = time.perf_counter()
    agent.collect_rollouts(agent.env, callback, agent.rollout_buffer, agent.n_steps)
    print(f"rollout {time.perf_counter() - start:.1f} s, {step[0]} policy calls")
    edges = [0, 64, 128, 192, 256, 320, 384, 448, 10**6]
    print("median ms per policy call by cache width:")
    print("width      " + "".join(f"{n:>15}" for n in names))
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        row = []
        for n in names:
            ts = [t for w, t in timings[n] if lo <= w < hi]
            row.append(f"{statistics.median(ts) * 1e3:15.2f}" if ts else f"{'-':>15}")
        print(f"{lo:>4}-{hi if hi < 10**6 else 'max':<5}" + "".join(row))
    sort = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60
        )
    )


if __name__ == "__main__":
    main()
