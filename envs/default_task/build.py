"""Build the embedded default task from nothing: corpus, prompts, tokenizer, policy, reward model.

Run ``python -m rlhf_gym.envs.default_task.build`` (about five minutes on two CPU cores) to
(re)create the assets in the package's ``assets/`` folder, or ``--out DIR`` to write elsewhere;
``--quick`` builds a tiny version in seconds, for tests. Steps, each deterministic in the seed:

1. Generate a synthetic review corpus (:mod:`~rlhf_gym.envs.default_task.corpus`): half
   positive, half negative, on 30 product kinds. Training reviews and held-out reviews come from
   separate random streams.
2. Compile train and eval prompt sets (neutral review openings, disjoint) as JSONL.
3. Train a byte-level BPE tokenizer on the training reviews (``<|endoftext|>`` = eos/bos/pad).
4. Pre-train a small GPT-2 on the reviews (one review per sequence, ending with EOS, no BOS: the
   env feeds bare prompt tokens, so the LM learns to start from them), then measure held-out
   perplexity and sample from neutral prompts.
5. Draw preference pairs (same opening, positive vs negative body) from the generator's labels.
6. Train the reward model on them with :func:`rlhf_gym.rewards.train_reward_model`, initialised
   from the pre-trained LM's transformer (the usual RLHF recipe, and it learns in seconds), then
   check it on fresh held-out pairs.
7. Write ``build_report.json`` with the figures.

Determinism: prompts, preferences and the tokenizer are byte-identical for a seed on any machine.
Model weights are byte-identical for the same seed, thread count (``--threads``, default 1) and
library build on the same kind of CPU; floating-point reductions may differ elsewhere. One
thread is the default because it is the most reproducible setting (no parallel reductions) and
it stays fast when the machine is shared; the models are small enough not to need more.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from rlhf_gym.envs.default_task import ASSETS_DIR, DEFAULTS
from rlhf_gym.envs.default_task import corpus as gen
from rlhf_gym.envs.default_task.lexicon import lexicon_sentiment

EOS = "<|endoftext|>"

#: What a build writes in its output folder; a rebuild replaces exactly these.
ASSET_NAMES = (
    "tokenizer",
    "policy",
    "reward_model",
    "prompts_train.jsonl",
    "prompts_eval.jsonl",
    "preferences.jsonl",
    "build_report.json",
)


@dataclass(frozen=True)
class BuildConfig:
    """Sizes and training settings of one build; :data:`FULL` and :data:`QUICK` are the two used."""

    n_reviews: int = 64_000
    """Training reviews for the LM (fresh generator samples, so no review repeats by design)."""
    n_heldout: int = 2_000
    """Held-out reviews, from a separate random stream, for perplexity and lexicon agreement."""
    n_train_prompts: int = 1_000
    n_eval_prompts: int = 200
    vocab_size: int = 1_536
    """Upper bound of the BPE vocabulary (256 byte symbols, EOS, merges). The corpus has fewer
    distinct words, so training stops when every word is one token (about 1,270 entries): reviews
    stay short (about 15-30 tokens) and the action space small."""
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128
    lm_steps: int = 1_000
    """One pass over ``n_reviews`` at ``lm_batch_size`` (no review is seen twice)."""
    lm_batch_size: int = 64
    lm_lr: float = 3e-3
    lm_warmup_steps: int = 40
    n_pairs: int = 3_000
    """Preference pairs for the reward model (train prompts reused with fresh bodies)."""
    rm_epochs: int = 1
    rm_lr: float = 1e-3
    rm_batch_size: int = 32
    n_rm_check_pairs: int = 400
    """Fresh pairs on eval prompts, never trained on, for the reward model's held-out accuracy."""
    n_balance_samples: int = 200
    """Policy samples on eval prompts used to measure its tone balance before RL."""


FULL = BuildConfig()
QUICK = replace(
    FULL,
    n_reviews=1_000,
    n_heldout=200,
    n_layer=1,
    n_embd=32,
    n_head=2,
    lm_steps=20,
    lm_batch_size=32,
    lm_warmup_steps=5,
    n_pairs=200,
    n_rm_check_pairs=100,
    n_balance_samples=20,
)


@dataclass
class BuildReport:
    """The figures of one build; saved as ``build_report.json`` beside the assets."""

    out_dir: str
    """Where the assets were written (not saved: it is machine-specific)."""
    seed: int
    quick: bool
    num_threads: int
    versions: dict[str, str]
    """Python, torch, transformers and tokenizers versions: weights are reproducible with these."""
    config: dict[str, Any]
    """The :class:`BuildConfig` used."""
    corpus: dict[str, Any] = field(default_factory=dict)
    """Review counts, words, tokens per review, and whether bodies fit ``max_new_tokens``."""
    prompts: dict[str, Any] = field(default_factory=dict)
    """Prompt counts per split and prompt lengths in tokens."""
    tokenizer: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    """Size, training, ``heldout_perplexity``, five samples from eval prompts, and the tone
    balance of its samples (lexicon-positive / -negative fractions, EOS rate)."""
    reward_model: dict[str, Any] = field(default_factory=dict)
    """Training figures and ``heldout_accuracy``: pairwise accuracy on fresh pairs built on eval
    prompts, never trained on."""
    lexicon: dict[str, Any] = field(default_factory=dict)
    """How the independent lexicon scorer relates to the generator's labels and vocabulary."""
    sizes_bytes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each stage and in total."""

    def to_dict(self) -> dict[str, Any]:
        """The report as saved: everything but ``out_dir``, which is machine-specific."""
        data = asdict(self)
        del data["out_dir"]
        return data


# --- helpers, in the order the build uses them ------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer over ``texts`` with ``<|endoftext|>`` as eos, bos and pad.

    No post-processor: encoding a prompt adds no BOS, matching how the LM was trained.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=EOS,
        model_max_length=FULL.n_positions,
    )


def _encode(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    """Token ids of each review followed by EOS (the LM learns where a review ends)."""
    eos = tokenizer.eos_token_id
    return [ids + [eos] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels); labels are -100 on padding.

    Padding is found from lengths, not ids: pad and EOS share an id, and the final EOS must be
    learned.
    """
    from rlhf_gym.rewards.reward_model import pad_batch  # the one right-pad helper

    ids, mask = pad_batch(batch, pad_id)
    return ids, mask, ids.masked_fill(mask == 0, -100)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _next_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of ``labels[:, 1:]`` given the logits before them.

    logits: (B, T, V); labels: (B, T) with -100 on padding. Returns the (N,) losses of the N real
    target tokens (every token after the first of each review, its EOS included).
    """
    target = labels[:, 1:].reshape(-1)
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), target, ignore_index=-100, reduction="none"
    )
    return nll[target != -100]


def pretrain_lm(
    model: GPT2LMHeadModel,
    docs: list[list[int]],
    cfg: BuildConfig,
    pad_id: int,
    seed: int,
    progress: bool,
) -> list[float]:
    """Plain next-token training with AdamW; returns the loss of each step."""
    gen_ = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lm_lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, cfg.lm_warmup_steps, cfg.lm_steps)
    )
    order = torch.randperm(len(docs), generator=gen_).tolist()
    cursor = 0
    losses: list[float] = []
    model.train()
    bar = tqdm(range(cfg.lm_steps), desc="pre-train LM", disable=not progress, leave=False)
    for _ in bar:
        if cursor + cfg.lm_batch_size > len(order):
            order = torch.randperm(len(docs), generator=gen_).tolist()
            cursor = 0
        batch = [docs[i] for i in order[cursor : cursor + cfg.lm_batch_size]]
        cursor += cfg.lm_batch_size
        ids, mask, labels = _pad(batch, pad_id)
        loss = _next_token_nll(model(input_ids=ids, attention_mask=mask).logits, labels).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def perplexity(model: GPT2LMHeadModel, docs: list[list[int]], pad_id: int) -> float:
    """Per-token perplexity over ``docs`` (every token after the first, EOS included)."""
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(docs), 256):
        ids, mask, labels = _pad(docs[start : start + 256], pad_id)
        nll = _next_token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
        total_nll += nll.sum().item()
        total_tokens += nll.numel()
    return math.exp(total_nll / total_tokens)


@torch.no_grad()
def sample_continuations(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerFast,
    prompt: str,
    n: int,
    max_new_tokens: int,
    generator: torch.Generator,
) -> list[tuple[str, bool]]:
    """``n`` continuations of ``prompt`` sampled at temperature 1, and whether each ended in EOS.

    A plain loop rather than ``generate``: one prompt repeated ``n`` times needs no padding (so
    no position shift), the whole context is re-read each step (cheap at this size), and the
    explicit ``generator`` makes the samples reproducible without touching the global seed.
    """
    eos = tokenizer.eos_token_id
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]] * n)
    start = ids.size(1)
    done = torch.zeros(n, dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        probs = torch.softmax(logits[:, -1].float(), dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        nxt = nxt.masked_fill(done, eos)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == eos
        if bool(done.all()):
            break
    results = []
    for row in ids[:, start:].tolist():
        ended = eos in row
        results.append((tokenizer.decode(row[: row.index(eos)] if ended else row), ended))
    return results


def _dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- the build --------------------------------------------------------------------------------


def _use_fused_gelu(*model_dirs: Path) -> None:
    """Switch the saved configs from GPT-2's ``gelu_new`` to ``gelu_pytorch_tanh``.

    Both are the same tanh-approximated GELU (outputs agree to float32 rounding); the second is
    one fused kernel instead of six elementwise ops, ~7% of a PPO update's time on a CPU. The
    models are trained with ``gelu_new`` and only the saved configs change, after training, so
    the weights are those of the original recipe.
    """
    for model_dir in model_dirs:
        config = AutoConfig.from_pretrained(model_dir)
        config.activation_function = "gelu_pytorch_tanh"
        config.save_pretrained(model_dir)


def build(
    out_dir: str | Path = ASSETS_DIR,
    seed: int = 0,
    quick: bool = False,
    *,
    num_threads: int = 1,
    progress: bool = True,
) -> BuildReport:
    """Build the default task's assets into ``out_dir`` and return the report.

    Args:
        out_dir: folder to write; the entries named in :data:`ASSET_NAMES` are replaced, anything
            else there is left alone. Defaults to the package's ``assets/`` folder.
        seed: seeds every random choice (corpus, prompts, splits, initialisation, sampling).
        quick: build a tiny version (1-layer, 32-wide LM; small corpus) in seconds, for tests.
            Its models are not useful for RL.
        num_threads: torch CPU threads during the build (restored after). Weights are
            reproducible only for the same value.
        progress: show progress bars and stage lines on stderr.
    """
    t_start = time.perf_counter()
    cfg = QUICK if quick else FULL
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ASSET_NAMES:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()

    import tokenizers
    import transformers

    report = BuildReport(
        out_dir=str(out),
        seed=seed,
        quick=quick,
        num_threads=num_threads,
        versions={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        config=asdict(cfg),
    )

    def log(msg: str) -> None:
        if progress:
            print(f"[default_task {time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr)

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        report.seconds[name] = round(now - t0, 2)
        return now

    old_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        # 1-2. corpus and prompts --------------------------------------------------------------
        t = time.perf_counter()
        rng_seeds = random.Random(seed)
        s_train, s_heldout, s_prompts, s_pairs, s_check = (
            rng_seeds.randrange(2**31) for _ in range(5)
        )
        reviews = gen.generate_reviews(cfg.n_reviews, s_train)
        heldout = gen.generate_reviews(cfg.n_heldout, s_heldout)
        train_prompts, eval_prompts = gen.generate_prompts(
            cfg.n_train_prompts, cfg.n_eval_prompts, s_prompts
        )
        _write_jsonl(out / "prompts_train.jsonl", train_prompts)
        _write_jsonl(out / "prompts_eval.jsonl", eval_prompts)
        report.corpus = {
            "n_train_reviews": len(reviews),
            "n_heldout_reviews": len(heldout),
            "n_distinct_train_reviews": len({r.text for r in reviews}),
            "n_words": sum(len(r.text.split()) for r in reviews),
            "n_topics": len(gen.PRODUCTS),
            "positive_fraction": sum(r.label == "positive" for r in reviews) / len(reviews),
        }
        log(
            f"corpus: {len(reviews)} reviews ({report.corpus['n_words']} words) + {len(heldout)} held out"
        )
        t = lap("corpus_and_prompts", t)

        # 3. tokenizer ---------------------------------------------------------------------
        tokenizer = train_tokenizer([r.text for r in reviews], cfg.vocab_size)
        tokenizer.save_pretrained(out / "tokenizer")
        docs = _encode(tokenizer, [r.text for r in reviews])
        heldout_docs = _encode(tokenizer, [r.text for r in heldout])
        body_lens = [len(x) for x in _encode(tokenizer, [r.body for r in heldout])]
        prompt_lens = [
            len(tokenizer(p["prompt"], add_special_tokens=False)["input_ids"])
            for p in train_prompts + eval_prompts
        ]
        if max(prompt_lens) > DEFAULTS.max_prompt_tokens and not quick:
            raise RuntimeError(
                f"a default prompt has {max(prompt_lens)} tokens, more than DEFAULTS."
                f"max_prompt_tokens={DEFAULTS.max_prompt_tokens}; shorten the openings in corpus.py"
            )
        report.tokenizer = {"vocab_size": len(tokenizer)}
        report.corpus |= {
            "n_tokens": sum(len(x) for x in docs),
            "mean_review_tokens": round(sum(len(x) for x in docs) / len(docs), 2),
            "max_review_tokens": max(len(x) for x in docs),
            "mean_body_tokens_with_eos": round(sum(body_lens) / len(body_lens), 2),
            "body_fits_max_new_tokens": sum(n <= DEFAULTS.max_new_tokens for n in body_lens)
            / len(body_lens),
        }
        report.prompts = {
            "n_train": len(train_prompts),
            "n_eval": len(eval_prompts),
            "max_prompt_tokens": max(prompt_lens),
            "mean_prompt_tokens": round(sum(prompt_lens) / len(prompt_lens), 2),
        }
        log(
            f"tokenizer: vocab {len(tokenizer)}; mean review {report.corpus['mean_review_tokens']} tokens"
        )
        t = lap("tokenizer", t)

        # 4. policy LM ---------------------------------------------------------------------
        torch.manual_seed(seed)
        eos_id = tokenizer.eos_token_id
        lm_config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=cfg.n_positions,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )
        lm = GPT2LMHeadModel(lm_config)
        n_params = sum(p.numel() for p in lm.parameters())
        log(f"policy: GPT-2 {cfg.n_layer}x{cfg.n_embd}, {n_params / 1e6:.2f}M parameters")
        losses = pretrain_lm(lm, docs, cfg, eos_id, seed, progress)
        ppl = perplexity(lm, heldout_docs, eos_id)
        lm.save_pretrained(out / "policy")
        tokenizer.save_pretrained(out / "policy")
        tail = losses[-20:]
        report.policy = {
            "architecture": "GPT2LMHeadModel",
            "n_layer": cfg.n_layer,
            "n_embd": cfg.n_embd,
            "n_head": cfg.n_head,
            "n_positions": cfg.n_positions,
            "n_params": n_params,
            "train_steps": cfg.lm_steps,
            "train_reviews_seen": cfg.lm_steps * cfg.lm_batch_size,
            "final_train_loss": round(sum(tail) / len(tail), 4),
            "heldout_perplexity": round(ppl, 3),
        }
        log(
            f"policy: held-out perplexity {ppl:.3f} (train loss {report.policy['final_train_loss']})"
        )
        t = lap("policy", t)

        # Samples and tone balance of the pre-trained policy from neutral (eval) prompts.
        sampler = torch.Generator().manual_seed(seed)
        samples = []
        for row in eval_prompts[:5]:
            ((text, ended),) = sample_continuations(
                lm, tokenizer, row["prompt"], 1, DEFAULTS.max_new_tokens, sampler
            )
            samples.append({"prompt": row["prompt"], "completion": text, "ended_with_eos": ended})
        per_prompt = 5
        balance = []
        for row in eval_prompts[: max(1, cfg.n_balance_samples // per_prompt)]:
            for text, ended in sample_continuations(
                lm, tokenizer, row["prompt"], per_prompt, DEFAULTS.max_new_tokens, sampler
            ):
                balance.append((row["prompt"], text, ended))
        lex = [lexicon_sentiment(c) for _, c, _ in balance]
        report.policy |= {
            "samples": samples,
            "balance_samples": len(balance),
            "eos_within_max_new_tokens": sum(e for *_, e in balance) / len(balance),
            "lexicon_positive_fraction": sum(s > 0 for s in lex) / len(lex),
            "lexicon_negative_fraction": sum(s < 0 for s in lex) / len(lex),
        }
        t = lap("policy_samples", t)

        # 5. preference pairs --------------------------------------------------------------
        rows = [train_prompts[i % len(train_prompts)] for i in range(cfg.n_pairs)]
        pairs = gen.generate_preference_pairs(rows, s_pairs)
        _write_jsonl(out / "preferences.jsonl", pairs)
        check_pairs = gen.generate_preference_pairs(eval_prompts * 2, s_check)[
            : cfg.n_rm_check_pairs
        ]

        # 6. reward model ------------------------------------------------------------------
        from rlhf_gym.rewards import RewardModel, train_reward_model
        from rlhf_gym.rewards.reward_model_training import REPORT_FILENAME

        torch.manual_seed(seed)
        rm_config = copy.deepcopy(lm_config)
        rm_config.num_labels = 1
        rm = GPT2ForSequenceClassification(rm_config)
        rm.transformer.load_state_dict(lm.transformer.state_dict())
        rm_report = train_reward_model(
            pairs=[{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs],
            model=rm,
            output_dir=out / "reward_model",
            tokenizer=tokenizer,
            eval_fraction=0.1,
            epochs=cfg.rm_epochs,
            lr=cfg.rm_lr,
            batch_size=cfg.rm_batch_size,
            seed=seed,
            device="cpu",
            progress=progress,
        )
        rm_dir = out / "reward_model"
        # The trainer's own report holds a machine-specific path; its figures go into
        # build_report.json instead, so the committed folder is the same wherever it is built.
        (rm_dir / REPORT_FILENAME).unlink(missing_ok=True)
        _use_fused_gelu(out / "policy", rm_dir)
        t = lap("reward_model", t)

        # Check the saved assets through the normal loading path: held-out RM accuracy on
        # pairs from eval prompts, and the RM's view of the policy samples' tone.
        AutoTokenizer.from_pretrained(out / "tokenizer")  # each asset loads, or the build fails
        AutoModelForCausalLM.from_pretrained(out / "policy")
        AutoModelForSequenceClassification.from_pretrained(rm_dir)
        scorer = RewardModel(rm_dir, device="cpu", batch_size=128)
        check_prompts = [p["prompt"] for p in check_pairs]
        chosen = scorer.score(check_prompts, [p["chosen"] for p in check_pairs])
        rejected = scorer.score(check_prompts, [p["rejected"] for p in check_pairs])
        policy_scores = scorer.score([p for p, *_ in balance], [c for _, c, _ in balance])
        # Scores have no fixed zero (pairwise training), so place the positive/negative cut
        # halfway between the median scores of held-out reviews of each tone.
        held_scores = scorer.score([r.opening for r in heldout], [r.body for r in heldout])
        by_tone = {
            label: sorted(s for s, r in zip(held_scores, heldout, strict=True) if r.label == label)
            for label in gen.LABELS
        }
        threshold = (by_tone["positive"][len(by_tone["positive"]) // 2]
                     + by_tone["negative"][len(by_tone["negative"]) // 2]) / 2  # fmt: skip
        threshold_accuracy = sum(
            (s > threshold) == (r.label == "positive")
            for s, r in zip(held_scores, heldout, strict=True)
        ) / len(heldout)
        report.reward_model = {
            "architecture": "GPT2ForSequenceClassification",
            "init": "pre-trained policy transformer + new score head",
            "n_pairs": len(pairs),
            "epochs": rm_report.epochs,
            "train_loss": round(rm_report.train_loss, 5),
            "trainer_eval_pairs": rm_report.n_eval,
            "trainer_eval_accuracy": rm_report.eval_accuracy,
            "heldout_pairs": len(check_pairs),
            "heldout_accuracy": sum(c > r for c, r in zip(chosen, rejected, strict=True))
            / len(check_pairs),
            "mean_margin": round(
                sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(check_pairs), 3
            ),
            "positive_threshold": round(threshold, 4),
            "threshold_label_accuracy": threshold_accuracy,
            "policy_samples_rm_positive_fraction": sum(s > threshold for s in policy_scores)
            / len(policy_scores),
        }
        log(
            f"reward model: held-out pairwise accuracy {report.reward_model['heldout_accuracy']:.3f}"
        )

        # Lexicon (independent measure) against the generator's labels.
        signs = [(lexicon_sentiment(r.text), 1 if r.label == "positive" else -1) for r in heldout]
        pos_words, neg_words = gen.tone_words()
        from rlhf_gym.envs.default_task.lexicon import NEGATIVE_WORDS, POSITIVE_WORDS

        covered = (pos_words & POSITIVE_WORDS) | (neg_words & NEGATIVE_WORDS)
        report.lexicon = {
            "label_agreement": sum(s * y > 0 for s, y in signs) / len(signs),
            "label_contradiction": sum(s * y < 0 for s, y in signs) / len(signs),
            "no_opinion_word": sum(s == 0 for s, _ in signs) / len(signs),
            "generator_coverage": round(len(covered) / len(pos_words | neg_words), 3),
        }
        t = lap("checks", t)
    finally:
        torch.set_num_threads(old_threads)

    report.sizes_bytes = {name: _dir_size(out / name) for name in ASSET_NAMES[:-1]}
    report.sizes_bytes["total"] = sum(report.sizes_bytes.values())
    report.seconds["total"] = round(time.perf_counter() - t_start, 2)
    (out / "build_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    log(f"done: {report.sizes_bytes['total'] / 1e6:.1f} MB in {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m rlhf_gym.envs.default_task.build [--out DIR] [--quick]``."""
    parser = argparse.ArgumentParser(
        prog="python -m rlhf_gym.envs.default_task.build",
        description="Build the default task's assets (prompts, tokenizer, policy, reward model).",
    )
    parser.add_argument(
        "--out", type=Path, default=ASSETS_DIR, help=f"output folder (default {ASSETS_DIR})"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for every random choice (default 0)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny build in seconds, for tests")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars or stage lines"
    )
    args = parser.parse_args(argv)
    report = build(args.out, seed=args.seed, quick=args.quick, num_threads=args.threads,
                   progress=not args.no_progress)  # fmt: skip
    summary = {
        "heldout_perplexity": report.policy["heldout_perplexity"],
        "rm_heldout_accuracy": report.reward_model["heldout_accuracy"],
        "size_mb": round(report.sizes_bytes["total"] / 1e6, 2),
        "seconds": report.seconds["total"],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
