"""When a response ends: the one rule the env and evaluation share.

A response ends (``terminated``) at the first token that is one of the model's EOS ids (the
token is kept in the episode) or after which the decoded response contains a stop string (the
text is cut before it); otherwise it is cut (``truncated``) at ``max_new_tokens``. Checked in
that order after every token, by :class:`~rlhf_gym.envs.TextGenerationEnv` step by step and by
``rlhf_gym.agents.evaluation`` over a generated sequence, so held-out figures describe the
episodes the agent was trained on.

EOS ids: instruct models often end a turn with a token other than the tokenizer's
``eos_token`` (SmolLM2 and Qwen end turns with ``<|im_end|>``; Llama 3 lists three ids in
``generation_config.eos_token_id``). :func:`eos_token_ids` gathers the tokenizer's EOS and, when
the tokenizer was loaded from a directory holding ``generation_config.json``, every id listed
there, so a run stops where ``model.generate`` would.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

FinishReason = Literal["eos", "stop", "length"]


def eos_token_ids(
    tokenizer: Any, source: Any = None, extra: Iterable[int] | None = None
) -> frozenset[int]:
    """The ids that end a response: the tokenizer's EOS, ``generation_config.json``'s, ``extra``.

    :param source: where the tokenizer came from (a directory is searched for
        ``generation_config.json``; anything else adds nothing).
    :param extra: ids the user names (``TextGenerationEnv(eos_token_ids=...)``).
    """
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    if isinstance(source, (str, Path)) and (Path(source) / "generation_config.json").is_file():
        config = json.loads((Path(source) / "generation_config.json").read_text(encoding="utf-8"))
        listed = config.get("eos_token_id")
        if isinstance(listed, int):
            ids.add(listed)
        elif isinstance(listed, list):
            ids.update(int(i) for i in listed)
    if extra is not None:
        ids.update(int(i) for i in extra)
    return frozenset(ids)


def stop_string_cut(text: str, stop_strings: Sequence[str]) -> int:
    """Index of the first stop string in ``text``, or -1."""
    return min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)


def end_of_response(
    ids: Sequence[int],
    *,
    eos_ids: frozenset[int],
    stop_strings: Sequence[str],
    max_new_tokens: int,
    decode: Callable[[Sequence[int]], str],
) -> tuple[list[int], str, FinishReason]:
    """Apply the rule to a whole generated sequence: ``(kept ids, response text, reason)``."""
    for n, token in enumerate(ids[:max_new_tokens], start=1):
        if token in eos_ids:
            kept = list(ids[:n])
            return kept, decode(kept), "eos"
        if stop_strings:
            text = decode(ids[:n])
            cut = stop_string_cut(text, stop_strings)
            if cut >= 0:
                return list(ids[:n]), text[:cut], "stop"
    kept = list(ids[:max_new_tokens])
    return kept, decode(kept), "length"
