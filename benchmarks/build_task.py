"""Build the benchmark task once: tokenizer, random-init GPT-2 models and 512 prompts.

    .venv/bin/python benchmarks/build_task.py          # writes benchmarks/.cache/<task key>/

Deterministic: the corpus comes from a seeded generator, the BPE trainer is deterministic on a
fixed corpus, and the model weights come from ``torch.manual_seed(task.seed)``. Everything is
saved with ``save_pretrained`` so every contestant loads it through ``from_pretrained``.

- tokenizer/: byte-level BPE with exactly ``vocab_size`` tokens, ``<|endoftext|>`` as EOS, BOS and
  pad (id 0), trained on a synthetic corpus of pseudo-English sentences.
- model-npos128/: GPT-2 (n_layer=4, n_head=4, n_embd=256, n_positions=128), dropout 0, seed 0.
- model-npos1024/: the same architecture with n_positions=1024, for the 512-token scaling run.
- prompts.json: 512 distinct prompts that encode to exactly 16 tokens, and whose decoded text
  re-encodes to the same 16 ids (so the env and TRL, which both tokenize the text, see the same
  16 tokens).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil

from common import TASK, Task, TaskPaths, task_dict, task_paths

EOS = "<|endoftext|>"

_ONSETS = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "th", "st", "w"]
_VOWELS = ["a", "e", "i", "o", "u", "ea", "ee", "ou", "ai"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "ck"]
_FUNCTION_WORDS = ["the", "a", "of", "and", "to", "in", "is", "was", "it", "for", "on", "with"]


def _word(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return rng.choice(_FUNCTION_WORDS)
    n = rng.choice((1, 1, 2, 2, 3))
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n))


def _sentence(rng: random.Random) -> str:
    words = [_word(rng) for _ in range(rng.randint(6, 18))]
    end = rng.choice([".", ".", ".", "?", "!", ","])
    return " ".join(words) + end


def synthetic_corpus(n_sentences: int = 20000, seed: int = 0) -> list[str]:
    """Pseudo-English sentences from a seeded generator: a fixed corpus without any download."""
    rng = random.Random(seed)
    return [_sentence(rng) for _ in range(n_sentences)]


def build_tokenizer(task: Task, corpus: list[str]):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=task.vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS
    )
    if len(fast) != task.vocab_size:
        raise RuntimeError(
            f"the BPE trainer produced {len(fast)} tokens, not {task.vocab_size}: grow the corpus"
        )
    return fast


def build_model(task: Task, n_positions: int, eos_id: int):  # -> GPT2LMHeadModel
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=task.vocab_size,
        n_positions=n_positions,
        n_embd=task.n_embd,
        n_layer=task.n_layer,
        n_head=task.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    torch.manual_seed(task.seed)
    return GPT2LMHeadModel(config).eval()


def build_prompts(task: Task, tokenizer) -> list[str]:
    """``n_prompts`` distinct texts of exactly ``prompt_tokens`` tokens that round-trip exactly."""
    rng = random.Random(task.seed + 1)  # a stream apart from the tokenizer's corpus
    prompts: list[str] = []
    seen: set[str] = set()
    special = set(tokenizer.all_special_ids)
    while len(prompts) < task.n_prompts:
        text = " ".join(_sentence(rng) for _ in range(3))
        ids = tokenizer(text)["input_ids"][: task.prompt_tokens]
        if len(ids) < task.prompt_tokens or special & set(ids):
            continue
        cut = tokenizer.decode(ids)
        if cut in seen or tokenizer(cut)["input_ids"] != ids:
            continue
        seen.add(cut)
        prompts.append(cut)
    return prompts


def build(task: Task = TASK, paths: TaskPaths | None = None, force: bool = False) -> TaskPaths:
    """Build the task into ``paths.root`` unless a complete build is already there."""
    paths = paths or task_paths(task)
    if paths.done.exists() and not force:
        return paths
    if paths.root.exists():
        shutil.rmtree(paths.root)
    paths.root.mkdir(parents=True)
    tokenizer = build_tokenizer(task, synthetic_corpus(seed=task.seed))
    tokenizer.save_pretrained(paths.tokenizer)
    eos_id = int(tokenizer.eos_token_id)
    for n_positions in (task.n_positions, task.n_positions_long):
        model = build_model(task, n_positions, eos_id)
        model.save_pretrained(paths.model(n_positions), safe_serialization=True)
        tokenizer.save_pretrained(paths.model(n_positions))
    prompts = build_prompts(task, tokenizer)
    paths.prompts.write_text(json.dumps({"task": task_dict(task), "prompts": prompts}, indent=1))
    _verify(task, paths)
    paths.done.write_text("ok\n")
    return paths


def _verify(task: Task, paths: TaskPaths) -> None:
    """Reload everything through ``from_pretrained`` and check the task's invariants."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths.tokenizer)
    assert len(tokenizer) == task.vocab_size, len(tokenizer)
    prompts = json.loads(paths.prompts.read_text())["prompts"]
    assert len(prompts) == task.n_prompts == len(set(prompts))
    lengths = {len(tokenizer(p)["input_ids"]) for p in prompts}
    assert lengths == {task.prompt_tokens}, lengths
    for n_positions in (task.n_positions, task.n_positions_long):
        model = AutoModelForCausalLM.from_pretrained(paths.model(n_positions))
        cfg = model.config
        assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cfg.n_positions) == (
            task.n_layer,
            task.n_head,
            task.n_embd,
            task.vocab_size,
            n_positions,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    paths = build(TASK, force=args.force)
    print(paths.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
