"""Train a reward model from preference pairs (prompt, chosen, rejected) with the Bradley-Terry loss.

The model scores ``r(x, y)`` as a single logit; for a pair the loss is
``-log sigmoid(r(x, chosen) - r(x, rejected))``, the negative log-likelihood that the chosen
completion wins under the Bradley-Terry model. Chosen and rejected texts of a batch run through
one forward pass (2B rows), using the same text layout and tokenization as scoring
(:func:`~rlhf_gym.rewards.reward_model.encode_for_reward_model`), and the result is saved so that
``get_reward("reward_model", path=output_dir)`` loads it.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from rlhf_gym.rewards.loading import read_jsonl
from rlhf_gym.rewards.reward_model import (
    default_max_length,
    encode_for_reward_model,
    ensure_pad_token,
    load_reward_model,
    load_tokenizer,
    pad_batch,
    resolve_device,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["REPORT_FILENAME", "RewardModelReport", "load_preference_pairs", "train_reward_model"]

REPORT_FILENAME = "reward_model_report.json"
_PAIR_KEYS = ("prompt", "chosen", "rejected")


@dataclass
class RewardModelReport:
    """What :func:`train_reward_model` did, also written to ``output_dir/reward_model_report.json``."""

    #: mean Bradley-Terry loss over the last epoch's training batches
    train_loss: float
    #: fraction of held-out pairs with r(chosen) > r(rejected); None when nothing was held out
    eval_accuracy: float | None
    #: mean Bradley-Terry loss on the held-out pairs; None when nothing was held out
    eval_loss: float | None
    n_train: int
    n_eval: int
    epochs: int
    output_dir: str
    #: mean training loss of each epoch, first to last
    epoch_losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_preference_pairs(
    pairs: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
) -> list[dict[str, str]]:
    """Read and check preference pairs from a JSONL file or a list of dicts.

    Each pair needs string fields ``prompt``, ``chosen`` and ``rejected`` (extra keys are ignored;
    the prompt may be empty). Blank lines in the JSONL file are skipped. Errors name the file and
    line (or the list index) and the keys that were present.
    """
    rows: list[tuple[str, object]] = []
    if isinstance(pairs, (str, os.PathLike)):
        path = Path(pairs)
        if not path.is_file():
            raise FileNotFoundError(f"Preference pairs file {str(path)!r} does not exist.")
        example = '{"prompt": ..., "chosen": ..., "rejected": ...}'
        rows = list(read_jsonl(path, example=example, problem="invalid JSON"))
    else:
        rows = [(f"pair #{i}", row) for i, row in enumerate(pairs)]
    out: list[dict[str, str]] = []
    for where, row in rows:
        if not isinstance(row, Mapping):
            raise ValueError(
                f"{where}: expected an object with {list(_PAIR_KEYS)}, got {type(row).__name__}."
            )
        missing = [k for k in _PAIR_KEYS if k not in row]
        if missing:
            raise ValueError(
                f"{where}: preference pair is missing {missing}; keys present: {sorted(row)}. "
                f"Each pair needs {list(_PAIR_KEYS)}."
            )
        for key in _PAIR_KEYS:
            if not isinstance(row[key], str):
                raise ValueError(
                    f"{where}: {key!r} must be a string, got {type(row[key]).__name__}."
                )
        out.append({k: row[k] for k in _PAIR_KEYS})
    if not out:
        raise ValueError("No preference pairs given.")
    return out


def train_reward_model(
    pairs: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    model: str | os.PathLike[str] | torch.nn.Module | None,
    output_dir: str | os.PathLike[str],
    *,
    tokenizer: str | os.PathLike[str] | PreTrainedTokenizerBase | None = None,
    eval_fraction: float = 0.1,
    epochs: int = 3,
    lr: float = 5e-5,
    batch_size: int = 16,
    max_length: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    from_scratch_config: PretrainedConfig | None = None,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
) -> RewardModelReport:
    """Fit a scalar reward model on preference pairs and save it where ``reward_model`` loads it.

    Args:
        pairs: JSONL path or list of dicts with ``prompt``, ``chosen``, ``rejected``.
        model: a path / hub id (a sequence classifier with one label, or a causal LM, which gets
            a fresh one-logit score head), or a loaded ``PreTrainedModel`` sequence classifier
            with ``num_labels == 1`` (trained in place). ``None`` with ``from_scratch_config``.
        output_dir: where the model, tokenizer (safetensors) and the JSON report are written.
        tokenizer: tokenizer object or path; defaults to loading from ``model`` when it is a path.
            Required when ``model`` is an object or ``None``.
        eval_fraction: share of pairs held out (after a seeded shuffle) to measure pairwise
            accuracy; 0 trains on everything.
        epochs, lr, batch_size, weight_decay: AdamW training schedule (constant learning rate).
        max_grad_norm: gradient-norm clipping per step; ``None`` disables it.
        max_length: truncation limit (left truncation, as when scoring); default: the model's.
        seed: seeds the split, the batch order and torch, so a run is reproducible on CPU.
        device: where to train (``"auto"`` picks cuda when available).
        progress: show a tqdm progress bar.
        from_scratch_config: a transformers config to build a randomly initialized classifier
            from (``num_labels`` is forced to 1) instead of loading ``model``.

    Returns:
        A :class:`RewardModelReport` (also saved as ``reward_model_report.json``).
    """
    from tqdm.auto import tqdm

    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}.")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}.")
    data = load_preference_pairs(pairs)
    torch.manual_seed(seed)
    net, tok = _prepare_model(model, tokenizer, from_scratch_config)
    pad_id = ensure_pad_token(tok, net)
    if max_length is None:
        max_length = default_max_length(net, tok)
    run_device = resolve_device(device)
    net.to(run_device)

    rng = random.Random(seed)
    order = list(range(len(data)))
    rng.shuffle(order)
    n_eval = int(round(eval_fraction * len(data))) if eval_fraction > 0 else 0
    n_eval = min(max(n_eval, 1 if eval_fraction > 0 and len(data) > 1 else 0), len(data) - 1)
    eval_index = order[:n_eval]
    train_index = order[n_eval:]

    # Tokenize once: row i of `chosen` / `rejected` is pair i's text, laid out as when scoring.
    prompts = [p["prompt"] for p in data]
    chosen = encode_for_reward_model(tok, prompts, [p["chosen"] for p in data], max_length)
    rejected = encode_for_reward_model(tok, prompts, [p["rejected"] for p in data], max_length)

    def margins(batch: list[int]) -> torch.Tensor:
        # Chosen rows then rejected rows in ONE forward: r has shape (2B,), margins (B,).
        ids = [chosen[i] for i in batch] + [rejected[i] for i in batch]
        input_ids, attention_mask = pad_batch(ids, pad_id)
        logits = net(
            input_ids=input_ids.to(run_device), attention_mask=attention_mask.to(run_device)
        ).logits
        r = logits[:, 0].float()
        return r[: len(batch)] - r[len(batch) :]

    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(train_index) + batch_size - 1) // batch_size
    epoch_losses: list[float] = []
    net.train()
    with tqdm(total=epochs * steps_per_epoch, disable=not progress, desc="reward model") as bar:
        for _ in range(epochs):
            rng.shuffle(train_index)
            total, count = 0.0, 0
            for start in range(0, len(train_index), batch_size):
                batch = train_index[start : start + batch_size]
                loss = -F.logsigmoid(margins(batch)).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
                optimizer.step()
                total += loss.item() * len(batch)
                count += len(batch)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            epoch_losses.append(total / count)
    net.eval()

    eval_accuracy = eval_loss = None
    if eval_index:
        with torch.inference_mode():
            m = torch.cat(
                [margins(eval_index[s : s + batch_size]) for s in range(0, n_eval, batch_size)]
            )
        eval_accuracy = float((m > 0).float().mean())
        eval_loss = float(-F.logsigmoid(m).mean())

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    report = RewardModelReport(
        train_loss=epoch_losses[-1],
        eval_accuracy=eval_accuracy,
        eval_loss=eval_loss,
        n_train=len(train_index),
        n_eval=n_eval,
        epochs=epochs,
        output_dir=str(out),
        epoch_losses=epoch_losses,
    )
    (out / REPORT_FILENAME).write_text(
        json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8"
    )
    return report


def _prepare_model(
    model: str | os.PathLike[str] | torch.nn.Module | None,
    tokenizer: str | os.PathLike[str] | PreTrainedTokenizerBase | None,
    from_scratch_config: PretrainedConfig | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if from_scratch_config is not None:
        if model is not None:
            raise ValueError("Pass either model=... or from_scratch_config=..., not both.")
        if tokenizer is None:
            raise ValueError("from_scratch_config=... needs tokenizer=... (object or path).")
        from transformers import AutoModelForSequenceClassification

        config = from_scratch_config.__class__.from_dict(from_scratch_config.to_dict())
        config.num_labels = 1
        net = AutoModelForSequenceClassification.from_config(config)
    elif model is None:
        raise ValueError(
            "train_reward_model needs model=... (path, hub id or model) or from_scratch_config=...."
        )
    elif isinstance(model, torch.nn.Module):
        if not hasattr(model, "save_pretrained"):
            raise TypeError(
                f"model must be a transformers PreTrainedModel (it is saved with save_pretrained), "
                f"got {type(model).__name__}."
            )
        if tokenizer is None:
            raise ValueError(
                "train_reward_model(model=<object>) also needs tokenizer=... (object or path)."
            )
        net = model
    else:
        net = load_reward_model(model, num_labels=1)
        if tokenizer is None:
            tokenizer = model
    num_labels = getattr(getattr(net, "config", None), "num_labels", None)
    if num_labels != 1:
        raise ValueError(
            f"A reward model must output one logit (num_labels=1); this model has num_labels="
            f"{num_labels}. Load it with AutoModelForSequenceClassification(..., num_labels=1)."
        )
    assert tokenizer is not None
    return net, load_tokenizer(tokenizer)
