"""sdpo_loss vs a float64 brute force, the closed-form gradient, masking, IS ratio, extremes."""

import math

import pytest
import torch
import torch.nn.functional as F

from sdpo_core import loss as loss_mod
from sdpo_core.loss import sdpo_loss

B, T, V, K = 2, 6, 40, 5


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """One position per chunk, so the chunked top-K path is exercised across chunks."""
    monkeypatch.setattr(loss_mod, "CHUNK_ELEMS", 64)


def make(seed: int = 0, scale: float = 2.0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, T, V, generator=g) * scale).to(dtype).requires_grad_()
    t = (torch.randn(B, T, V, generator=g) * scale).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, 0] = False
    return s, t, ids, mask


def brute(s, t, ids, mask, top_k, alpha, add_tail, temperature=1.0, old=None, is_clip=2.0):
    """Straightforward float64 SDPO loss: explicit softmax, sorting, KL/JSD sums, one position
    at a time. Returns the loss (differentiable w.r.t. s)."""
    total, count = s.new_zeros((), dtype=torch.float64), 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if not mask[b, i]:
                continue
            zs, zt = s[b, i].double() / temperature, t[b, i].double() / temperature
            ps = torch.exp(zs - zs.max()) / torch.exp(zs - zs.max()).sum()
            pt = torch.exp(zt - zt.max()) / torch.exp(zt - zt.max()).sum()
            if top_k is None:
                P, Q = ps, pt
            else:
                order = sorted(range(len(zs)), key=lambda j: -zs[j].item())[:top_k]
                P, Q = ps[order], pt[order]
                if add_tail:
                    P = torch.cat([P, (1 - P.sum()).reshape(1)])
                    Q = torch.cat([Q, (1 - Q.sum()).reshape(1)])
                else:
                    P, Q = P / P.sum(), Q / Q.sum()
            if alpha == 1.0:
                div = sum(P[j] * torch.log(P[j] / Q[j]) for j in range(len(P)))
            elif alpha == 0.0:
                div = sum(Q[j] * torch.log(Q[j] / P[j]) for j in range(len(P)))
            else:
                M = (1 - alpha) * P + alpha * Q
                div = sum(
                    (1 - alpha) * P[j] * torch.log(P[j] / M[j])
                    + alpha * Q[j] * torch.log(Q[j] / M[j])
                    for j in range(len(P))
                )
            if old is not None:
                r = (ps[ids[b, i]] / math.exp(old[b, i].item())).detach()
                div = div * (r if is_clip is None else torch.clamp(r, max=is_clip))
            total, count = total + div, count + 1
    return total / max(count, 1)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])  # 0.25: JSD is asymmetric off 0.5
@pytest.mark.parametrize("top_k,add_tail", [(None, True), (K, True), (K, False)])
def test_matches_brute_force(top_k, add_tail, alpha):
    s, t, ids, mask = make()
    loss, m = sdpo_loss(s, t, ids, mask, top_k=top_k, alpha=alpha, add_tail=add_tail)
    (grad,) = torch.autograd.grad(loss, s)
    s64 = s.detach().double().requires_grad_()
    ref = brute(s64, t, ids, mask, top_k, alpha, add_tail)
    (ref_grad,) = torch.autograd.grad(ref, s64)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
    assert torch.allclose(grad.double(), ref_grad, atol=1e-6)
    assert m["loss"] == pytest.approx(m["kl"]) and m["num_tokens"] == mask.sum().item()


@pytest.mark.parametrize("top_k", [None, K])
def test_temperature_matches_brute_force(top_k):
    s, t, ids, mask = make(1)
    loss, _ = sdpo_loss(s, t, ids, mask, top_k=top_k, alpha=0.5, temperature=0.7)
    (grad,) = torch.autograd.grad(loss, s)
    s64 = s.detach().double().requires_grad_()
    ref = brute(s64, t, ids, mask, top_k, 0.5, True, temperature=0.7)
    (ref_grad,) = torch.autograd.grad(ref, s64)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
    assert torch.allclose(grad.double(), ref_grad, atol=1e-6)


def closed_form_grad(s, t, mask, weights=None):
    """Token mean of reverse KL: dL/dz_j = w * p_j (log p_j - log q_j - KL(p||q)) / n."""
    logp, logq = s.detach().double().log_softmax(-1), t.double().log_softmax(-1)
    p = logp.exp()
    kl = (p * (logp - logq)).sum(-1, keepdim=True)
    w = mask.double() if weights is None else mask.double() * weights
    return (w / mask.sum()).unsqueeze(-1) * p * (logp - logq - kl)


def test_grad_equals_policy_gradient_closed_form():
    s, t, ids, mask = make(2)
    loss, _ = sdpo_loss(s, t, ids, mask, top_k=None, alpha=1.0)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.allclose(grad.double(), closed_form_grad(s, t, mask), atol=1e-6)


@pytest.mark.parametrize("top_k", [None, K])
def test_masked_tokens_change_nothing(top_k):
    s, t, ids, mask = make(3)
    old = torch.randn(B, T) - 3
    out = [sdpo_loss(s, t, ids, mask, top_k=top_k, alpha=0.5, old_logprobs=old)]
    s2, t2, ids2, old2 = s.detach().clone(), t.clone(), ids.clone(), old.clone()
    s2[~mask] = torch.randn(int((~mask).sum()), V) * 10
    t2[~mask] = torch.randn(int((~mask).sum()), V) * 10
    ids2[~mask] = (ids2[~mask] + 7) % V
    old2[~mask] = 5.0
    s2.requires_grad_()
    out.append(sdpo_loss(s2, t2, ids2, mask, top_k=top_k, alpha=0.5, old_logprobs=old2))
    (g1,), (g2,) = (torch.autograd.grad(o[0], x) for o, x in zip(out, (s, s2), strict=True))
    assert out[0][0].item() == out[1][0].item()
    assert out[0][1] == out[1][1]
    assert torch.equal(g1, g2) and (g1[~mask] == 0).all()


@pytest.mark.parametrize("is_clip", [2.0, None])
def test_importance_ratio_upper_clip_only(is_clip):
    s, t, ids, mask = make(4)
    mask = torch.ones(B, T, dtype=torch.bool)
    logp = s.detach().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
    r = torch.tensor([[0.25, 0.5, 1.0, 1.5, 3.0, 10.0], [0.1, 2.5, 0.9, 1.9, 4.0, 1.0]])
    old = logp - r.log()  # exp(logp - old) = r
    loss, m = sdpo_loss(s, t, ids, mask, top_k=None, old_logprobs=old, is_clip=is_clip)
    (grad,) = torch.autograd.grad(loss, s)
    w = r if is_clip is None else r.clamp(max=is_clip)  # below 1 kept as is: no lower clip
    ref = brute(s, t, ids, mask, None, 1.0, True, old=old, is_clip=is_clip)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(grad.double(), closed_form_grad(s, t, mask, w.double()), atol=1e-5)
    assert m["is_ratio_mean"] == pytest.approx(w.mean().item(), rel=1e-5)
    assert m["is_clipped_fraction"] == pytest.approx(0.0 if is_clip is None else 4 / 12)
    assert m["loss"] != pytest.approx(m["kl"])


def assert_finite(loss, s, m):
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert all(math.isfinite(v) for v in m.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("top_k,add_tail", [(None, True), (K, True), (K, False)])
def test_extreme_logits_finite(dtype, top_k, add_tail):
    g = torch.Generator().manual_seed(5)
    s = ((torch.rand(B, T, V, generator=g) * 2 - 1) * 1e4).to(dtype).requires_grad_()
    t = ((torch.rand(B, T, V, generator=g) * 2 - 1) * 1e4).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    old = torch.full((B, T), -50.0)
    for alpha in (0.0, 0.5, 1.0):
        kw = dict(top_k=top_k, add_tail=add_tail, alpha=alpha, old_logprobs=old, is_clip=None)
        loss, m = sdpo_loss(s, t, ids, mask, **kw)
        assert_finite(loss, s, m)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_topk_mass_near_one_finite(alpha):
    s, t, ids, mask = make(6)
    s = s.detach().clone()
    s[..., :3] += 60.0  # student top-K mass = 1 - O(e^-60): tail bucket ~0 -> clamped
    t[0, :, :3] += 60.0  # teacher too on half the batch, spread out on the other half
    s.requires_grad_()
    for add_tail in (True, False):
        loss, m = sdpo_loss(s, t, ids, mask, top_k=K, alpha=alpha, add_tail=add_tail)
        assert_finite(loss, s, m)
        assert m["student_topk_mass"] == pytest.approx(1.0)


def test_zero_token_batch():
    s, t, ids, _ = make(7)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for top_k in (None, K):
        loss, m = sdpo_loss(s, t, ids, mask, top_k=top_k, old_logprobs=torch.zeros(B, T))
        (grad,) = torch.autograd.grad(loss, s)
        assert loss.item() == 0.0 and loss.requires_grad and (grad == 0).all()
        assert m["num_tokens"] == 0.0 and all(math.isfinite(v) for v in m.values())


def test_teacher_gets_no_gradient():
    s, t, ids, mask = make(8)
    t.requires_grad_()
    for top_k in (None, K):
        loss, _ = sdpo_loss(s, t, ids, mask, top_k=top_k, alpha=0.5)
        loss.backward()
        assert t.grad is None


def test_bf16_topk_matches_float32():
    """The bf16 path (float32 chunks, gradient cast back) agrees with float32 on the same values."""
    s, t, ids, mask = make(9, dtype=torch.bfloat16)
    s32 = s.detach().float().requires_grad_()
    kw = dict(top_k=K, alpha=0.5, temperature=0.7)
    loss, _ = sdpo_loss(s, t, ids, mask, **kw)
    loss32, _ = sdpo_loss(s32, t.float(), ids, mask, **kw)
    (g,), (g32,) = torch.autograd.grad(loss, s), torch.autograd.grad(loss32, s32)
    assert g.dtype == torch.bfloat16 and loss.item() == pytest.approx(loss32.item(), rel=1e-6)
    assert torch.allclose(g.float(), g32, atol=1e-3, rtol=1e-2)


# ------------------------------------------------------------ the authors' step loss, transcribed
def authors_step_loss(s, t, ids, mask, live, old, rollout_w, top_k, alpha, add_tail, is_clip):
    """lasgroup/SDPO's loss of one step as their runs configure it, in float64: dp_actor
    update_policy with ppo_micro_batch_size_per_gpu 1 (user.yaml; each micro-batch is one
    sample and its loss is scaled by 1/gradient_accumulation = 1/n) around
    core_algos.compute_self_distillation_loss with loss_agg_mode token-mean (actor.yaml):
    agg_loss = masked_sum(per_token, loss_mask) / loss_mask.sum().clamp(min=1), loss_mask =
    response_mask * self_distillation_mask. rollout_w: the trainer's rollout_is_weights."""
    n = s.shape[0]
    total = s.new_zeros((), dtype=torch.float64)
    for i in range(n):
        s_all = (s[i : i + 1].double()).log_softmax(-1)  # [1, T, V]
        t_all = (t[i : i + 1].double()).log_softmax(-1)
        student_log_probs = s_all.gather(-1, ids[i : i + 1, :, None])[..., 0]
        if top_k is None:
            s_d, t_d = s_all, t_all
        else:
            idx = s_all.detach().topk(top_k, dim=-1).indices
            s_d, t_d = s_all.gather(-1, idx), t_all.gather(-1, idx)
            if add_tail:

                def tail(lp):
                    log_s = torch.logsumexp(lp, dim=-1, keepdim=True).clamp(max=-1e-7)
                    return torch.cat([lp, torch.log(-torch.expm1(log_s))], dim=-1)

                s_d, t_d = tail(s_d), tail(t_d)
            else:
                s_d = s_d - torch.logsumexp(s_d, -1, keepdim=True)
                t_d = t_d - torch.logsumexp(t_d, -1, keepdim=True)
        if alpha == 0.0:
            kl = F.kl_div(s_d, t_d, reduction="none", log_target=True)
        elif alpha == 1.0:
            kl = F.kl_div(t_d, s_d, reduction="none", log_target=True)
        else:
            a = torch.tensor(alpha, dtype=torch.float64)
            mix = torch.logsumexp(torch.stack([s_d + torch.log(1 - a), t_d + torch.log(a)]), 0)
            kl_t = F.kl_div(mix, t_d, reduction="none", log_target=True)
            kl_s = F.kl_div(mix, s_d, reduction="none", log_target=True)
            kl = torch.lerp(kl_s, kl_t, a)
        per_token = kl.sum(-1)
        ratio = torch.exp(torch.clamp((student_log_probs - old[i]).detach(), -20.0, 20.0))
        per_token = per_token * ratio.clamp(max=is_clip) * rollout_w[i]
        loss_mask = mask[i : i + 1].double() * float(i in live)
        total = total + (per_token * loss_mask).sum() / loss_mask.sum().clamp(min=1.0) / n
    return total


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("top_k,add_tail", [(None, True), (K, True), (K, False)])
def test_seq_mean_token_mean_is_the_authors_step_loss(top_k, add_tail, alpha):
    """4 samples of unequal lengths, one masked (no teacher signal): our micro-batches of the
    live samples add up to the authors' step loss and gradient (float64 reference)."""
    g = torch.Generator().manual_seed(11)
    n, length = 4, 7
    s = (torch.randn(n, length, V, generator=g) * 2).requires_grad_()
    t = torch.randn(n, length, V, generator=g) * 2
    ids = torch.randint(0, V, (n, length), generator=g)
    mask = torch.zeros(n, length, dtype=torch.bool)
    for i, k in enumerate((7, 2, 5, 4)):
        mask[i, :k] = True
    live = [0, 1, 3]  # sample 2 is masked
    old = s.detach().log_softmax(-1).gather(-1, ids[..., None])[..., 0] - torch.rand(n, length)
    rollout_w = torch.rand(n, length, generator=g) * 2.5
    s64 = s.detach().double().requires_grad_()
    ref = authors_step_loss(
        s64, t.double(), ids, mask, live, old.double(), rollout_w.double(), top_k, alpha,
        add_tail, 2.0,
    )  # fmt: skip
    (ref_grad,) = torch.autograd.grad(ref, s64)
    kw = dict(top_k=top_k, alpha=alpha, add_tail=add_tail, is_clip=2.0)
    kw.update(aggregation="seq_mean_token_mean", num_sequences=n)
    ours = s.new_zeros(())
    for part in ([0], [1, 3]):  # two micro-batches
        loss, _ = sdpo_loss(
            s[part], t[part], ids[part], mask[part],
            old_logprobs=old[part], rollout_weights=rollout_w[part], **kw,
        )  # fmt: skip
        ours = ours + loss
    (grad,) = torch.autograd.grad(ours, s)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    assert torch.allclose(grad.double(), ref_grad, atol=1e-6)
    assert (grad[2] == 0).all()
    # the old rule weighs tokens, not samples: a different loss on unequal lengths
    token, _ = sdpo_loss(s[live], t[live], ids[live], mask[live], old_logprobs=old[live],
                         rollout_weights=rollout_w[live], top_k=top_k, alpha=alpha,
                         add_tail=add_tail, aggregation="token_mean")  # fmt: skip
    assert token.item() != pytest.approx(ref.item(), rel=1e-3)


def test_rollout_is_weights_are_verls_truncated_token_weights():
    """verl rollout_corr_helper (rollout_is: token, threshold 2): exp(trainer - sampler log-prob)
    with the log ratio clamped to +-20, capped above at 2, never below; the step metrics are
    the uncapped mean, the capped fraction and the largest log-prob gap."""
    s, t, ids, mask = make(12)
    mask = torch.ones(B, T, dtype=torch.bool)
    logp = s.detach().log_softmax(-1).gather(-1, ids[..., None])[..., 0]
    r = torch.tensor([[0.25, 0.5, 1.0, 1.5, 3.0, 1e12], [0.1, 2.5, 0.9, 1.9, 4.0, 1.0]])
    rollout = logp - r.log()  # exp(trainer - sampler) = r
    weights, raw, capped = loss_mod.rollout_is_weights(logp, rollout, 2.0)
    safe = r.clamp(max=math.exp(20.0))
    torch.testing.assert_close(raw, safe, rtol=1e-5, atol=0)
    torch.testing.assert_close(weights, r.clamp(max=2.0), rtol=1e-5, atol=0)
    assert capped.sum().item() == 4
    loss, m = sdpo_loss(s, t, ids, mask, top_k=None, rollout_logprobs=rollout, rollout_is_cap=2.0)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.allclose(grad.double(), closed_form_grad(s, t, mask, r.clamp(max=2.0).double()),
                          atol=1e-5)  # fmt: skip
    assert m["rollout_is_mean"] == pytest.approx(safe.mean().item(), rel=1e-5)
    assert m["rollout_is_capped_frac"] == pytest.approx(4 / 12)
    assert m["rollout_logp_gap_max"] == pytest.approx(math.log(1e12), rel=1e-5)
    # the trainer's log-probs at temperature 1 (what the engines report), whatever the loss's
    _, m7 = sdpo_loss(s, t, ids, mask, top_k=K, temperature=0.7, rollout_logprobs=rollout)
    assert m7["rollout_is_mean"] == pytest.approx(m["rollout_is_mean"], rel=1e-5)
    _, off = sdpo_loss(s, t, ids, mask, top_k=None)
    assert "rollout_is_mean" not in off
