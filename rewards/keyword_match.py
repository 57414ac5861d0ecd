"""Built-in ``keyword`` reward: does the completion mention given keywords, and how often."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from rlhf_gym.rewards.contract import RewardFn

__all__ = ["keyword"]


def keyword(
    keywords: Sequence[str],
    case_sensitive: bool = False,
    mode: Literal["count", "any"] = "count",
) -> RewardFn:
    """Factory for a reward on keyword occurrences in the completion.

    Args:
        keywords: the strings to look for. Matching is by substring (``"please"`` also matches
            ``"pleased"``); use the ``regex`` reward for word boundaries.
        case_sensitive: compare case-sensitively; by default both sides are lower-cased.
        mode: ``"count"`` returns the total number of (non-overlapping) occurrences of all
            keywords; ``"any"`` returns 1.0 if at least one keyword occurs, else 0.0.

    Example::

        >>> reward = keyword(["please", "thank"])
        >>> reward(prompts=["", ""], completions=["Please, please. Thank you", "no"])
        [3.0, 0.0]
    """
    if isinstance(keywords, str) or not isinstance(keywords, Sequence):
        raise TypeError(
            f"keyword(keywords=...) must be a list of strings, got {keywords!r}; "
            f"wrap a single keyword in a list: [{keywords!r}]."
        )
    if not keywords or not all(isinstance(k, str) and k for k in keywords):
        raise ValueError(f"keyword(keywords=...) needs non-empty strings, got {list(keywords)!r}.")
    if mode not in ("count", "any"):
        raise ValueError(f"keyword(mode=...) must be 'count' or 'any', got {mode!r}.")
    needles = list(keywords) if case_sensitive else [k.lower() for k in keywords]

    def keyword_reward(
        prompts: list[str], completions: list[str], **kwargs: Any
    ) -> list[float | None]:
        out: list[float | None] = []
        for completion in completions:
            text = completion if case_sensitive else completion.lower()
            hits = sum(text.count(k) for k in needles)
            out.append(float(hits) if mode == "count" else float(hits > 0))
        return out

    return keyword_reward
