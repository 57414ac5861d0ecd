"""Data parallelism with ``torch.distributed``: several processes (ranks) train one policy.

Launch any run under ``torchrun`` (gloo on CPUs, NCCL on GPUs; no process pool of our own)::

    torchrun --nproc-per-node 2 --no-python rlhf-gym train --algo grpo ...

The data-parallel contract, kept by the algorithms of :mod:`rlhf_gym.agents.algorithms` and
:mod:`rlhf_gym.agents.group_algorithms` whenever a process group of more than one rank exists:

- every rank steps its own vector env over its own shard of the prompts
  (``make_vec_env(..., shard=info.shard, seed=info.env_seed(seed, n))``) and collects its own
  rollouts, sampled from its own random stream;
- the trainable weights (LoRA, value head) start equal (rank 0's are broadcast when the agent
  is built) and stay equal: their gradients are averaged across ranks before clipping and every
  optimizer step (:func:`average_gradients`); the frozen base is loaded by each rank and never
  sent;
- what must be global is global: losses are weighted by the global number of samples (so unequal
  minibatches across ranks still give the one-process gradient), advantage normalisation, the
  batch statistics of the group algorithms, the adaptive KL controller's measured KL, PPO's
  ``target_kl`` early stop, and the logged metrics (:func:`reduce_logs`);
- every collective is bounded by the process group's timeout (``RLHF_GYM_DIST_TIMEOUT``
  seconds, default 1800): a rank that dies or hangs ends the others with an error, never a hang
  (torchrun also stops the other ranks as soon as one exits with an error).

Objects travel between ranks as JSON in byte tensors (:func:`all_gather_json`), never as pickles.
Without a process group (or with one rank) every function here is a no-op or the identity, so the
single-process path is unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

#: Environment variable: the collectives' timeout in seconds.
TIMEOUT_ENV = "RLHF_GYM_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the run: its rank among ``world_size`` and its local device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one rank that writes logs, evaluations, checkpoints and the adapter."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, world_size)``, the ``shard`` argument of the env: disjoint prompts per rank."""
        return (self.rank, self.world_size)

    def env_seed(self, seed: int, num_envs: int) -> int:
        """First env seed of this rank: env ``i`` of rank ``r`` gets ``seed + r * num_envs + i``,
        the seeds one process with ``world_size * num_envs`` envs would give its envs."""
        return seed + self.rank * num_envs

    def agent_seed(self, seed: int, num_envs: int) -> int:
        """The agent's seed on this rank, the same as :meth:`env_seed`: each rank samples from
        its own stream, and stable-baselines3's ``set_random_seed`` reseeds the env with the
        agent's seed (env ``i`` gets it plus ``i``), which keeps the env seeds above."""
        return self.env_seed(seed, num_envs)


def launched() -> bool:
    """Whether this process was started as one of several ranks (``torchrun`` sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(*, backend: str | None = None, timeout_s: float | None = None) -> DistInfo:
    """Join the process group torchrun described in the environment; idempotent.

    Outside torchrun (no ``WORLD_SIZE`` > 1) nothing happens and a one-rank :class:`DistInfo`
    comes back, so a script that calls ``init()`` runs unchanged as one process.

    :param backend: ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available, else gloo.
        With NCCL the process's CUDA device becomes ``cuda:LOCAL_RANK``, so ``device="cuda"``
        (or ``"auto"``) means this rank's GPU.
    :param timeout_s: bound on every collective (default ``RLHF_GYM_DIST_TIMEOUT`` or 1800 s).
    """
    if dist.is_available() and dist.is_initialized():
        return info()
    if not launched():
        return DistInfo()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} unset: launch the "
            "ranks with torchrun (torchrun --nproc-per-node N ...), which sets them all"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    timeout = float(timeout_s or os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    return info()


def info() -> DistInfo:
    """This process's place in the current process group (one rank when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def enabled() -> bool:
    """Whether collectives are live: a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if enabled() else 1


def is_main() -> bool:
    return not enabled() or dist.get_rank() == 0


def shutdown() -> None:
    """Wait for every rank, then leave the process group (at the end of a run; a no-op without
    one). Leaving it before exiting matters: a rank that exits with the group alive can abort
    in gloo's teardown ("terminate called without an active exception") while rank 0 still
    writes; the barrier keeps the others until it is done."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _device() -> torch.device:
    """Where collective tensors live: the rank's GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------------------ reductions
def all_reduce(values: Sequence[float], op: str = "sum") -> list[float]:
    """``values`` summed (``op="sum"``) or maxed (``"max"``) over ranks, in one float64 collective."""
    if not enabled():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.cpu().tolist()


def all_reduce_tensor(t: torch.Tensor) -> torch.Tensor:
    """A tensor summed over ranks (a new tensor; the identity with one rank)."""
    if not enabled():
        return t
    out = t.detach().to(_device(), torch.float64).clone()
    dist.all_reduce(out)
    return out.to(t.device, t.dtype)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace each trainable parameter's gradient by its mean over ranks, in one collective.

    Called after the backward and before gradient clipping, as DDP would: clipping then sees the
    one-process gradient. A parameter that has no gradient on any rank keeps ``None`` (Adam skips
    it, as in one process); one that has a gradient on some rank gets the mean, with zeros for
    the ranks that had none.
    """
    if not enabled():
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    device = _device()
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    flat = torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float().to(device)
            for p in params
        ]
        + [has_grad.to(device)]
    )  # [sum(numel) + n_params]: the gradients and which ranks had them
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, present in zip(params, flat[-len(params) :].tolist(), strict=True):
        n = p.numel()
        if present > 0:
            mean = flat[offset : offset + n].view_as(p).to(p.device, p.dtype)
            if p.grad is None:
                p.grad = mean.clone()
            else:
                p.grad.copy_(mean)
        offset += n


def broadcast_parameters(parameters: Iterable[torch.nn.Parameter], src: int = 0) -> None:
    """Make every rank's trainable parameters equal to rank ``src``'s (the LoRA and value-head
    initialisations draw from each rank's own RNG); frozen parameters are not sent."""
    if not enabled():
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    flat = torch.cat([p.detach().reshape(-1).float().to(_device()) for p in params])
    dist.broadcast(flat, src)
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p).to(p.device, p.dtype))
            offset += n


def all_gather_json(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (JSON-serialisable), in rank order; ``[obj]`` with one rank."""
    if not enabled():
        return [obj]
    device = _device()
    data = json.dumps(obj).encode()
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    buf = torch.zeros(longest, dtype=torch.uint8, device=device)
    buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    bufs = [torch.empty_like(buf) for _ in sizes]
    dist.all_gather(bufs, buf)
    return [
        json.loads(bytes(b[: int(s.item())].cpu().numpy()).decode())
        for b, s in zip(bufs, sizes, strict=True)
    ]


def all_finite(value: float) -> bool:
    """Whether ``value`` is finite on every rank: a loss that turns inf/NaN on one rank stops
    every rank at the same point, with the error, instead of leaving the others waiting."""
    finite = bool(np.isfinite(value))
    if not enabled():
        return finite
    return all_reduce([float(not finite)], op="max")[0] == 0


def count_steps(start: int, now: int) -> int:
    """``start`` plus the steps every rank took since it (this rank took ``now - start``).

    The algorithms keep ``num_timesteps`` as the count of all ranks, synchronised after each
    rollout: ranks of the group algorithms finish their rounds after different numbers of
    steps, and ``learn``'s stopping test, the checkpoint and evaluation schedules and the logs
    must agree on every rank (a rank that decided alone would leave the others waiting)."""
    if not enabled():
        return now
    return start + int(all_reduce([now - start])[0])


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (e.g. a stop asked for with Ctrl-C on one of them)."""
    return all_reduce([float(flag)], op="max")[0] > 0


def barrier() -> None:
    if enabled():
        dist.barrier()


# ------------------------------------------------------------------------------ logs
def reduce_logs(name_to_value: dict[str, Any]) -> dict[str, Any]:
    """One rank's SB3 log values made global: the mean over the ranks that logged each key
    (step counts and fps are already global, see :func:`count_steps`); non-numeric values are
    rank 0's."""
    if not enabled():
        return dict(name_to_value)
    numeric = {
        k: float(v)
        for k, v in name_to_value.items()
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    }
    gathered = all_gather_json(numeric)
    out = dict(name_to_value)
    for key in dict.fromkeys(k for g in gathered for k in g):
        values = [g[key] for g in gathered if key in g]
        value = sum(values) / len(values)
        kept = name_to_value.get(key)
        out[key] = int(round(value)) if isinstance(kept, (int, np.integer)) else value
    return out
