"""Loaders every room shares: dtypes, tokenizers and JSONL files, each in one place.

The ground floor of the package: ``rewards`` imports nothing of ``envs`` or ``agents`` and both
import it, so what all three load lives here. It imports no other rlhf_gym module, and torch or
transformers only inside the functions that need them (so ``rlhf-gym rewards`` stays light).
Model loaders stay with their kind: causal LMs in the agents' ``lora.load_causal_lm``, reward
models in :func:`rlhf_gym.rewards.reward_model.load_reward_model`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}


def resolve_dtype(dtype: Any) -> torch.dtype | None:
    """``torch.float32``, ``"float32"``, ``"bf16"``... as a ``torch.dtype`` (``None`` stays
    ``None``), so configs and CLI flags can be strings; an unknown name is a clear error."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPE_ALIASES.get(str(dtype), str(dtype)).removeprefix("torch.")
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'.")
    return value


def not_found(path: str | os.PathLike[str], what: str, exc: BaseException) -> FileNotFoundError:
    """The error for a model or tokenizer that is neither a directory nor a reachable hub id."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    note = " (HF_HUB_OFFLINE is set, so the hub was not contacted)" if offline else ""
    return FileNotFoundError(
        f"{what} {str(path)!r} is neither a local directory nor a reachable Hugging Face Hub "
        f"id{note}. Pass the directory you saved it to (save_pretrained / train_reward_model "
        f"output_dir) or a hub id such as 'org/model'. Cause: {exc}"
    )


def load_tokenizer(
    source: str | os.PathLike[str] | PreTrainedTokenizerBase,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> PreTrainedTokenizerBase:
    """A tokenizer object as given, or ``AutoTokenizer.from_pretrained(source)`` with a clear
    not-found error (the env's ``load_tokenizer`` adds its pad/EOS checks on top)."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    from transformers import AutoTokenizer

    local = Path(source).expanduser()
    try:
        return AutoTokenizer.from_pretrained(
            str(local) if local.exists() else str(source),
            trust_remote_code=trust_remote_code,
            revision=revision,
        )
    except (OSError, ValueError) as exc:
        if local.exists():
            raise  # a real directory with bad contents: transformers' message says what is missing
        raise not_found(source, "Tokenizer", exc) from exc


def read_jsonl(
    path: str | os.PathLike[str], example: str, problem: str = "malformed JSON"
) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` for each non-blank line of a JSONL file, ``where`` = ``"file:line"``;
    a line that is not JSON raises one error naming the file, line and column (``problem``
    says what is wrong in the caller's words), with ``example`` (one valid line) as the fix."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{where}: {problem} ({err.msg} at column {err.colno}). Each line of a "
                    f"JSONL file must be one JSON object, e.g. {example}."
                ) from None
