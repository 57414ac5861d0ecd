"""The lean decode step (:mod:`rlhf_gym.agents.lean_decode`) computes transformers' function.

Each supported architecture (Llama, Mistral, Qwen2 with q/k/v biases, Qwen3 with q/k norms) is
built tiny with grouped-query attention and a non-zero LoRA adapter; a rollout with env resets
(rows re-prefilled while others extend) runs through two policies that differ only in
``lean_decode``, and every step's logits, hidden states and cached keys/values must agree. In
float64 the agreement is to 1e-10: the same function, not an approximation of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel

from rlhf_gym.agents import LoRAPolicy
from rlhf_gym.agents.engine import LMEngine
from rlhf_gym.agents.lean_decode import LeanDecoder
from rlhf_gym.agents.lora import apply_lora
from tests import _tiny
from tests.test_agents_support import cached_outputs_in_lockstep, make_env, to_tensor_obs


def _build(kind: str, vocab: int, **overrides: Any) -> PreTrainedModel:
    """A tiny model of ``kind``: 3 layers, 4 query heads over 2 key/value heads."""
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[kind]
    fields: dict[str, Any] = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    if kind == "qwen3":
        fields["head_dim"] = 8
    fields.update(overrides)
    torch.manual_seed(0)
    model = model_cls(config_cls(**fields)).eval()
    with torch.no_grad():  # norms away from 1 and biases away from 0, so each one matters
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module", params=["llama", "mistral", "qwen2", "qwen3"])
def arch_dir(request: pytest.FixtureRequest, tmp_path_factory, tiny_tokenizer) -> Path:
    model = _build(request.param, len(tiny_tokenizer))
    return _tiny.save_model(tmp_path_factory.mktemp(request.param), model, tiny_tokenizer)


def _policy(env: Any, model_dir: Path, lean: bool) -> LoRAPolicy:
    torch.manual_seed(0)
    return LoRAPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 1e-3,
        model=str(model_dir),
        lora={"init_lora_weights": False},  # a non-zero adapter: merged rollout weights matter
        lean_decode=lean,
    )


def test_rollout_steps_match_the_model_forward(tiny_tokenizer_dir: Path, arch_dir: Path) -> None:
    env_a = make_env(tiny_tokenizer_dir, 4, max_new_tokens=3)  # episodes end: rows re-prefill
    env_b = make_env(tiny_tokenizer_dir, 4, max_new_tokens=3)
    lean, plain = _policy(env_a, arch_dir, True), _policy(env_b, arch_dir, False)
    plain.load_state_dict(lean.state_dict())
    assert lean.engine._lean is not None
    steps: list[int] = []
    original = lean.engine._lean.step

    def counted(*args: Any, **kwargs: Any) -> Any:
        steps.append(1)
        return original(*args, **kwargs)

    lean.engine._lean.step = counted  # type: ignore[method-assign]
    for _ in cached_outputs_in_lockstep((env_a, env_b), (lean, plain), 8):
        pass
    assert len(steps) >= 5  # every extend step but the ones right after a full re-prefill
    cache_l, cache_p = lean.kv_cache(4), plain.kv_cache(4)
    for layer_l, layer_p in zip(cache_l.layers, cache_p.layers, strict=True):
        torch.testing.assert_close(layer_l.keys, layer_p.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer_l.values, layer_p.values, atol=1e-5, rtol=1e-5)


def test_float64_agreement_is_rounding_only(tiny_tokenizer) -> None:
    """The same function: in float64 the two paths agree to 1e-10 over a 6-token decode."""
    model = apply_lora(
        _build("llama", len(tiny_tokenizer)).double(), {"init_lora_weights": False}, fuse=True
    )
    model.double()
    ids = torch.randint(1, len(tiny_tokenizer), (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0  # rows of different lengths (right-padded observations)
    mask[1, 11:] = 0
    outputs = []
    for lean in (True, False):
        engine = LMEngine(model, lean_decode=lean)
        trace = []
        for length in range(6, 12):
            m = mask.clone()
            m[:, length:] = 0
            m[0, min(length, 9) :] = 0
            logits, hidden = engine.decode(ids, m)
            trace.append((logits.double(), hidden.double()))
        outputs.append(trace)
    for (ll, hl), (lp, hp) in zip(*outputs, strict=True):
        torch.testing.assert_close(ll, lp, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(hl, hp, atol=1e-10, rtol=1e-10)


def test_only_known_architectures_and_states_take_it(tiny_tokenizer) -> None:
    vocab = len(tiny_tokenizer)
    assert LeanDecoder.for_model(_tiny.build_lm(vocab)) is None  # GPT-2: the model's forward
    assert LeanDecoder.for_model(_build("qwen2", vocab, layer_types=["full_attention",
                                 "sliding_attention", "full_attention"], use_sliding_window=True,
                                 sliding_window=4)) is None  # fmt: skip
    assert LeanDecoder.for_model(_build("llama", vocab, hidden_act="gelu")) is None
    hooked = _build("llama", vocab)
    hooked.model.layers[1].mlp.register_forward_hook(lambda *a: None)
    assert LeanDecoder.for_model(hooked) is None  # a user's hook must still run
    mistral = LeanDecoder.for_model(_build("mistral", vocab, sliding_window=8))
    assert mistral is not None and mistral.usable(8) and not mistral.usable(9)
    llama = LeanDecoder.for_model(_build("llama", vocab))
    assert llama is not None and llama.usable(10**6)
    llama.base.train()
    assert not llama.usable(4)


def test_bf16_base_with_float32_adapter_matches_the_model_forward(tiny_tokenizer) -> None:
    """Half-precision attention scores stay in float32 inside sdpa, as in transformers' call:
    the same logits (a bf16 baddbmm/softmax/bmm path was off by 3e-3 here)."""
    base = _build("qwen2", len(tiny_tokenizer)).to(torch.bfloat16)
    model = apply_lora(base, {"init_lora_weights": False}, fuse=True)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
    ids = torch.randint(1, len(tiny_tokenizer), (3, 12), generator=torch.Generator().manual_seed(1))
    traces = []
    for lean in (True, False):
        engine = LMEngine(model, lean_decode=lean)
        trace = []
        for length in range(6, 12):
            mask = torch.ones_like(ids)
            mask[:, length:] = 0
            trace.append(engine.decode(ids, mask)[0])
        traces.append(trace)
    for lean_logits, plain_logits in zip(*traces, strict=True):
        torch.testing.assert_close(lean_logits, plain_logits, atol=5e-4, rtol=0)


def test_a_lean_step_runs_under_decode_attention_and_reads_nothing_back(
    tiny_tokenizer_dir: Path, arch_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU the step must avoid cuDNN attention (``decode_attention``) and never stall the
    queue: no device-to-host read inside it."""
    import contextlib

    from rlhf_gym.agents import engine as engine_module
    from tests.test_policy_cache import _HostReads

    env = make_env(tiny_tokenizer_dir, 2, max_new_tokens=4)
    policy = _policy(env, arch_dir, True)
    inside = [False]
    steps: list[list[str]] = []

    @contextlib.contextmanager
    def recording(device: torch.device):  # type: ignore[no-untyped-def]
        inside[0] = True
        try:
            yield
        finally:
            inside[0] = False

    original = policy.engine._lean.step

    def checked(*args: Any, **kwargs: Any) -> Any:
        assert inside[0], "lean step outside decode_attention"
        with _HostReads() as reads:
            result = original(*args, **kwargs)
        steps.append(reads.reads)
        return result

    monkeypatch.setattr(engine_module, "decode_attention", recording)
    policy.engine._lean.step = checked  # type: ignore[method-assign]
    obs = env.reset()
    for _ in range(3):
        with torch.no_grad():
            actions, _, _ = policy(to_tensor_obs(obs))
        obs, _, _, _ = env.step(actions.numpy())
    assert len(steps) == 2 and steps == [[], []]
