"""Built-in ``reward_model`` reward: score (prompt, completion) with a sequence-classification model.

Any Hugging Face ``AutoModelForSequenceClassification`` checkpoint works, from a local directory
or a hub id: the scalar reward is one logit (or its probability) of the classifier.

What the model reads is fixed by :func:`format_for_reward_model` and tokenized by
:func:`encode_for_reward_model`; :func:`rlhf_gym.rewards.train_reward_model` uses the same two
functions, so a model trained here is scored on exactly the text layout it was trained on.

Decisions, and why:

* **Text layout.** ``prompt + completion + eos``: plain concatenation (the env's prompts already
  carry any chat template) followed by the tokenizer's eos token, unless the completion already
  ends with it. The eos marks "the response ended here", which lets a classifier that pools the
  last token read a fixed end-of-response position. When pad == eos (GPT-2 family) the pooling
  skips that eos like padding, which is harmless: training and scoring see the same thing.
* **Truncation from the left.** Text longer than ``max_length`` tokens loses its beginning (a
  leading BOS token is kept), so the completion, which is what the reward judges, survives.
* **Padding on the right**, with ``attention_mask``; batch members never see each other's
  padding, so batched and one-at-a-time scores agree (to float rounding). GPT-2-style
  classifiers pool the last non-pad token found through ``config.pad_token_id``; when the
  tokenizer has no pad token, its eos token is used and written to ``model.config.pad_token_id``.
* **Security.** ``trust_remote_code`` is off unless asked for; ``from_pretrained`` prefers
  safetensors weights and falls back to ``weights_only`` pickles (transformers' default).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from rlhf_gym.rewards.contract import Reward
from rlhf_gym.rewards.loading import load_tokenizer, not_found, resolve_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "RewardModel",
    "encode_for_reward_model",
    "format_for_reward_model",
    "load_reward_model",
    "load_tokenizer",
    "pad_batch",
]

Device = str | torch.device
Output = Literal["logit", "probability"]


# --- the text contract shared by scoring and training --------------------------------------------


def format_for_reward_model(
    prompt: str, completion: str, tokenizer: PreTrainedTokenizerBase | None = None
) -> str:
    """The exact text a reward model reads for one (prompt, completion) pair.

    ``prompt + completion``, then ``tokenizer.eos_token`` appended when the tokenizer has one and
    the completion does not already end with it. Used by both :class:`RewardModel` and
    :func:`~rlhf_gym.rewards.train_reward_model`.
    """
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise TypeError(
            f"Reward models score strings; got prompt of type {type(prompt).__name__} and "
            f"completion of type {type(completion).__name__}."
        )
    text = prompt + completion
    eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
    if isinstance(eos, str) and eos and not completion.endswith(eos):
        text += eos
    return text


def encode_for_reward_model(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int | None = None,
) -> list[list[int]]:
    """Token ids of :func:`format_for_reward_model` texts, left-truncated to ``max_length``.

    Left truncation drops the start of the prompt first so the completion survives; a leading BOS
    token, if the tokenizer adds one, is kept. Unpadded: see :func:`pad_batch`.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"Got {len(prompts)} prompts and {len(completions)} completions.")
    texts = [
        format_for_reward_model(p, c, tokenizer) for p, c in zip(prompts, completions, strict=True)
    ]
    if not texts:
        return []
    # verbose=False: the "sequence longer than the maximum" warning is moot, we truncate below.
    encoded = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    bos = tokenizer.bos_token_id
    fallback = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    out: list[list[int]] = []
    for ids in encoded:
        ids = list(ids)
        if max_length is not None and len(ids) > max_length:
            keep_bos = bos is not None and ids[0] == bos and max_length > 1
            ids = ids[:1] + ids[len(ids) - max_length + 1 :] if keep_bos else ids[-max_length:]
        if not ids:  # empty prompt and completion, tokenizer without eos: one pad token
            ids = [fallback if fallback is not None else 0]
        out.append(ids)
    return out


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``(input_ids, attention_mask)``, both int64 of shape (b, L)."""
    width = max((len(s) for s in sequences), default=1)
    input_ids = torch.full((len(sequences), width), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


# --- loading ------------------------------------------------------------------------------------


def load_reward_model(
    path: str | os.PathLike[str],
    *,
    num_labels: int | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> PreTrainedModel:
    """``AutoModelForSequenceClassification.from_pretrained`` with an actionable not-found error.

    ``num_labels`` overrides the config (``train_reward_model`` passes 1 to put a fresh scalar
    head on a causal LM checkpoint).
    """
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if dtype is not None:
        kwargs["dtype"] = dtype if dtype == "auto" else resolve_dtype(dtype)
    if revision is not None:
        kwargs["revision"] = revision
    local = Path(path).expanduser()
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            str(local) if local.exists() else str(path), **kwargs
        )
    except (OSError, ValueError) as exc:
        if local.exists():
            raise  # a real directory with bad contents: transformers' message says what is missing
        raise not_found(path, "Reward model", exc) from exc


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module) -> int:
    """Make sure batches can be padded and the classifier knows which id is padding.

    Falls back to eos as the pad token (GPT-2 has none) and writes the id to
    ``model.config.pad_token_id`` when the config has none. The classifier then treats eos as
    padding and pools the last token before it, the convention TRL and most GPT-2-family reward
    models are trained with. Returns the id to pad with: the config's, because that is the id the
    classifier's last-token pooling compares against.
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                "The reward model's tokenizer has neither a pad nor an eos token; set "
                "tokenizer.pad_token before scoring."
            )
        tokenizer.pad_token = tokenizer.eos_token
    config = getattr(model, "config", None)
    if config is None:
        return int(tokenizer.pad_token_id)
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    return int(config.pad_token_id)


def default_max_length(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The longest input both the model and tokenizer accept, or ``None`` when neither says."""
    config = getattr(model, "config", None)
    limits = [getattr(config, attr, None) for attr in ("n_positions", "max_position_embeddings")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    # tokenizers without a limit report a huge sentinel (int(1e30)); ignore it.
    usable = [int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000]
    return min(usable) if usable else None


def resolve_device(device: Device = "auto") -> torch.device:
    """``"auto"`` -> cuda when available, else mps when available, else cpu."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


# --- the reward ---------------------------------------------------------------------------------


class RewardModel(Reward):
    """Reward from a Hugging Face sequence-classification model (registered as ``reward_model``).

    Args:
        path: local directory or hub id of the classifier; the tokenizer is loaded from the same
            place unless ``tokenizer`` is given.
        model: an already loaded classifier to use instead of ``path``, or a path / hub id
            (``model="path"``, as Hugging Face and TRL users write it; the same as ``path=``).
        tokenizer: tokenizer object or path; required with ``model``.
        batch_size: completions per forward pass (inputs are sorted by length to pad less).
        device: ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a
            ``torch.device``.
        dtype: weights dtype, e.g. ``"bfloat16"``, ``torch.float16`` or ``"auto"``; default: as
            saved for a path, untouched for a model object. Scores are computed in float32.
        max_length: truncation limit in tokens; defaults to the model's position limit
            (``n_positions`` / ``max_position_embeddings``) or the tokenizer's
            ``model_max_length``, whichever is smaller.
        output: ``"logit"`` (raw score) or ``"probability"`` (sigmoid when there is one label or
            the problem type is multi-label, softmax across labels otherwise).
        label: which label's logit is the reward: an index, or a label name resolved through
            ``config.label2id`` (e.g. ``"POSITIVE"`` for a sentiment classifier).
        normalize: standardize scores with a running mean and standard deviation (Welford's
            algorithm) over every score this instance has produced, updated with each batch
            before it is normalized. Makes scores depend on history, so off by default; ``reset()``
            forgets the statistics.
        trust_remote_code: allow custom modelling code from the checkpoint. Off by default.
        revision: hub revision (branch, tag or commit) to load.
    """

    name = "reward_model"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        model: torch.nn.Module | str | os.PathLike[str] | None = None,
        tokenizer: str | os.PathLike[str] | PreTrainedTokenizerBase | None = None,
        batch_size: int = 32,
        device: Device = "auto",
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        output: Output = "logit",
        label: int | str = 0,
        normalize: bool = False,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            # model="path/or/hub-id", as Hugging Face and TRL users write it.
            if path is not None:
                raise ValueError(
                    f"RewardModel got both path={str(path)!r} and model={str(model)!r}; give one."
                )
            path, model = model, None
        if (path is None) == (model is None):
            raise ValueError(
                "RewardModel needs exactly one of path=... (directory or hub id) or model=...."
            )
        if output not in ("logit", "probability"):
            raise ValueError(f"output must be 'logit' or 'probability', got {output!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if model is None:
            assert path is not None
            model = load_reward_model(
                path, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision
            )
            tokenizer = load_tokenizer(
                tokenizer if tokenizer is not None else path,
                trust_remote_code=trust_remote_code,
                revision=revision,
            )
        else:
            if tokenizer is None:
                raise ValueError(
                    "RewardModel(model=...) also needs tokenizer=... (object or path)."
                )
            tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
            if dtype is not None and dtype != "auto":
                model = model.to(resolve_dtype(dtype))
        self.path = None if path is None else str(path)
        self.tokenizer = tokenizer
        self.pad_token_id = ensure_pad_token(tokenizer, model)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = (
            max_length if max_length is not None else default_max_length(model, tokenizer)
        )
        self.output: Output = output
        self.label_index = self._resolve_label(label)
        self.normalize = normalize
        self.reset()

    def _resolve_label(self, label: int | str) -> int:
        config = getattr(self.model, "config", None)
        num_labels = int(getattr(config, "num_labels", 1) or 1)
        if isinstance(label, str):
            label2id = dict(getattr(config, "label2id", None) or {})
            # transformers 5 may leave label2id unset when a config only names id2label.
            for idx, lab in (getattr(config, "id2label", None) or {}).items():
                label2id.setdefault(lab, int(idx))
            if label not in label2id:
                raise ValueError(
                    f"Label {label!r} is not one of this reward model's labels "
                    f"{sorted(label2id)} (config.label2id)."
                )
            return int(label2id[label])
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_labels:
            raise ValueError(
                f"label must be an index in [0, {num_labels}) or a label name, got {label!r}."
            )
        return label

    def reset(self) -> None:
        """Forget the running normalization statistics."""
        self._count = 0
        self._mean = 0.0
        self._m2 = 0.0

    @property
    def running_mean(self) -> float:
        return self._mean

    @property
    def running_std(self) -> float:
        """Sample standard deviation of all scores seen; 1.0 until there are two of them."""
        return math.sqrt(self._m2 / (self._count - 1)) if self._count > 1 else 1.0

    def to(self, device: Device) -> RewardModel:
        self.device = resolve_device(device)
        self.model.to(self.device)
        return self

    @torch.inference_mode()
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Raw scores (``output`` applied, no normalization), one per pair, in input order."""
        sequences = encode_for_reward_model(self.tokenizer, prompts, completions, self.max_length)
        # Sort by length so each batch pads to similar lengths; scatter back at the end.
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
        scores = [0.0] * len(sequences)
        problem_type = getattr(getattr(self.model, "config", None), "problem_type", None)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            input_ids, attention_mask = pad_batch([sequences[i] for i in chunk], self.pad_token_id)
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            ).logits.float()  # (b, num_labels)
            if self.output == "probability":
                if logits.shape[-1] == 1 or problem_type == "multi_label_classification":
                    logits = torch.sigmoid(logits)
                else:
                    logits = torch.softmax(logits, dim=-1)
            for i, value in zip(chunk, logits[:, self.label_index].tolist(), strict=True):
                scores[i] = float(value)
        return scores

    def __call__(
        self, prompts: list[str], completions: list[str], **kwargs: Any
    ) -> list[float | None]:
        """Score a batch. Token-id kwargs are ignored: the reward model has its own tokenizer."""
        scores = self.score(prompts, completions)
        if not self.normalize:
            return list(scores)
        for x in scores:  # Welford's online update
            self._count += 1
            delta = x - self._mean
            self._mean += delta / self._count
            self._m2 += delta * (x - self._mean)
        std = self.running_std
        std = std if std > 1e-8 else 1.0
        return [(x - self._mean) / std for x in scores]

    def __repr__(self) -> str:
        source = self.path or type(self.model).__name__
        return f"RewardModel({source!r}, device={str(self.device)!r}, output={self.output!r})"
