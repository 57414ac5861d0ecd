"""Loading and checking the tokenizer an environment speaks.

The env needs two special tokens: an EOS token, so an episode can end before ``max_new_tokens``,
and a pad token, so observations have a fixed length. Tokenizers that lack a pad token (GPT-2)
borrow EOS as pad, which is safe because the attention mask, not the pad id, marks real tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from rlhf_gym.rewards.loading import load_tokenizer as load_tokenizer_files


def load_tokenizer(
    spec: str | Path | PreTrainedTokenizerBase,
    *,
    trust_remote_code: bool = False,
    require_eos: bool = True,
) -> PreTrainedTokenizerBase:
    """Return a ready tokenizer from a name/path or an instance, with pad and EOS checked.

    Args:
        spec: a Hugging Face tokenizer instance, a local directory, or a hub id.
        trust_remote_code: passed to ``AutoTokenizer.from_pretrained``; off unless the user asks.
        require_eos: whether the env terminates on EOS and so needs an EOS token.
    """
    if isinstance(spec, PreTrainedTokenizerBase):
        tokenizer = spec
    elif isinstance(spec, (str, Path)):
        tokenizer = _from_pretrained(str(spec), trust_remote_code)  # one loader: rewards.loading
    else:
        raise TypeError(
            f"tokenizer must be a path, a hub id or a transformers tokenizer, got {type(spec).__name__}"
        )
    if tokenizer.eos_token_id is None and require_eos:
        raise ValueError(
            f"tokenizer {_name(tokenizer)!r} has no EOS token, so episodes could never end early. "
            "Fix: set `tokenizer.eos_token = ...`, or pass stop_on_eos=False (with stop_strings "
            "or max_new_tokens to end episodes)."
        )
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(
                f"tokenizer {_name(tokenizer)!r} has neither a pad token nor an EOS token to pad "
                "with. Fix: set `tokenizer.pad_token = ...` before passing it to the env."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _from_pretrained(name: str, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    try:
        return load_tokenizer_files(name, trust_remote_code=trust_remote_code)
    except FileNotFoundError as err:  # it already says where it looked and what to pass
        raise OSError(f"could not load a tokenizer from {name!r}: {err}") from err
    except (OSError, ValueError) as err:
        raise OSError(
            f"could not load a tokenizer from {name!r} (a local directory): {err}. Fix: pass the "
            "path of a directory written by `tokenizer.save_pretrained(...)`."
        ) from err


def _name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
