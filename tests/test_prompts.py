"""Compiled prompt datasets: every source format, columns, truncation, splits and errors."""

from __future__ import annotations

import csv
import json

import pytest

from rlhf_gym.envs import PromptDataset, TextGenerationEnv

ROWS = [
    {"prompt": "the movie was", "answer": "great"},
    {"prompt": "the food was", "answer": "bad"},
    {"prompt": "hello world", "answer": "hi"},
]


def compile_(source, tokenizer, **kw):
    kw.setdefault("max_prompt_tokens", 16)
    return PromptDataset.from_source(source, tokenizer, **kw)


def write_all_formats(tmp_path):
    paths = {}
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    paths["jsonl"] = p
    p = tmp_path / "p.json"
    p.write_text(json.dumps(ROWS))
    paths["json"] = p
    p = tmp_path / "p.csv"
    with p.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "answer"])
        w.writeheader()
        w.writerows(ROWS)
    paths["csv"] = p
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), p)
    paths["parquet"] = p
    return paths


def test_every_format_gives_the_same_rows(tmp_path, tiny_tokenizer):
    expected = [(r["prompt"], {"answer": r["answer"]}) for r in ROWS]
    for fmt, path in write_all_formats(tmp_path).items():
        ds = compile_(str(path), tiny_tokenizer)
        assert [(row.text, row.extras) for row in ds] == expected, fmt
    ds = compile_(ROWS, tiny_tokenizer)
    assert [(row.text, row.extras) for row in ds] == expected
    import datasets

    ds = compile_(datasets.Dataset.from_list(ROWS), tiny_tokenizer)
    assert [(row.text, row.extras) for row in ds] == expected


def test_txt_and_list_of_strings(tmp_path, tiny_tokenizer):
    p = tmp_path / "p.txt"
    p.write_text("the movie was\n\nthe food was\n")
    assert [r.text for r in compile_(p, tiny_tokenizer)] == ["the movie was", "the food was"]
    assert [r.text for r in compile_(["a b", "c"], tiny_tokenizer)] == ["a b", "c"]
    ids = compile_(["the movie was"], tiny_tokenizer)[0].input_ids
    assert ids.tolist() == tiny_tokenizer("the movie was")["input_ids"]


def test_prompt_column_is_configurable(tiny_tokenizer):
    ds = compile_([{"question": "q one", "id": 3}], tiny_tokenizer, prompt_column="question")
    assert ds[0].text == "q one" and ds[0].extras == {"id": 3}


def test_missing_prompt_column_lists_columns(tiny_tokenizer):
    with pytest.raises(
        KeyError, match=r"item 0: no 'prompt' column; the row has columns \['id', 'question'\]"
    ):
        compile_([{"question": "q", "id": 1}], tiny_tokenizer)


def test_left_truncation_counted_and_reported_once(tiny_tokenizer):
    long = "the movie was great and the acting was wonderful " * 3
    ids = tiny_tokenizer(long)["input_ids"]
    with pytest.warns(
        UserWarning, match="2 of 3 prompts were longer than max_prompt_tokens=5"
    ) as record:
        ds = compile_([long, "hi", long], tiny_tokenizer, max_prompt_tokens=5)
    assert len(record) == 1
    assert ds.n_truncated == 2 and ds[0].truncated and not ds[1].truncated
    assert ds[0].input_ids.tolist() == ids[-5:]
    assert ds[0].text == tiny_tokenizer.decode(ids[-5:])
    assert ds[0].shown == ds[0].text  # samples show the prompt the policy saw, not the original


def test_truncation_error(tiny_tokenizer):
    long = "the movie was great and the acting was wonderful"
    with pytest.raises(
        ValueError, match=r"item 1: prompt has \d+ tokens, more than max_prompt_tokens=3"
    ):
        compile_(["hi", long], tiny_tokenizer, max_prompt_tokens=3, truncation="error")


def test_split_is_seeded_and_disjoint(tiny_tokenizer):
    ds = compile_([f"prompt {i}" for i in range(20)], tiny_tokenizer)
    train, held_out = ds.split(0.25, seed=0)
    assert len(train) == 15 and len(held_out) == 5
    assert {r.index for r in train}.isdisjoint({r.index for r in held_out})
    again, _ = ds.split(0.25, seed=0)
    assert [r.index for r in again] == [r.index for r in train]
    other, _ = ds.split(0.25, seed=1)
    assert [r.index for r in other] != [r.index for r in train]


def test_env_split_serves_train_or_eval(tiny_tokenizer, tiny_tokenizer_dir):
    prompts = [f"prompt {i}" for i in range(20)]
    kw = dict(
        tokenizer=str(tiny_tokenizer_dir),
        prompts=prompts,
        reward=lambda prompts, completions, **k: [0.0] * len(prompts),
        max_prompt_tokens=8,
        max_new_tokens=2,
        eval_fraction=0.2,
    )
    train = TextGenerationEnv(**kw)
    held_out = TextGenerationEnv(split="eval", **kw)
    assert len(train.dataset) == 16 and len(held_out.dataset) == 4
    assert {r.text for r in train.dataset}.isdisjoint({r.text for r in held_out.dataset})
    with pytest.raises(ValueError, match="eval_fraction>0"):
        TextGenerationEnv(**dict(kw, eval_fraction=0.0, split="eval"))


def test_missing_and_empty_sources(tmp_path, tiny_tokenizer):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        compile_(str(tmp_path / "nope.jsonl"), tiny_tokenizer)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no prompts found"):
        compile_(empty, tiny_tokenizer)
    with pytest.raises(ValueError, match="no prompts found"):
        compile_([], tiny_tokenizer)
    with pytest.raises(ValueError, match="unsupported prompt file type '.xml'"):
        (tmp_path / "p.xml").write_text("<a/>")
        compile_(tmp_path / "p.xml", tiny_tokenizer)


def test_malformed_jsonl_names_file_and_line(tmp_path, tiny_tokenizer):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "ok"}\n{"prompt": "ok too"}\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON"):
        compile_(p, tiny_tokenizer)


def test_empty_prompt_rejected_with_location(tmp_path, tiny_tokenizer):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "ok"}\n{"prompt": "   "}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: empty prompt"):
        compile_(p, tiny_tokenizer)


def test_chat_messages_need_a_template(tiny_tokenizer):
    from tests._tiny import build_tokenizer

    plain = build_tokenizer()
    plain.chat_template = None
    rows = [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(ValueError, match="need a chat template"):
        compile_(rows, plain)
    ds = compile_(rows, tiny_tokenizer, max_prompt_tokens=32)
    assert ds[0].text == "<|user|>hi\n<|assistant|>"
    # TRL's conversational format: the prompt column itself holds messages.
    ds = compile_(
        [{"prompt": [{"role": "user", "content": "hi"}]}], tiny_tokenizer, max_prompt_tokens=32
    )
    assert ds[0].text == "<|user|>hi\n<|assistant|>"


def test_system_prompt_and_the_user_query(tiny_tokenizer):
    from rlhf_gym.envs import PromptDataset

    rows = PromptDataset.from_source(
        [
            "plain question",
            {"messages": [{"role": "user", "content": "chat question"}]},
            {"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "q"}]},
        ],
        tiny_tokenizer,
        max_prompt_tokens=64,
        system_prompt="be brief",
    )
    texts = [r.text for r in rows]
    assert texts[0] == "<|system|>be brief\n<|user|>plain question\n<|assistant|>"
    assert texts[1].startswith("<|system|>be brief\n<|user|>chat question")
    assert texts[2].startswith("<|system|>own\n") and "be brief" not in texts[2]
    assert [r.shown for r in rows] == ["plain question", "chat question", "q"]
    without = PromptDataset.from_source(["plain question"], tiny_tokenizer, max_prompt_tokens=64)
    assert without[0].text == "plain question" and without[0].shown == "plain question"
