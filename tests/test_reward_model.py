"""The ``reward_model`` reward and ``train_reward_model``, on tiny GPT-2 classifiers saved to disk."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2ForSequenceClassification,
    PreTrainedTokenizerFast,
)

from rlhf_gym.rewards import (
    CompositeReward,
    RewardModel,
    format_for_reward_model,
    get_reward,
    train_reward_model,
)
from rlhf_gym.rewards.reward_model import encode_for_reward_model
from rlhf_gym.rewards.reward_model_training import load_preference_pairs
from tests import _tiny

PROMPTS = ["the movie was", "write a poem about the sea", "hi", "what is two plus two?", ""]
COMPLETIONS = [
    " great and wonderful",
    " the sky",
    " hello world, this is a tiny corpus",
    " four",
    "ok",
]


def reference_scores(
    model_dir: Path, prompts: list[str], completions: list[str], pad_token_id: int | None = None
) -> np.ndarray:
    """One unpadded forward per pair, straight through transformers: the ground truth."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    rows = []
    with torch.no_grad():
        for p, c in zip(prompts, completions, strict=True):
            ids = tok(p + c + tok.eos_token, return_tensors="pt")["input_ids"]
            rows.append(model(input_ids=ids).logits[0].numpy())
    return np.stack(rows)


# --- text layout -------------------------------------------------------------------------------


def test_format_for_reward_model(tiny_tokenizer) -> None:
    eos = tiny_tokenizer.eos_token
    assert format_for_reward_model("Q:", " A", tiny_tokenizer) == f"Q: A{eos}"
    assert (
        format_for_reward_model("Q:", f" A{eos}", tiny_tokenizer) == f"Q: A{eos}"
    )  # no double eos
    assert format_for_reward_model("Q:", " A") == "Q: A"
    with pytest.raises(TypeError, match="score strings"):
        format_for_reward_model("Q:", [{"role": "assistant", "content": "A"}], tiny_tokenizer)


def test_truncation_drops_the_start_of_the_prompt(tiny_tokenizer) -> None:
    completion = " the answer is four"
    tail = tiny_tokenizer(completion + tiny_tokenizer.eos_token)["input_ids"]
    max_length = len(tail) + 2
    prompt = "hello world, this is a tiny corpus for tests " * 5
    (ids,) = encode_for_reward_model(tiny_tokenizer, [prompt], [completion], max_length)
    assert len(ids) == max_length
    assert ids[-len(tail) :] == tail


# --- scoring -----------------------------------------------------------------------------------


def test_scores_match_transformers_and_do_not_depend_on_batching(tiny_rm_dir) -> None:
    expected = reference_scores(tiny_rm_dir, PROMPTS, COMPLETIONS)[:, 0]
    batched = get_reward("reward_model", path=str(tiny_rm_dir), device="cpu", batch_size=2)
    unbatched = get_reward("reward_model", path=tiny_rm_dir, device="cpu", batch_size=1)
    assert isinstance(batched, RewardModel)
    got = batched(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=[[1]] * 5)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(
        unbatched(prompts=PROMPTS, completions=COMPLETIONS), expected, atol=1e-5
    )
    one_by_one = [
        batched(prompts=[p], completions=[c])[0] for p, c in zip(PROMPTS, COMPLETIONS, strict=True)
    ]
    np.testing.assert_allclose(one_by_one, expected, atol=1e-5)
    assert len(set(np.round(expected, 6))) == len(expected)  # the texts really score differently


def test_probability_is_sigmoid_of_the_logit(tiny_rm_dir) -> None:
    logits = get_reward("reward_model", path=tiny_rm_dir, device="cpu")(
        prompts=PROMPTS, completions=COMPLETIONS
    )
    probs = get_reward("reward_model", path=tiny_rm_dir, device="cpu", output="probability")(
        prompts=PROMPTS, completions=COMPLETIONS
    )
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-np.array(logits))), atol=1e-6)
    with pytest.raises(ValueError, match="'logit' or 'probability'"):
        get_reward("reward_model", path=tiny_rm_dir, output="score")


def test_dtype_is_applied_and_checked(tiny_rm_dir) -> None:
    rm = get_reward("reward_model", path=tiny_rm_dir, device="cpu", dtype="float64")
    assert next(rm.model.parameters()).dtype == torch.float64
    expected = reference_scores(tiny_rm_dir, PROMPTS, COMPLETIONS)[:, 0]
    np.testing.assert_allclose(rm(prompts=PROMPTS, completions=COMPLETIONS), expected, atol=1e-5)
    with pytest.raises(ValueError, match="Unknown dtype 'float55'"):
        get_reward("reward_model", path=tiny_rm_dir, dtype="float55")


def two_label_classifier(vocab_size: int, seed: int) -> GPT2ForSequenceClassification:
    # _tiny.build_rm fixes num_labels=1, so build the config here.
    torch.manual_seed(seed)
    config = _tiny.gpt2_config(vocab_size, num_labels=2, id2label={0: "NEG", 1: "POS"})
    return GPT2ForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def two_label_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    model = two_label_classifier(len(tiny_tokenizer), seed=1)
    return _tiny.save_model(tmp_path_factory.mktemp("rm2"), model, tiny_tokenizer)


def test_label_by_name_and_softmax_probability(two_label_dir) -> None:
    logits = reference_scores(two_label_dir, PROMPTS, COMPLETIONS)
    pos = get_reward("reward_model", path=two_label_dir, device="cpu", label="POS", batch_size=3)
    np.testing.assert_allclose(
        pos(prompts=PROMPTS, completions=COMPLETIONS), logits[:, 1], atol=1e-5
    )
    neg = get_reward("reward_model", path=two_label_dir, device="cpu", label=0)
    np.testing.assert_allclose(
        neg(prompts=PROMPTS, completions=COMPLETIONS), logits[:, 0], atol=1e-5
    )
    prob = get_reward(
        "reward_model", path=two_label_dir, device="cpu", label="POS", output="probability"
    )
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(
        prob(prompts=PROMPTS, completions=COMPLETIONS), softmax[:, 1], atol=1e-6
    )
    with pytest.raises(ValueError, match=r"Label 'MAYBE' is not one of .*\['NEG', 'POS'\]"):
        get_reward("reward_model", path=two_label_dir, label="MAYBE")
    with pytest.raises(ValueError, match=r"index in \[0, 2\)"):
        get_reward("reward_model", path=two_label_dir, label=2)


def test_running_normalization(tiny_rm_dir) -> None:
    raw = get_reward("reward_model", path=tiny_rm_dir, device="cpu")
    first = raw(prompts=PROMPTS[:3], completions=COMPLETIONS[:3])
    second = raw(prompts=PROMPTS[3:], completions=COMPLETIONS[3:])
    norm = get_reward("reward_model", path=tiny_rm_dir, device="cpu", normalize=True)
    # Statistics are updated with a batch, then the batch is standardized with them.
    out1 = norm(prompts=PROMPTS[:3], completions=COMPLETIONS[:3])
    np.testing.assert_allclose(
        out1, (np.array(first) - np.mean(first)) / np.std(first, ddof=1), atol=1e-6
    )
    out2 = norm(prompts=PROMPTS[3:], completions=COMPLETIONS[3:])
    seen = np.array(first + second)
    np.testing.assert_allclose(out2, (np.array(second) - seen.mean()) / seen.std(ddof=1), atol=1e-6)
    assert norm.running_mean == pytest.approx(seen.mean())
    assert norm.running_std == pytest.approx(seen.std(ddof=1))
    norm.reset()
    assert norm.running_mean == 0.0 and norm.running_std == 1.0


def test_truncation_keeps_the_completion(tiny_rm_dir, tiny_tokenizer) -> None:
    completion = " great and wonderful"
    n_tail = len(tiny_tokenizer(completion + tiny_tokenizer.eos_token)["input_ids"])
    rm = get_reward("reward_model", path=tiny_rm_dir, device="cpu", max_length=n_tail + 3)
    a, b = rm(
        prompts=[
            "the food was terrible " * 4 + "the movie was",
            "hello world " * 6 + "the movie was",
        ],
        completions=[completion, completion],
    )
    assert a == pytest.approx(b, abs=1e-6)  # only the (shared) end of the text was read
    # The default limit is the model's n_positions (128); longer inputs are cut, not crashed on.
    default = get_reward("reward_model", path=tiny_rm_dir, device="cpu")
    assert default.max_length == 128
    (score,) = default(prompts=["hello world " * 200], completions=[completion])
    assert np.isfinite(score)


def test_missing_model_path_is_a_clear_error(tmp_path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(
        FileNotFoundError, match="neither a local directory nor a reachable"
    ) as info:
        get_reward("reward_model", path=str(missing))
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError, match="'nobody/no-such-reward-model' is neither"):
        get_reward("reward_model", path="nobody/no-such-reward-model")


def test_tokenizer_without_pad_token_falls_back_to_eos(tmp_path, tiny_tokenizer) -> None:
    no_pad = PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token=_tiny.EOS
    )
    assert no_pad.pad_token is None
    model = _tiny.build_rm(len(tiny_tokenizer), seed=2, pad_token_id=None)
    path = _tiny.save_model(tmp_path, model, no_pad)
    rm = get_reward("reward_model", path=path, device="cpu", batch_size=5)
    assert rm.model.config.pad_token_id == no_pad.eos_token_id
    # pad == eos now, so the classifier pools the last token before the appended eos.
    expected = reference_scores(path, PROMPTS, COMPLETIONS, pad_token_id=no_pad.eos_token_id)
    np.testing.assert_allclose(
        rm(prompts=PROMPTS, completions=COMPLETIONS), expected[:, 0], atol=1e-5
    )
    one = get_reward("reward_model", path=path, device="cpu", batch_size=1)
    np.testing.assert_allclose(
        one(prompts=PROMPTS, completions=COMPLETIONS), expected[:, 0], atol=1e-5
    )


def test_model_object_and_one_forward_per_batch_in_a_mix(tiny_rm_dir, tiny_tokenizer) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm_dir)
    forwards: list[int] = []
    model.register_forward_hook(lambda module, args, kwargs_out: forwards.append(1))
    rm = RewardModel(model=model, tokenizer=tiny_tokenizer, device="cpu", batch_size=64)
    reward = CompositeReward([get_reward("length"), rm], weights=[-0.5, 2.0])
    assert reward.names == ["length_reward", "reward_model"]
    out = reward(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=[[1, 2]] * 5)
    assert forwards == [1]
    expected = reference_scores(tiny_rm_dir, PROMPTS, COMPLETIONS)[:, 0]
    np.testing.assert_allclose(out.components["reward_model"], expected, atol=1e-5)
    np.testing.assert_allclose(out.total, -1.0 + 2.0 * expected, atol=1e-5)
    with pytest.raises(ValueError, match="exactly one of path"):
        RewardModel()
    with pytest.raises(ValueError, match="also needs tokenizer"):
        RewardModel(model=model)


# --- training -----------------------------------------------------------------------------------

POSITIVE = ["great", "wonderful", "excellent", "lovely", "helpful", "amazing", "kind", "good"]
NEGATIVE = ["terrible", "awful", "horrible", "rude", "useless", "broken", "bad", "slow"]
NOUNS = ["movie", "food", "hotel", "phone", "book", "service", "staff", "story"]
ASKS = ["review: ", "tell me about the ", "what did you think of the ", "describe the "]


def preference_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """Chosen completions praise, rejected ones complain; prompts are shared within a pair."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        noun = rng.choice(NOUNS)
        pairs.append(
            {
                "prompt": f"{rng.choice(ASKS)}{noun}?",
                "chosen": f" the {noun} was {rng.choice(POSITIVE)} and {rng.choice(POSITIVE)}",
                "rejected": f" the {noun} was {rng.choice(NEGATIVE)} and {rng.choice(NEGATIVE)}",
            }
        )
    return pairs


@pytest.mark.slow
def test_train_reward_model_learns_preferences(tmp_path) -> None:
    pairs = preference_pairs(200, seed=0)
    corpus = [p["prompt"] + p[k] for p in pairs for k in ("chosen", "rejected")]
    tok = _tiny.build_tokenizer(corpus=corpus)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))

    def train(out: Path):
        return train_reward_model(
            path,
            None,
            out,
            tokenizer=tok,
            from_scratch_config=_tiny.gpt2_config(len(tok)),
            eval_fraction=0.2,
            epochs=3,
            lr=1e-3,
            batch_size=16,
            seed=0,
            progress=False,
        )

    report = train(tmp_path / "rm")
    assert (report.n_train, report.n_eval, report.epochs) == (160, 40, 3)
    # Seen on CPU, seed 0: eval accuracy 1.0 (40/40), epoch losses 0.42 -> 0.15 -> 0.07, ~2 s.
    assert report.eval_accuracy is not None and report.eval_accuracy >= 0.85
    assert report.epoch_losses[-1] < report.epoch_losses[0] < 0.6931  # below chance (log 2)
    saved = json.loads((tmp_path / "rm" / "reward_model_report.json").read_text())
    assert saved == report.to_dict()
    assert (tmp_path / "rm" / "model.safetensors").is_file()
    assert train(tmp_path / "again").epoch_losses == report.epoch_losses  # deterministic

    rm = get_reward("reward_model", path=tmp_path / "rm", device="cpu")
    fresh = preference_pairs(20, seed=123)
    chosen = rm(prompts=[p["prompt"] for p in fresh], completions=[p["chosen"] for p in fresh])
    rejected = rm(prompts=[p["prompt"] for p in fresh], completions=[p["rejected"] for p in fresh])
    assert np.mean(np.array(chosen) > np.array(rejected)) >= 0.85


def test_train_from_a_causal_lm_checkpoint_adds_a_score_head(tmp_path, tiny_lm_dir) -> None:
    pairs = preference_pairs(8, seed=1)
    report = train_reward_model(
        pairs,
        tiny_lm_dir,
        tmp_path / "rm",
        epochs=1,
        batch_size=4,
        eval_fraction=0.25,
        progress=False,
    )
    assert (report.n_train, report.n_eval) == (6, 2)
    assert report.eval_accuracy in (0.0, 0.5, 1.0)
    rm = get_reward("reward_model", path=tmp_path / "rm", device="cpu")
    assert rm.model.config.num_labels == 1
    assert len(rm(prompts=["a", "b"], completions=["c", "d"])) == 2


def test_train_rejects_multi_label_models(tmp_path, tiny_tokenizer) -> None:
    model = two_label_classifier(len(tiny_tokenizer), seed=0)
    with pytest.raises(ValueError, match="num_labels=1.*num_labels=2"):
        train_reward_model(
            preference_pairs(4, 0), model, tmp_path, tokenizer=tiny_tokenizer, progress=False
        )


def test_preference_pair_errors_name_file_and_line(tmp_path) -> None:
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    path.write_text(f"{good}\n\n{{not json}}\n")
    with pytest.raises(ValueError, match=rf"{path}:3: invalid JSON"):
        load_preference_pairs(path)
    path.write_text(f"{good}\n" + json.dumps({"prompt": "p", "chosen": "a", "reject": "b"}) + "\n")
    with pytest.raises(
        ValueError,
        match=rf"{path}:2: .*missing \['rejected'\]; keys present: \['chosen', 'prompt', 'reject'\]",
    ):
        train_reward_model(path, None, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match=r"pair #1: 'chosen' must be a string"):
        load_preference_pairs(
            [
                {"prompt": "", "chosen": "a", "rejected": "b"},
                {"prompt": "", "chosen": 1, "rejected": "b"},
            ]
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_preference_pairs(tmp_path / "nope.jsonl")
    assert load_preference_pairs([{**json.loads(good), "extra": 1}]) == [json.loads(good)]


def test_reward_model_accepts_model_as_a_path(tiny_rm_dir):
    from rlhf_gym.rewards import RewardModel, resolve_reward

    by_path = RewardModel(path=str(tiny_rm_dir), device="cpu")
    by_model = RewardModel(model=str(tiny_rm_dir), device="cpu")
    prompts, completions = ["the movie was"], [" great"]
    assert by_model(prompts, completions) == by_path(prompts, completions)
    mix = resolve_reward({"reward_model": {"weight": 1.0, "model": str(tiny_rm_dir)}})
    assert mix(prompts=prompts, completions=completions).total.tolist() == pytest.approx(
        by_path(prompts, completions)
    )
    with pytest.raises(ValueError, match="got both path=.* and model="):
        RewardModel(path=str(tiny_rm_dir), model=str(tiny_rm_dir))
