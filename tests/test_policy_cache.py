"""Rollout KV cache: one token per env per step, outputs equal to a full forward."""

from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rlhf_gym.agents import LoRAPolicy, RolloutKVCache
from rlhf_gym.agents import engine as engine_module
from rlhf_gym.agents import kv_cache as kv_cache_module
from tests import _tiny
from tests.test_agents_support import full_forward, make_env, to_tensor_obs

EOS = 0


def _policy(env, tiny_lm_dir: Path, **options) -> LoRAPolicy:
    return LoRAPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 1e-3,
        model=str(tiny_lm_dir),
        lora={"init_lora_weights": False},
        **options,
    )


@pytest.fixture(params=["model_logits", "gathered_head"])
def prefill_head(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Prefill logits from transformers, or (the path of large heads) from the LM head run on
    the gathered last states."""
    if request.param == "gathered_head":
        monkeypatch.setattr(engine_module, "_GATHER_HEAD_AT", 0)
    return str(request.param)


@pytest.mark.parametrize("headroom", [64, 1])
def test_incremental_outputs_equal_full_forward_and_one_token_per_env(
    tiny_tokenizer_dir: Path,
    tiny_lm_dir: Path,
    headroom: int,
    monkeypatch: pytest.MonkeyPatch,
    prefill_head: str,
) -> None:
    """Envs end at different steps (EOS on a schedule) and restart with prompts of other lengths.

    ``headroom=1`` makes the preallocated buffers move (grow, compact) during the run.
    """
    monkeypatch.setattr(RolloutKVCache, "MIN_HEADROOM", headroom)
    n_envs = 3
    env = make_env(tiny_tokenizer_dir, num_envs=n_envs, max_new_tokens=5)
    policy = _policy(env, tiny_lm_dir)
    eos_at = {(0, 2), (1, 4), (2, 7), (0, 9), (1, 10)}  # (env, step) pairs that emit EOS
    rng = np.random.default_rng(0)
    obs = env.reset()
    previous_dones = np.ones(n_envs, dtype=bool)  # first step: every row is a fresh prompt
    resets_seen = 0
    for step in range(24):
        with torch.no_grad():
            _, values, log_probs = policy(to_tensor_obs(obs))
            logits = policy.kv_cache(n_envs).last_logits
        cache = policy.kv_cache(n_envs)
        lengths = obs["attention_mask"].sum(-1)
        prompts = obs["input_ids"].tolist()
        # Each reset row's prompt is fed once (a prompt two rows drew, once for both).
        fresh = {tuple(prompts[i][: lengths[i]]) for i in range(n_envs) if previous_dones[i]}
        prefilled = sum(len(prompt) for prompt in fresh)
        # One batched extend feeds a token to EVERY row as soon as one row extends (a reset row
        # gets a placeholder there, overwritten by its re-prefill); resets add their prompts.
        extend_call = n_envs if step > 0 and not previous_dones.all() else 0
        expected_fed = prefilled + extend_call
        assert cache.tokens_fed_last == expected_fed, step
        if step > 0 and not previous_dones.any():
            assert cache.tokens_fed_last == n_envs
        resets_seen += int(previous_dones.sum()) if step > 0 else 0

        for i in range(n_envs):
            ref_logp, ref_value = full_forward(
                policy, torch.as_tensor(obs["input_ids"][i, : lengths[i]])
            )
            torch.testing.assert_close(
                torch.log_softmax(logits[i], -1), ref_logp, atol=1e-5, rtol=0
            )
            torch.testing.assert_close(values[i], ref_value, atol=1e-5, rtol=0)
        actions = rng.integers(1, 300, size=n_envs)
        for i in range(n_envs):
            if (i, step) in eos_at:
                actions[i] = EOS
        obs, _, previous_dones, _ = env.step(actions)
    assert resets_seen >= 6  # EOS ends and max_new_tokens truncations, at different steps
    if headroom == 1:
        assert policy.kv_cache(n_envs).relayouts > 0


def test_log_probs_of_cached_rollout_match_training_evaluation(
    tiny_tokenizer_dir: Path, tiny_lm_dir: Path
) -> None:
    env = make_env(tiny_tokenizer_dir, num_envs=2, max_new_tokens=4)
    policy = _policy(env, tiny_lm_dir)
    obs = env.reset()
    for _ in range(7):
        t_obs = to_tensor_obs(obs)
        with torch.no_grad():
            actions, values, log_probs = policy(t_obs)
        values2, log_probs2, _ = policy.evaluate_actions(t_obs, actions)  # with grad, no cache
        torch.testing.assert_close(log_probs, log_probs2.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(values, values2.detach(), atol=1e-5, rtol=0)
        obs, _, _, _ = env.step(actions.numpy())


def test_cache_is_revalidated_for_foreign_observations_and_weight_changes(
    tiny_tokenizer_dir: Path, tiny_lm_dir: Path
) -> None:
    env = make_env(tiny_tokenizer_dir, num_envs=2, seed=0)
    policy = _policy(env, tiny_lm_dir)
    obs = env.reset()
    foreign = {k: v[::-1].copy() for k, v in obs.items()}  # rows swapped: no row matches its cache
    assert not np.array_equal(obs["input_ids"][0], obs["input_ids"][1])
    with torch.no_grad():
        policy(to_tensor_obs(obs))
        policy.predict_values(to_tensor_obs(obs))  # same obs again: nothing to feed
        assert policy.kv_cache(2).tokens_fed_last == 0
        values = policy.predict_values(to_tensor_obs(foreign))  # another env's rows: re-prefill
        assert policy.kv_cache(2).tokens_fed_last == int(foreign["attention_mask"].sum())
    for i in range(2):
        n = int(foreign["attention_mask"][i].sum())
        torch.testing.assert_close(
            values[i],
            full_forward(policy, torch.as_tensor(foreign["input_ids"][i, :n]))[1],
            atol=1e-5,
            rtol=0,
        )

    with torch.no_grad():  # an optimizer step changes the weights: the cache must not be reused
        for p in policy.parameters():
            p.add_(0.01)
        values = policy.predict_values(to_tensor_obs(foreign))
    assert policy.kv_cache(2).tokens_fed_last == int(foreign["attention_mask"].sum())
    n = int(foreign["attention_mask"][0].sum())
    torch.testing.assert_close(
        values[0],
        full_forward(policy, torch.as_tensor(foreign["input_ids"][0, :n]))[1],
        atol=1e-5,
        rtol=0,
    )


def test_training_mode_drops_the_cache(tiny_tokenizer_dir: Path, tiny_lm_dir: Path) -> None:
    env = make_env(tiny_tokenizer_dir, num_envs=2)
    policy = _policy(env, tiny_lm_dir)
    with torch.no_grad():
        policy(to_tensor_obs(env.reset()))
    assert policy.kv_cache(2) is not None
    policy.set_training_mode(True)
    assert policy.kv_cache(2) is None


def test_llama_family_model_cache_matches_full_forward(
    tiny_tokenizer, tiny_tokenizer_dir: Path, tmp_path: Path, prefill_head: str
) -> None:
    """The in-place cache relies only on transformers' Cache API: a Llama (rotary positions,
    grouped-query attention) gives the same outputs as a full forward, with env resets."""
    _tiny.build_llama_lm(len(tiny_tokenizer)).save_pretrained(tmp_path / "llama")
    env = make_env(tiny_tokenizer_dir, num_envs=3, max_new_tokens=5)
    policy = _policy(env, tmp_path / "llama")
    rng = np.random.default_rng(0)
    obs = env.reset()
    for step in range(12):
        with torch.no_grad():
            _, values, _ = policy(to_tensor_obs(obs))
            logits = policy.kv_cache(3).last_logits
        lengths = obs["attention_mask"].sum(-1)
        for i in range(3):
            ids = torch.as_tensor(obs["input_ids"][i, : lengths[i]])
            ref_logp, ref_value = full_forward(policy, ids)
            torch.testing.assert_close(
                torch.log_softmax(logits[i], -1), ref_logp, atol=1e-5, rtol=0
            )
            torch.testing.assert_close(values[i], ref_value, atol=1e-5, rtol=0)
        actions = rng.integers(1, 300, size=3)
        if step in (2, 6):
            actions[step % 3] = EOS  # an env resets while the others extend
        obs, _, _, _ = env.step(actions)
    assert policy.kv_cache(3).tokens_fed_last == 3  # the last step only extended


def test_decode_attention_leaves_out_cudnn_on_cuda_only() -> None:
    """cuDNN's attention builds a graph per shape, and decoding changes shape every step."""
    from rlhf_gym.agents.kv_cache import decode_attention

    flags = torch.backends.cuda
    before = (
        flags.cudnn_sdp_enabled(),
        flags.flash_sdp_enabled(),
        flags.mem_efficient_sdp_enabled(),
    )
    with decode_attention(torch.device("cuda", 0)):
        assert not flags.cudnn_sdp_enabled()
        assert flags.flash_sdp_enabled() and flags.mem_efficient_sdp_enabled()
        assert flags.math_sdp_enabled()
    after = (
        flags.cudnn_sdp_enabled(),
        flags.flash_sdp_enabled(),
        flags.mem_efficient_sdp_enabled(),
    )
    assert after == before
    with decode_attention("cpu"):
        assert flags.cudnn_sdp_enabled() == before[0]


def test_every_cached_decode_call_runs_under_decode_attention(
    tiny_tokenizer_dir: Path, tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prefill and each one-token extend pick their kernels through ``decode_attention``."""
    import contextlib

    from rlhf_gym.agents import engine as policy_module

    n_envs = 2
    env = make_env(tiny_tokenizer_dir, num_envs=n_envs, max_new_tokens=4)
    policy = _policy(env, tiny_lm_dir)
    seen: list[torch.device] = []
    lm_calls = [0]
    model_forward = policy.model.forward

    def counting_forward(*args, **kwargs):  # type: ignore[no-untyped-def]
        lm_calls[0] += 1
        return model_forward(*args, **kwargs)

    def recording(device: torch.device):  # type: ignore[no-untyped-def]
        seen.append(torch.device(device))
        return contextlib.nullcontext()

    monkeypatch.setattr(policy_module, "decode_attention", recording)
    monkeypatch.setattr(policy.model, "forward", counting_forward)
    obs = env.reset()
    for _ in range(3):
        with torch.no_grad():
            actions, _, _ = policy(to_tensor_obs(obs))
        obs, _, _, _ = env.step(actions.numpy())
    assert lm_calls[0] == 3  # one prefill, then one extend per step
    assert seen == [policy.device] * 3


class _HostReads(TorchDispatchMode):
    """Records every device-to-host read (``item``/``int``/``bool`` of a tensor, ``nonzero``,
    ``tolist``) made from rlhf_gym's own files, by file and line: each one is a host sync on a
    GPU. Reads inside transformers or torch are not ours to remove and are left out."""

    ROOT = str(Path(kv_cache_module.__file__).resolve().parent.parent)
    OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.equal", "aten.is_nonzero")

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def record(self) -> None:
        """Attribute the read to the innermost frame outside this test file and torch."""
        torch_dir = str(Path(torch.__file__).parent)
        frames = [
            f
            for f in traceback.extract_stack()
            if f.filename != __file__ and not f.filename.startswith(torch_dir)
        ]
        caller = frames[-1].filename
        if caller.startswith(self.ROOT) and "site-packages" not in caller:
            self.reads.append(f"{Path(caller).name}:{frames[-1].lineno}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if str(func).startswith(self.OPS):
            self.record()
        return func(*args, **(kwargs or {}))


def test_a_decode_step_reads_the_device_once_before_the_forward(
    tiny_tokenizer_dir: Path, tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU every host read waits for the queue: a steady decode step (every row extends)
    reads the cache's decisions in one transfer, and the sampler checks for NaN once."""
    env = make_env(tiny_tokenizer_dir, num_envs=3, max_new_tokens=8, stop_on_eos=False)
    policy = _policy(env, tiny_lm_dir)
    counter = _HostReads()
    original_tolist = torch.Tensor.tolist

    def tolist(self: torch.Tensor):  # type: ignore[no-untyped-def]
        counter.record()
        return original_tolist(self)

    obs = env.reset()
    for step in range(5):
        if step == 3:
            monkeypatch.setattr(torch.Tensor, "tolist", tolist)
            with counter, torch.no_grad():
                actions, _, _ = policy(to_tensor_obs(obs))
            monkeypatch.undo()
        else:
            with torch.no_grad():
                actions, _, _ = policy(to_tensor_obs(obs))
        obs, _, _, _ = env.step(actions.numpy())
    reads = counter.reads
    assert sorted(Path(r.split(":")[0]).stem for r in reads) == ["distributions", "kv_cache"], reads
