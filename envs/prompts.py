"""Compiled prompt datasets: where observations come from.

A prompt source (a file, a list, a ``datasets.Dataset``) is read once, rendered (chat templates),
tokenized and truncated once, and then sampled many times. Compiling up front means a bad row
fails at construction with its file and line, not in the middle of a training run, and that
``reset()`` costs an index lookup rather than a tokenizer call.

Decisions, since DESIGN.md is silent on them:

* Prompts longer than ``max_prompt_tokens`` keep their *last* tokens (``truncation="left"``), as
  the end of a prompt is what a continuation depends on; the count is reported in one warning.
  ``truncation="error"`` rejects them instead.
* The prompt text given to rewards is the text the policy saw: the original string, or the
  decoded kept tokens when it was truncated.
* Extra columns (anything but the prompt/messages column) travel unchanged to the reward as
  keyword arguments and to the final ``info["extras"]``.
* A chat-style row (a ``messages`` column, or a prompt that is a list of ``{"role", "content"}``
  dicts, TRL's conversational format) is rendered with the tokenizer's chat template and
  ``add_generation_prompt=True``; the rendered text then gets no extra special tokens.
"""

from __future__ import annotations

import csv
import functools
import json
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from transformers import PreTrainedTokenizerBase

from rlhf_gym.rewards.loading import read_jsonl

Truncation = Literal["left", "error"]
Sampling = Literal["epoch", "uniform"]
Split = Literal["train", "eval", "all"]

_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


@dataclass(frozen=True)
class _Record:
    """One raw row and where it came from, for error messages."""

    data: dict[str, Any]
    where: str


@dataclass(frozen=True)
class PromptRow:
    """One compiled prompt: the text the policy sees, its token ids, and the row's other columns."""

    index: int
    text: str
    input_ids: np.ndarray
    extras: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False
    #: What a person asked: the last user turn of a chat row, else the prompt text. Samples
    #: show it instead of the whole rendered template.
    query: str = ""
    #: Rendered with a chat template: samples print the query, then the answer on a line of
    #: its own (a plain prompt runs on into its continuation).
    chat: bool = False

    @property
    def shown(self) -> str:
        return self.query or self.text


def reward_kwargs(
    rows: Sequence[PromptRow],
    completions: list[str],
    completion_ids: list[list[int]],
    columns: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of one reward call (TRL's contract) for ``rows`` and their completions.

    Extra columns travel as one list each; ``columns`` defaults to every extra column of
    ``rows``, and a row without a column passes ``None``.
    """
    if columns is None:
        columns = dict.fromkeys(k for row in rows for k in row.extras)
    kwargs: dict[str, Any] = {
        "prompts": [row.text for row in rows],
        "completions": completions,
        "prompt_ids": [row.input_ids.tolist() for row in rows],
        "completion_ids": completion_ids,
    }
    for column in columns:
        kwargs.setdefault(column, [row.extras.get(column) for row in rows])
    return kwargs


# --------------------------------------------------------------------------------------------
# Reading raw records from every supported source


def read_records(source: Any) -> list[_Record]:
    """Read a prompt source into raw records (dicts), each tagged with its location."""
    if isinstance(source, (str, Path)):
        return _read_file(Path(source))
    if hasattr(source, "column_names") and hasattr(source, "to_list"):  # datasets.Dataset
        rows = source.to_list()
        return [
            _Record(_as_dict(r, f"dataset row {i}"), f"dataset row {i}") for i, r in enumerate(rows)
        ]
    if isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        return [_Record(_as_dict(r, f"item {i}"), f"item {i}") for i, r in enumerate(source)]
    raise TypeError(
        "prompts must be a file path (.jsonl/.json/.csv/.parquet/.txt), a list of strings or dicts, "
        f"or a datasets.Dataset; got {type(source).__name__}"
    )


def _as_dict(row: Any, where: str) -> dict[str, Any]:
    if isinstance(row, str):
        return {"prompt": row}
    if isinstance(row, Mapping):
        return dict(row)
    raise TypeError(f"{where}: expected a string or a dict, got {type(row).__name__}")


def _read_file(path: Path) -> list[_Record]:
    if not path.exists():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(
            f"prompts={str(path)!r} is a directory; pass a file ({', '.join(_SUFFIXES)})"
        )
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return list(_read_jsonl(path))
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            # Line numbers count the header as line 1.
            return [_Record(dict(r), f"{path}:{i + 2}") for i, r in enumerate(csv.DictReader(f))]
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ImportError(
                f"reading {path} needs pyarrow: pip install 'rlhf-gym[parquet]'"
            ) from err
        rows = pq.read_table(path).to_pylist()
        return [_Record(r, f"{path} row {i}") for i, r in enumerate(rows)]
    if suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [_Record({"prompt": s}, f"{path}:{i + 1}") for i, s in enumerate(lines) if s.strip()]
    raise ValueError(
        f"unsupported prompt file type {suffix!r} for {path}; use one of {', '.join(_SUFFIXES)}"
    )


def _read_jsonl(path: Path) -> Iterator[_Record]:
    for where, row in read_jsonl(path, example='{"prompt": "..."}'):
        yield _Record(_as_dict(row, where), where)


def _read_json(path: Path) -> list[_Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})"
        ) from err
    if isinstance(data, Mapping):  # {"prompt": [...], "topic": [...]} column form
        lengths = {len(v) for v in data.values() if isinstance(v, list)}
        if len(lengths) != 1 or not all(isinstance(v, list) for v in data.values()):
            raise ValueError(
                f"{path}: a JSON object must map every column to a list of equal length"
            )
        n = lengths.pop()
        data = [{k: v[i] for k, v in data.items()} for i in range(n)]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of prompts or a column object")
    return [
        _Record(_as_dict(r, f"{path} item {i}"), f"{path} item {i}") for i, r in enumerate(data)
    ]


# --------------------------------------------------------------------------------------------
# Compiling records into token ids


class PromptDataset:
    """A compiled, immutable set of prompts.

    Build one with :meth:`from_source`; environments accept an instance directly, so vector envs
    compile once and share it.
    """

    def __init__(self, rows: Sequence[PromptRow], *, name: str = "prompts", n_truncated: int = 0):
        if not rows:
            raise ValueError(f"{name}: the prompt dataset is empty; give at least one prompt")
        self.rows: tuple[PromptRow, ...] = tuple(rows)
        self.name = name
        self.n_truncated = n_truncated

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> PromptRow:
        return self.rows[i]

    def __iter__(self) -> Iterator[PromptRow]:
        return iter(self.rows)

    @functools.cached_property
    def extra_columns(self) -> list[str]:
        """The rows' other columns, in first-seen order: computed once (rows never change),
        not on every reward call."""
        return list(dict.fromkeys(k for row in self.rows for k in row.extras))

    @classmethod
    def from_source(
        cls,
        source: Any,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_prompt_tokens: int,
        prompt_column: str = "prompt",
        messages_column: str = "messages",
        chat_template: bool | None = None,
        truncation: Truncation = "left",
        system_prompt: str | None = None,
    ) -> PromptDataset:
        """Read, render, tokenize and truncate every prompt of ``source``.

        Args:
            source: a path, a list of strings/dicts, or a ``datasets.Dataset``.
            tokenizer: the env's tokenizer.
            max_prompt_tokens: longest prompt kept, in tokens.
            prompt_column: the column holding the prompt text (or a message list).
            messages_column: a column of chat messages, used when ``prompt_column`` is absent.
            chat_template: ``None`` renders only chat-style rows with the template; ``True`` also
                wraps plain prompts as one user message; ``False`` rejects chat-style rows.
            truncation: ``"left"`` keeps the last ``max_prompt_tokens`` tokens; ``"error"`` raises.
            system_prompt: a system message put first in every templated prompt that has none
                (plain prompts are then wrapped as a user turn, as with ``chat_template=True``).
        """
        if isinstance(source, PromptDataset):
            return source
        name = str(source) if isinstance(source, (str, Path)) else "prompts"
        records = read_records(source)
        if not records:
            raise ValueError(f"{name}: no prompts found (the source is empty)")
        rows: list[PromptRow] = []
        n_truncated = 0
        for i, rec in enumerate(records):
            text, extras, rendered, query = _prompt_text(
                rec, prompt_column, messages_column, chat_template, tokenizer, system_prompt
            )
            ids = tokenizer(text, add_special_tokens=not rendered)["input_ids"]
            if len(ids) == 0:
                raise ValueError(f"{rec.where}: the prompt tokenizes to zero tokens")
            truncated = len(ids) > max_prompt_tokens
            if truncated:
                if truncation == "error":
                    raise ValueError(
                        f"{rec.where}: prompt has {len(ids)} tokens, more than max_prompt_tokens="
                        f"{max_prompt_tokens}. Fix: raise max_prompt_tokens, shorten the prompt, or "
                        "pass truncation='left' to keep its last tokens."
                    )
                ids = ids[-max_prompt_tokens:]
                text = tokenizer.decode(ids)
                query = query if rendered else text  # samples show what the policy saw
                n_truncated += 1
            rows.append(
                PromptRow(
                    i, text, np.asarray(ids, dtype=np.int64), extras, truncated, query, rendered
                )
            )
        if n_truncated:
            warnings.warn(
                f"{name}: {n_truncated} of {len(rows)} prompts were longer than max_prompt_tokens="
                f"{max_prompt_tokens} and were truncated from the left (pass truncation='error' to "
                "reject them instead)",
                stacklevel=2,
            )
        return cls(rows, name=name, n_truncated=n_truncated)

    def split(self, eval_fraction: float, seed: int = 0) -> tuple[PromptDataset, PromptDataset]:
        """Split into (train, eval) by a seeded permutation, independent of any env's seed."""
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        n_eval = max(1, int(round(len(self) * eval_fraction)))
        if n_eval >= len(self):
            raise ValueError(
                f"{self.name}: {len(self)} prompts are too few to hold out {n_eval} for eval"
            )
        order = np.random.default_rng(seed).permutation(len(self))
        eval_idx, train_idx = sorted(order[:n_eval]), sorted(order[n_eval:])

        def pick(idx: list[int], tag: str) -> PromptDataset:
            rows = [self.rows[i] for i in idx]
            return PromptDataset(rows, name=f"{self.name}[{tag}]", n_truncated=self.n_truncated)

        return pick(train_idx, "train"), pick(eval_idx, "eval")

    def shard(self, rank: int, world_size: int) -> PromptDataset:
        """Rows ``rank, rank + world_size, ...``: one data-parallel rank's disjoint part.

        A fixed, strided partition (as ``torch.utils.data.DistributedSampler`` without
        reshuffling across ranks): every prompt belongs to exactly one rank, so no prompt is
        answered twice per epoch across ranks, and each rank's sampler shuffles its own part.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"shard rank must be in [0, {world_size}), got {rank}")
        if world_size == 1:
            return self
        if len(self) < world_size:
            raise ValueError(
                f"{self.name}: {len(self)} prompts cannot be shared by {world_size} ranks (each "
                "needs at least one); give more prompts or run fewer ranks"
            )
        rows = self.rows[rank::world_size]
        name = f"{self.name}[shard {rank}/{world_size}]"
        return PromptDataset(rows, name=name, n_truncated=self.n_truncated)


def _prompt_text(
    rec: _Record,
    prompt_column: str,
    messages_column: str,
    chat_template: bool | None,
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str | None = None,
) -> tuple[str, dict[str, Any], bool, str]:
    """Return (text, extra columns, rendered-with-template, the user's query) for one record."""
    data = rec.data
    if prompt_column in data:
        column = prompt_column
    elif messages_column in data:
        column = messages_column
    else:
        raise KeyError(
            f"{rec.where}: no {prompt_column!r} column; the row has columns {sorted(data)}. "
            f"Fix: pass prompt_column=<one of those> (or a {messages_column!r} column of chat messages)."
        )
    value = data[column]
    extras = {k: v for k, v in data.items() if k != column}
    _check_text(value, rec.where, column)
    if _is_messages(value):
        if chat_template is False:
            raise ValueError(f"{rec.where}: chat messages given but chat_template=False")
        messages = _with_system(value, system_prompt)
        users = [str(m["content"]) for m in messages if m["role"] == "user"]
        query = users[-1] if users else str(messages[-1]["content"])
        return _render(messages, tokenizer, rec.where), extras, True, query
    if not isinstance(value, str):
        raise TypeError(
            f"{rec.where}: column {column!r} must hold a string or chat messages, got {type(value).__name__}"
        )
    if not value.strip():
        raise ValueError(f"{rec.where}: empty prompt in column {column!r}")
    if chat_template or (chat_template is None and system_prompt is not None):
        messages = _with_system([{"role": "user", "content": value}], system_prompt)
        return _render(messages, tokenizer, rec.where), extras, True, value
    if system_prompt is not None:
        raise ValueError(f"{rec.where}: system_prompt needs chat_template (it is False)")
    return value, extras, False, value


def _with_system(
    messages: list[Mapping[str, Any]], system_prompt: str | None
) -> list[Mapping[str, Any]]:
    """``messages`` with ``system_prompt`` first, unless it is None or a system turn exists."""
    if system_prompt is None or messages[0].get("role") == "system":
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def _check_text(value: Any, where: str, column: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate such as ``"\\ud800"`` from a JSON
    escape): the tokenizer would fail later with a type error that names no file or line."""
    texts = [value] if isinstance(value, str) else []
    if isinstance(value, list):
        texts = [m.get("content") for m in value if isinstance(m, Mapping)]
    for text in texts:
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = text[exc.start : exc.end].encode("unicode_escape").decode()
                raise ValueError(
                    f"{where}: column {column!r} holds {bad!r} at character {exc.start}, a lone "
                    "surrogate that is not valid text (a broken JSON escape?). Fix: write the "
                    "character as a pair of escapes or as UTF-8."
                ) from None


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value)
    )


def _render(
    messages: list[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase, where: str
) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{where}: chat messages need a chat template, but the tokenizer has none. Fix: set "
            "tokenizer.chat_template, or give plain prompt strings."
        )
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    if not text.strip():
        raise ValueError(f"{where}: the chat template rendered an empty prompt")
    return text


def resolve_split(
    dataset: PromptDataset, split: Split, eval_fraction: float, split_seed: int
) -> PromptDataset:
    """Pick the rows of one split; ``eval_fraction=0`` means the whole set is the train split."""
    if split == "all" or (eval_fraction == 0.0 and split == "train"):
        return dataset
    if eval_fraction == 0.0:
        raise ValueError(
            "split='eval' needs held-out prompts: pass eval_fraction>0 to hold some out, or pass "
            "the eval prompts themselves with split='all'"
        )
    train, held_out = dataset.split(eval_fraction, split_seed)
    return train if split == "train" else held_out


# --------------------------------------------------------------------------------------------
# Sampling


class PromptSampler:
    """Draws prompt indices: shuffled epochs (every prompt once per epoch) or uniform draws.

    The sampler owns no RNG: the env passes its own seeded ``np_random`` so ``reset(seed=s)``
    fixes the whole prompt order.
    """

    def __init__(self, n: int, mode: Sampling = "epoch"):
        if mode not in ("epoch", "uniform"):
            raise ValueError(f"sampling must be 'epoch' or 'uniform', got {mode!r}")
        self.n = n
        self.mode: Sampling = mode
        self._order: np.ndarray = np.empty(0, dtype=np.int64)
        self._pos = 0

    def state_dict(self) -> dict[str, Any]:
        return {"order": self._order.tolist(), "pos": int(self._pos)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._order = np.asarray(state["order"], dtype=np.int64)
        self._pos = int(state["pos"])

    def restart(self) -> None:
        """Forget the current epoch (called when the env is reseeded)."""
        self._order = np.empty(0, dtype=np.int64)
        self._pos = 0

    def draw(self, rng: np.random.Generator) -> int:
        if self.mode == "uniform":
            return int(rng.integers(self.n))
        if self._pos >= len(self._order):
            self._order = rng.permutation(self.n)
            self._pos = 0
        index = int(self._order[self._pos])
        self._pos += 1
        return index
