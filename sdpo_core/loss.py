"""SDPO self-distillation loss: per-token divergence between the student and its feedback-
conditioned self-teacher, over the student's top-K tokens (+ a tail bucket) or the full
vocabulary, times an optional clipped importance ratio and an optional rollout-correction
weight, aggregated over the step as the authors' runs do (each sequence's token mean, averaged
over the step's samples) or as one token mean.

Shapes: B batch, T response positions, V vocabulary, K top-K.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Top-K path: full-vocabulary work is done in chunks of about this many logits, so that only
# chunk-sized float temporaries exist besides the [B, T, V] gradient itself.
CHUNK_ELEMS = 1 << 21
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


def _token_terms(
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    ids: torch.Tensor,
    *,
    top_k: int | None,
    alpha: float,
    add_tail: bool,
    temperature: float,
    raw: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Per-position terms of the SDPO loss on [B, T, V] logits (teacher already detached).

    Returns per_tok (divergence, differentiable w.r.t. s_logits), s_tok, t_tok (log-probs of
    ids at temperature; s_tok detached), s_mass, t_mass (top-K mass; 1 for the full vocabulary),
    s_raw (with raw=True: the student's detached log-probs of ids at temperature 1, what the
    engines report; else None), all [B, T].
    """
    B, T, V = s_logits.shape
    ids = ids.long().unsqueeze(-1)  # [B, T, 1]
    if top_k is None:
        s_logp = F.log_softmax(s_logits.float() / temperature, dim=-1)  # [B, T, V]
        t_logp = F.log_softmax(t_logits.float() / temperature, dim=-1)  # [B, T, V]
        s_tok = s_logp.detach().gather(-1, ids).squeeze(-1)  # [B, T]
        t_tok = t_logp.gather(-1, ids).squeeze(-1)  # [B, T]
        s_mass = t_mass = torch.ones(B, T, device=s_logits.device)
    else:
        s_lse = _logsumexp(s_logits.detach(), temperature)  # [B, T]
        t_lse = _logsumexp(t_logits, temperature)  # [B, T]
        idx = s_logits.detach().topk(min(top_k, V), dim=-1).indices  # [B, T, K]
        s_logp = _GatherLogProbs.apply(s_logits, s_lse, idx, temperature)  # [B, T, K]
        t_logp = t_logits.gather(-1, idx).float() / temperature - t_lse.unsqueeze(-1)
        s_tok = s_logits.detach().gather(-1, ids).squeeze(-1).float() / temperature - s_lse
        t_tok = t_logits.gather(-1, ids).squeeze(-1).float() / temperature - t_lse
        s_mass = s_logp.detach().logsumexp(-1).exp()  # [B, T]
        t_mass = t_logp.logsumexp(-1).exp()  # [B, T]
        if add_tail:
            s_logp, t_logp = _add_tail(s_logp), _add_tail(t_logp)  # [B, T, K+1]
        else:
            s_logp = s_logp - s_logp.logsumexp(-1, keepdim=True)
            t_logp = t_logp - t_logp.logsumexp(-1, keepdim=True)
    s_raw = None
    if raw:
        s_raw = s_tok
        if temperature != 1.0:
            lse = _logsumexp(s_logits.detach(), 1.0)  # [B, T]
            s_raw = s_logits.detach().gather(-1, ids).squeeze(-1).float() - lse
    return divergence(s_logp, t_logp, alpha), s_tok, t_tok, s_mass, t_mass, s_raw


def _ratio(
    s_tok: torch.Tensor, old_logprobs: torch.Tensor | None, is_clip: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The detached importance ratio exp(s_tok - old), clamped above at is_clip, and where it
    was clamped (ones / all False without old_logprobs)."""
    if old_logprobs is None:
        return torch.ones_like(s_tok), torch.zeros_like(s_tok, dtype=torch.bool)
    ratio = (s_tok - old_logprobs.float()).clamp(max=LOG_RATIO_MAX).exp()
    if is_clip is None:
        return ratio, torch.zeros_like(ratio, dtype=torch.bool)
    return ratio.clamp(max=is_clip), ratio > is_clip


def rollout_is_weights(
    trainer_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, cap: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated importance weights against the sampling engine (verl's `rollout_is: token`,
    rollout_corr_helper.compute_rollout_correction_weights): exp(trainer - sampler log-prob),
    the log ratio clamped to +-LOG_RATIO_MAX, then capped above at `cap` (None: no cap; never
    clipped below). Returns the detached weights, the uncapped weights and where the cap bit,
    all shaped like the inputs."""
    gap = (trainer_logprobs.detach().float() - rollout_logprobs.float()).clamp(
        -LOG_RATIO_MAX, LOG_RATIO_MAX
    )
    raw = gap.exp()
    if cap is None:
        return raw, raw, torch.zeros_like(raw, dtype=torch.bool)
    return raw.clamp(max=cap), raw, raw > cap


def _aggregation_scale(
    mask: torch.Tensor, aggregation: str, num_sequences: int | None, num_tokens: int | None
) -> torch.Tensor:
    """Per-position factor [B, T] that turns the summed per-token loss into the step's loss.

    "token_mean": 1 / (the step's masked tokens; default this batch's).
    "seq_mean_token_mean": 1 / (the sequence's tokens x the step's samples; default B): each
    sequence's token mean, averaged over all samples of the step, a sample without tokens (a
    masked one) counting as zero -- the authors' runs (verl "token-mean" on micro-batches of
    one sequence, ppo_micro_batch_size_per_gpu 1 in user.yaml, gradients accumulated over the
    step's samples), and TRL's SDPO loss."""
    if aggregation == "token_mean":
        n = num_tokens if num_tokens is not None else int(mask.sum())
        return torch.full(mask.shape, 1.0 / max(n, 1), device=mask.device)
    if aggregation == "seq_mean_token_mean":
        seqs = num_sequences if num_sequences is not None else mask.shape[0]
        per_seq = mask.sum(-1, keepdim=True).clamp(min=1).float()  # [B, 1]
        return (1.0 / (per_seq * max(seqs, 1))).expand(mask.shape)
    raise ValueError(f"aggregation must be token_mean or seq_mean_token_mean, got {aggregation!r}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


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
    token_weights: torch.Tensor | None = None,
    rollout_logprobs: torch.Tensor | None = None,
    rollout_is_cap: float | None = 2.0,
    rollout_weights: torch.Tensor | None = None,
    aggregation: str = "token_mean",
    num_sequences: int | None = None,
    num_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SDPO loss of a batch, aggregated as `aggregation` says (see _aggregation_scale): with
    num_sequences / num_tokens of the whole step, the losses of its micro-batches add up to
    the step's loss.

    student_logits, teacher_logits: [B, T, V], position t = distribution over response token t
    (any float dtype; computed in float32). The teacher is detached here.
    response_ids, response_mask: [B, T]. old_logprobs: [B, T] the trainer's log-probs of
    response_ids before this batch's first update; when given, the per-token loss is multiplied
    by the detached ratio exp(logp - old_logp), clamped above at is_clip (None: no clamp; never
    clamped below). rollout_logprobs: [B, T] the sampling engine's temperature-1 log-probs;
    when given, the per-token loss is also multiplied by rollout_is_weights(the student's
    temperature-1 log-probs, rollout_logprobs, rollout_is_cap); rollout_weights [B, T] gives
    such weights precomputed instead (a later update of the same batch).

    Log-probs are log_softmax(logits / temperature) over the full vocabulary. top_k=K: both sides
    are taken at the student's top-K indices (no gradient through the choice); add_tail=True
    appends the tail bucket log(1 - sum p_topk) (K+1 buckets); add_tail=False renormalises each
    side over its K buckets (as the public SDPO code does). top_k=None: full vocabulary.
    A batch without masked tokens gives a zero loss that still has a graph.

    Metrics (floats): loss, kl (token mean divergence, no ratio), num_tokens, is_ratio_mean,
    is_clipped_fraction (1.0 / 0.0 without old_logprobs), student_topk_mass, teacher_topk_mass
    (1.0 for the full vocabulary), student_teacher_logp_diff (mean log pi_S(y_t) - log pi_T(y_t));
    with rollout_logprobs also rollout_is_mean (the uncapped weights' mean, as verl reports it),
    rollout_is_capped_frac and rollout_logp_gap_max (the largest |trainer - sampler| log-prob).

    This takes whole [B, T, V] logits; the trainer uses sdpo_loss_chunked (same loss, from
    hidden states, one chunk of positions at a time).
    """
    _check_alpha(alpha)
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise ValueError(f"logits shapes {student_logits.shape} / {teacher_logits.shape}")
    mask = response_mask.bool()  # [B, T]
    scale = _aggregation_scale(mask, aggregation, num_sequences, num_tokens)  # [B, T]
    per_tok, s_tok, t_tok, s_mass, t_mass, s_raw = _token_terms(
        student_logits,
        teacher_logits.detach(),
        response_ids,
        top_k=top_k,
        alpha=alpha,
        add_tail=add_tail,
        temperature=temperature,
        raw=rollout_logprobs is not None and rollout_weights is None,
    )
    kl = per_tok.detach()
    ratio, clipped = _ratio(s_tok, old_logprobs, is_clip)
    per_tok = per_tok * ratio
    if token_weights is not None:
        per_tok = per_tok * token_weights
    rollout = None
    if rollout_weights is not None:
        per_tok = per_tok * rollout_weights
    elif rollout_logprobs is not None:
        w, raw_w, capped = rollout_is_weights(s_raw, rollout_logprobs, rollout_is_cap)
        per_tok = per_tok * w
        rollout = (raw_w, capped, (s_raw - rollout_logprobs.float()).abs())

    n = mask.sum()
    denom = n.clamp(min=1).float()
    # where, not *: masked NaN can't leak
    loss = torch.where(mask, per_tok * scale, 0.0).sum()

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
    if rollout is not None:
        raw_w, capped, gap = rollout
        metrics["rollout_is_mean"] = mean(raw_w)
        metrics["rollout_is_capped_frac"] = mean(capped)
        metrics["rollout_logp_gap_max"] = float(torch.where(mask, gap, 0.0).max()) if n else 0.0
    return loss, metrics


# ---------------------------------------------------------------------------- from hidden states
Head = Callable[[torch.Tensor], torch.Tensor]  # hidden [..., H] -> logits [..., V]


def chunk_rows(vocab: int) -> int:
    """Positions per chunk of the hidden-state loss: about CHUNK_ELEMS logits per chunk."""
    return max(1, CHUNK_ELEMS // vocab)


class _Precomputed(torch.autograd.Function):
    """`value`, whose gradient w.r.t. x was already computed as `grad`: d/dx = g * grad."""

    @staticmethod
    def forward(ctx, x, value, grad):
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g.to(grad.dtype), None, None


def sdpo_loss_chunked(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    head: Head,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    teacher_ref: tuple[torch.Tensor, float] | None = None,
    top_k: int | None = 20,
    alpha: float = 1.0,
    add_tail: bool = True,
    temperature: float = 1.0,
    old_logprobs: torch.Tensor | None = None,
    is_clip: float | None = 2.0,
    rows: int | None = None,
    token_weights: torch.Tensor | None = None,
    rollout_logprobs: torch.Tensor | None = None,
    rollout_is_cap: float | None = 2.0,
    rollout_weights: torch.Tensor | None = None,
    aggregation: str = "token_mean",
    num_sequences: int | None = None,
    num_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor | None]:
    """sdpo_loss(head(student_hidden), teacher logits, ...) without any [B, T, V] tensor.

    student_hidden, teacher_hidden: [B, T, H] final hidden states at the positions predicting
    each response token; head maps them to logits (frozen: it gets no gradient). The teacher's
    logits are head(teacher_hidden), or with teacher_ref = (ref_hidden [B, T, H], a) the
    trust-region teacher lerp(head(ref_hidden), head(teacher_hidden), a). All other arguments,
    the loss and the metrics are those of sdpo_loss.

    The masked positions are taken `rows` at a time (default chunk_rows(V)): logits of both
    sides for that chunk, the loss terms, and the chunk's backward to its hidden states, so only
    chunk-sized [rows, V] tensors ever exist. The returned loss carries the gradient to
    student_hidden that was computed this way. Also returns the student's log-probs of
    response_ids at temperature, [B, T] (0 where masked; the old log-probs of a later update),
    and the rollout weights applied, [B, T] (computed from rollout_logprobs; 0 where masked;
    the rollout_weights of a later update), or None without rollout_logprobs.
    """
    _check_alpha(alpha)
    if student_hidden.dim() != 3 or student_hidden.shape != teacher_hidden.shape:
        raise ValueError(f"hidden shapes {student_hidden.shape} / {teacher_hidden.shape}")
    mask = response_mask.bool()  # [B, T]
    s_h = student_hidden[mask]  # [N, H], differentiable gather
    t_h = teacher_hidden.detach()[mask]  # [N, H]
    r_h = teacher_ref[0].detach()[mask] if teacher_ref is not None else None
    ids = response_ids[mask].long()  # [N]
    old = old_logprobs[mask] if old_logprobs is not None else None
    w = token_weights[mask].float() if token_weights is not None else None
    scale = _aggregation_scale(mask, aggregation, num_sequences, num_tokens)[mask]  # [N]
    given_rw = rollout_weights[mask].float() if rollout_weights is not None else None
    rollout = rollout_logprobs[mask].float() if rollout_logprobs is not None else None
    compute_rw = given_rw is None and rollout is not None
    N = ids.shape[0]
    denom = float(max(N, 1))
    need_grad = s_h.requires_grad and torch.is_grad_enabled()

    zero = torch.zeros((), dtype=torch.float64, device=s_h.device)
    keys = ("loss", "kl", "ratio", "clipped", "s_mass", "t_mass", "diff", "rw", "rw_capped")
    sums = dict.fromkeys(keys, zero)
    gap_max = zero
    grad = torch.zeros_like(s_h) if need_grad else None
    s_tok_all = torch.zeros(N, dtype=torch.float32, device=s_h.device)
    rw_all = torch.zeros(N, dtype=torch.float32, device=s_h.device) if compute_rw else None
    if rows is None and N:
        with torch.no_grad():
            rows = chunk_rows(head(t_h[:1]).shape[-1])
    for a in range(0, N, rows or 1):
        b = min(a + rows, N)
        with torch.no_grad():
            t_logits = head(t_h[a:b])  # [c, V]
            if r_h is not None:
                t_logits = torch.lerp(head(r_h[a:b]), t_logits, teacher_ref[1])
        h = s_h[a:b].detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            s_logits = head(h)  # [c, V]
            per_tok, s_tok, t_tok, s_mass, t_mass, s_raw = _token_terms(
                s_logits[None],
                t_logits[None],
                ids[None, a:b],
                top_k=top_k,
                alpha=alpha,
                add_tail=add_tail,
                temperature=temperature,
                raw=compute_rw,
            )
            ratio, clipped = _ratio(s_tok, old[None, a:b] if old is not None else None, is_clip)
            weighted = per_tok * ratio * scale[None, a:b]
            if w is not None:
                weighted = weighted * w[None, a:b]
            if given_rw is not None:
                weighted = weighted * given_rw[None, a:b]
            elif compute_rw:
                rw, raw_rw, capped = rollout_is_weights(s_raw, rollout[None, a:b], rollout_is_cap)
                weighted = weighted * rw
                rw_all[a:b] = rw[0]
                sums["rw"] = sums["rw"] + raw_rw.double().sum()
                sums["rw_capped"] = sums["rw_capped"] + capped.double().sum()
                gap_max = torch.maximum(gap_max, (s_raw - rollout[None, a:b]).abs().max().double())
            chunk_loss = weighted.sum()
        if need_grad:
            (grad[a:b],) = torch.autograd.grad(chunk_loss, h)
        del s_logits, t_logits
        s_tok_all[a:b] = s_tok[0]
        for key, x in (
            ("loss", chunk_loss),
            ("kl", per_tok),
            ("ratio", ratio),
            ("clipped", clipped),
            ("s_mass", s_mass),
            ("t_mass", t_mass),
            ("diff", s_tok - t_tok),
        ):
            sums[key] = sums[key] + x.detach().double().sum()  # summed on the device, one sync

    value = sums["loss"].float()
    sums = {k: v.item() for k, v in sums.items()}
    loss = _Precomputed.apply(s_h, value, grad) if need_grad else value
    metrics = {
        "loss": sums["loss"],
        "kl": sums["kl"] / denom,
        "num_tokens": float(N),
        "is_ratio_mean": sums["ratio"] / denom,
        "is_clipped_fraction": sums["clipped"] / denom,
        "student_topk_mass": sums["s_mass"] / denom,
        "teacher_topk_mass": sums["t_mass"] / denom,
        "student_teacher_logp_diff": sums["diff"] / denom,
    }
    weights_out = None
    if compute_rw:
        metrics["rollout_is_mean"] = sums["rw"] / denom
        metrics["rollout_is_capped_frac"] = sums["rw_capped"] / denom
        metrics["rollout_logp_gap_max"] = gap_max.item()
        weights_out = torch.zeros(mask.shape, dtype=torch.float32, device=s_h.device)
        weights_out[mask] = rw_all
    token_logprobs = torch.zeros(mask.shape, dtype=torch.float32, device=s_h.device)
    token_logprobs[mask] = s_tok_all
    return loss, metrics, token_logprobs, weights_out


@torch.no_grad()
def token_logprobs(
    hidden: torch.Tensor, head: Head, ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log_softmax(head(hidden) / temperature) at ids, chunked over positions: [..., H] -> [...]."""
    flat, flat_ids = hidden.reshape(-1, hidden.shape[-1]), ids.reshape(-1).long()
    out = torch.empty(flat_ids.shape, dtype=torch.float32, device=hidden.device)
    rows = chunk_rows(head(flat[:1]).shape[-1]) if flat.shape[0] else 1
    for a in range(0, flat.shape[0], rows):
        x = head(flat[a : a + rows]).float() / temperature  # [c, V]
        out[a : a + rows] = x.gather(-1, flat_ids[a : a + rows, None])[:, 0] - x.logsumexp(-1)
    return out.reshape(ids.shape)
