"""Same function, fewer kernels: model-level rewrites applied when a policy is built.

On a CPU, and for the small and medium models RL fine-tuning runs on, a decode step is bound by
the number of tensor operations (each costs a dispatch and, on OpenMP builds, a thread wake-up)
and a training step by the bytes its temporaries move. These rewrites cut both without changing
what is computed beyond float rounding:

- :func:`fuse_activations`: GPT-2-family ``gelu_new`` (six elementwise ops in transformers)
  becomes the fused ``gelu(approximate="tanh")`` kernel, the same function (without autograd on
  a CPU, its faster sigmoid form: :func:`gelu_tanh`);
- :func:`fuse_lora_forward`: a vanilla LoRA layer computes ``base(x) + s * B(A(x))`` with one
  in-place ``addmm_`` on the base output instead of peft's generic path (dropout module, a scaled
  temporary and an add, plus per-call Python bookkeeping for features such as mixed-adapter
  batches that a policy never uses). Whenever a call needs peft's own path (adapters disabled
  or merged, several active adapters, DoRA and other variants, extra keyword arguments) it
  takes it, so the result is always peft's result.
- :class:`RolloutMerge`: during a rollout the adapter does not change for hundreds of decode
  steps, so each adapted layer can run ONE matmul with a merged copy ``W + s * B A`` instead of
  three (the base, ``A`` and ``B``), the way generation servers run a merged adapter. The copy
  is used only inside :meth:`RolloutMerge.active`, only without autograd and with the adapter
  enabled, and only for float32 weights (merging a small delta into bf16/fp16 weights would
  round it away); it is rebuilt whenever the caller's key (a fingerprint of the trainable
  tensors) changes. peft's own ``merge_adapter`` is not used: merging into the base weights in
  place and unmerging them for the reference and training passes would not restore them
  exactly (float rounding), and the drift would accumulate over updates.

Measured on the benchmark task (``benchmarks/``), see its README for the figures.
"""

from __future__ import annotations

import types
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import GELUTanh

_SQRT_2_OVER_PI = 0.7978845608028654


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """``gelu(x, approximate="tanh")``, computed as ``x * sigmoid(2z)`` without autograd on a CPU.

    ``(1 + tanh z) / 2 == sigmoid(2z)``, so with ``z = sqrt(2/pi) (x + 0.044715 x^3)`` this is
    the same function. PyTorch's CPU ``tanh`` is several times slower than its ``sigmoid``
    (3.4 ms against 1.0 ms for a ``[2016, 1024]`` float32 tensor on the benchmark machine), and
    so is the fused GELU kernel built on it (3.8 ms); the sigmoid form, five in-place passes over
    one temporary, takes 1.7 ms and differs from it by float rounding (max 4e-7 against a float64
    reference, the kernel's own error 3.9e-7). Under autograd, for other dtypes and on
    accelerators the fused kernel runs: its backward is one kernel too, and the gap is a CPU one.
    ``x`` is only read.
    """
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or (x.requires_grad and torch.is_grad_enabled())
    ):
        return F.gelu(x, approximate="tanh")
    z = x * x
    z.mul_(2 * 0.044715 * _SQRT_2_OVER_PI).add_(2 * _SQRT_2_OVER_PI).mul_(x)
    return z.sigmoid_().mul_(x)


class TanhGELU(GELUTanh):
    """transformers' ``GELUTanh`` (still an instance of it), evaluated by :func:`gelu_tanh`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (torch's name)
        return gelu_tanh(input)


def fuse_activations(model: nn.Module) -> int:
    """Replace transformers' composite ``gelu_new`` modules by the fused kernel of the same GELU.

    ``NewGELUActivation`` writes the tanh-approximated GELU as six elementwise tensor ops, each
    a pass over the MLP's widest activation (and more in the backward); ``GELUTanh``
    (``gelu_pytorch_tanh``) is the same function in one kernel, and transformers documents the
    two as equivalent up to rounding (the module here evaluates it with :func:`gelu_tanh`). The
    config is left as it is, so exports still name the original activation. Returns the number of
    modules replaced.
    """
    from transformers.activations import NewGELUActivation

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, TanhGELU())
                replaced += 1
    return replaced


#: Set by :meth:`RolloutMerge.active`: fused layers may use their merged rollout weight.
_USE_MERGED: ContextVar[bool] = ContextVar("rlhf_gym_use_merged_lora", default=False)


def _fused_lora_linear_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """``base(x) + scaling * B(A(x))`` in one ``addmm``; peft's forward for anything unusual."""
    generic = type(self).forward
    name = None if kwargs else _vanilla_adapter(self)
    if name is None:
        return generic(self, x, *args, **kwargs)
    if _USE_MERGED.get():
        merged = self.__dict__.get("_rollout_merged")
        if (
            merged is not None
            and merged[0] == name
            and x.dtype == merged[1].dtype
            and not torch.is_grad_enabled()
        ):
            return _base_with_weight(self.base_layer, x, merged[1])
    weight_a = self.lora_A[name].weight
    weight_b = self.lora_B[name].weight
    if x.dtype != weight_a.dtype or x.dtype != weight_b.dtype:
        return _mixed_dtype_forward(self, name, x, *args, generic=generic)
    # B enters the matmul as a row-major [r, out] copy, not the column-major view B.t(): autograd
    # computes a weight gradient in its operand's layout, and for the view that is the product
    # grad.t() @ down, an [out, r] result that MKL computes 5-11x slower than down.t() @ grad,
    # the [r, out] one (benchmark task, 10 interleaved pairs: training pass 444 -> 403 ms). The
    # copy is r x out floats, made only when B needs a gradient.
    b_t = (
        weight_b.t().contiguous()
        if weight_b.requires_grad and torch.is_grad_enabled()
        else weight_b.t()
    )
    scaling = self.scaling[name]
    base = self.base_layer
    if not args and _plain_linear(base) and base.weight.dtype == x.dtype:
        # The base matmul on the flattened input, then accumulate into its output in place:
        # out-of-place addmm would first copy all of it (one activation-sized copy per layer),
        # and an in-place op on the view the base layer returns would make autograd copy the
        # gradient back through that view (10 interleaved pairs on the benchmark task: training
        # pass 338 -> 307 ms). Safe for autograd: the base matmul's backward needs its inputs,
        # never its output, and nothing else holds that fresh tensor.
        x_2d = x.reshape(-1, x.shape[-1])
        result = _linear_2d(base, x_2d, base.weight)
        result.addmm_(F.linear(x_2d, weight_a), b_t, alpha=scaling)
        return result.view(*x.shape[:-1], result.shape[-1])
    result = base(x, *args)
    if result.dtype != weight_b.dtype:
        return generic(self, x, *args, **kwargs)
    out_features = result.shape[-1]
    down_2d = F.linear(x, weight_a).reshape(-1, weight_a.shape[0])
    fused = torch.addmm(result.reshape(-1, out_features), down_2d, b_t, alpha=scaling)
    return fused.view(result.shape)


def _mixed_dtype_forward(
    self: Any, name: str, x: torch.Tensor, *args: Any, generic: Any
) -> torch.Tensor:
    """A bf16/fp16 base with a float32 adapter (``--dtype bfloat16``): peft's numbers, fewer ops.

    peft casts ``x`` to the adapter's dtype, computes ``B(A(x)) * s`` there, adds it to the
    base output (promoting it) and casts the sum back: six tensor ops besides the base matmul,
    plus peft's per-call Python bookkeeping. Here the scaled ``B`` product and the sum are one
    ``addmm`` into the promoted base output (five ops, about a third of the host time per layer),
    which on a GPU decode step, bound by kernel launches and Python, is what a step costs.
    Anything else (adapter dtypes that differ, a base that is not a plain linear, extra
    arguments, input casting turned off in peft) takes peft's path.
    """
    weight_a = self.lora_A[name].weight
    weight_b = self.lora_B[name].weight
    base = self.base_layer
    if (
        args
        or weight_a.dtype != torch.float32  # the sum in float32 is then peft's promotion
        or weight_b.dtype != torch.float32
        or x.dtype not in (torch.bfloat16, torch.float16)
        or not getattr(self, "cast_input_dtype_enabled", True)
        or not _plain_linear(base)
        or base.weight.dtype != x.dtype
    ):
        return generic(self, x, *args)
    x_2d = x.reshape(-1, x.shape[-1])
    result = _linear_2d(base, x_2d, base.weight)  # [N, out] in the base dtype
    down = F.linear(x_2d.to(weight_a.dtype), weight_a)  # [N, r] in the adapter dtype
    fused = torch.addmm(result.to(weight_b.dtype), down, weight_b.t(), alpha=self.scaling[name])
    return fused.to(x.dtype).view(*x.shape[:-1], fused.shape[-1])


def _vanilla_adapter(layer: Any) -> str | None:
    """The layer's one active plain LoRA adapter, or None when peft's own path is needed
    (adapters disabled or merged, several active, DoRA and other variants, dropout on, a
    ``lora_bias``)."""
    active = layer.active_adapters
    if layer.disable_adapters or layer.merged or len(active) != 1:
        return None
    name = active[0]
    if name not in layer.lora_A or name in layer.lora_variant:
        return None
    if getattr(layer.lora_B[name], "bias", None) is not None:  # lora_bias=True: peft's path
        return None
    if not isinstance(layer.lora_dropout[name], nn.Identity):
        return None
    return name


def _linear_2d(layer: nn.Module, x_2d: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A plain ``nn.Linear``/``Conv1D`` ``layer`` on ``[N, in]`` with ``weight`` (its layout):
    a fresh ``[N, out]`` tensor, not a view."""
    if type(layer) is nn.Linear:
        return F.linear(x_2d, weight, layer.bias)
    # transformers' Conv1D: weight is [in, out], y = x @ W + b.
    if layer.bias is None:
        return x_2d @ weight
    return torch.addmm(layer.bias, x_2d, weight)


def _base_with_weight(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` with ``weight`` in place of ``layer.weight`` (the same layout)."""
    out = _linear_2d(layer, x.reshape(-1, x.shape[-1]), weight)
    return out.view(*x.shape[:-1], out.shape[-1])


def _plain_linear(layer: nn.Module) -> bool:
    """A plain ``nn.Linear``/``Conv1D`` without hooks: its forward is one matmul that can be run
    directly (:func:`_linear_2d`), with another weight or into a tensor the caller then owns."""
    from transformers.pytorch_utils import Conv1D

    return (
        type(layer) in (nn.Linear, Conv1D)
        and not layer._forward_hooks
        and not layer._forward_pre_hooks
    )


def fuse_lora_forward(model: nn.Module) -> int:
    """Give every peft LoRA ``Linear`` (GPT-2's ``Conv1D`` included) the fused forward above.

    Installed per instance (a bound method), so the classes peft and transformers see are
    unchanged and ``merge_and_unload``, adapter saving and loading work as before. Returns the
    number of layers changed.
    """
    from peft.tuners.lora.layer import Linear as LoraLinear

    changed = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.forward = types.MethodType(_fused_lora_linear_forward, module)
            changed += 1
    return changed


class RolloutMerge:
    """Merged float32 copies of a model's adapted weights, for no-grad rollout forwards.

    ``refresh(key)`` (re)builds the copies when ``key`` differs from the last one; inside
    ``active()`` the fused layers use them. ``clear()`` frees them (before training, so the
    copies never add to the training pass's peak memory). A layer gets a copy only when its
    fused forward would run (one active vanilla LoRA adapter, identity dropout, a plain
    ``nn.Linear``/``Conv1D`` base without hooks) and its base weight is float32; every other
    layer keeps its usual forward, so the model's function is unchanged up to float rounding.
    """

    def __init__(self, model: nn.Module) -> None:
        from peft.tuners.lora.layer import Linear as LoraLinear

        self._layers = [
            m
            for m in model.modules()
            if type(m) is LoraLinear and isinstance(m.__dict__.get("forward"), types.MethodType)
        ]
        self._key: Hashable | None = None
        self._merged = 0

    def refresh(self, key: Hashable) -> int:
        """Rebuild the merged copies if ``key`` changed; returns the number of merged layers."""
        if key == self._key:
            return self._merged
        self.clear()
        merged = 0
        with torch.no_grad():
            for layer in self._layers:
                name = _mergeable_adapter(layer)
                if name is None:
                    continue
                weight = layer.base_layer.weight + layer.get_delta_weight(name)
                layer.__dict__["_rollout_merged"] = (name, weight.contiguous())
                merged += 1
        self._key, self._merged = key, merged
        return merged

    def clear(self) -> None:
        """Drop the copies (they are rebuilt by the next ``refresh``)."""
        for layer in self._layers:
            layer.__dict__.pop("_rollout_merged", None)
        self._key, self._merged = None, 0

    @contextmanager
    def active(self) -> Iterator[None]:
        """Let fused layers use their merged copies (no-grad forwards only) inside the block."""
        token = _USE_MERGED.set(True)
        try:
            yield
        finally:
            _USE_MERGED.reset(token)


def _mergeable_adapter(layer: Any) -> str | None:
    """The adapter name to merge for ``layer``, or None when it must keep its usual forward."""
    name = _vanilla_adapter(layer)
    if name is None:
        return None
    base = layer.base_layer
    if not _plain_linear(base) or base.weight.dtype != torch.float32:
        return None
    if layer.lora_A[name].weight.dtype != torch.float32:
        return None
    return name
