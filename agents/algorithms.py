"""The algorithm registry and :func:`make_agent`: swap RL algorithms by name, nothing else.

Built-ins: ``"ppo"`` and ``"a2c"`` (stable-baselines3), ``"trpo"`` and ``"maskable_ppo"``
(sb3-contrib), and the critic-free group-relative family ``"grpo"``, ``"rloo"`` and
``"reinforce_pp"`` (:mod:`rlhf_gym.agents.group_algorithms`; they need an env in rounds,
``make_vec_env(n, group_size=k)``). Each is the library's class with :class:`KLControlMixin` in front, which adds
the ``kl_coef``/``kl_target``/``kl_horizon`` arguments and a KL-shaping rollout buffer
(:mod:`rlhf_gym.agents.kl`); everything else is the stock algorithm, so ``learn``, ``save``,
``load``, callbacks and loggers behave as documented by stable-baselines3.

Defaults are set for language models and can be overridden by keyword: ``gamma=1.0`` (the
reward arrives at the end of a short, finite episode, so discounting would only favour short
answers), ``gae_lambda=0.95``, ``ent_coef=0.0``, a LoRA-sized learning rate (2e-4), Adam rather
than A2C's RMSprop, and rollout sizes of a few episodes per env.

New algorithms join with :func:`register_algorithm`::

    @register_algorithm("my_ppo", policy=LoRAPolicy, defaults={"n_steps": 64})
    class MyPPO(sb3.PPO): ...

A registered class that is not already a :class:`KLControlMixin` gets the mixin in front of it,
so the KL penalty works for it as long as it uses a rollout buffer (``kl=False`` opts out, for
algorithms that handle the KL term themselves).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import stable_baselines3 as sb3
import torch
from peft import LoraConfig
from sb3_contrib import TRPO as _SB3TRPO
from sb3_contrib import MaskablePPO as _SB3MaskablePPO
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.vec_env import VecEnv
from transformers import PreTrainedModel

from rlhf_gym.agents import distributed
from rlhf_gym.agents.data_parallel import ActorCriticDataParallel
from rlhf_gym.agents.group_algorithms import (
    GRPO,
    RLOO,
    GroupRelativePO,
    REINFORCEpp,
    class_for_baseline,
)
from rlhf_gym.agents.kl import (
    KLDictRolloutBuffer,
    KLMaskableDictRolloutBuffer,
    KLShapingMixin,
    make_kl_controller,
)
from rlhf_gym.agents.loop_state import ResumableLoop
from rlhf_gym.agents.lora import lora_config_to_dict
from rlhf_gym.agents.policy import (
    LoRAPolicy,
    MaskableLoRAPolicy,
    _LoRACore,
    record_model_by_path,
)
from rlhf_gym.agents.saving import is_agent_dir, read_agent_record, restore_agent_state

A = TypeVar("A", bound=type)


class KLControlMixin(ResumableLoop):
    """Adds KL control to an on-policy stable-baselines3 algorithm through its rollout buffer.

    :param kl_coef: initial (or fixed) KL coefficient beta; 0 turns the penalty off.
    :param kl_target: target KL per sequence for the adaptive controller; ``None``: fixed beta.
    :param kl_horizon: horizon (in sequences) of the adaptive controller.
    """

    kl_controller: Any
    rollout_buffer: Any
    rollout_buffer_class: Any
    policy: Any
    policy_kwargs: dict[str, Any]

    def __init__(
        self,
        *args: Any,
        kl_coef: float = 0.05,
        kl_target: float | None = None,
        kl_horizon: int = 10000,
        **kwargs: Any,
    ) -> None:
        self.kl_controller = make_kl_controller(kl_coef, kl_target, kl_horizon)
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        if self.rollout_buffer_class is None:
            maskable = isinstance(self, _SB3MaskablePPO)
            self.rollout_buffer_class = (
                KLMaskableDictRolloutBuffer if maskable else KLDictRolloutBuffer
            )
        env = getattr(self, "env", None)
        if env is not None and getattr(env, "rounds", False):
            raise ValueError(
                f"{type(self).__name__} steps every env as a live episode and would learn from "
                f"the idle steps of an env in rounds (group_size={getattr(env, 'group_size', 1)}); "
                "build the env with make_vec_env(n) (group_size=1), or pick a group algorithm: "
                "grpo, rloo, reinforce_pp."
            )
        if distributed.enabled() and not self.supports_data_parallel():
            raise ValueError(
                f"{type(self).__name__} cannot train on {distributed.world_size()} ranks: "
                f"{self._data_parallel_refusal} Run it as one process, or pick one of: "
                "ppo, maskable_ppo, a2c, grpo, rloo, reinforce_pp."
            )
        super()._setup_model()  # type: ignore[misc]
        distributed.broadcast_parameters(self.policy.parameters())  # equal start on every rank
        if not isinstance(self.rollout_buffer, KLShapingMixin):
            raise TypeError(
                f"rollout_buffer_class={self.rollout_buffer_class.__name__} does not apply the KL "
                "penalty; subclass it with rlhf_gym.agents.kl.KLShapingMixin first."
            )
        self.rollout_buffer.bind(self)
        self.policy_kwargs = record_model_by_path(self.policy_kwargs, self.policy)

    def collect_rollouts(
        self, env: VecEnv, callback: Any, rollout_buffer: Any, n_rollout_steps: int, *args: Any
    ) -> bool:
        """SB3's ``collect_rollouts``, minus one forward whose result is multiplied by zero.

        After its loop SB3 predicts the values of the final observations to bootstrap GAE, and
        GAE multiplies them by ``1 - done``. When every env has just finished an episode (the
        usual case: ``n_steps`` a multiple of a fixed completion length) those observations are
        the next rollout's fresh prompts and the values are discarded, yet predicting them is a
        full prompt prefill (5% of a rollout on the benchmark task). The policy is told to
        return zeros for exactly that call: a full-batch ``predict_values`` once the buffer is
        full and every env's last step ended an episode. SB3 makes its only other rollout-time
        call (truncated episodes' terminal values) before the step's ``add``, so before the
        buffer is full. Advantages and returns are unchanged (tested). ``*args``: MaskablePPO's
        ``use_masking``.

        With several ranks ``num_timesteps`` counts the steps of all of them
        (:func:`rlhf_gym.agents.distributed.count_steps` after each rollout), so ``learn``'s
        total, callbacks and logs agree on every rank.
        """
        start = self.num_timesteps
        more = self._collect_rollouts(env, callback, rollout_buffer, n_rollout_steps, *args)
        self.num_timesteps = distributed.count_steps(start, self.num_timesteps)
        return more

    def _collect_rollouts(
        self, env: VecEnv, callback: Any, rollout_buffer: Any, n_rollout_steps: int, *args: Any
    ) -> bool:
        policy = self.policy
        if not isinstance(policy, _LoRACore):
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps, *args)  # type: ignore[misc]

        def bootstrap_unused(batch_size: int) -> bool:
            starts = getattr(self, "_last_episode_starts", None)
            return (
                batch_size == env.num_envs
                and bool(rollout_buffer.full)
                and starts is not None
                and bool(np.all(starts))
            )

        with policy.skipping_unused_bootstrap(bootstrap_unused):
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps, *args)  # type: ignore[misc]

    #: Why the class cannot train on several ranks (shown when it is asked to).
    _data_parallel_refusal = "it has no data-parallel update (train_data_parallel)."

    def supports_data_parallel(self) -> bool:
        """Whether the class overrides :meth:`train_data_parallel` (PPO, MaskablePPO, A2C)."""
        return type(self).train_data_parallel is not KLControlMixin.train_data_parallel

    def train_data_parallel(self) -> None:
        """The update when several ranks train (:mod:`rlhf_gym.agents.data_parallel`); a
        registered algorithm that wants ranks overrides it."""
        raise NotImplementedError

    def train(self) -> None:
        # With ent_coef == 0 (TRPO has none) the entropy is multiplied by zero: the LoRA policy
        # skips computing it (see _LoRACore.entropy_in_training).
        policy = self.policy
        wanted = float(getattr(self, "ent_coef", 0.0) or 0.0) != 0.0
        entropy = policy.entropy_in_training(wanted) if isinstance(policy, _LoRACore) else None
        with entropy or contextlib.nullcontext():
            if distributed.enabled() or getattr(self, "grad_chunk_size", None) is not None:
                self.train_data_parallel()
            else:
                super().train()  # type: ignore[misc]
        check_finite_losses(self)


def check_finite_losses(algorithm: Any) -> None:
    """Stop a run whose update produced an inf/NaN loss, before anything saves its weights.

    SB3 logs the losses of ``train()``; a non-finite one (an outlier reward squared in the value
    loss, a NaN from the model) means the weights just stepped on garbage. Raising here, between
    the update and the next rollout, keeps the last checkpoint (written at a rollout start) the
    last good state.
    """
    values = getattr(getattr(algorithm, "logger", None), "name_to_value", {}) or {}
    bad = {k: v for k, v in values.items() if k.startswith("train/") and k.endswith("loss")
           and isinstance(v, (int, float, np.floating)) and not np.isfinite(v)}  # fmt: skip
    if bad:
        name, value = next(iter(bad.items()))
        raise FloatingPointError(
            f"{type(algorithm).__name__}: {name} became {value} at step "
            f"{algorithm.num_timesteps}; the update's weights are not saved (resume from the last "
            "checkpoint). Usual causes: rewards far larger than a few units (lower them, or set "
            "a reward_bound / reward_clip), or a learning rate too high."
        )


class PPO(ActorCriticDataParallel, KLControlMixin, sb3.PPO):
    """stable-baselines3 PPO with KL control (see :class:`KLControlMixin`) and a data-parallel
    update (:mod:`rlhf_gym.agents.data_parallel`)."""


class A2C(ActorCriticDataParallel, KLControlMixin, sb3.A2C):
    """stable-baselines3 A2C with KL control (see :class:`KLControlMixin`) and a data-parallel
    update (:mod:`rlhf_gym.agents.data_parallel`)."""

    _a2c_update = True


class TRPO(KLControlMixin, _SB3TRPO):
    """sb3-contrib TRPO with KL control (see :class:`KLControlMixin`).

    A LoRA policy gets ``attn_implementation="eager"`` unless the caller chose one: TRPO's
    Fisher-vector products differentiate the policy twice, and PyTorch's fused attention
    kernels (``sdpa``, the policy's default) have no double backward.
    """

    _data_parallel_refusal = (
        "its line search evaluates the loss at trial steps, one collective per trial, which is "
        "not built."
    )

    def __init__(self, policy: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(policy, type) and issubclass(policy, _LoRACore):
            policy_kwargs = dict(kwargs.get("policy_kwargs") or {})
            policy_kwargs.setdefault("attn_implementation", "eager")
            kwargs["policy_kwargs"] = policy_kwargs
        super().__init__(policy, *args, **kwargs)


class MaskablePPO(ActorCriticDataParallel, KLControlMixin, _SB3MaskablePPO):
    """sb3-contrib MaskablePPO with KL control; the env must offer ``action_masks()``."""


@dataclass(frozen=True)
class AlgorithmSpec:
    """A registry entry: the (KL-enabled) class, its policy class and LM defaults."""

    name: str
    cls: type[BaseAlgorithm]
    policy: type
    defaults: Mapping[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, AlgorithmSpec] = {}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_algorithm(
    name: str,
    *,
    policy: type | None = None,
    defaults: Mapping[str, Any] | None = None,
    kl: bool = True,
) -> Callable[[A], A]:
    """Class decorator: make an algorithm available to :func:`make_agent` under ``name``.

    ``policy`` defaults to :class:`LoRAPolicy` (:class:`MaskableLoRAPolicy` for MaskablePPO
    subclasses). With ``kl=True`` a class lacking :class:`KLControlMixin` is registered as a
    subclass with the mixin in front; the decorated class itself is returned unchanged.
    """
    key = _normalise(name)

    def decorator(cls: A) -> A:
        algo = cls
        if kl and not issubclass(cls, KLControlMixin):
            algo = type(cls.__name__, (KLControlMixin, cls), {"__module__": cls.__module__})
        pol = policy or (MaskableLoRAPolicy if issubclass(cls, _SB3MaskablePPO) else LoRAPolicy)
        _REGISTRY[key] = AlgorithmSpec(key, algo, pol, dict(defaults or {}))  # type: ignore[arg-type]
        return cls

    return decorator


def list_algorithms() -> list[str]:
    """Names :func:`make_agent` accepts, sorted."""
    return sorted(_REGISTRY)


def get_algorithm(name: str) -> AlgorithmSpec:
    """The registry entry for ``name``; unknown names fail with close matches."""
    key = _normalise(name)
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown algorithm {name!r}.{hint} Available: {', '.join(list_algorithms())}. "
            "Register new ones with rlhf_gym.agents.register_algorithm."
        )
    return _REGISTRY[key]


def _spec_for_class(cls: type) -> AlgorithmSpec:
    if not (isinstance(cls, type) and issubclass(cls, BaseAlgorithm)):
        raise TypeError(f"Expected an algorithm name or a stable-baselines3 class, got {cls!r}.")
    for spec in _REGISTRY.values():
        if issubclass(cls, spec.cls):  # a registered class or a user subclass of one
            return replace(spec, cls=cls)
    for spec in _REGISTRY.values():
        if cls in spec.cls.__bases__:  # the stock class (sb3.PPO): use the KL-enabled twin
            return spec
    algo = cls if issubclass(cls, KLControlMixin) else type(cls.__name__, (KLControlMixin, cls), {})
    pol = MaskableLoRAPolicy if issubclass(cls, _SB3MaskablePPO) else LoRAPolicy
    return AlgorithmSpec(cls.__name__.lower(), algo, pol, {})


def _accepted(cls: type, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    params: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            params |= set(inspect.signature(klass.__init__).parameters)
    return {k: v for k, v in kwargs.items() if k in params}


def make_agent(
    name_or_class: str | type[BaseAlgorithm],
    env: VecEnv | gym.Env | str,
    *,
    model: str | os.PathLike[str] | PreTrainedModel,
    lora: LoraConfig | Mapping[str, Any] | None = None,
    kl_coef: float = 0.05,
    kl_target: float | None = None,
    kl_horizon: int = 10000,
    seed: int | None = 0,
    device: str = "auto",
    policy_kwargs: Mapping[str, Any] | None = None,
    **algo_kwargs: Any,
) -> BaseAlgorithm:
    """Build an RL agent that fine-tunes ``model`` with LoRA on ``env``.

    :param name_or_class: a registered name (:func:`list_algorithms`) or an algorithm class.
    :param env: a stable-baselines3 ``VecEnv`` (e.g. :func:`rlhf_gym.envs.make_vec_env`), a
        Gymnasium env, or an env id.
    :param model: the base causal LM (path, hub id or instance, see :class:`LoRAPolicy`).
    :param lora: ``LoraConfig`` or dict (e.g. ``{"r": 8, "target_modules": ["c_attn"]}``).
    :param kl_coef, kl_target, kl_horizon: KL control, see :class:`KLControlMixin`.
    :param policy_kwargs: more :class:`LoRAPolicy` options (``dtype``, ``value_head``...).
    :param algo_kwargs: algorithm arguments; they override the registry's LM defaults.
    :return: the stable-baselines3 algorithm instance (``learn``, ``save``, ``predict``...).
    """
    spec = (
        get_algorithm(name_or_class)
        if isinstance(name_or_class, str)
        else _spec_for_class(name_or_class)
    )
    if distributed.enabled() and not issubclass(spec.cls, (KLControlMixin, GroupRelativePO)):
        raise ValueError(
            f"{spec.cls.__name__} cannot train on {distributed.world_size()} ranks: it was "
            "registered with kl=False, so no data-parallel update averages its gradients (each "
            "rank would drift alone). Run it as one process, or give it KLControlMixin and a "
            "train_data_parallel."
        )
    kwargs = {**_accepted(spec.cls, spec.defaults), **algo_kwargs}
    pkw = {"model": model, "lora": lora, **dict(policy_kwargs or {})}
    agent = spec.cls(
        spec.policy,
        env,
        policy_kwargs=pkw,
        seed=seed,
        device=device,
        kl_coef=kl_coef,
        kl_target=kl_target,
        kl_horizon=kl_horizon,
        **kwargs,
    )
    # How to rebuild this agent, for rlhf_gym.agents.save_agent (tensors + JSON, no pickle).
    agent.rlhf_gym_spec = {  # type: ignore[attr-defined]
        "algorithm": spec.name,
        "model": getattr(agent.policy, "model_name_or_path", None),
        "lora": lora_config_to_dict(agent.policy.lora_config),
        "kl_coef": kl_coef,
        "kl_target": kl_target,
        "kl_horizon": kl_horizon,
        "seed": seed,
        "policy_kwargs": {
            k: str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else v
            for k, v in dict(policy_kwargs or {}).items()
        },
        "algo_kwargs": kwargs,
    }
    return agent


def load_agent(
    path: str | os.PathLike[str],
    env: VecEnv | gym.Env | None = None,
    *,
    algorithm: str | type[BaseAlgorithm] | None = None,
    model: str | os.PathLike[str] | PreTrainedModel | None = None,
    device: str = "auto",
    trust_pickle: bool = False,
    **kwargs: Any,
) -> BaseAlgorithm:
    """Load an agent: a directory from :func:`~rlhf_gym.agents.save_agent`, or an SB3 zip.

    A directory (tensors in safetensors, the rest in JSON) loads without unpickling anything;
    it needs ``env``. An SB3 zip (``agent.save(path)``) holds a pickle that runs code when
    loaded, so it loads only with ``trust_pickle=True``: for files you made or trust.

    ``model`` is required when the agent was built from an in-memory model (its zip records
    ``model=None``) and may also point a saved agent at a moved base checkpoint. ``algorithm``
    defaults to the registry name ``make_agent`` recorded with the agent (in the directory's
    ``agent.json``, or as ``rlhf_gym_spec`` in a zip); only a zip of an agent built without
    ``make_agent`` falls back to telling the class from its saved attributes.
    """
    if is_agent_dir(path):
        if env is None:
            raise ValueError(f"load_agent({str(path)!r}): an agent directory needs env=...")
        record = read_agent_record(path)
        agent = make_agent(
            record["algorithm"],  # the registry name the agent was built with
            env,
            model=model if model is not None else record["model"],
            lora=record["lora"],
            kl_coef=record["kl_coef"],
            kl_target=record["kl_target"],
            kl_horizon=record["kl_horizon"],
            seed=record["seed"],
            device=device,
            policy_kwargs=record["policy_kwargs"],
            **record["algo_kwargs"],
        )
        return restore_agent_state(agent, path, record)
    if not trust_pickle:
        raise ValueError(
            f"{str(path)!r} is a stable-baselines3 zip: it holds a pickle, which runs code when "
            "loaded. Load it with load_agent(..., trust_pickle=True) only if you made it or "
            "trust it; rlhf_gym.agents.save_agent writes agents as tensors and JSON instead."
        )
    data, _, _ = load_from_zip_file(path, device=device, load_data=True)
    assert data is not None
    recorded = (data.get("rlhf_gym_spec") or {}).get("algorithm")
    if algorithm is None and recorded in _REGISTRY:
        cls: type[BaseAlgorithm] = get_algorithm(recorded).cls  # the name make_agent recorded
    elif algorithm is None:
        cls = _class_from_data(data)  # a zip of an agent not built by make_agent
    elif isinstance(algorithm, str):
        cls = get_algorithm(algorithm).cls
    else:
        cls = _spec_for_class(algorithm).cls
    custom: dict[str, Any] = dict(kwargs.pop("custom_objects", None) or {})
    if model is not None:
        custom["policy_kwargs"] = {**data["policy_kwargs"], "model": model}
    return cls.load(path, env=env, device=device, custom_objects=custom, **kwargs)


def _class_from_data(data: Mapping[str, Any]) -> type[BaseAlgorithm]:
    if "loss_type" in data and "baseline" in data:
        return class_for_baseline(str(data["baseline"]))
    if "cg_max_steps" in data:
        return TRPO
    buffer_class = data.get("rollout_buffer_class")
    if isinstance(buffer_class, type) and issubclass(buffer_class, MaskableDictRolloutBuffer):
        return MaskablePPO
    if "n_epochs" in data:
        return PPO
    return A2C


#: PPO's minibatches hold whole episodes (:class:`~rlhf_gym.agents.kl.KLShapingMixin`), so an
#: epoch costs one forward per episode whatever ``batch_size``; 128 transitions (about 9 episodes
#: of the default task) passed the main job's checks on seeds 0-3 with perplexity 1.11-1.21x the
#: base's, where 64 reached 1.68x on seed 3 (4x the optimizer steps of 256, which learned less).
_PPO_DEFAULTS = {
    "n_steps": 32,
    "batch_size": 128,
    "n_epochs": 4,
    "learning_rate": 2e-4,
    "gamma": 1.0,
    "gae_lambda": 0.95,
    "ent_coef": 0.0,
}
register_algorithm("ppo", policy=LoRAPolicy, defaults=_PPO_DEFAULTS)(PPO)
register_algorithm("maskable_ppo", policy=MaskableLoRAPolicy, defaults=_PPO_DEFAULTS)(MaskablePPO)
register_algorithm(
    "a2c",
    policy=LoRAPolicy,
    defaults={
        "n_steps": 16,
        "learning_rate": 2e-4,
        "gamma": 1.0,
        "gae_lambda": 0.95,
        "ent_coef": 0.0,
        "use_rms_prop": False,
        "normalize_advantage": True,
    },
)(A2C)
#: TRPO on a token policy. An exact natural-gradient step (many CG iterations) on a LoRA adapter
#: is a per-sample fit: the inverse Fisher of a softmax over the vocabulary divides by p(a), so the
#: cheapest way (in KL) to raise the surrogate is to move the log-prob of each *sampled* low-prob
#: token by its own advantage (measured: corr(dlogp, A) ~0.89, |dlogp| ~0.7 nat at KL 0.06) and
#: nothing shared across samples, so the surrogate rises but P(rewarded tokens) does not. Two CG
#: steps stop in the leading Krylov directions (close to the plain gradient, which shares across
#: samples through the model) and are ~4x cheaper; many small rollouts (``n_steps=32``) and a
#: per-token ``target_kl`` of 0.2 (the realised KL is lower) give PPO-like progress per sample.
register_algorithm(
    "trpo",
    policy=LoRAPolicy,
    defaults={
        "n_steps": 32,
        "batch_size": 64,
        "learning_rate": 2e-4,
        "gamma": 1.0,
        "gae_lambda": 0.95,
        "target_kl": 0.2,
        "n_critic_updates": 5,
        "cg_max_steps": 2,
    },
)(TRPO)
#: The group-relative family: critic-free, an env in rounds (``make_vec_env(n, group_size=k)``).
#: Defaults fit LoRA on small models: one rollout reused for 4 passes in minibatches of 8 episodes
#: (16 optimizer steps per round of 32 envs) at 1e-3; on the default task all three pass the main
#: job's checks with them (README). Each class sets its method's options.
_GROUP_DEFAULTS = {"learning_rate": 1e-3, "num_iterations": 4, "batch_size": 8}
register_algorithm("grpo", policy=LoRAPolicy, defaults=_GROUP_DEFAULTS, kl=False)(GRPO)
register_algorithm("rloo", policy=LoRAPolicy, defaults=_GROUP_DEFAULTS, kl=False)(RLOO)
register_algorithm("reinforce_pp", policy=LoRAPolicy, defaults=_GROUP_DEFAULTS, kl=False)(
    REINFORCEpp
)
