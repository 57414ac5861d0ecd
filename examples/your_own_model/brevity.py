"""A user's reward module for ``rlhf-gym train --reward brevity:brevity`` (see the README).

Shorter answers score higher: minus the number of words over 10, in tens. A TRL-style reward
function; it must be importable, e.g. ``PYTHONPATH=examples/your_own_model``.
"""

from __future__ import annotations

from typing import Any


def brevity(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """``-max(0, words - 10) / 10`` per completion: 0 for ten words or fewer."""
    return [-max(0, len(c.split()) - 10) / 10 for c in completions]
