"""An rlhf-gym reward plugin: ``shouting``, the fraction of a completion's letters in upper case."""

from __future__ import annotations

from typing import Any

__all__ = ["shouting"]


def shouting(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
    """Fraction of letters that are upper case: ``"HEY you"`` -> 0.5.

    A completion without letters returns ``None`` ("does not apply"), which rlhf-gym counts as 0
    in a weighted mix rather than inventing a score for it.
    """
    out: list[float | None] = []
    for completion in completions:
        letters = [ch for ch in completion if ch.isalpha()]
        out.append(sum(ch.isupper() for ch in letters) / len(letters) if letters else None)
    return out
