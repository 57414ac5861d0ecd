"""The fused head + log-softmax + gather gives autograd's numbers: values, entropies, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlhf_gym.agents.distributions import MASKED_LOGIT
from rlhf_gym.agents.fused_log_probs import fusable_head, fused_token_log_probs
from rlhf_gym.agents.response_scoring import chunked_log_probs

VOCAB, HIDDEN, TOKENS = 500, 16, 12


def _head(dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    head = nn.Linear(HIDDEN, VOCAB, bias=False).to(dtype)
    head.weight.requires_grad_(False)
    return head


def _unfused(head, hidden, tokens, allowed):  # type: ignore[no-untyped-def]
    logits = head(hidden).float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, MASKED_LOGIT)
    log_probs = torch.log_softmax(logits, -1)
    ent = -(log_probs.exp() * log_probs).sum(-1)
    return log_probs.gather(-1, tokens[:, None])[:, 0], ent


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("entropy", [False, True])
def test_values_and_gradients_match_autograd(masked: bool, entropy: bool) -> None:
    head = _head()
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(TOKENS, HIDDEN, generator=g) * 3
    tokens = torch.randint(0, VOCAB, (TOKENS,), generator=g)
    allowed = None
    if masked:
        allowed = torch.rand(TOKENS, VOCAB, generator=g) < 0.3
        allowed[torch.arange(TOKENS), tokens] = True
    w_lp, w_ent = torch.randn(TOKENS, generator=g), torch.randn(TOKENS, generator=g)
    results = []
    for fn in (_unfused, None):
        h = hidden.clone().requires_grad_(True)
        if fn is None:
            lp, ent = fused_token_log_probs(head, h, tokens, entropy=entropy, allowed=allowed)
        else:
            lp, ent = fn(head, h, tokens, allowed)
        loss = (w_lp * lp).sum() + ((w_ent * ent).sum() if entropy else 0.0)
        loss.backward()
        results.append((lp.detach(), ent.detach(), h.grad))
    (want_lp, want_ent, want_grad), (lp, ent, grad) = results
    torch.testing.assert_close(lp, want_lp, atol=1e-5, rtol=1e-5)
    if entropy:
        torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=1e-5)
    else:
        assert not ent.any()
    torch.testing.assert_close(grad, want_grad, atol=1e-5, rtol=1e-4)


def test_bf16_head_matches_the_unfused_bf16_path() -> None:
    head = _head(torch.bfloat16)
    hidden = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(2))
    tokens = torch.arange(TOKENS) * 7
    grads = []
    outs = []
    for fused in (False, True):
        h = hidden.bfloat16().requires_grad_(True)
        if fused:
            lp, _ = fused_token_log_probs(head, h, tokens, entropy=False)
        else:
            lp, _ = _unfused(head, h, tokens, None)
        lp.sum().backward()
        outs.append(lp.detach())
        grads.append(h.grad.float())
    assert grads[1].dtype == torch.float32 and outs[1].dtype == torch.float32
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=2e-2, rtol=2e-2)  # bf16 products


def test_chunked_scoring_uses_it_for_a_frozen_linear_head_only() -> None:
    head = _head()
    assert fusable_head(head, None)
    assert not fusable_head(head, softcap=30.0)
    trainable = _head()
    trainable.weight.requires_grad_(True)
    assert not fusable_head(trainable, None)
    assert not fusable_head(nn.Linear(HIDDEN, VOCAB, bias=True).requires_grad_(False), None)
    hidden = torch.randn(TOKENS, HIDDEN, requires_grad=True)
    tokens = torch.randint(0, VOCAB, (TOKENS,))
    lp, ent = chunked_log_probs(head, hidden, tokens, chunk=5, entropy=True)
    want_lp, want_ent = _unfused(head, hidden, tokens, None)
    torch.testing.assert_close(lp, want_lp)
    torch.testing.assert_close(ent, want_ent)  # type: ignore[arg-type]
    assert (
        lp.grad_fn is not None and "TokenLogProb" in type(lp.grad_fn.next_functions[0][0]).__name__
    )


def test_a_second_derivative_raises_instead_of_dropping_terms() -> None:
    head = _head()
    hidden = torch.randn(TOKENS, HIDDEN, requires_grad=True)
    lp, _ = fused_token_log_probs(
        head, hidden, torch.zeros(TOKENS, dtype=torch.long), entropy=False
    )
    (grad,) = torch.autograd.grad(lp.sum(), hidden, create_graph=True)
    assert not grad.requires_grad  # no second-order graph that would lack the Jacobian's terms
    with pytest.raises(RuntimeError, match="does not require grad|once_differentiable"):
        grad.sum().backward()
    weights = torch.ones(TOKENS, requires_grad=True)  # a differentiable incoming gradient
    (grad,) = torch.autograd.grad(lp, hidden, grad_outputs=weights, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def test_a_masked_out_scored_token_gets_autograds_gradient() -> None:
    """Sampling never emits a masked token, but scoring one must still match autograd (whose
    masked logit is a constant: no ``onehot`` term)."""
    head = _head()
    hidden = torch.randn(TOKENS, HIDDEN)
    tokens = torch.randint(0, VOCAB, (TOKENS,))
    allowed = torch.ones(TOKENS, VOCAB, dtype=torch.bool)
    allowed[0, tokens[0]] = False
    grads = []
    for fused in (True, False):
        h = hidden.clone().requires_grad_(True)
        if fused:
            lp, _ = fused_token_log_probs(head, h, tokens, entropy=False, allowed=allowed)
        else:
            lp, _ = _unfused(head, h, tokens, allowed)
        lp.sum().backward()
        grads.append(h.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_in_place_log_softmax_gives_the_out_of_place_numbers() -> None:
    """On a CPU the block's log-softmax runs in place: bit for bit the out-of-place result."""
    torch.manual_seed(3)
    head = nn.Linear(16, 5000, bias=False).requires_grad_(False)
    hidden = torch.randn(40, 16) * 4
    tokens = torch.randint(0, 5000, (40,))
    expected = torch.log_softmax(head(hidden), -1)[torch.arange(40), tokens]
    log_prob, _ = fused_token_log_probs(head, hidden, tokens, entropy=False)
    assert torch.equal(log_prob, expected)
    with_grad, _ = fused_token_log_probs(head, hidden.requires_grad_(), tokens, entropy=False)
    assert torch.equal(with_grad.detach(), expected)
