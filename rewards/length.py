"""Built-in ``length`` reward: the completion's length, or its distance to a target length."""

from __future__ import annotations

from typing import Any, Literal

from rlhf_gym.rewards.contract import RewardFn

__all__ = ["length"]

LengthUnit = Literal["tokens", "words", "chars"]


def length(unit: LengthUnit = "tokens", target: int | None = None) -> RewardFn:
    """Factory for a reward on completion length.

    Args:
        unit: what to count. ``"tokens"`` counts the policy's tokens from the ``completion_ids``
            kwarg (the env and TRL always pass it); when ``completion_ids`` is absent, e.g. when
            calling the reward by hand, it falls back to whitespace-separated words. ``"words"``
            always counts ``completion.split()``; ``"chars"`` counts characters.
        target: if given, the reward is ``-|length - target|`` (0 at the target, more negative
            further away); otherwise the raw length, usually mixed with a negative weight
            (``{"length": -0.01}``) as a brevity penalty.

    Returns:
        A reward function ``(prompts, completions, **kwargs) -> list[float]``.

    Example::

        >>> reward = length(unit="chars", target=5)
        >>> reward(prompts=["", ""], completions=["hello", "hi"])
        [0.0, -3.0]
    """
    if unit not in ("tokens", "words", "chars"):
        raise ValueError(f"length(unit=...) must be 'tokens', 'words' or 'chars', got {unit!r}.")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int)):
        raise TypeError(f"length(target=...) must be an int or None, got {target!r}.")

    def length_reward(
        prompts: list[str], completions: list[str], **kwargs: Any
    ) -> list[float | None]:
        completion_ids = kwargs.get("completion_ids")
        if unit == "tokens" and completion_ids is not None:
            sizes = [len(ids) for ids in completion_ids]
        elif unit == "chars":
            sizes = [len(c) for c in completions]
        else:
            sizes = [len(c.split()) for c in completions]
        if target is None:
            return [float(s) for s in sizes]
        return [float(-abs(s - target)) for s in sizes]

    return length_reward
