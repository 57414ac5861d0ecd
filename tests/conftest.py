"""Shared fixtures: tiny tokenizers and models saved to temporary directories."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests import _tiny  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return _tiny.build_tokenizer()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    return _tiny.save_tokenizer(tmp_path_factory.mktemp("tok"), tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    model = _tiny.build_lm(len(tiny_tokenizer))
    return _tiny.save_model(tmp_path_factory.mktemp("lm"), model, tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    model = _tiny.build_rm(len(tiny_tokenizer))
    return _tiny.save_model(tmp_path_factory.mktemp("rm"), model, tiny_tokenizer)


@pytest.fixture(scope="session")
def learnable_lm_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """The tiny GPT-2 with a wider init (0.2): with the default 0.02 its logits span < 1 nat, since
    ln_f caps the hidden norm and the tied embeddings are tiny, so no adapter could make any token
    likely. This model starts as random but can be steered in a few thousand steps."""
    model = _tiny.build_lm(len(tiny_tokenizer), initializer_range=0.2)
    return _tiny.save_model(tmp_path_factory.mktemp("learnable_lm"), model, tiny_tokenizer)
