"""Tiny tokenizers and models for tests, built from configs and saved to disk.

Everything here is deterministic and small enough to build in well under a second, so the real
``from_pretrained`` loading code runs in every test without a model hub.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

EOS = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

CORPUS = [
    "the movie was great and the acting was wonderful",
    "the food was terrible and the service was slow",
    "please write a short review of the new phone",
    "i love this book, it is a great story",
    "the weather today is nice and sunny",
    "this product broke after one day, very bad",
    "thank you, the hotel staff were kind and helpful",
    "write a poem about the sea and the sky",
    "what is two plus two? the answer is four",
    "hello world, this is a tiny corpus for tests",
] * 4


def build_tokenizer(
    vocab_size: int = 300, corpus: list[str] | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ``<|endoftext|>`` as eos and pad, and a chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def gpt2_config(vocab_size: int, **overrides: object) -> GPT2Config:
    """A tiny GPT-2 config with dropout off (PPO ratios need deterministic forwards)."""
    kwargs: dict[str, object] = dict(
        vocab_size=int(vocab_size),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    kwargs.update(overrides)
    return GPT2Config(**kwargs)


def build_lm(vocab_size: int, seed: int = 0, **overrides: object) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(gpt2_config(vocab_size, **overrides)).eval()


def build_llama_lm(vocab_size: int, seed: int = 0) -> PreTrainedModel:
    """A tiny Llama (rotary positions, grouped-query attention): the other common family."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=int(vocab_size),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def build_rm(vocab_size: int, seed: int = 0, **overrides: object) -> GPT2ForSequenceClassification:
    torch.manual_seed(seed)
    return GPT2ForSequenceClassification(gpt2_config(vocab_size, num_labels=1, **overrides)).eval()


def save_tokenizer(path: Path, tokenizer: PreTrainedTokenizerFast | None = None) -> Path:
    (tokenizer or build_tokenizer()).save_pretrained(path)
    return path


def save_model(path: Path, model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def install_example_reward_plugin(tmp_path: Path) -> Path:
    """pip-install ``examples/reward_plugin`` into ``tmp_path/site`` and return that directory.

    Real packaging (build backend, entry-point metadata), about 2 s. It builds from a copy
    because pip builds in-tree and would leave ``build/`` and ``*.egg-info`` in the repo.
    """
    import shutil
    import subprocess
    import sys

    source = tmp_path / "src"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "reward_plugin", source)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return target
