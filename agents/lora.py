"""Loading a Hugging Face causal LM and wrapping it with a peft LoRA adapter.

Why a module of its own: the policy, the exporter and the tests all need the same answers to
"is this a causal LM?", "which modules can LoRA target?" and "how do I make every forward
deterministic?", and each of those answers has an error message a user must be able to act on.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from rlhf_gym.agents.fused import fuse_lora_forward
from rlhf_gym.rewards.loading import resolve_dtype

#: LoRA defaults used when ``lora`` is ``None`` or a partial dict. ``target_modules=None`` lets
#: peft pick the attention projections it knows for the architecture (e.g. ``c_attn`` for GPT-2).
#: ``lora_dropout`` is 0 because rollout and training log-probs must agree exactly.
DEFAULT_LORA: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "target_modules": None,
    "bias": "none",
}

_CAUSAL_LM_CLASSES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _is_causal_lm_class_name(name: str) -> bool:
    return name in _CAUSAL_LM_CLASSES or name.endswith(("ForCausalLM", "LMHeadModel"))


def load_causal_lm(
    model: str | os.PathLike[str] | PreTrainedModel,
    *,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = "eager",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, str | None]:
    """Return ``(model, name_or_path)`` for a path, a hub id or an already built model.

    ``name_or_path`` is what a saved agent records to rebuild the base: the string the user
    gave, or, for an instance, its ``name_or_path`` when that is an existing directory (else
    ``None``: the instance lives only in memory and loading needs it passed again).

    A checkpoint whose architecture is not a causal LM (a reward model saved as
    ``...ForSequenceClassification``, say) is refused: ``AutoModelForCausalLM`` would otherwise
    load its trunk under a fresh language-model head and training would silently start from noise.
    """
    if isinstance(model, PreTrainedModel):
        _check_causal_lm_instance(model)
        path = getattr(model, "name_or_path", None) or None
        if path is not None and not os.path.isdir(path):
            path = None
        if dtype is not None:
            model = model.to(resolve_dtype(dtype))
        if attn_implementation is not None:
            _set_attn_implementation(model, attn_implementation)
        return model, path
    if isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a transformers PreTrainedModel, a path or a hub id; got "
            f"{type(model).__name__}. Wrap custom networks in a PreTrainedModel subclass."
        )
    name = os.fspath(model)
    config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(_is_causal_lm_class_name(a) for a in archs):
        raise ValueError(
            f"{name!r} is a {', '.join(archs)} checkpoint, not a causal language model. "
            "rlhf_gym.agents needs a model with a language-modeling head (loadable by "
            "transformers.AutoModelForCausalLM, e.g. a '...ForCausalLM' or '...LMHeadModel'); "
            "a sequence-classification checkpoint is a reward model: use it as the env's reward."
        )
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = resolve_dtype(dtype)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        lm = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise ValueError(
                f"{name!r} (model_type={config.model_type!r}) has no causal-LM head in transformers; "
                "rlhf_gym.agents needs a model loadable by AutoModelForCausalLM."
            ) from exc
        raise
    return lm, name


def _check_causal_lm_instance(model: PreTrainedModel) -> None:
    name = type(model).__name__
    if model.get_output_embeddings() is None or not (
        _is_causal_lm_class_name(name) or model.can_generate()
    ):
        raise ValueError(
            f"model is a {name}, not a causal language model: rlhf_gym.agents needs next-token "
            "logits (a '...ForCausalLM' / '...LMHeadModel', loadable by AutoModelForCausalLM)."
        )


def _set_attn_implementation(model: PreTrainedModel, attn_implementation: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(attn_implementation)
    else:  # older transformers
        model.config._attn_implementation = attn_implementation


def disable_dropout(model: nn.Module) -> None:
    """Make every forward deterministic: all ``Dropout`` p=0 and all config ``*dropout*``/``*pdrop*`` 0.

    PPO's ratio ``pi_new / pi_old`` is only meaningful when the rollout forward and the training
    forward of the same weights give the same log-probs; dropout would make them differ.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
    config = getattr(model, "config", None)
    if config is not None:
        for key, value in list(vars(config).items()):
            if ("dropout" in key or "pdrop" in key) and isinstance(value, float):
                setattr(config, key, 0.0)


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names of the modules LoRA can wrap (``nn.Linear``, GPT-2's ``Conv1D``, embeddings)."""
    from transformers.pytorch_utils import Conv1D

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D, nn.Embedding)) and name
    }
    return sorted(names)


def lora_config(lora: LoraConfig | Mapping[str, Any] | None) -> LoraConfig:
    """A ``LoraConfig`` from ``None`` (defaults), a dict (merged over the defaults) or a config."""
    if isinstance(lora, LoraConfig):
        config = lora
    else:
        kwargs = {**DEFAULT_LORA, **dict(lora or {})}
        if isinstance(kwargs.get("target_modules"), (list, tuple, set)):
            kwargs["target_modules"] = list(kwargs["target_modules"])
        config = LoraConfig(**kwargs)
    config.task_type = "CAUSAL_LM"
    return config


def lora_config_to_dict(config: LoraConfig) -> dict[str, Any]:
    """A plain, picklable dict that :func:`lora_config` turns back into ``config``."""
    out: dict[str, Any] = {}
    for key in ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "modules_to_save"):
        value = getattr(config, key, None)
        if isinstance(value, (set, frozenset, tuple)):
            value = sorted(value)
        out[key] = value
    for key in ("use_rslora", "init_lora_weights", "fan_in_fan_out", "layers_to_transform"):
        value = getattr(config, key, None)
        if value not in (None, False) and not (key == "init_lora_weights" and value is True):
            out[key] = list(value) if isinstance(value, (set, tuple)) else value
    return out


def apply_lora(
    model: PreTrainedModel, lora: LoraConfig | Mapping[str, Any] | None, *, fuse: bool = True
) -> PeftModel:
    """Freeze ``model`` and inject a LoRA adapter; errors name the modules that could be targeted.
    ``fuse``: the fused LoRA forward (:func:`~rlhf_gym.agents.fused.fuse_lora_forward`)."""
    config = lora_config(lora)
    for param in model.parameters():
        param.requires_grad_(False)
    try:
        with warnings.catch_warnings():
            # peft flips fan_in_fan_out for GPT-2's Conv1D itself; its notice is noise here.
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            peft_model = get_peft_model(model, config)
    except ValueError as exc:
        message = str(exc)
        if "target_modules" in message or "not found in the base model" in message:
            raise ValueError(
                f"LoRA target_modules={config.target_modules!r} do not match {type(model).__name__}: "
                f"{message.splitlines()[0]} The model's linear module names are: "
                f"{linear_module_names(model)}. Pass e.g. lora={{'target_modules': [...]}} "
                "with names from that list."
            ) from exc
        raise
    disable_dropout(peft_model)
    if fuse:
        fuse_lora_forward(peft_model)
    return peft_model
