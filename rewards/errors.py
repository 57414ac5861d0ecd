"""Exceptions raised by the reward layer.

Two kinds of failure matter to a user: asking for a reward that does not exist (a typo, a plugin
that is not installed) and a reward that misbehaves at run time (raises, returns the wrong number
of values, returns NaN). Each gets its own class so callers can catch one without the other.
"""

from __future__ import annotations

__all__ = ["RewardError", "UnknownRewardError"]


class RewardError(RuntimeError):
    """A reward plugin failed or returned something unusable.

    ``plugin`` is the component name (registry name, function ``__name__`` or ``Reward.name``) so a
    training loop that mixes several rewards can tell which one to fix. When the plugin itself
    raised, the original exception is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin


class UnknownRewardError(ValueError):
    """No reward is registered, installed or importable under the requested name.

    A ``ValueError`` (not ``KeyError``) so the message prints without ``repr`` quoting. ``name`` is
    what was asked for, ``suggestions`` the close matches (possibly empty) and ``available`` every
    name that would have worked.
    """

    def __init__(
        self,
        message: str,
        *,
        name: str,
        suggestions: list[str] | None = None,
        available: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.name = name
        self.suggestions = list(suggestions or [])
        self.available = list(available or [])
