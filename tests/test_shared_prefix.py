"""A batch's common leading tokens run once (``share_prefix``), with the plain forward's results.

Chat prompts begin with the same template turn; :mod:`rlhf_gym.agents.shared_prefix` feeds it
once per forward instead of once per row. These tests compare every pass against the same
policy with ``share_prefix=False`` (GPT-2's learned positions and Llama's rotary ones), and
check that the prefix was in fact fed once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rlhf_gym.agents import LoRAPolicy
from rlhf_gym.agents.shared_prefix import (
    MIN_SHARED_TOKENS,
    share_tokens,
    shared_prefix_length,
    trunk_hidden,
)
from tests import _tiny
from tests.test_agents_support import cached_outputs_in_lockstep, make_env, to_tensor_obs

#: Every prompt starts with this "system turn" (about 30 tokens under the tiny tokenizer).
SYSTEM = "the movie was great and the acting was wonderful, thank you\n"
PROMPTS = [f"{SYSTEM}{p}" for p in ("hello world", "the movie", "write a poem", "i love")]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm_dir(request: pytest.FixtureRequest, tmp_path_factory, tiny_tokenizer) -> Path:
    build = _tiny.build_lm if request.param == "gpt2" else _tiny.build_llama_lm
    model = build(len(tiny_tokenizer))
    return _tiny.save_model(tmp_path_factory.mktemp(request.param), model, tiny_tokenizer)


def _env(tokenizer_dir: Path, num_envs: int = 4):
    return make_env(
        tokenizer_dir, num_envs, prompts=PROMPTS, max_prompt_tokens=64, max_new_tokens=5
    )


def _policies(env, lm_dir: Path) -> tuple[LoRAPolicy, LoRAPolicy]:
    pair = []
    for share in (True, False):
        torch.manual_seed(0)
        pair.append(
            LoRAPolicy(
                env.observation_space,
                env.action_space,
                lambda _: 1e-3,
                model=str(lm_dir),
                lora={"init_lora_weights": False},
                share_prefix=share,
            )
        )
    pair[1].load_state_dict(pair[0].state_dict())
    return pair[0], pair[1]


class _Fed:
    """Counts the tokens each forward of ``model`` is fed (batch x new tokens)."""

    def __init__(self, model: Any) -> None:
        self.calls: list[tuple[int, int]] = []
        original = model.forward

        def spy(*args: Any, **kwargs: Any) -> Any:
            ids = kwargs["input_ids"]
            self.calls.append((int(ids.shape[0]), int(ids.shape[1])))
            return original(*args, **kwargs)

        model.forward = spy

    def tokens(self) -> int:
        total = sum(b * t for b, t in self.calls)
        self.calls.clear()
        return total


def _rollout(env, policy: LoRAPolicy, steps: int) -> list[dict[str, np.ndarray]]:
    obs = env.reset()
    seen = []
    for _ in range(steps):
        seen.append(obs)
        with torch.no_grad():
            actions, _, _ = policy(to_tensor_obs(obs))
        obs, _, _, _ = env.step(actions.numpy())
    return seen


def test_prefix_length_stops_at_the_limit_and_ignores_short_or_single_rows() -> None:
    ids = torch.tensor([[5] * 12 + [1, 2], [5] * 12 + [3, 4]])
    assert shared_prefix_length(ids, limit=13) == 12
    assert shared_prefix_length(ids, limit=10) == 10
    assert shared_prefix_length(ids, limit=MIN_SHARED_TOKENS - 1) == 0
    assert shared_prefix_length(ids[:1], limit=13) == 0
    ids[1, 3] = 7
    assert shared_prefix_length(ids, limit=13) == 0  # 3 tokens in common: not worth it


def test_rollout_prefill_feeds_each_prompt_and_the_prefix_once(
    tiny_tokenizer_dir: Path, lm_dir: Path
) -> None:
    env_a, env_b = _env(tiny_tokenizer_dir), _env(tiny_tokenizer_dir)  # the same prompts
    shared, plain = _policies(env_a, lm_dir)
    for step, obs in cached_outputs_in_lockstep((env_a, env_b), (shared, plain), 5, atol=2e-5):
        if step == 0:
            lengths = obs["attention_mask"].sum(-1)
            # A prompt drawn twice is fed once, the system turn once for all prompts.
            distinct = sorted(
                {tuple(r[:n]) for r, n in zip(obs["input_ids"].tolist(), lengths, strict=True)}
            )
            assert len(distinct) < 4  # this seed draws a prompt twice
            width = max(len(r) for r in distinct)
            padded = torch.tensor([list(r) + [0] * (width - len(r)) for r in distinct])
            prefix = shared_prefix_length(padded, min(len(r) for r in distinct) - 1)
            assert prefix >= 15
            fed = shared.kv_cache(4).tokens_fed_last
            assert fed == prefix + sum(len(r) - prefix for r in distinct)
            assert plain.kv_cache(4).tokens_fed_last == int(lengths.sum())


def test_training_pass_matches_with_gradients(tiny_tokenizer_dir: Path, lm_dir: Path) -> None:
    env = _env(tiny_tokenizer_dir)
    shared, plain = _policies(env, lm_dir)
    seen = _rollout(env, plain, steps=5)
    batch = {k: np.concatenate([o[k] for o in seen]) for k in seen[0]}
    obs = to_tensor_obs(batch)
    actions = torch.as_tensor(np.random.default_rng(0).integers(0, 50, len(batch["input_ids"])))
    counter = _Fed(shared.model)
    results = []
    for policy in (shared, plain):
        policy.optimizer.zero_grad()
        values, log_prob, entropy = policy.evaluate_actions(obs, actions)
        (log_prob.sum() + entropy.sum()).backward()
        grads = [p.grad.clone() for p in policy.model.parameters() if p.requires_grad]
        results.append((log_prob.detach(), entropy.detach(), values.detach(), grads))
        if policy is shared:
            # One forward of the 4 longest observations, minus 3 copies of the prefix.
            assert counter.calls[0][0] == 1, counter.calls
    (lp_s, ent_s, v_s, g_s), (lp_p, ent_p, v_p, g_p) = results
    torch.testing.assert_close(lp_s, lp_p, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_s, ent_p, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_s, v_p, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_s, g_p, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_reference_and_response_scoring_match(tiny_tokenizer_dir: Path, lm_dir: Path) -> None:
    env = _env(tiny_tokenizer_dir)
    shared, plain = _policies(env, lm_dir)
    seen = _rollout(env, plain, steps=5)
    final = to_tensor_obs(seen[-1])
    ids = final["input_ids"].long()
    mask = final["attention_mask"].long()
    prompt_lens = torch.as_tensor(seen[0]["attention_mask"].sum(-1))
    response_lens = mask.sum(-1) - prompt_lens
    counter = _Fed(shared.model)
    out = []
    for policy in (shared, plain):
        with torch.no_grad():
            ref = policy.reference_log_prob(final, ids[:, 0])
        lp, _ = policy.score_responses(ids, mask, prompt_lens, response_lens)
        out.append((ref, lp))
        if policy is shared:
            assert (1, shared_prefix_length(ids, int(prompt_lens.min()) - 1)) in counter.calls
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-5, rtol=1e-5)


def test_distinct_prompts_run_the_plain_forward(tiny_tokenizer_dir: Path, lm_dir: Path) -> None:
    env = make_env(tiny_tokenizer_dir, 4, max_prompt_tokens=16, max_new_tokens=3)
    shared, _ = _policies(env, lm_dir)
    counter = _Fed(shared.model)
    obs = env.reset()
    lengths = obs["attention_mask"].sum(-1)
    distinct = {tuple(r[:n]) for r, n in zip(obs["input_ids"].tolist(), lengths, strict=True)}
    with torch.no_grad():
        shared(to_tensor_obs(obs))
    # One forward of the distinct prompts, no batch-of-one prefix forward.
    assert [batch for batch, _ in counter.calls] == [len(distinct)]


def _grouped_batch(tokenizer: Any) -> tuple[torch.Tensor, ...]:
    """Three prompts of different lengths after the system turn, three answers each (a GRPO
    round): ``(input_ids, attention_mask, prompt_lens, response_lens)``, right-padded."""
    users = ("write a poem about the movie", "hello world", "the acting was great and i love it")
    gen = torch.Generator().manual_seed(0)
    rows, prompt_lens, response_lens = [], [], []
    for user in users:
        prompt = tokenizer(f"{SYSTEM}{user}")["input_ids"]
        for answer_len in (3, 6, 4):
            answer = torch.randint(5, 50, (answer_len,), generator=gen).tolist()
            rows.append(prompt + answer)
            prompt_lens.append(len(prompt))
            response_lens.append(answer_len)
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask, torch.tensor(prompt_lens), torch.tensor(response_lens)


def test_prompt_groups_run_once_with_the_full_forwards_results(
    tiny_tokenizer, tiny_tokenizer_dir: Path, lm_dir: Path
) -> None:
    shared, plain = _policies(_env(tiny_tokenizer_dir), lm_dir)
    ids, mask, prompt_lens, response_lens = _grouped_batch(tiny_tokenizer)
    counter = _Fed(shared.model)
    with torch.no_grad():
        lp_s, _ = shared.score_responses(ids, mask, prompt_lens, response_lens, entropy=True)
        lp_p, _ = plain.score_responses(ids, mask, prompt_lens, response_lens, entropy=True)
    torch.testing.assert_close(lp_s, lp_p, atol=1e-5, rtol=1e-5)
    common = shared_prefix_length(ids, int(prompt_lens.min()) - 1)
    longest = int(prompt_lens.max()) - 1 - common
    # The system turn once, each prompt's rest once per group, then each row's own tokens
    # (the last prompt token and the answer), not the width of the longest row.
    own = int(response_lens.max()) + 1
    assert counter.calls == [(1, common), (3, longest), (9, own)]


def test_chunks_share_their_minibatchs_prompts_with_the_same_gradients(
    tiny_tokenizer, tiny_tokenizer_dir: Path, lm_dir: Path
) -> None:
    shared, plain = _policies(_env(tiny_tokenizer_dir), lm_dir)
    ids, mask, prompt_lens, response_lens = _grouped_batch(tiny_tokenizer)
    weights = torch.randn(
        len(ids), int(response_lens.max()), generator=torch.Generator().manual_seed(1)
    )
    counter = _Fed(shared.model)
    results = []
    for policy in (shared, plain):
        policy.optimizer.zero_grad()
        with policy.shared_prompts(ids, mask, prompt_lens) as tokens:
            assert (tokens is not None) == (policy is shared)
            for rows in torch.arange(len(ids)).split(4):  # chunks that split a group
                lp, _ = policy.score_responses(
                    ids[rows], mask[rows], prompt_lens[rows], response_lens[rows],
                    shared=None if tokens is None else (tokens, rows),
                )  # fmt: skip
                (lp * weights[rows, : lp.shape[1]]).sum().backward()
        results.append([p.grad.clone() for p in policy.model.parameters() if p.requires_grad])
    # The shared tokens ran once, before the chunks: three rows, then 4 + 4 + 1.
    assert [rows for rows, _ in counter.calls] == [1, 3, 4, 4, 1]
    assert all(g.abs().sum() > 0 for g in results[0])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("window", [None, 16])
def test_share_tokens_groups_only_where_exact_and_worth_it(tiny_tokenizer, window) -> None:
    """Groups need a repeated prompt, a saving, a forward within ``max_tokens`` and, with a
    sliding window, rows whose cached and own columns fit in it (transformers counts the window
    in columns, holes included); whatever is shared, hidden states match the full forward."""
    from tests.test_lean_decode import _build

    model = _build("mistral", len(tiny_tokenizer), sliding_window=window or 4096)
    ids, mask, prompt_lens, _ = _grouped_batch(tiny_tokenizer)
    limits = prompt_lens - 1
    with torch.no_grad():
        tokens = share_tokens(model, ids, mask, limits)
        assert tokens is not None
        # 3 groups of 3 rows; with a 16-column window (rows of 40+ columns) the system turn alone.
        assert len(tokens.mask) == (1 if window else 3)
        hidden, offsets = trunk_hidden(model, ids, mask, shared=tokens)
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        rows = torch.arange(len(ids))[:, None]
        cols = torch.arange(4)[None, :]  # each row's first own positions
        torch.testing.assert_close(
            hidden[rows, cols],
            full.hidden_states[-1][rows, offsets[:, None] + cols],
            atol=1e-5,
            rtol=1e-5,
        )
        distinct = [0, 3, 6]  # one row per prompt: nothing repeats, the system turn alone
        alone = share_tokens(model, ids[distinct], mask[distinct], limits[distinct])
        assert alone is not None and len(alone.mask) == 1
        assert share_tokens(model, ids, mask, limits, max_tokens=8) is None


def test_sliding_window_rollout_matches_the_plain_policy(
    tiny_tokenizer, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    """A prompt longer than a Mistral window: the prefill does not share the system turn (its
    holes would count against transformers' column-counted window) and stays exact."""
    from tests.test_lean_decode import _build

    model = _build("mistral", len(tiny_tokenizer), sliding_window=16)
    lm_dir = _tiny.save_model(tmp_path, model, tiny_tokenizer)
    env_a, env_b = _env(tiny_tokenizer_dir), _env(tiny_tokenizer_dir)
    shared, plain = _policies(env_a, lm_dir)
    for _ in cached_outputs_in_lockstep((env_a, env_b), (shared, plain), 5, atol=2e-5):
        pass
