"""What every benchmark contestant shares: the task definition, the reward, timing and memory.

Imported by the orchestrator (``run.py``), by our worker (``bench_ours.py``, project ``.venv``)
and by the TRL worker (``bench_trl.py``, ``benchmarks/.venv-trl``). It therefore imports only the
standard library at module level: the TRL environment does not have ``rlhf_gym`` installed, and
the orchestrator should stay light (it imports no torch, so it measures nothing itself).

Workers print their result as one line ``BENCH_JSON: {...}`` on stdout; the orchestrator reads
the last such line, so library chatter on stdout cannot corrupt the result.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
RESULT_MARKER = "BENCH_JSON: "

#: Every contestant uses the same number of intra-op threads (the machine has 2 cores).
NUM_THREADS = 2


@dataclass(frozen=True)
class Task:
    """The benchmark task of the issue: one definition, used by every comparison."""

    # GPT-2 architecture, random init (seed 0), dropout 0.
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    n_positions: int = 128
    #: n_positions of the model used for the response-length scaling (up to 512 new tokens).
    n_positions_long: int = 1024
    vocab_size: int = 2048
    seed: int = 0
    # Prompts and completions.
    n_prompts: int = 512
    prompt_tokens: int = 16
    new_tokens: int = 48
    temperature: float = 1.0
    # LoRA.
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")
    # Updates: 32 completions, one epoch, one optimizer step.
    completions_per_update: int = 32
    learning_rate: float = 1e-4
    beta: float = 0.04
    # TRL GRPO grouping: 8 prompts x 4 generations = 32 completions.
    trl_num_generations: int = 4

    @property
    def key(self) -> str:
        """Cache folder name; changes whenever the task definition changes."""
        return (
            f"task-v1-L{self.n_layer}-H{self.n_head}-E{self.n_embd}-V{self.vocab_size}"
            f"-s{self.seed}-p{self.n_prompts}x{self.prompt_tokens}"
        )

    def lora_dict(self) -> dict[str, Any]:
        """The LoRA config as the keyword arguments of ``peft.LoraConfig``."""
        return {
            "r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": list(self.lora_targets),
            "bias": "none",
        }


TASK = Task()


@dataclass(frozen=True)
class TaskPaths:
    """Where ``build_task.py`` writes the tokenizer, the two models and the prompts."""

    root: Path

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    def model(self, n_positions: int) -> Path:
        return self.root / f"model-npos{n_positions}"

    @property
    def prompts(self) -> Path:
        return self.root / "prompts.json"

    @property
    def done(self) -> Path:
        return self.root / "DONE"


def task_paths(task: Task = TASK) -> TaskPaths:
    return TaskPaths(CACHE_DIR / task.key)


def load_prompts(paths: TaskPaths) -> list[str]:
    return list(json.loads(paths.prompts.read_text())["prompts"])


#: GRPOConfig fields every TRL worker sets alike: no logging backends, checkpoints, progress bar,
#: completion logs or dataloader workers, and no gradient checkpointing (ours does not either).
TRL_QUIET: dict[str, Any] = {
    "gradient_checkpointing": False,
    "report_to": "none",
    "save_strategy": "no",
    "logging_strategy": "no",
    "disable_tqdm": True,
    "log_completions": False,
    "dataloader_num_workers": 0,
}


def e_fraction(prompts: Sequence[str], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """The benchmark's rule reward: the fraction of the completion's characters that are ``e``.

    TRL- and rlhf_gym-compatible signature (``prompts``, ``completions``, extra columns as
    keyword arguments). An empty completion scores 0.
    """
    out = []
    for completion in completions:
        text = completion if isinstance(completion, str) else str(completion)
        out.append(text.count("e") / len(text) if text else 0.0)
    return out


def set_threads(n: int = NUM_THREADS) -> None:
    """Pin intra-op threads identically for every contestant (call before any work); the
    data-parallel comparison gives each of 2 ranks 1 thread, the same 2 cores in all."""
    import torch

    torch.set_num_threads(n)


def worker_env() -> dict[str, str]:
    """Environment of a worker subprocess: offline, fixed thread counts, no tokenizer threads."""
    env = dict(os.environ)
    # OpenMP's wait policy is left at its default (what users get) unless the caller sets it:
    # ``run.py --omp-passive`` sets PASSIVE for every contestant, for a machine busy with other
    # jobs, where spinning OpenMP workers fight them for the cores (3-5x slower, measured).
    # On an idle machine PASSIVE costs a thread wake-up per parallel region instead: measured
    # 1.2x slower for TRL's step and 1.8x for ours, whose decode loop runs many small ops.
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(NUM_THREADS),
        MKL_NUM_THREADS=str(NUM_THREADS),
        PYTHONHASHSEED="0",
        # TRL/transformers/accelerate would otherwise probe for trackers and hubs.
        WANDB_DISABLED="true",
        DISABLE_MLFLOW_INTEGRATION="TRUE",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    return env


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident set size right now, MiB (Linux ``/proc``; NaN elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * resource.getpagesize() / 2**20


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


class Stopwatch:
    """Accumulates wall time by label; used to wrap methods of live objects for a breakdown."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, obj: Any, name: str, label: str | None = None) -> None:
        """Replace ``obj.name`` by a timed version (instance attribute; the class is untouched)."""
        inner = getattr(obj, name)
        label = label or name

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.totals[label] = self.totals.get(label, 0.0) + time.perf_counter() - start
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(obj, name, timed)

    def reset(self) -> None:
        self.totals.clear()
        self.calls.clear()

    def snapshot(self) -> dict[str, float]:
        return dict(self.totals)


def add_backend_args(parser: Any) -> None:
    """``--device`` / ``--dtype``: where and in what precision a worker runs the task.

    The issue's task is float32 on the CPU (the defaults); ``--device cuda --dtype bfloat16`` is
    the GPU variant, where the base weights are bf16 and the LoRA adapters stay float32 (peft's
    default, in both libraries)."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="dtype of the base model's weights (default: float32)",
    )


def synchronize(device: str) -> None:
    """Wait for queued accelerator work, so that a host clock read next measures it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _accelerator_info() -> dict[str, Any]:
    """Peak accelerator memory and the device name, when this worker used CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {
        "device_name": torch.cuda.get_device_name(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
        "torch_version": torch.__version__,
    }


def emit(result: dict[str, Any]) -> None:
    """Print a worker's result for the orchestrator (see module docstring)."""
    result = {**result, **_accelerator_info(), "peak_rss_mb": peak_rss_mb()}
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()


def task_dict(task: Task = TASK) -> dict[str, Any]:
    out = asdict(task)
    out["lora_targets"] = list(task.lora_targets)
    return out
