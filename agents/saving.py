"""Saving and loading agents without pickles: trainable tensors in safetensors, the rest in JSON.

stable-baselines3's ``agent.save()`` zip holds a pickled ``data`` blob (cloudpickle) and
``torch.save`` files; loading one runs whatever code the file carries. An agent directory
written by :func:`save_agent` holds only:

- ``agent.json``: how to rebuild the agent with :func:`~rlhf_gym.agents.make_agent` (the
  registry name, the base model's path or hub id, the LoRA config, KL settings, the algorithm
  and policy keyword arguments, all JSON values) plus its step count and current KL
  coefficient;
- ``policy.safetensors``: the policy's trainable tensors (LoRA, value head);
- ``optimizer.safetensors`` and ``optimizer.json``: the optimizer's tensors and its plain state
  (step counts, hyperparameters).

:func:`rlhf_gym.agents.load_agent` reads the record (:func:`read_agent_record`), rebuilds the
agent through ``make_agent`` (the base model comes from its own ``from_pretrained`` files, which
hold tensors) and loads the tensors (:func:`restore_agent_state`); nothing is unpickled. This
module never imports the algorithms, so saving and loading form no import circle.
Only agents built by ``make_agent`` can be saved this way: it records the arguments (a schedule
function or an optimizer class is not JSON, and is refused by name).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

AGENT_JSON = "agent.json"
FORMAT = "rlhf_gym.agent/1"


def _check_json(value: Any, where: str) -> Any:
    try:
        json.dumps(value)
    except TypeError as exc:
        raise TypeError(
            f"save_agent: {where} holds {exc}; only JSON values can be saved without a pickle. "
            "Pass strings/numbers/lists (e.g. a learning rate, not a schedule function), or use "
            "agent.save() (an SB3 zip, a pickle: load it only if you trust it)."
        ) from None
    return value


def save_agent(agent: Any, directory: str | os.PathLike[str]) -> Path:
    """Write ``agent`` (built by ``make_agent``) to ``directory`` as tensors and JSON."""
    spec = getattr(agent, "rlhf_gym_spec", None)
    if spec is None:
        raise TypeError(
            "save_agent needs an agent built by rlhf_gym.agents.make_agent (it records how to "
            "rebuild it); this one was built directly, so use agent.save() (an SB3 zip)."
        )
    if spec.get("model") is None:
        raise TypeError(
            "save_agent: the agent's base model was an in-memory instance with no path to record; "
            "build it from a directory or hub id (model='path') to save it without a pickle."
        )
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    controller = getattr(agent, "kl_controller", None)
    record = {
        "format": FORMAT,
        **spec,
        "num_timesteps": int(agent.num_timesteps),
        "kl_coef_now": None if controller is None else float(controller.value),
    }
    (path / AGENT_JSON).write_text(json.dumps(_check_json(record, "the agent's spec"), indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in agent.policy.state_dict().items()}
    save_file(state, str(path / "policy.safetensors"))
    tensors, plain = _split_optimizer(agent.policy.optimizer.state_dict())
    save_file(tensors, str(path / "optimizer.safetensors"))
    (path / "optimizer.json").write_text(json.dumps(_check_json(plain, "the optimizer state")))
    return path


def is_agent_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / AGENT_JSON).is_file()


def read_agent_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``agent.json`` of a directory written by :func:`save_agent`: the algorithm's registry
    name and the arguments that rebuild the agent (``make_agent(**...)``, done by
    :func:`rlhf_gym.agents.load_agent`)."""
    path = Path(path)
    record = json.loads((path / AGENT_JSON).read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{path / AGENT_JSON}: not an rlhf_gym agent ({record.get('format')!r})")
    return record


def restore_agent_state(agent: Any, path: str | os.PathLike[str], record: dict[str, Any]) -> Any:
    """Load the saved trainable weights, optimizer state, step count and KL coefficient into
    ``agent`` (freshly built from ``record``); no pickle is read."""
    path = Path(path)
    agent.policy.load_state_dict(load_file(str(path / "policy.safetensors")))
    plain = json.loads((path / "optimizer.json").read_text())
    agent.policy.optimizer.load_state_dict(
        _join_optimizer(load_file(str(path / "optimizer.safetensors")), plain)
    )
    agent.num_timesteps = int(record["num_timesteps"])
    controller = getattr(agent, "kl_controller", None)
    if controller is not None and record.get("kl_coef_now") is not None:
        controller.value = float(record["kl_coef_now"])
    return agent


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer ``state_dict`` as (tensors by ``"<param>.<name>"``, everything else)."""
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        plain_state[str(index)] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain_state[str(index)][name] = value
    return tensors, {"state": plain_state, "param_groups": state["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}
