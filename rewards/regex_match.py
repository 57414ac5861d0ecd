"""Built-in ``regex`` reward: does the completion match a regular expression."""

from __future__ import annotations

import re
from typing import Any, Literal

from rlhf_gym.rewards.contract import RewardFn

__all__ = ["regex"]


def regex(pattern: str, mode: Literal["match", "count"] = "match", flags: int = 0) -> RewardFn:
    """Factory for a regular-expression reward on the completion.

    Args:
        pattern: a Python regular expression, compiled once. An invalid pattern raises
            ``ValueError`` naming it, at construction rather than mid-training.
        mode: ``"match"`` returns 1.0 if ``re.search`` finds the pattern anywhere, else 0.0
            (anchor with ``^``/``$`` for format checks, as TRL's ``think_format_reward`` does);
            ``"count"`` returns the number of non-overlapping matches (``re.findall``).
        flags: ``re`` flags, e.g. ``re.IGNORECASE | re.DOTALL``.

    Example::

        >>> reward = regex(r"\\d+", mode="count")
        >>> reward(prompts=["", ""], completions=["1 plus 22", "none"])
        [2.0, 0.0]
    """
    if not isinstance(pattern, str):
        raise TypeError(f"regex(pattern=...) must be a string, got {type(pattern).__name__}.")
    if mode not in ("match", "count"):
        raise ValueError(f"regex(mode=...) must be 'match' or 'count', got {mode!r}.")
    try:
        compiled = re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(
            f"Invalid regular expression {pattern!r} for the regex reward: {exc}"
        ) from exc

    def regex_reward(
        prompts: list[str], completions: list[str], **kwargs: Any
    ) -> list[float | None]:
        if mode == "count":
            return [float(len(compiled.findall(c))) for c in completions]
        return [1.0 if compiled.search(c) else 0.0 for c in completions]

    return regex_reward
