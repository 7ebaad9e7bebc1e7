"""GPU check: the hf engine and the SDPO trainer on CUDA agree with the CPU path; step times.

For the bundled toy model (and a real model with `--model PATH`):

1. Agreement, float32 on both sides (TF32 off): one fixed RolloutBatch (a toy problem, one
   passing sample and wrong ones with the table verifier's feedback, so teachers see a
   solution, feedback or nothing, i.e. masked), the same initial adapters (the device
   trainer's checkpoint, loaded by the CPU trainer), `--check-steps` SDPO updates on each
   device, in two modes: top-K 20 + tail with the EMA teacher, and the full vocabulary with
   the trust-region teacher. Checked per update: loss, mean KL and grad norm,
   |device - cpu| <= atol + rtol * |cpu| (default rtol 1e-3, atol 1e-5).
2. Generation on the device (hf engine, temperature 1): the sampler's log-probs equal the
   trainer's teacher-forced log-probs on the same device, and the CPU trainer's on the same
   tokens, to `--logprob-atol` (default 1e-3) per token.
3. The chunked loss (sdpo_loss_chunked, the trainer's) on the device at V = 151,936: loss and
   hidden-state gradient equal the unchunked sdpo_loss on full logits (float32, top-K 20 +
   tail and the full vocabulary), and the peak memory of both; then one bf16 SDPO step of a
   random 2-layer Qwen3-shaped model at V = 151,936 (B = 2 x 2,048 response tokens): loss and
   grad norm finite, time and peak memory.
4. Step time: `sdpo_core.solve` on a toy hard problem with the trainer's production dtype
   (bfloat16 on a GPU that has it), the split of benchmarks/step_time.py (generate, verify,
   teacher, student, export, swap) and the peak CUDA memory.

Exit status: 0 all checks pass, 1 a check failed, 2 no CUDA on this machine. `--device cpu`
runs the same comparison CPU vs CPU (a self-test of this script, where no GPU exists).
The bundled model takes well under a minute on an H100; a real 8B model a few minutes more
(its CPU float32 reference holds the model in host memory: ~4 bytes per parameter).

    .venv/bin/python benchmarks/gpu_check.py [--model /models/Qwen3-8B] [--device cpu]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import repo_relative
from loss_memory import tiny_qwen3
from step_time import format_table, measure_steps

from sdpo_core.config import SDPOConfig
from sdpo_core.engines.hf import HFEngine
from sdpo_core.loss import sdpo_loss, sdpo_loss_chunked
from sdpo_core.runtime import load_runtime
from sdpo_core.teacher import build_teacher_contexts
from sdpo_core.toy import DEFAULT_MODEL_DIR, HARD_SUITE, make_problem
from sdpo_core.trainer import RolloutBatch, SDPOTrainer
from sdpo_core.types import SamplingParams
from sdpo_core.verifiers import build_verifier

RESULTS = Path(__file__).parent / "results"
METRICS = ("loss", "kl", "grad_norm")
# (name, SDPOConfig overrides): both loss paths and both teacher regularisations
MODES: list[tuple[str, dict[str, Any]]] = [
    ("topk20_ema", {"top_k": 20, "add_tail": True, "teacher_regularization": "ema"}),
    ("fullvocab_trust_region", {"top_k": None, "teacher_regularization": "trust_region"}),
]


def fixed_batch(trainer: SDPOTrainer, n: int) -> RolloutBatch:
    """A fixed rollout group of toy problem (7, 3): sample 0 passes, the rest are wrong.

    Sample 0's teacher is masked (no other passing sibling, no feedback); the others see
    sample 0 as the solution plus their own verifier feedback.
    """
    problem = make_problem(7, 3)
    table = problem["verifier"]["cases"]
    keys = list(table)
    texts = [" ".join(f"{k}={table[k]}" for k in keys)]
    for i in range(1, n):
        texts.append(" ".join(f"{k}={(int(table[k]) + i + j) % 10}" for j, k in enumerate(keys)))
    verdicts = build_verifier(problem["verifier"]).verify_batch(texts)
    contexts = build_teacher_contexts(problem["prompt"], texts, verdicts, trainer.cfg)
    eos = [trainer.tokenizer.eos_token_id]
    return RolloutBatch(
        prompt_ids=trainer.encode_chat(problem["prompt"]),
        response_ids=[
            trainer.tokenizer(t, add_special_tokens=False)["input_ids"] + eos for t in texts
        ],
        teacher_prompt_ids=[None if c.masked else trainer.encode_chat(c.message) for c in contexts],
    )


def close(got: float, ref: float, rtol: float, atol: float) -> bool:
    return math.isfinite(got) and math.isfinite(ref) and abs(got - ref) <= atol + rtol * abs(ref)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cuda_peak_mb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def reset_cuda_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def check_model(
    path: str, args: argparse.Namespace, n: int, steps: int, tmp: Path
) -> dict[str, Any]:
    """Agreement of `args.device` with the CPU, float32 both (parts 1 and 2 of the docstring)."""
    failures: list[str] = []
    out: dict[str, Any] = {"modes": {}, "failures": failures}
    base_cfg = SDPOConfig(micro_batch_size=2, seed=3, lr=args.lr)
    dev_steps: dict[str, list[dict[str, float]]] = {}

    # --- the device side: initial adapters saved, generation, updates
    reset_cuda_peak(args.device)
    t0 = time.perf_counter()
    dev = SDPOTrainer(path, device=args.device, dtype="float32")
    out["load_seconds_device"] = time.perf_counter() - t0
    gen: dict[str, Any] = {}
    for m, (mode, over) in enumerate(MODES):
        cfg = base_cfg.merged(over)
        dev.reset(cfg)
        dev.save_checkpoint(tmp / mode)
        batch = fixed_batch(dev, n)
        if m == 0:  # generate with the initial student adapter
            gen = generate_on_device(dev, batch.prompt_ids, args)
        dev_steps[mode] = [dev.step(batch) for _ in range(steps)]
    out["peak_cuda_mb_check"] = cuda_peak_mb(args.device)
    del dev
    free_memory()

    # --- the CPU reference from the same initial adapters
    t0 = time.perf_counter()
    cpu = SDPOTrainer(path, device="cpu", dtype="float32")
    out["load_seconds_cpu"] = time.perf_counter() - t0
    for m, (mode, _) in enumerate(MODES):
        cpu.load_checkpoint(tmp / mode)
        batch = fixed_batch(cpu, n)
        if m == 0:
            cpu_lp = [cpu.sequence_logprobs(batch.prompt_ids, ids) for ids in gen.pop("_ids")]
            diff = max_abs_diff(cpu_lp, gen.pop("_dev_logprobs"))
            gen["max_abs_diff_device_vs_cpu"] = diff
            if not diff <= args.logprob_atol:
                failures.append(f"generation: device vs CPU log-probs differ by {diff:.2e}")
        rows = []
        for k in range(steps):
            ref, got = cpu.step(batch), dev_steps[mode][k]
            row: dict[str, Any] = {"step": k + 1}
            for key in METRICS:
                ok = close(got[key], ref[key], args.rtol, args.atol)
                row[key] = {
                    "cpu": ref[key],
                    "device": got[key],
                    "abs_diff": abs(got[key] - ref[key]),
                }
                if not ok:
                    failures.append(
                        f"{mode} update {k + 1}: {key} device {got[key]:.8g} vs cpu {ref[key]:.8g}"
                    )
            rows.append(row)
        out["modes"][mode] = rows
    del cpu
    free_memory()
    failures.extend(gen.pop("failures"))
    out["generation"] = gen
    return out


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """Largest per-token |a - b| over sequences of equal lengths (inf when lengths differ)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if len(x) != len(y):
            return math.inf
        worst = max([worst, *(abs(p - q) for p, q in zip(x, y, strict=True))])
    return worst


def generate_on_device(
    trainer: SDPOTrainer, prompt_ids: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """Sample on the device; check ids and log-probs against teacher forcing on the device."""
    failures: list[str] = []
    engine = HFEngine(trainer)
    sampling = SamplingParams(n=args.gen_samples, max_new_tokens=args.gen_tokens, temperature=1.0)
    engine.generate(prompt_ids, SamplingParams(n=2, max_new_tokens=4))  # warm-up, not timed
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    comps = engine.generate(prompt_ids, sampling)
    seconds = time.perf_counter() - t0
    vocab = trainer.base.config.vocab_size
    if len(comps) != args.gen_samples:
        failures.append(f"generation: asked for {args.gen_samples} samples, got {len(comps)}")
    for c in comps:
        if not c.token_ids or len(c.token_ids) != len(c.logprobs):
            failures.append("generation: a completion has no tokens or mismatched log-probs")
        elif not all(0 <= i < vocab for i in c.token_ids):
            failures.append("generation: a token id is outside the vocabulary")
        elif not all(math.isfinite(x) and x <= 1e-6 for x in c.logprobs):
            failures.append("generation: a sampling log-prob is not finite or is > 0")
    checked = comps[: args.logprob_samples]
    forced = [trainer.sequence_logprobs(prompt_ids, c.token_ids) for c in checked]
    diff = max_abs_diff(forced, [c.logprobs for c in checked])
    if not diff <= args.logprob_atol:
        failures.append(f"generation: sampler vs teacher-forced log-probs differ by {diff:.2e}")
    tokens = sum(len(c.token_ids) for c in comps)
    return {
        "samples": len(comps),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds else None,
        "max_abs_diff_sampler_vs_forced": diff,
        "failures": failures,
        "_ids": [c.token_ids for c in checked],
        "_dev_logprobs": forced,
    }


def step_times(path: str, args: argparse.Namespace, max_new_tokens: int | None) -> dict[str, Any]:
    """Part 3: solve steps in the trainer's production dtype on the device, with peak memory."""
    free_memory()
    reset_cuda_peak(args.device)
    rt = load_runtime(path, engine="hf", device=args.device, dtype=args.timing_dtype)
    try:
        res = measure_steps(
            rt,
            HARD_SUITE[0],
            warmup=1,
            steps=args.timing_steps,
            samples=args.timing_samples,
            max_new_tokens=max_new_tokens,
        )
        res["dtype"] = str(rt.trainer.base.dtype).removeprefix("torch.")
    finally:
        rt.close()
    res["peak_cuda_mb"] = cuda_peak_mb(args.device)
    res.pop("per_step")
    del rt
    free_memory()
    return res


def chunked_loss_check(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Part 3: chunked vs unchunked loss on the device, then a bf16 step of a tiny Qwen3."""
    dev, V, H, T = args.device, 151_936, 256, args.chunk_check_tokens
    failures: list[str] = []
    out: dict[str, Any] = {"V": V, "H": H, "T": T, "failures": failures}
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(V, H, generator=g) / H**0.5 * 4).to(dev)
    s = torch.randn(1, T, H, generator=g).to(dev).requires_grad_()
    t = torch.randn(1, T, H, generator=g).to(dev)
    ids = torch.randint(0, V, (1, T), generator=g).to(dev)
    mask = torch.ones(1, T, dtype=torch.bool, device=dev)
    for top_k in (20, None):
        free_memory()
        reset_cuda_peak(dev)
        loss, m, _, _ = sdpo_loss_chunked(s, t, lambda h: h @ w.T, ids, mask, top_k=top_k)
        (grad,) = torch.autograd.grad(loss, s)
        peak_chunked = cuda_peak_mb(dev)
        free_memory()
        reset_cuda_peak(dev)
        with torch.no_grad():
            t_logits = t @ w.T
        loss0, _ = sdpo_loss(s @ w.T, t_logits, ids, mask, top_k=top_k)
        (grad0,) = torch.autograd.grad(loss0, s)
        peak_full = cuda_peak_mb(dev)
        del t_logits
        rel = (grad - grad0).abs().max().item() / max(grad0.abs().max().item(), 1e-30)
        key = f"top_k_{top_k}"
        out[key] = {"loss": loss.item(), "loss_unchunked": loss0.item(),
                    "grad_max_rel_diff": rel, "peak_cuda_mb": peak_chunked,
                    "peak_cuda_mb_unchunked": peak_full}  # fmt: skip
        if not close(loss.item(), loss0.item(), args.rtol, args.atol) or not rel <= args.rtol:
            failures.append(f"chunked loss {key}: loss {loss.item():.8g} vs {loss0.item():.8g}, "
                            f"grad max rel diff {rel:.1e}")  # fmt: skip
    free_memory()

    trainer = SDPOTrainer(tiny_qwen3(tmp / "qwen3", V), device=dev, dtype="bfloat16")
    trainer.reset(SDPOConfig(micro_batch_size=2, seed=1))
    n_tok = len(trainer.tokenizer)
    prompt = trainer.encode_chat("Find the hidden table.")
    resp = [torch.randint(3, n_tok, (args.chunk_check_tokens,), generator=g).tolist()] * 2
    teach = [trainer.encode_chat(f"Find the hidden table. Feedback {i}: a=1") for i in range(2)]
    batch = RolloutBatch(prompt, resp, teach)
    trainer.step(RolloutBatch(prompt, [r[:16] for r in resp], teach))  # warm-up
    free_memory()
    reset_cuda_peak(dev)
    t0 = time.perf_counter()
    m = trainer.step(batch)
    step_s = time.perf_counter() - t0
    out["qwen3_bf16_step"] = {"loss": m["loss"], "grad_norm": m["grad_norm"], "seconds": step_s,
                              "peak_cuda_mb": cuda_peak_mb(dev), "B": 2,
                              "T": args.chunk_check_tokens}  # fmt: skip
    if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) and m["grad_norm"] > 0):
        failures.append(f"qwen3 bf16 step: loss {m['loss']}, grad norm {m['grad_norm']}")
    del trainer
    free_memory()
    return out


def print_check(label: str, check: dict[str, Any], device: str) -> None:
    for mode, rows in check["modes"].items():
        for row in rows:
            cells = "  ".join(
                f"{k} {row[k]['device']:.6g} (|d| {row[k]['abs_diff']:.1e})" for k in METRICS
            )
            print(f"[{label}] {mode} update {row['step']}: {device} {cells}")
    g = check["generation"]
    print(
        f"[{label}] generate {g['samples']} samples, {g['tokens']} tokens in {g['seconds']:.2f} s "
        f"({g['tokens_per_s']:.0f} tok/s); log-prob |d| sampler vs forced "
        f"{g['max_abs_diff_sampler_vs_forced']:.1e}, {device} vs cpu "
        f"{g.get('max_abs_diff_device_vs_cpu', float('nan')):.1e}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="the device checked against the CPU")
    ap.add_argument("--bundled", default=str(DEFAULT_MODEL_DIR), help="the bundled model dir")
    ap.add_argument("--model", default=None, help="also check this real model (HF dir)")
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--atol", type=float, default=1e-6)
    ap.add_argument("--logprob-atol", type=float, default=1e-3)
    ap.add_argument("--lr", type=float, default=1e-4, help="LoRA learning rate of the check")
    ap.add_argument("--check-steps", type=int, default=3, help="updates compared per mode")
    ap.add_argument("--real-check-steps", type=int, default=2, help="the same, real model")
    ap.add_argument("--check-samples", type=int, default=4, help="batch size, bundled model")
    ap.add_argument("--real-check-samples", type=int, default=2, help="batch size, real model")
    ap.add_argument("--gen-samples", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=48)
    ap.add_argument("--logprob-samples", type=int, default=4, help="completions re-scored")
    ap.add_argument("--timing-steps", type=int, default=3, help="after one warm-up step")
    ap.add_argument("--timing-samples", type=int, default=16)
    ap.add_argument("--timing-dtype", default=None, help="default: the trainer's (bf16 on GPU)")
    ap.add_argument("--real-max-new-tokens", type=int, default=256)
    ap.add_argument("--chunk-check-tokens", type=int, default=2048, help="T of part 3")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"CUDA is not available on this machine (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}): nothing was checked. Run this on a GPU machine, or pass "
            "--device cpu for the CPU-vs-CPU self-test."
        )
        return 2
    if args.device.startswith("cuda"):
        torch.set_float32_matmul_precision("highest")  # no TF32: float32 means float32
        torch.backends.cudnn.allow_tf32 = False
    out_path = args.out or RESULTS / (
        "gpu_check.json" if args.device.startswith("cuda") else "gpu_check_cpu.json"
    )
    # (label, path, check batch size, check updates, max_new_tokens of the timed solve)
    models = [("bundled", args.bundled, args.check_samples, args.check_steps, None)]
    if args.model:
        models.append(
            (
                "real",
                args.model,
                args.real_check_samples,
                args.real_check_steps,
                args.real_max_new_tokens,
            )
        )
    for _, path, *_ in models:
        if not (Path(path) / "config.json").exists():
            print(f"no model at {path} (config.json missing)")
            return 1

    report: dict[str, Any] = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "host": {"machine": platform.machine(), "cpu_threads": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
        "tolerance": {
            "rule": "|device - cpu| <= atol + rtol * |cpu| (loss, kl, grad_norm; float32)",
            "rtol": args.rtol,
            "atol": args.atol,
            "logprob_atol": args.logprob_atol,
        },
        "models": {},
    }
    failures: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for label, path, n, steps, max_new in models:
            print(f"[{label}] {path}: {args.device} vs cpu, float32 ...", flush=True)
            check = check_model(path, args, n, steps, Path(tmp) / label)
            print_check(label, check, args.device)
            print(f"[{label}] step times on {args.device} ...", flush=True)
            timing = step_times(path, args, max_new)
            print(format_table({args.device: timing}))
            if args.device.startswith("cuda"):
                print(
                    f"[{label}] peak CUDA memory: check (float32) "
                    f"{check['peak_cuda_mb_check']:.0f} MB, solve ({timing['dtype']}) "
                    f"{timing['peak_cuda_mb']:.0f} MB"
                )
            failures += [f"{label}: {f}" for f in check["failures"]]
            report["models"][label] = {
                "path": repo_relative(path),
                "check": check,
                "step_time": timing,
            }
        print(f"[chunked loss] V=151936 T={args.chunk_check_tokens} on {args.device} ...")
        chunk = chunked_loss_check(args, Path(tmp))
        print(f"[chunked loss] {json.dumps({k: v for k, v in chunk.items() if k != 'failures'})}")
        failures += [f"chunked loss: {f}" for f in chunk["failures"]]
        report["chunked_loss"] = chunk
    report["seconds"] = time.perf_counter() - started
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["failures"] = failures
    report["ok"] = not failures
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_path}")
    if failures:
        print("FAIL\n  " + "\n  ".join(failures))
        return 1
    print(
        f"PASS: {args.device} matches cpu (rtol {args.rtol}, atol {args.atol}) "
        f"in {report['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
