"""Atomic, resumable training checkpoints.

A checkpoint is a directory ``checkpoints/step_<N>/`` holding the agent (``agent/``, written by
:func:`rlhf_gym.agents.saving.save_agent`: trainable weights and optimizer state in safetensors,
how to rebuild the agent in JSON; loading it unpickles nothing) and ``state.json``: the
step count, the KL coefficient, every RNG state (Python, NumPy, torch), the vector env's
``state_dict`` (each env's prompt RNG, sampler and episode in flight) and SB3's loop state,
so a resumed run draws the same prompts and samples it would have drawn (see
:meth:`rlhf_gym.agents.training._Run.checkpoint`).

Atomicity: everything is written into ``step_<N>.tmp`` and renamed into place, then the
``latest`` pointer file is replaced with ``os.replace``. A run killed at any instant leaves
either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf_gym.agents.saving import save_agent

LATEST = "latest"
#: The agent's subdirectory in a checkpoint.
AGENT_DIR = "agent"


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``output_dir``, or ``None``."""
    root = checkpoint_dir(output_dir)
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if (path / "state.json").is_file():
            return path
    return None


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
        # Every CUDA device's generator (sampling on a GPU draws from these, not the CPU's).
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda])


def save_checkpoint(
    output_dir: str | Path, step: int, agent: Any, state: dict[str, Any], keep: int = 2
) -> Path:
    """Write ``step_<step>`` atomically, point ``latest`` at it, keep the newest ``keep``."""
    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:09d}"
    if (root / name).exists():
        # Re-saving a step (a resumed run's final checkpoint) writes a sibling and moves the
        # pointer, never deletes the live one first: a kill at any moment leaves `latest`
        # pointing at a complete checkpoint.
        k = 1
        while (root / f"{name}_{k}").exists():
            k += 1
        name = f"{name}_{k}"
    tmp = root / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_agent(agent, tmp / AGENT_DIR)  # tensors + JSON: resuming unpickles nothing
    (tmp / "state.json").write_text(json.dumps(state))
    final = root / name
    os.replace(tmp, final)
    pointer_tmp = root / f"{LATEST}.tmp"
    pointer_tmp.write_text(name)
    os.replace(pointer_tmp, root / LATEST)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))[
        :-keep
    ]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(path: Path) -> dict[str, Any]:
    return json.loads((path / "state.json").read_text())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return [_jsonable(x) for x in obj]
    return obj


def _tuples(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_tuples(x) for x in obj)
    return obj
