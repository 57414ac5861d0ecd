"""The fused rewrites compute what peft and transformers compute: outputs and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.activations import GELUTanh, NewGELUActivation

from rlhf_gym.agents.fused import RolloutMerge, fuse_activations, fuse_lora_forward
from tests import _tiny


def _peft_pair(**lora: object):
    torch.manual_seed(0)
    base = _tiny.build_lm(300)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False, **lora)
    reference = get_peft_model(copy.deepcopy(base), config)
    fused = get_peft_model(base, config)
    fused.load_state_dict(reference.state_dict())
    assert fuse_lora_forward(fused) == 4  # 2 layers x (c_attn, c_fc)
    return reference, fused


class _Net(torch.nn.Module):
    """Two ``nn.Linear`` layers (a Llama-style base: peft wraps them as ``lora.Linear``)."""

    def __init__(self, inp: int, hidden: int, out: int) -> None:
        super().__init__()
        self.up = torch.nn.Linear(inp, hidden)
        self.down = torch.nn.Linear(hidden, out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.tanh(self.up(x)))


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(1, 300, (3, 7), generator=torch.Generator().manual_seed(1))


def test_fused_lora_matches_peft_outputs_and_gradients(ids: torch.Tensor) -> None:
    reference, fused = _peft_pair(target_modules=["c_attn", "c_fc"])
    outputs = []
    for model in (reference, fused):
        logits = model(input_ids=ids).logits
        loss = logits.log_softmax(-1)[..., 5].sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        outputs.append((logits.detach(), grads))
    (ref_logits, ref_grads), (fused_logits, fused_grads) = outputs
    torch.testing.assert_close(fused_logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert ref_grads.keys() == fused_grads.keys() and len(ref_grads) == 8
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_fused_lora_defers_to_peft_when_adapters_are_off_or_merged(ids: torch.Tensor) -> None:
    reference, fused = _peft_pair(target_modules=["c_attn", "c_fc"])
    with torch.no_grad():
        with reference.disable_adapter(), fused.disable_adapter():
            torch.testing.assert_close(fused(input_ids=ids).logits, reference(input_ids=ids).logits)
        adapted = fused(input_ids=ids).logits
        with fused.disable_adapter():
            assert not torch.allclose(fused(input_ids=ids).logits, adapted)  # LoRA really acts
        fused.merge_adapter()
        torch.testing.assert_close(fused(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)
        fused.unmerge_adapter()


def test_fuse_activations_swaps_gelu_new_for_the_same_function(ids: torch.Tensor) -> None:
    model = _tiny.build_lm(300)
    assert any(isinstance(m, NewGELUActivation) for m in model.modules())
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert fuse_activations(model) == 2
        after = model(input_ids=ids).logits
    assert not any(isinstance(m, NewGELUActivation) for m in model.modules())
    assert sum(isinstance(m, GELUTanh) for m in model.modules()) == 2
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grad", [False, True])
def test_gelu_tanh_is_the_tanh_gelu_with_and_without_autograd(grad: bool) -> None:
    """The sigmoid form (no autograd, CPU float32) and the fused kernel compute the same GELU."""
    from rlhf_gym.agents.fused import TanhGELU, gelu_tanh

    x = (torch.randn(64, 300, dtype=torch.float64) * 4).float().requires_grad_(grad)
    reference = F.gelu(x.detach().double(), approximate="tanh")
    kept = x.detach().clone()
    with torch.set_grad_enabled(grad):
        y = TanhGELU()(x)
    assert y.requires_grad == grad
    torch.testing.assert_close(y.detach().double(), reference, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x.detach(), kept, atol=0, rtol=0)  # the input is only read
    if grad:
        y.sum().backward()
        expected = torch.autograd.functional.vjp(
            lambda t: F.gelu(t, approximate="tanh"), x.detach().double(), torch.ones_like(reference)
        )[1]
        torch.testing.assert_close(x.grad.double(), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        half = gelu_tanh(x.detach().bfloat16())  # other dtypes keep the fused kernel
    torch.testing.assert_close(half, F.gelu(x.detach().bfloat16(), approximate="tanh"))


def test_fused_lora_on_linear_layers_matches_peft_with_gradients() -> None:
    """``nn.Linear`` bases (Llama-style models) take the in-place path too."""

    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["up", "down"], init_lora_weights=False)
    reference = get_peft_model(_Net(8, 16, 4), config)
    fused = copy.deepcopy(reference)
    assert fuse_lora_forward(fused) == 2
    x = torch.randn(3, 5, 8)
    results = []
    for model in (reference, fused):
        out = model(x)
        out.pow(2).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((out.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-5)
    for got, want in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_rollout_merge_matches_peft_only_where_it_is_allowed(ids: torch.Tensor) -> None:
    """Merged copies give peft's outputs; they are used only inside ``active()``, without
    autograd and with the adapter on, and a new key rebuilds them."""
    reference, fused = _peft_pair(target_modules=["c_attn", "c_fc"])
    merge = RolloutMerge(fused)
    assert merge.refresh(key=1) == 4
    with torch.no_grad():
        want = reference(input_ids=ids).logits
        base = fused.get_base_model()
        with merge.active():
            torch.testing.assert_close(fused(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        # Change the adapter without a new key: only the stale copy shows the old weights,
        # which proves the copy is what runs inside active() and nowhere else.
        for name, param in fused.named_parameters():
            if "lora_B" in name:
                param.mul_(3.0)
        changed = fused(input_ids=ids).logits
        assert not torch.allclose(changed, want, atol=1e-3)
        with merge.active():
            torch.testing.assert_close(fused(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
            with fused.disable_adapter():  # the reference pass never sees the merged copy
                torch.testing.assert_close(fused(input_ids=ids).logits, base(input_ids=ids).logits)
        assert merge.refresh(key=2) == 4
        with merge.active():
            torch.testing.assert_close(fused(input_ids=ids).logits, changed, atol=1e-5, rtol=1e-5)
    with merge.active():  # autograd: always the live adapter, whose gradients it needs
        merge.refresh(key=1)  # deliberately stale copies
        torch.testing.assert_close(fused(input_ids=ids).logits.detach(), changed)
    merge.clear()
    assert not any("_rollout_merged" in m.__dict__ for m in fused.modules())


def test_rollout_merge_leaves_half_precision_weights_alone() -> None:
    """Rounding a small LoRA delta into bf16 weights would erase it: no copies are made."""
    _, fused = _peft_pair(target_modules=["c_attn", "c_fc"])
    fused.to(torch.bfloat16)
    assert RolloutMerge(fused).refresh(key=1) == 0


class _OpCount(TorchDispatchMode):
    """Counts the tensor ops a forward dispatches (each one a kernel launch on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops += 1
        return func(*args, **(kwargs or {}))


def test_fused_lora_on_a_bf16_base_with_float32_adapters_matches_peft_in_fewer_ops() -> None:
    """``--dtype bfloat16``: a bf16 base, float32 adapters (peft's default autocast). The fused
    path gives peft's outputs and gradients with fewer ops per adapted layer."""

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"], init_lora_weights=False)
    reference = get_peft_model(_Net(32, 64, 16).to(torch.bfloat16), config)
    assert reference.base_model.model.up.lora_A["default"].weight.dtype == torch.float32
    fused = copy.deepcopy(reference)
    assert fuse_lora_forward(fused) == 2
    x = torch.randn(3, 5, 32).bfloat16()
    results = []
    for model in (reference, fused):
        with _OpCount() as count:
            out = model(x)
        out.float().pow(2).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((out.detach(), grads, count.ops))
    (want, want_grads, peft_ops), (got, got_grads, fused_ops) = results
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)  # bf16: a unit in the last place
    assert (got != want).float().mean() < 0.05  # and almost every element bit-equal
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-3, rtol=2e-2)
    assert fused_ops < peft_ops, (fused_ops, peft_ops)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_lora_bias_or_a_half_precision_adapter_takes_peft_path(dtype: torch.dtype) -> None:
    """``lora_bias=True`` adds ``s * b_B``, which the fused forwards do not compute; an adapter
    in lower precision than the base is peft's promotion, not the float32 sum: peft runs both."""
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["up"], lora_bias=True,
                        init_lora_weights=False)  # fmt: skip
    reference = get_peft_model(_Net(8, 16, 4).to(dtype), config)
    with torch.no_grad():
        reference.base_model.model.up.lora_B["default"].bias.fill_(1.0)
    fused = copy.deepcopy(reference)
    fuse_lora_forward(fused)
    x = torch.randn(3, 8).to(dtype)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), reference(x))
    assert RolloutMerge(fused).refresh(key=1) == 0
    base = _Net(8, 16, 4)  # float32 base, bf16 adapter weights
    half_adapter = get_peft_model(base, LoraConfig(r=2, target_modules=["up"],
                                                   init_lora_weights=False))  # fmt: skip
    half_adapter.base_model.model.up.lora_A["default"].to(torch.bfloat16)
    half_adapter.base_model.model.up.lora_B["default"].to(torch.bfloat16)
    fused_half = copy.deepcopy(half_adapter)
    fuse_lora_forward(fused_half)
    with torch.no_grad():
        torch.testing.assert_close(fused_half(x.float()), half_adapter(x.float()))
