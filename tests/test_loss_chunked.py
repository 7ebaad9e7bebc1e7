"""The chunked SDPO loss (from hidden states, a chunk of positions at a time) equals the
unchunked sdpo_loss on full logits: loss, metrics and gradients, for every loss option; and a
whole trainer step equals the unchunked step, on the bundled model and on a tiny model with
Qwen's 151,936-token vocabulary."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sdpo_core.config import SDPOConfig
from sdpo_core.loss import sdpo_loss, sdpo_loss_chunked, token_logprobs
from sdpo_core.toy import DEFAULT_MODEL_DIR
from sdpo_core.trainer import STUDENT, RolloutBatch, SDPOTrainer

B, T, H, V, K = 2, 7, 16, 300, 5


def make(seed: int = 0, softcap: float | None = None):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(H, V, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(V, H, generator=g))
    lin.requires_grad_(False)

    def head(h: torch.Tensor) -> torch.Tensor:
        x = lin(h)
        return x if softcap is None else torch.tanh(x / softcap) * softcap

    s = (torch.randn(B, T, H, generator=g) * 0.5).requires_grad_()
    t = torch.randn(B, T, H, generator=g) * 0.5
    r = torch.randn(B, T, H, generator=g) * 0.5
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 5:] = False
    mask[1, 0] = False
    return head, s, t, r, ids, mask


def both(seed=0, softcap=None, trust_region=False, rows=3, **kw):
    """(loss, metrics, grad, token log-probs) of the chunked and the unchunked path."""
    head, s, t, r, ids, mask = make(seed, softcap)
    ref = (r, 0.3) if trust_region else None
    loss, m, lp, _ = sdpo_loss_chunked(s, t, head, ids, mask, teacher_ref=ref, rows=rows, **kw)
    (g,) = torch.autograd.grad(loss * 0.7, s)
    t_logits = head(t) if ref is None else torch.lerp(head(r), head(t), 0.3)
    s_logits = head(s)
    loss0, m0 = sdpo_loss(s_logits, t_logits, ids, mask, **kw)
    (g0,) = torch.autograd.grad(loss0 * 0.7, s)
    lp0 = (s_logits.detach() / kw.get("temperature", 1.0)).log_softmax(-1)
    lp0 = torch.where(mask, lp0.gather(-1, ids[..., None])[..., 0], 0.0)
    return (loss, m, g, lp), (loss0, m0, g0, lp0)


def assert_same(a, b):
    (loss, m, g, lp), (loss0, m0, g0, lp0) = a, b
    assert loss.item() == pytest.approx(loss0.item(), rel=1e-5, abs=1e-6)
    assert m.keys() == m0.keys()
    for key in m:
        assert m[key] == pytest.approx(m0[key], rel=1e-5, abs=1e-6), key
    torch.testing.assert_close(g, g0, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(lp, lp0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("top_k,add_tail", [(None, True), (K, True), (K, False)])
def test_chunked_equals_unchunked(top_k, add_tail, alpha):
    assert_same(*both(top_k=top_k, add_tail=add_tail, alpha=alpha))


@pytest.mark.parametrize("top_k", [None, K])
@pytest.mark.parametrize("is_clip", [2.0, None])
def test_chunked_temperature_ratio_trust_region_softcap(top_k, is_clip):
    head, s, _, _, ids, _ = make(1)
    old = (head(s.detach()) / 0.7).log_softmax(-1).gather(-1, ids[..., None])[..., 0]
    old = old + torch.linspace(-2.0, 1.0, T)  # ratios from e^-1 to e^2: some clipped
    kw = dict(top_k=top_k, alpha=0.5, temperature=0.7, old_logprobs=old, is_clip=is_clip)
    a, b = both(1, softcap=3.0, trust_region=True, **kw)
    assert_same(a, b)
    assert a[1]["is_ratio_mean"] != pytest.approx(1.0)


@pytest.mark.parametrize("rows", [1, 4, 100, None])
def test_chunk_size_does_not_matter(rows):
    assert_same(*both(2, rows=rows, top_k=K, alpha=1.0))


def test_no_tokens_gives_zero_with_a_graph():
    head, s, t, _, ids, _ = make(3)
    loss, m, lp, _ = sdpo_loss_chunked(s, t, head, ids, torch.zeros(B, T, dtype=torch.bool))
    (g,) = torch.autograd.grad(loss, s)
    assert loss.item() == 0.0 and (g == 0).all() and (lp == 0).all()
    assert m["num_tokens"] == 0.0 and all(math.isfinite(v) for v in m.values())


def test_token_logprobs_chunked():
    head, s, _, _, ids, _ = make(4)
    want = (head(s.detach()) / 1.3).log_softmax(-1).gather(-1, ids[..., None])[..., 0]
    torch.testing.assert_close(token_logprobs(s.detach(), head, ids, 1.3), want)


# ---------------------------------------------------------------------------- whole trainer step
def tiny_large_vocab_model(out: Path) -> Path:
    """A random 2-layer Qwen3 with V = 151,936 (ids past the toy tokenizer's are never fed)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    cfg = AutoConfig.for_model(
        "qwen3",
        vocab_size=151_936,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def batch_of(trainer: SDPOTrainer) -> RolloutBatch:
    enc = trainer.encode_chat
    words = ["a=1 b=2 c=3", "a=4 b=5", "c=6 a=7 b=8 c=9 a=0", "b=1"]
    resp = [trainer.tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    teachers = [enc(f"solve; hint {i}: a=1 b=2") if i != 1 else None for i in range(4)]
    return RolloutBatch(enc("solve the table"), resp, teachers)


def run_steps(trainer: SDPOTrainer, cfg: SDPOConfig, chunked: bool, steps: int = 2):
    trainer.reset(cfg)
    trainer.chunked_loss = chunked
    try:
        metrics = [trainer.step(batch_of(trainer)) for _ in range(steps)]
    finally:
        trainer.chunked_loss = True
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return metrics, grads


MODES = [
    {"top_k": 20, "teacher_regularization": "ema"},
    {"top_k": None, "alpha": 0.5, "teacher_regularization": "trust_region"},
    {"top_k": 20, "add_tail": False, "updates_per_batch": 2, "temperature": 0.8},
]


def assert_steps_equal(trainer: SDPOTrainer, over: dict) -> None:
    cfg = SDPOConfig(lr=1e-4, lora_rank=4, micro_batch_size=2, seed=5).merged(over)
    got, g = run_steps(trainer, cfg, chunked=True)
    want, g0 = run_steps(trainer, cfg, chunked=False)
    for a, b in zip(got, want, strict=True):
        for key in ("loss", "kl", "grad_norm", "tokens", "masked_fraction"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert g.keys() == g0.keys() and all(f".{STUDENT}." in n for n in g)
    scale = max(x.abs().max().item() for x in g0.values())
    for n in g:  # the LoRA gradients of the last update (after the first, small, AdamW update)
        torch.testing.assert_close(g[n], g0[n], rtol=1e-3, atol=1e-5 * scale)


@pytest.mark.parametrize("over", MODES, ids=["topk_ema", "full_jsd_trust", "notail_2updates"])
def test_trainer_step_equals_unchunked_bundled(runtime, over):
    assert_steps_equal(runtime.trainer, over)


def test_trainer_step_equals_unchunked_large_vocab(tmp_path):
    trainer = SDPOTrainer(tiny_large_vocab_model(tmp_path / "m"), device="cpu")
    for over in MODES[:2]:
        assert_steps_equal(trainer, over)
    prompt, resp = batch_of(trainer).prompt_ids, batch_of(trainer).response_ids[2]
    logits, ids, _ = trainer._response_logits([prompt], [resp])
    want = logits[0].log_softmax(-1).gather(-1, ids[0][:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(trainer.sequence_logprobs(prompt, resp)), want)


@pytest.mark.parametrize("top_k", [None, K])
def test_token_weights_scale_each_position(top_k):
    """Per-position weights: the chunked and the unchunked loss agree, and a position of
    weight 0 gets no gradient while the mean stays over all masked positions."""
    w = torch.rand(B, T, generator=torch.Generator().manual_seed(5))
    w[0, 1] = w[1, 3] = 0.0
    a, b = both(5, top_k=top_k, token_weights=w)
    assert_same(a, b)
    grad = a[2]
    assert (grad[0, 1] == 0).all() and (grad[1, 3] == 0).all() and grad[0, 0].abs().sum() > 0
    unweighted = both(5, top_k=top_k)[0]
    assert a[1]["num_tokens"] == unweighted[1]["num_tokens"]
    assert a[0].item() < unweighted[0].item()


@pytest.mark.parametrize("top_k", [None, K])
def test_chunked_rollout_weights_and_seq_mean_aggregation(top_k):
    """Rollout correction and the authors' aggregation: the chunked and the unchunked loss
    agree (loss, metrics, gradient), and the weights returned are those it applied."""
    head, s, t, _, ids, mask = make(6)
    raw = head(s.detach()).log_softmax(-1).gather(-1, ids[..., None])[..., 0]  # temperature 1
    ratio = 0.2 + 3.8 * torch.rand(B, T, generator=torch.Generator().manual_seed(9))
    rollout = raw - ratio.log()  # the engine's log-probs: exp(trainer - engine) = ratio
    kw = dict(top_k=top_k, temperature=0.8, rollout_logprobs=rollout, rollout_is_cap=2.0)
    kw.update(aggregation="seq_mean_token_mean", num_sequences=5)
    a, b = both(6, **kw)
    assert_same(a, b)
    assert {"rollout_is_mean", "rollout_is_capped_frac", "rollout_logp_gap_max"} <= a[1].keys()
    assert 0 < a[1]["rollout_is_capped_frac"] < 1
    *_, weights = sdpo_loss_chunked(s, t, head, ids, mask, rows=3, **kw)
    want = torch.where(mask, ratio.clamp(max=2.0), 0.0)
    torch.testing.assert_close(weights, want, rtol=1e-5, atol=1e-6)
    # given back as rollout_weights (a later update), they give the same loss
    again, _, _, none = sdpo_loss_chunked(
        s, t, head, ids, mask, rows=3, **{**kw, "rollout_weights": weights}
    )
    assert none is None and again.item() == pytest.approx(a[0].item(), rel=1e-6)
