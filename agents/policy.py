"""stable-baselines3 policies whose actor is a Hugging Face causal LM with a LoRA adapter.

:class:`LoRAPolicy` (PPO, A2C, TRPO) and :class:`MaskableLoRAPolicy` (sb3-contrib MaskablePPO)
share :class:`_LoRACore`: the SB3 surface (``forward``, ``evaluate_actions``,
``get_distribution``, ``predict_values``, ``_predict``), the value head, and the trimming of
parameters and state to the trainable ones. Every forward of the language model runs in its
engine (:class:`~rlhf_gym.agents.engine.LMEngine`, ``policy.engine``). Together:

- action logits are the LM's next-token logits at the observation's last valid token; the value
  is a small head (``value_head``) on the LM's last hidden state at that token;
- only trainable weights (LoRA, value head, peft ``modules_to_save``) are "parameters of the
  policy" for stable-baselines3: ``parameters()``/``named_parameters()`` yield only those, so
  the optimizer, gradient clipping, TRPO's natural gradient and ``save()`` never see the frozen
  base; ``state_dict()`` holds only those too, and the base is rebuilt from ``model`` (the path
  or hub id the saved ``policy_kwargs`` record) when an agent is loaded;
- dropout is forced off everywhere (PPO ratios compare two forwards of the same weights);
- attention defaults to ``attn_implementation="sdpa"`` (PyTorch's fused attention: at 512 new
  tokens on the benchmark task an update took 23 s against eager's 27 s and 3.3 GiB against
  4.0 GiB; equal at 48 tokens). TRPO's Fisher-vector products differentiate the policy twice,
  which only eager attention supports, so :class:`rlhf_gym.agents.TRPO` asks for ``"eager"``;
- rollout calls (``forward``/``predict_values``/``predict`` under ``torch.no_grad``) go through
  a per-env KV cache (:mod:`rlhf_gym.agents.kv_cache`); training calls (``evaluate_actions``,
  ``get_distribution``, any call with gradients) run one forward per sequence
  (:mod:`rlhf_gym.agents.sequence_eval`), never the cache;
- rollout calls with float32 weights sample from a merged copy ``W + s * B A`` of each
  adapted weight (``merge_for_rollout``, :class:`~rlhf_gym.agents.fused.RolloutMerge`): one
  matmul per adapted layer per decode step instead of three, rebuilt whenever the adapter
  changes and freed before training;
- a batch's common leading tokens (a chat template's system turn) run once per forward, not
  once per row (``share_prefix``, :mod:`rlhf_gym.agents.shared_prefix`);
- the KL reference is the same model with the adapter disabled (:meth:`reference_log_prob`):
  no second copy of the weights exists;
- the model gets two same-function rewrites (:mod:`rlhf_gym.agents.fused`): a fused LoRA
  forward and the fused kernel for GPT-2's ``gelu_new``; tokens are sampled by inverse CDF
  (:mod:`rlhf_gym.agents.distributions`) rather than ``torch.multinomial``.

A model passed as an instance is modified in place (LoRA layers are injected into it, and
its ``gelu_new`` modules are swapped for the fused kernel of the same function). If it
has no ``name_or_path`` pointing at a directory, saved agents record ``model=None`` and
loading them needs the model again (:func:`rlhf_gym.agents.load_agent` with ``model=``, or
``PPO.load(path, custom_objects={"policy_kwargs": {..., "model": model}})``).
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import numpy as np
import torch
from gymnasium import spaces
from peft import LoraConfig, PeftModel
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn
from transformers import PreTrainedModel

from rlhf_gym.agents.distributions import (
    MaskableVocabCategoricalDistribution,
    VocabCategoricalDistribution,
    sample_with_log_prob,
)
from rlhf_gym.agents.engine import LMEngine
from rlhf_gym.agents.fused import fuse_activations
from rlhf_gym.agents.kv_cache import RolloutKVCache
from rlhf_gym.agents.lora import (
    apply_lora,
    disable_dropout,
    load_causal_lm,
    lora_config_to_dict,
    resolve_dtype,
)

ValueHead = Literal["linear", "mlp"]

_MISSING_MODEL = (
    "LoRAPolicy needs policy_kwargs['model']: a path, a hub id or a transformers causal LM. "
    "If this agent was saved from an in-memory model instance (no path to record), load it with "
    "rlhf_gym.agents.load_agent(path, model=base_model) or "
    "PPO.load(path, custom_objects={'policy_kwargs': {..., 'model': base_model}})."
)


def _check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> int:
    if not (
        isinstance(observation_space, spaces.Dict)
        and {"input_ids", "attention_mask"} <= set(observation_space.spaces)
    ):
        raise ValueError(
            "LoRAPolicy needs the rlhf_gym observation format: "
            "Dict(input_ids=Box(L,), attention_mask=Box(L,)); got "
            f"{observation_space}."
        )
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"LoRAPolicy needs a Discrete(vocab) action space; got {action_space}.")
    return int(action_space.n)


def _check_positions(model: PreTrainedModel, observation_space: spaces.Space) -> None:
    """Refuse, when the agent is built, observations longer than the model's position limit.

    Otherwise the first response to grow past it crashes mid-run inside torch (an
    ``IndexError`` of the position embedding for GPT-2-style models).
    """
    config = model.config.get_text_config()
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    length = int(observation_space["input_ids"].shape[0])  # type: ignore[index]
    if isinstance(limit, int) and length > limit:
        raise ValueError(
            f"max_prompt_tokens + max_new_tokens = {length} exceeds the model's position limit "
            f"{limit} ({type(model).__name__} config). Lower max_new_tokens or max_prompt_tokens "
            f"so that they sum to at most {limit}."
        )


def _lm_vocab_size(model: PreTrainedModel) -> int:
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


class _EngineOption:
    """A policy option stored on its :class:`~rlhf_gym.agents.engine.LMEngine`, the one place
    that reads it. ``cast`` given: settable (through the cast); None: fixed once built."""

    def __init__(self, cast: Callable[[Any], Any] | None = None) -> None:
        self.cast = cast

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, policy: Any, owner: type | None = None) -> Any:
        return self if policy is None else getattr(policy.engine, self.name)

    def __set__(self, policy: Any, value: Any) -> None:
        if self.cast is None:
            raise AttributeError(f"{self.name} is fixed when the policy is built")
        setattr(policy.engine, self.name, self.cast(value))


class _LoRACore:
    """What :class:`LoRAPolicy` and :class:`MaskableLoRAPolicy` share (module docstring).

    Listed first in the bases so its ``__init__`` replaces the MLP-building constructors of
    ``ActorCriticPolicy``/``MaskableActorCriticPolicy`` (it calls ``BasePolicy.__init__``).
    """

    model: PeftModel
    value_head: nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        model: str | os.PathLike[str] | PreTrainedModel | None = None,
        lora: LoraConfig | Mapping[str, Any] | None = None,
        *,
        value_head: ValueHead | None = "linear",
        value_trunk: Literal["detached", "shared"] = "detached",
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
        use_kv_cache: bool = True,
        merge_for_rollout: bool = True,
        share_prefix: bool = True,
        lean_decode: bool = True,
        eval_chunk_size: int = 64,
        logit_memory_mb: float = 256.0,
        gradient_checkpointing: bool = False,
        fast_paths: bool = True,
        use_sde: bool = False,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """
        :param model: the base causal LM: a local path, a hub id or a ``PreTrainedModel``.
        :param lora: a ``peft.LoraConfig`` or a dict of its fields, merged over
            :data:`rlhf_gym.agents.lora.DEFAULT_LORA` (``target_modules=None``: peft's choice
            for known architectures).
        :param value_head: ``"linear"`` (one ``Linear(hidden, 1)``) or ``"mlp"``
            (``Linear-Tanh-Linear``), always in float32. Its output layer starts near zero, so
            the first advantages are the (discounted) rewards rather than a random head's noise.
            ``None``: critic-free (GRPO, RLOO, REINFORCE++): no head is built, trained or saved,
            and values are zeros that no forward computed.
        :param value_trunk: ``"detached"`` (default): the value head reads the LM's hidden state
            but its loss does not train the adapter. With a shared trunk the value loss (the
            squared error of whole-episode rewards) outweighs the policy loss by orders of
            magnitude and spends the adapter's capacity on fitting values: measured on the
            default task, PPO's reward did not rise in 12k steps while the KL grew. ``"shared"``
            restores the SB3-style shared trunk (scale it down with ``vf_coef``).
        :param dtype: dtype to load the base in (``"bfloat16"`` ...); ``None`` keeps the checkpoint's.
        :param attn_implementation: passed to transformers; ``"sdpa"`` by default, ``"eager"``
            for TRPO (see the module doc).
        :param trust_remote_code: forwarded to ``from_pretrained``; off unless you ask.
        :param use_kv_cache: feed one token per env per rollout step (see :mod:`.kv_cache`).
        :param merge_for_rollout: sample with a merged copy ``W + s * B A`` of each adapted
            float32 weight (one matmul per layer instead of three; see
            :class:`~rlhf_gym.agents.fused.RolloutMerge`). It costs one copy of the adapted
            weights while a rollout runs (freed before training); turn it off when the model
            barely fits in memory. Training and the KL reference never use it.
        :param share_prefix: run the tokens that every sequence of a forward begins with (a
            chat template's system turn) once, not once per row, in the rollout's prefill, the
            KL reference pass, training forwards and response scoring
            (:mod:`rlhf_gym.agents.shared_prefix`); off under gradient checkpointing.
        :param lean_decode: run a rollout's one-token decode steps of Llama, Mistral and Qwen
            models through :class:`~rlhf_gym.agents.lean_decode.LeanDecoder` (the same
            function in a few ops per layer, no transformers per-layer machinery); other
            architectures always take the model's forward.
        :param eval_chunk_size: sequences per forward in training-time evaluation.
        :param logit_memory_mb: budget of one ``[tokens, vocab]`` float32 block when whole
            responses are scored (:meth:`score_responses`); the vocabulary projection runs in
            chunks of tokens that fit it.
        :param gradient_checkpointing: recompute each layer's activations in the backward pass
            instead of keeping them (transformers' non-reentrant checkpointing): training
            memory no longer grows with layers x tokens, for about one more forward of time.
            For long answers. Only training passes checkpoint; rollouts never keep activations.
        :param fast_paths: the same-function fast paths of the LM engine (KV cache, merged
            rollout weights, fused LoRA forward and activations; :mod:`rlhf_gym.agents.engine`).
            Off: peft's and transformers' plain forwards, for checking a result.
        :param use_sde: must be False (kept because stable-baselines3 always passes it).
        """
        if use_sde:
            raise ValueError(
                "LoRAPolicy does not support gSDE (use_sde=True): actions are discrete."
            )
        n_actions = _check_spaces(observation_space, action_space)
        if optimizer_kwargs is None:
            optimizer_kwargs = {"eps": 1e-5} if optimizer_class is torch.optim.Adam else {}
        BasePolicy.__init__(
            self,  # type: ignore[arg-type]
            observation_space,
            action_space,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            normalize_images=False,
        )
        if model is None:
            raise ValueError(_MISSING_MODEL)
        base, self.model_name_or_path = load_causal_lm(
            model,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
        vocab = _lm_vocab_size(base)
        if vocab != n_actions:
            raise ValueError(
                f"The model has {vocab} next-token logits but the env's action space is "
                f"Discrete({n_actions}). Create the env with vocab_size={vocab} "
                f"(TextGenerationEnv(..., vocab_size={vocab})), or use the tokenizer the model "
                "was trained with, so that every token id is an action and vice versa."
            )
        _check_positions(base, observation_space)
        disable_dropout(base)
        if fast_paths:
            fuse_activations(base)
        base.eval()
        self.model = apply_lora(base, lora, fuse=fast_paths)
        if gradient_checkpointing:
            _enable_checkpointing(self.model.get_base_model())
        #: Every forward of the LM (decode, scoring, the reference); this class adds the SB3
        #: surface, the value head and the trimming of parameters and state to trainable ones.
        self.engine = LMEngine(
            self.model,
            fast_paths=fast_paths,
            use_kv_cache=use_kv_cache,
            merge_for_rollout=merge_for_rollout,
            share_prefix=share_prefix,
            lean_decode=lean_decode,
            eval_chunk_size=eval_chunk_size,
            logit_memory_mb=logit_memory_mb,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.lora_config = self.model.peft_config["default"]
        self.dtype = resolve_dtype(dtype)
        self.attn_implementation = attn_implementation
        self.trust_remote_code = trust_remote_code
        self.value_head_kind = value_head
        hidden = int(base.config.get_text_config().hidden_size)
        self.value_head: nn.Module | None = (
            None if value_head is None else self._make_value_head(value_head, hidden)
        )
        if value_trunk not in ("detached", "shared"):
            raise ValueError(f"value_trunk must be 'detached' or 'shared', got {value_trunk!r}.")
        self.value_trunk = value_trunk
        # Attributes ActorCriticPolicy's own helpers read.
        self.use_sde = False
        self.dist_kwargs = None
        self.share_features_extractor = True
        self.action_dist = self._make_action_dist(action_space)
        # Switched only through the contexts below (:meth:`entropy_in_training`,
        # :meth:`skipping_unused_bootstrap`), which the algorithms enter around SB3's loops.
        self._compute_entropy = True
        self._bootstrap_unused: Callable[[int], bool] | None = None
        self._watched: list[nn.Parameter] = self._trainable_parameters()
        self.optimizer = optimizer_class(self._watched, lr=lr_schedule(1), **optimizer_kwargs)

    # ------------------------------------------------------------------ engine settings
    # Kept on the engine (the one place that reads them); exposed here as the policy's own
    # options, as stable-baselines3 users set policy_kwargs and read them back.
    use_kv_cache = _EngineOption(bool)
    merge_for_rollout = _EngineOption(bool)
    share_prefix = _EngineOption(bool)
    lean_decode = _EngineOption(bool)
    eval_chunk_size = _EngineOption(int)
    logit_memory_mb = _EngineOption()
    gradient_checkpointing = _EngineOption()
    fast_paths = _EngineOption()

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _make_value_head(kind: ValueHead, hidden: int) -> nn.Module:
        if kind == "linear":
            head: nn.Module = nn.Linear(hidden, 1)
        elif kind == "mlp":
            head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        else:
            raise ValueError(f"value_head must be 'linear' or 'mlp', got {kind!r}.")
        for module in head.modules():
            if isinstance(module, nn.Linear):
                if module.out_features == 1:
                    # V ~ 0 until the head has seen returns (tiny, not zero: an MLP head's
                    # first layer would get no gradient through a zero output layer).
                    nn.init.orthogonal_(module.weight, gain=0.01)
                else:
                    nn.init.orthogonal_(module.weight, gain=2**0.5)
                nn.init.zeros_(module.bias)
        return head

    def _value(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.value_head is None:  # critic-free: values are never used
            return hidden.new_zeros(hidden.shape[0], 1)
        return self.value_head(hidden.detach() if self.value_trunk == "detached" else hidden)

    def _make_action_dist(self, action_space: spaces.Space) -> Any:
        return VocabCategoricalDistribution(int(action_space.n))  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ what SB3 sees
    @property
    def device(self) -> torch.device:
        """SB3's definition (the device of the first parameter), without SB3's search for it.

        ``BaseModel.device`` takes the first of ``parameters()``, which here (trainable ones
        only) walks the frozen base's modules before it finds one; the policy asks twice per
        rollout step, and the walk was about 1% of the benchmark task's sampling loop (5.7% of a
        host-bound micro model's).
        The trainable list is kept current by :meth:`_apply` (``.to()``) and weight changes.
        """
        watched = self.__dict__.get("_watched")
        if not watched:
            return super().device  # type: ignore[misc]
        return watched[0].device

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Any:
        result = super()._apply(fn, recurse)  # type: ignore[misc]
        if "_watched" in self.__dict__:  # parameters may have been replaced, not moved in place
            self._watched = self._trainable_parameters()
            self.engine.invalidate()
        return result

    def named_parameters(  # type: ignore[override]
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """Only trainable parameters: the frozen base is not a parameter of the *policy*."""
        for name, param in nn.Module.named_parameters(self, prefix, recurse, remove_duplicate):  # type: ignore[arg-type]
            if param.requires_grad:
                yield name, param

    def _trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def _trainable_state_names(self) -> set[str]:
        names = {name for name, _ in self.named_parameters()}
        if self.value_head is not None:
            names |= {f"value_head.{name}" for name, _ in self.value_head.named_buffers()}
        return names

    def state_dict(  # type: ignore[override]
        self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, torch.Tensor]:
        """Trainable tensors only (LoRA, value head, modules_to_save): checkpoints stay adapter-sized."""
        full = nn.Module.state_dict(self, *args, prefix=prefix, keep_vars=keep_vars)  # type: ignore[arg-type]
        keep = {prefix + name for name in self._trainable_state_names()}
        out = destination if destination is not None else OrderedDict()
        for key, value in full.items():
            if key in keep:
                out[key] = value
        return out

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load trainable tensors; ``strict`` checks exactly those (the base comes from ``model``)."""
        expected = self._trainable_state_names()
        full_keys = set(nn.Module.state_dict(self).keys())  # type: ignore[arg-type]
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(set(state_dict) - full_keys)
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"Error loading {type(self).__name__} state: missing keys {missing[:8]}, "
                f"unexpected keys {unexpected[:8]}. Was the checkpoint saved with a different "
                "LoRA config (r, target_modules) or value_head?"
            )
        result = nn.Module.load_state_dict(self, state_dict, strict=False, assign=assign)  # type: ignore[arg-type]
        self._weights_changed()
        return result

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return dict(
            observation_space=self.observation_space,
            action_space=self.action_space,
            lr_schedule=BasePolicy._dummy_schedule,
            model=self.model_name_or_path,
            lora=lora_config_to_dict(self.lora_config),
            value_head=self.value_head_kind,
            value_trunk=self.value_trunk,
            dtype=None if self.dtype is None else str(self.dtype).removeprefix("torch."),
            attn_implementation=self.attn_implementation,
            trust_remote_code=self.trust_remote_code,
            use_kv_cache=self.use_kv_cache,
            merge_for_rollout=self.merge_for_rollout,
            share_prefix=self.share_prefix,
            lean_decode=self.lean_decode,
            eval_chunk_size=self.eval_chunk_size,
            logit_memory_mb=self.logit_memory_mb,
            gradient_checkpointing=self.gradient_checkpointing,
            fast_paths=self.fast_paths,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
        )

    def set_training_mode(self, mode: bool) -> None:
        """The LM always stays in eval mode (dropout is off anyway); entering a training phase
        invalidates the rollout KV cache, since the weights are about to change."""
        self.train(False)  # type: ignore[attr-defined]
        if mode:
            self._weights_changed()

    def _weights_changed(self) -> None:
        self.engine.invalidate()
        self._watched = self._trainable_parameters()

    # ------------------------------------------------------------------ LM forwards (engine)
    def _obs_tokens(self, obs: PyTorchObs) -> tuple[torch.Tensor, torch.Tensor]:
        # SB3's buffers and preprocess_obs hold Box observations as float32: exact for ids < 2**24.
        assert isinstance(obs, dict)
        ids = obs["input_ids"].to(self.device).round().long()  # type: ignore[attr-defined]
        mask = obs["attention_mask"].to(self.device).round().long()  # type: ignore[attr-defined]
        return ids, mask  # [N, L] each

    def _last_outputs(
        self, obs: PyTorchObs, *, use_cache: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [N, vocab], hidden [N, hidden])`` at each observation's last token: a
        rollout decode step without gradients, a full forward with them."""
        ids, mask = self._obs_tokens(obs)
        if torch.is_grad_enabled():
            return self.engine.last_token_outputs(ids, mask)
        return self.engine.decode(ids, mask, use_cache=use_cache)

    def kv_cache(self, batch_size: int) -> RolloutKVCache | None:
        """The rollout cache used for batches of ``batch_size`` observations (for tests/benchmarks)."""
        return self.engine.kv_cache(batch_size)

    def _scores(
        self, obs: PyTorchObs, actions: torch.Tensor, action_masks: Any, *, entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The engine's :meth:`~rlhf_gym.agents.engine.LMEngine.score_actions` of SB3 inputs."""
        ids, mask = self._obs_tokens(obs)
        masks = None
        if action_masks is not None:  # numpy or tensor, one row per observation
            masks = torch.as_tensor(action_masks, device=ids.device).reshape(ids.shape[0], -1)
        return self.engine.score_actions(ids, mask, actions, masks, entropy=entropy)

    # ------------------------------------------------------------------ reference policy (KL)
    @torch.no_grad()
    def reference_log_prob(
        self,
        obs: PyTorchObs,
        actions: torch.Tensor,
        action_masks: torch.Tensor | np.ndarray | None = None,
    ) -> torch.Tensor:
        """``log pi_ref(a|s)`` under the base model: the same weights with the adapter disabled."""
        with self.engine.reference():
            log_prob, _, _, order = self._scores(obs, actions, action_masks, entropy=False)
        return log_prob[torch.argsort(order)]

    # ------------------------------------------------------------------ whole responses
    def score_responses(
        self, *tensors: torch.Tensor, reference: bool = False, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs of whole responses, one forward per sequence (group algorithms):
        :meth:`rlhf_gym.agents.engine.LMEngine.score_responses` (its arguments, ``input_ids``,
        ``attention_mask``, ``prompt_lens``, ``response_lens``, ``entropy``, ``action_masks``)
        on this policy's device. ``reference=True`` scores under the base model (the adapter
        disabled, no gradients): the KL reference."""
        on_device = [t.to(self.device).long() for t in tensors]
        context = self.engine.reference() if reference else nullcontext()
        grad = torch.no_grad() if reference else nullcontext()
        with context, grad:
            return self.engine.score_responses(*on_device, **options)

    def shared_prompts(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_lens: torch.Tensor,
        max_tokens: int | None = None,
    ) -> AbstractContextManager[Any]:
        """A minibatch's shared prompt tokens run once for the chunks scored inside the block:
        :meth:`rlhf_gym.agents.engine.LMEngine.shared_prompts` on this policy's device."""
        ids, mask, lens = (
            t.to(self.device).long() for t in (input_ids, attention_mask, prompt_lens)
        )
        return self.engine.shared_prompts(ids, mask, lens, max_tokens)

    # ------------------------------------------------------------------ distributions
    def _distribution(self, logits: torch.Tensor, action_masks: Any = None) -> Any:
        dist = self.action_dist.proba_distribution(action_logits=logits)
        if action_masks is not None:
            dist.apply_masking(action_masks)
        return dist

    @property
    def compute_entropy(self) -> bool:
        """Whether ``evaluate_actions`` returns the entropy (default True). The algorithms never
        set it; they switch it for the length of their update with :meth:`entropy_in_training`.
        """
        return self._compute_entropy

    @compute_entropy.setter
    def compute_entropy(self, value: bool) -> None:
        self._compute_entropy = bool(value)

    @property
    def bootstrap_unused(self) -> Callable[[int], bool] | None:
        """The test of :meth:`skipping_unused_bootstrap` in force, or ``None`` outside it."""
        return self._bootstrap_unused

    @contextlib.contextmanager
    def entropy_in_training(self, enabled: bool) -> Iterator[None]:
        """Whether ``evaluate_actions`` computes the full-vocabulary entropy inside the block.

        SB3's PPO, A2C and MaskablePPO multiply the entropy by ``ent_coef``; at 0 (the LM
        default; TRPO has none) it is a ``[batch, vocab]`` softmax and its backward for nothing.
        With ``enabled=False`` the entropy comes back as ``None``, and SB3 then logs its sample
        estimate ``-mean(log_prob)`` as ``train/entropy_loss``.
        """
        previous, self._compute_entropy = self._compute_entropy, bool(enabled)
        try:
            yield
        finally:
            self._compute_entropy = previous

    @contextlib.contextmanager
    def skipping_unused_bootstrap(self, unused: Callable[[int], bool]) -> Iterator[None]:
        """Inside the block, a no-grad ``predict_values`` of ``batch`` observations for which
        ``unused(batch)`` is true returns zeros without a forward.

        For SB3's ``collect_rollouts``, which ends by predicting the values of the final
        observations to bootstrap GAE; GAE multiplies them by ``1 - done``, so when every env
        has just finished an episode they are discarded (see
        :meth:`rlhf_gym.agents.algorithms.KLControlMixin.collect_rollouts`, which decides).
        """
        previous, self._bootstrap_unused = self._bootstrap_unused, unused
        try:
            yield
        finally:
            self._bootstrap_unused = previous

    def predict_values(self, obs: PyTorchObs) -> torch.Tensor:
        if self.value_head is None:  # critic-free: no forward for values nobody reads
            return torch.zeros(int(obs["input_ids"].shape[0]), 1, device=self.device)  # type: ignore[index]
        unused = self._bootstrap_unused
        if unused is not None and not torch.is_grad_enabled():
            batch = int(obs["input_ids"].shape[0])  # type: ignore[index]
            if unused(batch):
                return torch.zeros(batch, 1, device=self.device)
        _, hidden = self._last_outputs(obs, use_cache=True)
        return self._value(hidden)

    def _evaluate_grouped(
        self, obs: PyTorchObs, actions: torch.Tensor, action_masks: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``evaluate_actions``: values, log-probs and (if wanted) entropies, in input order.

        The scores are computed in group order and only the per-transition results are
        permuted back (see :meth:`rlhf_gym.agents.engine.LMEngine.score_actions`).
        """
        log_prob, entropy, hidden, order = self._scores(
            obs, actions, action_masks, entropy=self._compute_entropy
        )
        inverse = torch.argsort(order)
        values = self._value(hidden)[inverse]
        return values, log_prob[inverse], None if entropy is None else entropy[inverse]

    # ------------------------------------------------------------------ export
    def save_pretrained(
        self, save_directory: str | os.PathLike[str], *, merged: bool = False, tokenizer: Any = None
    ) -> str:
        """Write the peft adapter (or, ``merged=True``, a plain HF model) to ``save_directory``."""
        from rlhf_gym.agents.export import export_adapter, export_merged

        if merged:
            return export_merged(self, save_directory, tokenizer=tokenizer)  # type: ignore[arg-type]
        return export_adapter(self, save_directory)  # type: ignore[arg-type]


def _enable_checkpointing(model: PreTrainedModel) -> None:
    """Non-reentrant activation checkpointing of every layer (frozen inputs need no grad hooks)."""
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:  # transformers >= 5.x; gradient_checkpointing_enable is deprecated
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def record_model_by_path(policy_kwargs: dict[str, Any], policy: Any) -> dict[str, Any]:
    """``policy_kwargs`` with the base model recorded by path, never by value.

    stable-baselines3 pickles ``policy_kwargs`` into ``save()``; a model instance there would put
    the whole frozen base in every checkpoint.
    """
    if "model" in policy_kwargs and hasattr(policy, "model_name_or_path"):
        return {**policy_kwargs, "model": policy.model_name_or_path}
    return policy_kwargs


class LoRAPolicy(_LoRACore, ActorCriticPolicy):
    """Actor-critic policy for PPO, A2C and TRPO: LM next-token logits + value head, LoRA-trained.

    Pass the base model through ``policy_kwargs={"model": ..., "lora": {...}}`` (see
    :meth:`_LoRACore.__init__` for every option), or use :func:`rlhf_gym.agents.make_agent`.
    """

    def forward(
        self, obs: PyTorchObs, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, hidden = self._last_outputs(obs, use_cache=True)
        actions, log_prob = sample_with_log_prob(logits, deterministic=deterministic)
        return actions, self._value(hidden), log_prob

    def evaluate_actions(
        self, obs: PyTorchObs, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return self._evaluate_grouped(obs, actions, None)

    def get_distribution(self, obs: PyTorchObs) -> Any:
        logits, _ = self._last_outputs(obs, use_cache=False)
        return self._distribution(logits)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> torch.Tensor:
        logits, _ = self._last_outputs(observation, use_cache=True)
        return sample_with_log_prob(logits, deterministic=deterministic)[0]


class MaskableLoRAPolicy(_LoRACore, MaskableActorCriticPolicy):
    """:class:`LoRAPolicy` for sb3-contrib's MaskablePPO: env ``action_masks()`` restrict tokens."""

    def _make_action_dist(self, action_space: spaces.Space) -> Any:
        return MaskableVocabCategoricalDistribution(int(action_space.n))  # type: ignore[attr-defined]

    def forward(  # type: ignore[override]
        self,
        obs: PyTorchObs,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, hidden = self._last_outputs(obs, use_cache=True)
        actions, log_prob = sample_with_log_prob(
            logits, deterministic=deterministic, action_masks=action_masks
        )
        return actions, self._value(hidden), log_prob

    def evaluate_actions(  # type: ignore[override]
        self,
        obs: PyTorchObs,
        actions: torch.Tensor,
        action_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return self._evaluate_grouped(obs, actions, action_masks)

    def get_distribution(  # type: ignore[override]
        self, obs: PyTorchObs, action_masks: np.ndarray | None = None
    ) -> Any:
        logits, _ = self._last_outputs(obs, use_cache=False)
        return self._distribution(logits, action_masks)

    def _predict(  # type: ignore[override]
        self,
        observation: PyTorchObs,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> torch.Tensor:
        logits, _ = self._last_outputs(observation, use_cache=True)
        actions, _ = sample_with_log_prob(
            logits, deterministic=deterministic, action_masks=action_masks
        )
        return actions
