"""Built-in ``exact_match`` reward: does the completion equal a reference column of the dataset."""

from __future__ import annotations

import re
from typing import Any

from rlhf_gym.rewards.contract import RewardFn

__all__ = ["exact_match", "normalize_text"]

_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower-case, strip and collapse runs of whitespace: ``"  The  Answer\\n" -> "the answer"``."""
    return _WHITESPACE.sub(" ", text.strip().lower())


def exact_match(column: str = "reference", normalize: bool = True) -> RewardFn:
    """Factory for a reward that is 1.0 when the completion equals the row's reference, else 0.0.

    Args:
        column: the dataset column holding the reference; it reaches the reward as a keyword
            argument with one value per sample. A value may be a string or a list of acceptable
            strings. A ``None`` reference means the reward does not apply to that sample, so it
            returns ``None`` there (see :class:`~rlhf_gym.rewards.CompositeReward`).
        normalize: compare after :func:`normalize_text` (case, surrounding and repeated
            whitespace ignored); ``False`` compares the raw strings.

    Example::

        >>> reward = exact_match()
        >>> reward(prompts=["2+2?", "3+3?"], completions=[" Four", "five"], reference=["four", "six"])
        [1.0, 0.0]
    """

    def clean(text: str) -> str:
        return normalize_text(text) if normalize else text

    def exact_match_reward(
        prompts: list[str], completions: list[str], **kwargs: Any
    ) -> list[float | None]:
        if column not in kwargs:
            raise ValueError(
                f"exact_match needs the dataset column {column!r}, but the reward received only "
                f"{sorted(kwargs)}. Add a {column!r} column to the prompt dataset or pass "
                f"column=<name of the reference column>."
            )
        references = list(kwargs[column])
        if len(references) != len(completions):
            raise ValueError(
                f"exact_match: column {column!r} has {len(references)} values for "
                f"{len(completions)} completions; expected one reference per sample."
            )
        out: list[float | None] = []
        for completion, reference in zip(completions, references, strict=True):
            if reference is None:
                out.append(None)
                continue
            accepted = [reference] if isinstance(reference, str) else list(reference)
            out.append(float(clean(completion) in {clean(str(r)) for r in accepted}))
        return out

    return exact_match_reward
