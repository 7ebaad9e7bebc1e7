"""SDPO self-distillation loss: per-token divergence between the student and its feedback-
conditioned self-teacher, over the student's top-K tokens (+ a tail bucket) or the full
vocabulary, with an optional clipped importance ratio, averaged over response tokens.

Shapes: B batch, T response positions, V vocabulary, K top-K.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Top-K path: full-vocabulary work is done in chunks of about this many logits, so that only
# chunk-sized float temporaries exist besides the [B, T, V] gradient itself.
CHUNK_ELEMS = 1 << 22
# The tail bucket log(1 - sum p_topk) = log(-expm1(lse)) needs lse < 0; lse is clamped to at most
# TAIL_LSE_MAX, so the tail log-prob is >= log(1e-7) ~ -16.1 and never -inf/NaN (float32-safe).
TAIL_LSE_MAX = -1e-7
# The log importance ratio is clamped at this value before exp, so is_clip=None cannot give inf.
LOG_RATIO_MAX = 20.0


def _chunks(B: int, T: int, V: int) -> Iterator[tuple[int, slice]]:
    """(batch index, position slice) pairs covering [B, T] in ~CHUNK_ELEMS-logit pieces."""
    rows = max(1, CHUNK_ELEMS // V)
    for b in range(B):
        for t in range(0, T, rows):
            yield b, slice(t, t + rows)


def _scaled(logits: torch.Tensor, temperature: float, buf: torch.Tensor | None = None):
    """A float32 copy of a logits chunk divided by temperature (into buf when given)."""
    x = buf.copy_(logits) if buf is not None else logits.to(torch.float32, copy=True)
    return x if temperature == 1.0 else x.div_(temperature)


@torch.no_grad()
def _logsumexp(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logsumexp(logits / temperature) over V, chunked, in float32: [B, T, V] -> [B, T]."""
    out = torch.empty(logits.shape[:2], dtype=torch.float32, device=logits.device)
    for b, ts in _chunks(*logits.shape):
        x = _scaled(logits[b, ts], temperature)  # [rows, V], the only temporary
        m = x.amax(-1, keepdim=True)  # [rows, 1]
        out[b, ts] = x.sub_(m).exp_().sum(-1).log_() + m.squeeze(-1)
    return out


class _GatherLogProbs(torch.autograd.Function):
    """log_softmax(logits / temperature) at idx, without any [B, T, V] float temporary.

    Forward gathers K logits and subtracts the (precomputed, full-vocabulary) logsumexp.
    Backward writes d/dlogits = (onehot(idx) @ g - softmax * sum(g)) / temperature chunk by chunk
    into one buffer: the gradient is the only [B, T, V] tensor this allocates.
    """

    @staticmethod
    def forward(ctx, logits, lse, idx, temperature):  # [B,T,V], [B,T], [B,T,K], float
        ctx.save_for_backward(logits, lse, idx)
        ctx.temperature = temperature
        return logits.gather(-1, idx).float() / temperature - lse.unsqueeze(-1)  # [B, T, K]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # grad [B, T, K]
        logits, lse, idx = ctx.saved_tensors
        tau = ctx.temperature
        grad = grad.float()
        gsum = grad.sum(-1, keepdim=True)  # [B, T, 1]
        out = torch.empty_like(logits)  # [B, T, V], the gradient
        f32 = out.dtype == torch.float32
        for b, ts in _chunks(*logits.shape):
            # softmax chunk, computed in place in the gradient buffer when it is float32
            g = _scaled(logits[b, ts], tau, out[b, ts] if f32 else None).sub_(lse[b, ts, None])
            g.exp_().mul_(-gsum[b, ts]).scatter_add_(-1, idx[b, ts], grad[b, ts])
            g = g if tau == 1.0 else g.div_(tau)
            if not f32:
                out[b, ts] = g
        return out, None, None, None


def _add_tail(logp: torch.Tensor) -> torch.Tensor:
    """Append log(1 - sum(exp(logp))) as bucket K+1 (lse clamped, see TAIL_LSE_MAX)."""
    lse = torch.logsumexp(logp, dim=-1, keepdim=True).clamp(max=TAIL_LSE_MAX)
    return torch.cat([logp, torch.log(-torch.expm1(lse))], dim=-1)


def _kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim from log-probs."""
    return (p_logp.exp() * (p_logp - q_logp)).sum(-1)


def divergence(s_logp: torch.Tensor, t_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha=1: KL(S||T); alpha=0: KL(T||S); else (1-a) KL(S||M) + a KL(T||M), M = (1-a)S + aT."""
    if alpha == 1.0:
        return _kl(s_logp, t_logp)
    if alpha == 0.0:
        return _kl(t_logp, s_logp)
    m_logp = torch.logaddexp(s_logp + math.log(1 - alpha), t_logp + math.log(alpha))
    return (1 - alpha) * _kl(s_logp, m_logp) + alpha * _kl(t_logp, m_logp)


def sdpo_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    top_k: int | None = 20,
    alpha: float = 1.0,
    add_tail: bool = True,
    temperature: float = 1.0,
    old_logprobs: torch.Tensor | None = None,
    is_clip: float | None = 2.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SDPO loss, token mean over the masked response tokens of the whole batch.

    student_logits, teacher_logits: [B, T, V], position t = distribution over response token t
    (any float dtype; computed in float32). The teacher is detached here.
    response_ids, response_mask: [B, T]. old_logprobs: [B, T] sampler log-probs of response_ids;
    when given, the per-token loss is multiplied by the detached ratio exp(logp - old_logp),
    clamped above at is_clip (None: no clamp; never clamped below).

    Log-probs are log_softmax(logits / temperature) over the full vocabulary. top_k=K: both sides
    are taken at the student's top-K indices (no gradient through the choice); add_tail=True
    appends the tail bucket log(1 - sum p_topk) (K+1 buckets); add_tail=False renormalises each
    side over its K buckets (as the public SDPO code does). top_k=None: full vocabulary.
    A batch without masked tokens gives a zero loss that still has a graph.

    Metrics (floats): loss, kl (mean divergence, no ratio), num_tokens, is_ratio_mean,
    is_clipped_fraction (1.0 / 0.0 without old_logprobs), student_topk_mass, teacher_topk_mass
    (1.0 for the full vocabulary), student_teacher_logp_diff (mean log pi_S(y_t) - log pi_T(y_t)).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise ValueError(f"logits shapes {student_logits.shape} / {teacher_logits.shape}")
    B, T, V = student_logits.shape
    teacher_logits = teacher_logits.detach()
    ids = response_ids.long().unsqueeze(-1)  # [B, T, 1]
    mask = response_mask.bool()  # [B, T]

    if top_k is None:
        s_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)  # [B, T, V]
        t_logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # [B, T, V]
        s_tok = s_logp.detach().gather(-1, ids).squeeze(-1)  # [B, T]
        t_tok = t_logp.gather(-1, ids).squeeze(-1)  # [B, T]
        s_mass = t_mass = torch.ones(B, T, device=student_logits.device)
    else:
        s_lse = _logsumexp(student_logits.detach(), temperature)  # [B, T]
        t_lse = _logsumexp(teacher_logits, temperature)  # [B, T]
        idx = student_logits.detach().topk(min(top_k, V), dim=-1).indices  # [B, T, K]
        s_logp = _GatherLogProbs.apply(student_logits, s_lse, idx, temperature)  # [B, T, K]
        t_logp = teacher_logits.gather(-1, idx).float() / temperature - t_lse.unsqueeze(-1)
        s_tok = student_logits.detach().gather(-1, ids).squeeze(-1).float() / temperature - s_lse
        t_tok = teacher_logits.gather(-1, ids).squeeze(-1).float() / temperature - t_lse
        s_mass = s_logp.detach().logsumexp(-1).exp()  # [B, T]
        t_mass = t_logp.logsumexp(-1).exp()  # [B, T]
        if add_tail:
            s_logp, t_logp = _add_tail(s_logp), _add_tail(t_logp)  # [B, T, K+1]
        else:
            s_logp = s_logp - s_logp.logsumexp(-1, keepdim=True)
            t_logp = t_logp - t_logp.logsumexp(-1, keepdim=True)

    per_tok = divergence(s_logp, t_logp, alpha)  # [B, T]
    kl = per_tok.detach()
    ratio = torch.ones_like(kl)
    clipped = torch.zeros_like(kl, dtype=torch.bool)
    if old_logprobs is not None:
        ratio = (s_tok - old_logprobs.float()).clamp(max=LOG_RATIO_MAX).exp()  # [B, T], detached
        if is_clip is not None:
            clipped = ratio > is_clip
            ratio = ratio.clamp(max=is_clip)
        per_tok = per_tok * ratio

    n = mask.sum()
    denom = n.clamp(min=1).float()
    loss = torch.where(mask, per_tok, 0.0).sum() / denom  # where, not *: masked NaN can't leak

    def mean(x: torch.Tensor) -> float:
        return (torch.where(mask, x.float(), 0.0).sum() / denom).item()

    metrics = {
        "loss": loss.item(),
        "kl": mean(kl),
        "num_tokens": float(n.item()),
        "is_ratio_mean": mean(ratio),
        "is_clipped_fraction": mean(clipped),
        "student_topk_mass": mean(s_mass),
        "teacher_topk_mass": mean(t_mass),
        "student_teacher_logp_diff": mean(s_tok - t_tok),
    }
    return loss, metrics
