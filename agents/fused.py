"""Same function, fewer kernels: model-level rewrites applied when a policy is built.

On a CPU, and for the small and medium models RL fine-tuning runs on, a decode step is bound by
the number of tensor operations (each costs a dispatch and, on OpenMP builds, a thread wake-up)
and a training step by the bytes its temporaries move. Two rewrites cut both without changing
what is computed beyond float rounding:

- :func:`fuse_activations`: GPT-2-family ``gelu_new`` (six elementwise ops in transformers)
  becomes the fused ``gelu(approximate="tanh")`` kernel, the same function;
- :func:`fuse_lora_forward`: a vanilla LoRA layer computes ``base(x) + s * B(A(x))`` with one
  in-place ``addmm_`` on the base output instead of peft's generic path (dropout module, a scaled
  temporary and an add, plus per-call Python bookkeeping for features such as mixed-adapter
  batches that a policy never uses). Whenever a call needs peft's own path (adapters disabled
  or merged, several active adapters, DoRA and other variants, extra keyword arguments) it
  takes it, so the result is always peft's result.

Measured on the benchmark task (``benchmarks/``), see its README for the figures.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def fuse_activations(model: nn.Module) -> int:
    """Replace transformers' composite ``gelu_new`` modules by the fused kernel of the same GELU.

    ``NewGELUActivation`` writes the tanh-approximated GELU as six elementwise tensor ops, each
    a pass over the MLP's widest activation (and more in the backward); ``GELUTanh``
    (``gelu_pytorch_tanh``) is the same function in one kernel, and transformers documents the
    two as equivalent up to rounding. The config is left as it is, so exports still name the
    original activation. Returns the number of modules replaced.
    """
    from transformers.activations import GELUTanh, NewGELUActivation

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())
                replaced += 1
    return replaced


def _fused_lora_linear_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """``base(x) + scaling * B(A(x))`` in one ``addmm``; peft's forward for anything unusual."""
    generic = type(self).forward
    active = self.active_adapters
    if kwargs or self.disable_adapters or self.merged or len(active) != 1:
        return generic(self, x, *args, **kwargs)
    name = active[0]
    if name not in self.lora_A or name in self.lora_variant:
        return generic(self, x, *args, **kwargs)
    weight_a = self.lora_A[name].weight
    weight_b = self.lora_B[name].weight
    if x.dtype != weight_a.dtype or not isinstance(self.lora_dropout[name], nn.Identity):
        return generic(self, x, *args, **kwargs)
    result = self.base_layer(x, *args)
    if result.dtype != weight_b.dtype:
        return generic(self, x, *args, **kwargs)
    down = F.linear(x, weight_a)  # [..., r]
    out_features = result.shape[-1]
    down_2d = down.reshape(-1, down.shape[-1])
    if _owns_its_output(self.base_layer) and result.is_contiguous():
        # Accumulate into the base output: out-of-place addmm would first copy all of it (one
        # activation-sized copy per layer). Safe for autograd: the base matmul's backward
        # needs its inputs, never its output, and nothing else holds that fresh tensor.
        result.view(-1, out_features).addmm_(down_2d, weight_b.t(), alpha=self.scaling[name])
        return result
    fused = torch.addmm(
        result.reshape(-1, out_features), down_2d, weight_b.t(), alpha=self.scaling[name]
    )
    return fused.view(result.shape)


def _owns_its_output(layer: nn.Module) -> bool:
    """A plain ``nn.Linear``/``Conv1D`` without hooks returns a fresh tensor nobody else holds."""
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
