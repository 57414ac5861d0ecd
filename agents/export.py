"""Export a trained LoRA policy as a peft adapter or as a plain, merged Hugging Face model.

The adapter directory is what ``peft.PeftModel.from_pretrained(base, dir)`` loads; the value
head is written beside it (``value_head.safetensors``) because it is part of the agent but not
of the language model. The merged export is a copy of the model with the LoRA deltas folded into
the base weights (``merge_and_unload`` on a deep copy, so the live policy keeps training); it
needs memory for a second copy of the weights during export, and its config keeps dropout at 0
as trained.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Protocol

from safetensors.torch import save_file


class AdaptedPolicy(Protocol):
    """What export needs of a policy (:class:`rlhf_gym.agents.policy.LoRAPolicy` has it): the
    peft model and the value head, if any. A protocol, so export imports no policy module."""

    model: Any
    value_head: Any


VALUE_HEAD_FILE = "value_head.safetensors"


def export_adapter(policy: AdaptedPolicy, save_directory: str | os.PathLike[str]) -> str:
    """Write the LoRA adapter (peft format) and the value head if any; return the directory.

    A critic-free policy (GRPO, RLOO, REINFORCE++) has no value head and writes no head file.
    """
    path = Path(save_directory)
    path.mkdir(parents=True, exist_ok=True)
    policy.model.save_pretrained(str(path), safe_serialization=True)
    if policy.value_head is None:
        return str(path)
    state = {k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()}
    save_file(state, str(path / VALUE_HEAD_FILE))
    return str(path)


def export_merged(
    policy: AdaptedPolicy, save_directory: str | os.PathLike[str], *, tokenizer: Any = None
) -> str:
    """Write a plain HF model directory (LoRA merged) plus the tokenizer when one is known.

    ``tokenizer`` may be a tokenizer object or a path/hub id; by default it is loaded from the
    base model's directory if that directory holds one.
    """
    path = Path(save_directory)
    path.mkdir(parents=True, exist_ok=True)
    merged = copy.deepcopy(policy.model).merge_and_unload()
    merged.save_pretrained(str(path), safe_serialization=True)
    tok = _resolve_tokenizer(tokenizer, policy.model_name_or_path)
    if tok is not None:
        tok.save_pretrained(str(path))
    return str(path)


def _resolve_tokenizer(tokenizer: Any, model_path: str | None) -> Any:
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from rlhf_gym.rewards.loading import load_tokenizer

    source = tokenizer if tokenizer is not None else model_path
    if source is None:
        return None
    if tokenizer is None and not (
        os.path.isdir(source)
        and any(
            os.path.exists(os.path.join(source, name))
            for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
        )
    ):
        return None
    return load_tokenizer(source)
