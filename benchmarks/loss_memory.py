"""Top-K (+tail) vs full-vocabulary SDPO loss: peak memory and time of forward + backward.

Modes: full (top_k=None), topk (sdpo_loss, top_k=K, tail; chunked logsumexp + custom backward),
topk_naive (the same top-K loss written with plain autograd, as the public code does: logsumexp
over V with autograd on both sides, then gather), for reference.

Memory: each (mode, T) runs in a fresh subprocess. CUDA: torch.cuda.max_memory_allocated minus
the allocation once the inputs exist. CPU: the peak RSS (VmHWM, reset through
/proc/self/clear_refs once the inputs exist) minus the RSS at that moment. Both count what the
loss adds on top of the logits, including the [B, T, V] gradient that any method must produce
(also reported in units of one [B, T, V] float32 tensor, "BTV"). Time: best of the timed
repeats after the measured run. Defaults take about 2 minutes on 2 idle CPU cores.

    .venv/bin/python benchmarks/loss_memory.py [--seq-lens 256 1024 2048] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sdpo_core.loss import _add_tail, divergence, sdpo_loss

MODES = ("full", "topk", "topk_naive")
OUT = Path(__file__).parent / "results" / "loss_memory.json"


def naive_topk_loss(s: torch.Tensor, t: torch.Tensor, ids, mask: torch.Tensor, k: int):
    """Top-K + tail reverse KL with plain autograd (the public code's formulation)."""
    s_lse = torch.logsumexp(s.float(), dim=-1, keepdim=True)  # [B, T, 1], grad via softmax
    t_lse = torch.logsumexp(t.float(), dim=-1, keepdim=True)  # [B, T, 1]
    idx = s.detach().topk(k, dim=-1).indices  # [B, T, K]
    s_logp = _add_tail(s.float().gather(-1, idx) - s_lse)  # [B, T, K+1]
    t_logp = _add_tail(t.float().gather(-1, idx) - t_lse)  # [B, T, K+1]
    per_tok = divergence(s_logp, t_logp, 1.0)  # [B, T]
    return (per_tok * mask).sum() / mask.sum()


def _proc_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def worker(mode: str, B: int, T: int, V: int, k: int, device: str, dtype: str, repeats: int):
    """Run one config in this process; print one JSON line."""
    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    s = torch.randn(B, T, V, device=device, dtype=dt).mul_(2).requires_grad_()  # [B, T, V]
    t = torch.randn(B, T, V, device=device, dtype=dt).mul_(2)  # [B, T, V]
    ids = torch.randint(0, V, (B, T), device=device)
    mask = torch.ones(B, T, device=device)
    cuda = device.startswith("cuda")

    def step() -> float:
        if mode == "topk_naive":
            loss = naive_topk_loss(s, t, ids, mask, k)
        else:
            loss, _ = sdpo_loss(s, t, ids, mask, top_k=None if mode == "full" else k)
        loss.backward()
        s.grad = None
        return loss.item()

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
        base = _proc_kb("VmRSS") * 1024
    value = step()
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _proc_kb("VmHWM") * 1024 - base
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    btv = B * T * V * 4
    print(json.dumps({"mode": mode, "T": T, "loss": value, "peak_mb": peak / 2**20,
                      "peak_btv_f32": peak / btv, "time_s": min(times)}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "T"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        mode, T = a.worker
        worker(mode, a.batch, int(T), a.vocab, a.top_k, a.device, a.dtype, a.repeats)
        return

    common = ["--vocab", str(a.vocab), "--batch", str(a.batch), "--top-k", str(a.top_k)]
    common += ["--device", a.device, "--dtype", a.dtype, "--repeats", str(a.repeats)]
    rows, ratios = [], []
    cuda = a.device.startswith("cuda")
    mem = "cuda max_memory_allocated" if cuda else "peak RSS (VmHWM reset) growth"
    print(f"B={a.batch} V={a.vocab} K={a.top_k} {a.device} {a.dtype}; memory = {mem} "
          f"above the inputs, fresh process per config; 1 BTV = one [B,T,V] float32")  # fmt: skip
    print(f"{'T':>5} {'mode':>10} {'peak MB':>9} {'in BTV':>7} {'time s':>7}")
    for T in a.seq_lens:
        by = {}
        for mode in MODES:
            cmd = [sys.executable, __file__, "--worker", mode, str(T), *common]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if out.returncode != 0:
                print(f"{T:>5} {mode:>10} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            by[mode] = r
            print(f"{T:>5} {mode:>10} {r['peak_mb']:9.0f} {r['peak_btv_f32']:7.2f} "
                  f"{r['time_s']:7.3f}")  # fmt: skip
        if "full" in by and "topk" in by:
            f, k = by["full"], by["topk"]
            ratio = {"T": T, "mem_topk/full": k["peak_mb"] / f["peak_mb"],
                     "time_topk/full": k["time_s"] / f["time_s"]}  # fmt: skip
            if "topk_naive" in by:
                n = by["topk_naive"]
                ratio["mem_topk_naive/full"] = n["peak_mb"] / f["peak_mb"]
                ratio["time_topk_naive/full"] = n["time_s"] / f["time_s"]
                ratio["loss_topk-topk_naive"] = abs(k["loss"] - n["loss"])
            ratios.append(ratio)
            print("      " + "  ".join(f"{key} {v:.3g}" for key, v in ratio.items() if key != "T"))
    result = {"device": a.device, "dtype": a.dtype, "B": a.batch, "V": a.vocab, "top_k": a.top_k,
              "memory_method": mem, "rows": rows, "ratios": ratios}  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
