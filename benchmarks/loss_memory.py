"""Peak memory and time of the SDPO loss step, chunked (the trainer's) vs full-vocabulary logits.

Part 1, the loss step from final hidden states (what a trainer step does after the decoder):
student hidden states [B, T, H] (with gradient) and the teacher's [B, T, H], a frozen head
[V, H]; forward and backward down to the hidden states. Modes:

- full:    logits = head(hidden) for the whole batch, sdpo_loss(top_k=None) (the full-vocabulary
           loss on materialised [B, T, V] logits: the baseline);
- topk:    the same logits, sdpo_loss(top_k=K, tail) (the trainer's path before chunking);
- chunked: sdpo_loss_chunked(top_k=K, tail): logits of one chunk of positions at a time, no
           [B, T, V] tensor (the trainer's path now);
- chunked_full: sdpo_loss_chunked(top_k=None).

Part 2 (--trainer-step): one whole SDPOTrainer.step of a random 2-layer Qwen3-shaped model at
V = 151,936 (hidden 64, B = 2 samples of T response tokens, top-K 20 + tail, EMA teacher),
chunked vs the unchunked reference, and chunked without gradient checkpointing
(`--step-hidden`, `--step-layers` size the model); the increase of peak memory over the
loaded model, measured
on the step after a short warm-up step (lazy initialisations and AdamW state already exist).

Memory: each configuration runs in a fresh subprocess. CUDA: max_memory_allocated minus the
allocation once the inputs (or the loaded model) exist. CPU: peak RSS (VmHWM, reset through
/proc/self/clear_refs at that moment) minus the RSS then. Also given in units of one [B, T, V]
float32 tensor ("BTV"). A configuration whose estimated peak exceeds --max-gb is not run: its
peak is given as computed from the same mode's BTV multiple at the shortest T (marked
"computed"). Time: the measured run (plus --repeats, best of).

    .venv/bin/python benchmarks/loss_memory.py [--hidden 4096] [--seq-lens 1024 4096 16384]
    .venv/bin/python benchmarks/loss_memory.py --trainer-step [--seq-lens 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sdpo_core.loss import sdpo_loss, sdpo_loss_chunked

MODES = ("full", "topk", "chunked", "chunked_full")
STEP_MODES = ("chunked", "unchunked", "chunked_no_checkpointing")
RESULTS = Path(__file__).parent / "results"


def _proc_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class PeakMeter:
    """Peak memory growth from the moment of construction (CUDA allocator or CPU RSS)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
            self.base = _proc_kb("VmRSS") * 1024

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return _proc_kb("VmHWM") * 1024 - self.base


def loss_worker(mode: str, B: int, T: int, H: int, V: int, k: int, a: argparse.Namespace):
    """Part 1, one configuration in this process; prints one JSON line."""
    dt = getattr(torch, a.dtype)
    torch.manual_seed(0)
    w = (torch.randn(V, H, device=a.device) / H**0.5 * 4).to(dt)  # logits of std ~4
    s = torch.randn(B, T, H, device=a.device, dtype=dt).requires_grad_()
    t = torch.randn(B, T, H, device=a.device, dtype=dt)
    ids = torch.randint(0, V, (B, T), device=a.device)
    mask = torch.ones(B, T, dtype=torch.bool, device=a.device)

    def head(h: torch.Tensor) -> torch.Tensor:
        return h @ w.T

    def step() -> float:
        top_k = None if mode in ("full", "chunked_full") else k
        if mode.startswith("chunked"):
            loss, _, _, _ = sdpo_loss_chunked(s, t, head, ids, mask, top_k=top_k)
        else:
            with torch.no_grad():
                t_logits = head(t)  # [B, T, V]
            loss, _ = sdpo_loss(head(s), t_logits, ids, mask, top_k=top_k)
        loss.backward()
        s.grad = None
        return loss.item()

    meter = PeakMeter(a.device)
    t0 = time.perf_counter()
    value = step()
    times = [time.perf_counter() - t0]
    peak = meter.peak()
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        step()
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    btv = B * T * V * 4
    print(json.dumps({"mode": mode, "T": T, "loss": value, "peak_mb": peak / 2**20,
                      "peak_btv_f32": peak / btv, "time_s": min(times)}))  # fmt: skip


def tiny_qwen3(out: Path, vocab: int, hidden: int = 64, layers: int = 2) -> Path:
    """A random Qwen3 (default 2 layers, hidden 64) with `vocab` outputs and the bundled
    tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from sdpo_core.toy import DEFAULT_MODEL_DIR

    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    cfg = AutoConfig.for_model(
        "qwen3", vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
        max_position_embeddings=32768,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def step_worker(mode: str, B: int, T: int, a: argparse.Namespace) -> None:
    """Part 2, one whole trainer step in this process; prints one JSON line."""
    from sdpo_core.config import SDPOConfig
    from sdpo_core.trainer import RolloutBatch, SDPOTrainer

    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_qwen3(Path(tmp), a.vocab, a.step_hidden, a.step_layers)
        trainer = SDPOTrainer(model, device=a.device, dtype="float32")
    checkpointing = mode != "chunked_no_checkpointing"
    trainer.reset(SDPOConfig(micro_batch_size=B, top_k=a.top_k, seed=1,
                             gradient_checkpointing=checkpointing))  # fmt: skip
    trainer.chunked_loss = mode != "unchunked"
    g = torch.Generator().manual_seed(0)
    n_tok = len(trainer.tokenizer)
    prompt = trainer.encode_chat("Find the hidden table.")
    resp = [torch.randint(3, n_tok, (T,), generator=g).tolist() for _ in range(B)]
    teach = [trainer.encode_chat(f"Find the hidden table. Feedback {i}: a=1") for i in range(B)]
    trainer.step(RolloutBatch(prompt, [r[:16] for r in resp], teach))  # warm-up: lazy inits
    batch = RolloutBatch(prompt, resp, teach)
    meter = PeakMeter(a.device)
    t0 = time.perf_counter()
    m = trainer.step(batch)
    seconds = time.perf_counter() - t0
    peak = meter.peak()
    btv = B * T * a.vocab * 4
    print(json.dumps({"mode": mode, "T": T, "B": B, "loss": m["loss"], "grad_norm": m["grad_norm"],
                      "peak_mb": peak / 2**20, "peak_btv_f32": peak / btv,
                      "time_s": seconds}))  # fmt: skip


def run(argv: list[str]) -> dict | str:
    """One worker subprocess; its JSON row, or the error line."""
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                         env=os.environ)  # fmt: skip
    if out.returncode != 0:
        return (out.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(out.stdout.strip().splitlines()[-1])


def mem_available_gb() -> float:
    text = Path("/proc/meminfo").read_text()
    return int(re.search(r"MemAvailable:\s+(\d+)", text).group(1)) / 2**20


# rough peak of each mode in BTV units, to decide whether a configuration can run at all
ESTIMATE_BTV = {"full": 6.0, "topk": 4.0, "unchunked": 4.5}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--batch", type=int, default=None, help="default 1 (loss), 2 (trainer step)")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--modes", nargs="+", default=None, help=f"{MODES} / {STEP_MODES}")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=0, help="timed runs after the measured one")
    ap.add_argument("--max-gb", type=float, default=None, help="default 0.8 x MemAvailable")
    ap.add_argument("--trainer-step", action="store_true", help="part 2 instead of part 1")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--step-hidden", type=int, default=64, help="trainer step: model hidden size")
    ap.add_argument("--step-layers", type=int, default=2, help="trainer step: decoder layers")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "T"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    B = a.batch or (2 if a.trainer_step else 1)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.worker:
        mode, T = a.worker
        if a.trainer_step:
            step_worker(mode, B, int(T), a)
        else:
            loss_worker(mode, B, int(T), a.hidden, a.vocab, a.top_k, a)
        return

    modes = a.modes or (STEP_MODES if a.trainer_step else ("full", "chunked"))
    max_gb = a.max_gb or 0.8 * mem_available_gb()
    common = ["--vocab", str(a.vocab), "--batch", str(B), "--top-k", str(a.top_k),
              "--hidden", str(a.hidden), "--device", a.device, "--dtype", a.dtype,
              "--repeats", str(a.repeats), "--threads", str(torch.get_num_threads()),
              "--step-hidden", str(a.step_hidden), "--step-layers", str(a.step_layers)]  # fmt: skip
    common += ["--trainer-step"] if a.trainer_step else []
    cuda = a.device.startswith("cuda")
    mem = "cuda max_memory_allocated growth" if cuda else "peak RSS (VmHWM reset) growth"
    what = (
        f"whole trainer step, {a.step_layers}-layer hidden-{a.step_hidden} Qwen3"
        if a.trainer_step
        else f"H={a.hidden}"
    )
    load = os.getloadavg()[0]
    print(
        f"{what}, B={B} V={a.vocab} K={a.top_k} {a.device} {a.dtype}; memory = {mem}, fresh "
        f"process per config; 1 BTV = one [B,T,V] float32; runs up to {max_gb:.1f} GB; "
        f"torch threads {torch.get_num_threads()}, load average {load:.1f}"
    )
    print(f"{'T':>6} {'mode':>12} {'peak MB':>9} {'in BTV':>7} {'time s':>8}")
    rows: list[dict] = []
    first_btv: dict[str, float] = {}
    for T in a.seq_lens:
        btv_gb = B * T * a.vocab * 4 / 2**30
        for mode in modes:
            est = first_btv.get(mode, ESTIMATE_BTV.get(mode, 0.0)) * btv_gb
            if est > max_gb:
                if mode in first_btv:
                    r = {"mode": mode, "T": T, "peak_btv_f32": first_btv[mode], "computed": True,
                         "peak_mb": first_btv[mode] * btv_gb * 1024, "time_s": None}  # fmt: skip
                    rows.append(r)
                    fit = f"computed: ~{est:.0f} GB does not fit in {max_gb:.0f} GB"
                    print(f"{T:>6} {mode:>12} {r['peak_mb']:9.0f} {r['peak_btv_f32']:7.2f} "
                          f"{'':>8} {fit}")  # fmt: skip
                continue
            r = run(["--worker", mode, str(T), *common])
            if isinstance(r, str):
                print(f"{T:>6} {mode:>12} failed: {r}")
                continue
            first_btv.setdefault(mode, r["peak_btv_f32"])
            rows.append(r)
            print(f"{T:>6} {mode:>12} {r['peak_mb']:9.0f} {r['peak_btv_f32']:7.2f} "
                  f"{r['time_s']:8.1f}", flush=True)  # fmt: skip
    ratios = []
    base, ours = ("unchunked", "chunked") if a.trainer_step else ("full", "chunked")
    for T in a.seq_lens:
        by = {r["mode"]: r for r in rows if r["T"] == T}
        if base in by and ours in by:
            ratio = {"T": T, f"mem_{ours}/{base}": by[ours]["peak_mb"] / by[base]["peak_mb"],
                     "baseline_computed": bool(by[base].get("computed"))}  # fmt: skip
            if by[base]["time_s"]:
                ratio[f"time_{ours}/{base}"] = by[ours]["time_s"] / by[base]["time_s"]
            ratios.append(ratio)
            print(f"{T:>6} " + "  ".join(f"{k} {v:.3g}" for k, v in ratio.items() if k != "T"))
    result = {"part": "trainer_step" if a.trainer_step else "loss", "device": a.device,
              "dtype": a.dtype, "B": B, "V": a.vocab,
              "H": a.step_hidden if a.trainer_step else a.hidden,
              "layers": a.step_layers if a.trainer_step else None,
              "top_k": a.top_k, "memory_method": mem, "command": " ".join(sys.argv[1:]),
              "torch_threads": torch.get_num_threads(), "max_gb": max_gb,
              "load_average": [load, os.getloadavg()[0]],
              "rows": rows, "ratios": ratios}  # fmt: skip
    out = a.out or RESULTS / ("loss_memory_step.json" if a.trainer_step else "loss_memory.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
